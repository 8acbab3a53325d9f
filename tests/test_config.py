"""Every config composes; every bad value is rejected, naming key and value, before anything is created."""

import ast
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from algorithms import SCHEDULES
from algorithms.schedule_checks import OFF_POLICY_DEFAULTS, Pinned, Problem
from experiments.columns import IMPALA_DEFAULTS
from experiments.config import ConfigError, validate
from tests.conftest import CONF_DIR, compose_config

ALGOS = sorted(path.stem for path in Path(CONF_DIR, "algo").glob("*.yaml"))
ENVS = sorted(path.stem for path in Path(CONF_DIR, "env").glob("*.yaml"))
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_and_env_config_composes_and_validates(algo, env):
    cfg = compose_config(f"algo={algo}", f"env={env}")
    validate(cfg)
    assert cfg.algo.name == algo and cfg.env.name == env


def test_env_files_set_their_documented_hyperparameters():
    lunar = compose_config("env=lunarlander")
    assert (lunar.algo.gamma, lunar.algo.lr, lunar.algo.lr_schedule) == (0.995, 8.3e-4, "linear")
    pendulum = compose_config("env=pendulum")
    assert (pendulum.algo.n_steps, pendulum.model.log_std_init, pendulum.env.normalize_obs) == (8, -2.0, True)
    # Command-line values win over an env file's values.
    assert compose_config("env=lunarlander", "algo.gamma=0.9").algo.gamma == 0.9


@pytest.mark.parametrize(
    "override, key",
    [
        ("env.id=CartPol-v1", "env.id"),
        ("env.id=FrozenLake-v1", "env.id"),  # discrete observations
        ("env.id=Blackjack-v1", "env.id"),  # tuple observations
        ("total_env_steps=0", "total_env_steps"),
        ("total_env_steps=-5", "total_env_steps"),
        ("log_interval=0", "log_interval"),
        ("algo.num_workers=0", "algo.num_workers"),
        ("algo.num_envs=0", "algo.num_envs"),
        ("algo.num_envs=4", "algo.num_envs"),  # single runs one env
        ("algo.n_steps=0", "algo.n_steps"),
        ("algo.lr=0", "algo.lr"),
        ("algo.lr=-0.001", "algo.lr"),
        ("algo.lr=inf", "algo.lr"),
        ("algo.lr=nan", "algo.lr"),
        ("algo.gamma=0", "algo.gamma"),
        ("algo.gamma=1.01", "algo.gamma"),
        ("algo.gae_lambda=1.5", "algo.gae_lambda"),
        ("algo.entropy_coef=-0.01", "algo.entropy_coef"),
        ("algo.value_coef=-1", "algo.value_coef"),
        ("algo.max_grad_norm=0", "algo.max_grad_norm"),
        ("algo.optimizer=sgd", "algo.optimizer"),
        ("algo.mode=hogwild", "algo.mode"),
        ("algo.lr_schedule=cosine", "algo.lr_schedule"),
        ("algo.staleness.delay=2", "algo.staleness.delay"),  # staleness is an a3c setting
        ("seed=-1", "seed"),
        ("model.activation=gelu", "model.activation"),
        ("model.hidden_sizes=[]", "model.hidden_sizes"),
        ("logger.wandb.mode=sometimes", "logger.wandb.mode"),
    ],
)
def test_validation_names_the_key_and_the_value(override, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config("algo=single", override))
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}=")


