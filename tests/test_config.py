"""Every config composes; every bad value is rejected, naming key and value, before anything is created."""

import subprocess
import sys
from pathlib import Path

import pytest

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


def test_no_import_cycle_among_the_packages():
    """Counting imports inside functions: a cycle makes what a module needs depend on who imported it first."""
    tool = Path(__file__).resolve().parents[2] / "shared/tools/import_cycles.py"
    if not tool.exists():
        pytest.skip(f"the import-cycle tool is not at {tool}")
    result = subprocess.run([sys.executable, str(tool), str(ROOT), "algorithms", "experiments", "analysis"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