def test_unknown_env_suggests_close_matches():
    with pytest.raises(ConfigError, match="did you mean CartPole-v1"):
        validate(compose_config("env.id=CartPol-v1"))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.lr=-1", "error: invalid config: algo.lr=-1.0: must be a finite number > 0"),
        ("env.id=CartPol-v1", "error: invalid config: env.id='CartPol-v1': is not a registered gymnasium"),
        ("algo.optimizer=sgd", "error: invalid config: algo.optimizer='sgd': must be one of rmsprop, adam"),
    ],
)
def test_command_line_rejects_bad_values_before_creating_anything(tmp_path, override, message):
    result = run_cli(override, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # no run directory, no W&B run


def test_command_line_rejects_type_errors_naming_the_key(tmp_path):
    result = run_cli("algo.lr=fast", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert "algo.lr" in result.stderr and "'fast'" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr == "error: invalid config: algo.lr='fast': must be a float\n"
    assert list(tmp_path.iterdir()) == []


def test_multirun_checks_every_job_before_the_first_starts(tmp_path):
    result = run_cli("-m", "seed=0,1", "algo.lr=0.001,-1", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid config (job seed=0 algo.lr=-1): algo.lr=-1.0" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _schedule_names() -> set[str]:
    return {name for key in SCHEDULES for name in key}


def _dotted(node: ast.AST) -> str:
    """``cfg.algo.name`` for an attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def test_config_validation_names_no_schedule():
    """experiments/config.py holds the rules every schedule shares: no comparison with the run's algorithm, mode or
    backend, and no schedule's name in its code (messages aside), so a schedule's rules can only live in its entry."""
    tree = ast.parse((ROOT / "experiments" / "config.py").read_text())
    names = _schedule_names()
    strings = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    assert not names & set(strings), "experiments/config.py names a schedule; move its rule into the schedule's entry"
    for compare in (node for node in ast.walk(tree) if isinstance(node, ast.Compare)):
        operands = [_dotted(operand) for operand in (compare.left, *compare.comparators)]
        branching = [operand for operand in operands if re.search(r"(^|\.)(algo\.name|algo\.mode|backend)$", operand)]
        assert not branching, f"line {compare.lineno} compares {branching[0]}; that rule belongs in the table"


def exactly_two_workers(cfg):
    if cfg.algo.num_workers != 2:
        yield Problem("algo.num_workers", cfg.algo.num_workers, "algo.mode=tandem runs exactly two workers")


def test_a_new_entry_is_validated_by_its_own_checks(monkeypatch):
    """A made-up schedule: one table entry with a check function and a pin of its own, and nothing else."""
    tandem = replace(SCHEDULES[("a2c", "workers", "local")], mode="tandem",
                     checks=(exactly_two_workers, Pinned({"algo.n_steps": 5}, "tandem keeps {algo}'s {value} steps")))
    monkeypatch.setitem(SCHEDULES, ("a2c", "tandem", "local"), tandem)
    validate(compose_config("algo=a2c", "algo.mode=tandem", "algo.num_workers=2"))
    with pytest.raises(ConfigError) as error:
        validate(compose_config("algo=a2c", "algo.mode=tandem", "algo.num_workers=3"))
    assert str(error.value) == "algo.num_workers=3: algo.mode=tandem runs exactly two workers"
    with pytest.raises(ConfigError) as error:
        validate(compose_config("algo=a2c", "algo.mode=tandem", "algo.num_workers=2", "algo.n_steps=8"))
    assert str(error.value) == "algo.n_steps=8: tandem keeps a2c's 5 steps"
    validate(compose_config("algo=a2c", "algo.mode=workers", "algo.num_workers=3"))  # the others' rules are theirs


def test_the_pinned_impala_settings_are_the_ones_analysis_reads():
    """The keys a non-impala schedule pins, with their defaults, in the order a bad config is told about them."""
    assert list(OFF_POLICY_DEFAULTS.items()) == [(f"algo.{key}", value) for key, value in IMPALA_DEFAULTS.items()]


def test_every_entry_names_its_update_rule_as_module_and_class():
    for schedule in SCHEDULES.values():
        module, _, name = schedule.rule.partition(":")
        assert name.isidentifier() and (ROOT / f"{module.replace('.', '/')}.py").exists(), schedule.rule


def test_checking_a_config_against_the_table_loads_no_torch_ray_or_gymnasium():
    probe = """
import sys
from omegaconf import OmegaConf
from algorithms import SCHEDULES
from experiments.config import Config
cfg = OmegaConf.structured(Config)
for schedule in SCHEDULES.values():
    cfg.algo.name, cfg.algo.mode, cfg.backend = schedule.algo, schedule.mode, schedule.backend
    assert not list(schedule.problems(cfg)), schedule
sys.exit(", ".join(sorted({"torch", "ray", "gymnasium"} & set(sys.modules))) or 0)
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
