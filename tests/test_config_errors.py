"""Every bad command-line input is one line naming the key and the value, exit status 2, and nothing is created.

Most rows go, in this process, through what ``experiments.train`` runs before any job starts:
``experiments.plan.check_command_line`` before Hydra starts, then for a multirun the check of every job
that ``ValidateBeforeLaunch`` makes (``compose_valid_jobs``, here through ``compose_jobs``). A few go
through real ``python -m experiments.train`` processes (a single run and a multirun), ``svrl-train`` and
``python -m experiments.plan``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.config import ConfigError, exit_on_config_error
from experiments.plan import check_command_line, compose_jobs

ROOT = Path(__file__).resolve().parents[1]
ALGOS = "one of a2c, a3c, appo, impala, ppo, single"

# (command-line arguments, the key the message names, the value as the message shows it, words of the reason)
BAD_INPUTS = [
    # values of the wrong type, for each kind of field
    (["algo.lr=fast"], "algo.lr", "'fast'", "must be a float"),
    (["algo.lr="], "algo.lr", "''", "must be a float"),
    (["total_env_steps=1e5"], "total_env_steps", "100000.0", "must be an integer; write 100000"),
    (["seed=1.5"], "seed", "1.5", "must be an integer"),
    (["torch_threads=[1]"], "torch_threads", "[1]", "must be an integer"),
    (["algo.num_workers=two"], "algo.num_workers", "'two'", "must be an integer"),
    (["resume=maybe"], "resume", "'maybe'", "must be a boolean (true or false)"),
    (["quiet=sometimes"], "quiet", "'sometimes'", "must be a boolean"),
    (["algo.staleness.delay=x"], "algo.staleness.delay", "'x'", "must be an integer"),
    (["algo.staleness.max=soon"], "algo.staleness.max", "'soon'", "must be an integer or null"),
    (["algo.max_grad_norm=big"], "algo.max_grad_norm", "'big'", "must be a float or null"),
    (["cpu_budget=all"], "cpu_budget", "'all'", "must be an integer or null"),
    (["ray.num_cpus=lots"], "ray.num_cpus", "'lots'", "must be an integer or null"),
    (["model.hidden_sizes=64"], "model.hidden_sizes", "64", "must be a list of integers"),
    (["model.hidden_sizes=[64,wide]"], "model.hidden_sizes", "[64, 'wide']", "must be a list of integers"),
    (["logger.wandb.tags=solo"], "logger.wandb.tags", "'solo'", "must be a list of strings"),
    (["algo.staleness=5"], "algo.staleness", "5", "must be a group of keys (delay, max, lr_scaling)"),
    (["env.id=null"], "env.id", "None", "cannot be null; it must be a string"),
    (["model=5"], "model", "5", "must be a group of keys (hidden_sizes, activation"),
    (["env.kwargs=5"], "env.kwargs", "5", "must be a mapping"),
    # keys the schema does not have, with and without +
    (["algo.lrr=0.1"], "algo.lrr", "0.1", "algo has no key lrr; did you mean lr?"),
    (["+algo.lrr=0.1"], "algo.lrr", "0.1", "algo has no key lrr; did you mean lr?"),
    (["++algo.lrr=0.1"], "algo.lrr", "0.1", "algo has no key lrr; did you mean lr?"),
    (["+foo=bar"], "foo", "'bar'", "the config has no key foo"),
    (["+model.hidden_size=[8]"], "model.hidden_size", "[8]", "model has no key hidden_size; did you mean hidden_sizes"),
    (["sede=3"], "sede", "3", "the config has no key sede; did you mean seed"),
    (["alog=a2c"], "alog", "'a2c'", "the config has no key alog; did you mean algo"),
    (["algo.staleness.dely=2"], "algo.staleness.dely", "2", "algo.staleness has no key dely; did you mean delay?"),
    (["+logger.wandb.projet=x"], "logger.wandb.projet", "'x'", "did you mean project?"),
    (["+experiemnt=demo"], "experiemnt", "'demo'", "did you mean experiment?"),
    (["seed.value=1"], "seed.value", "1", "seed has no key value"),
    (["~algo.lr"], "algo.lr", "None", "keys of the schema cannot be deleted"),
    (["-m", "seed=0,1", "+algo.lrr=0.1,0.2"], "algo.lrr", "'0.1,0.2'", "did you mean lr?"),
    (["env.kwargs.foo=1"], "env.kwargs.foo", "1", "is not set; add it with +env.kwargs.foo=1"),
    (["hydra.run.dirr=x"], "hydra.run.dirr", "'x'", "hydra.run has no key dirr; did you mean dir?"),
    # config group options that do not exist, and group overrides Hydra cannot apply
    (["algo=trpo"], "algo", "'trpo'", f"no such algo config; {ALGOS}"),
    (["env=procgen"], "env", "'procgen'", "no such env config; one of acrobot, ant, atari_beam_rider, atari_breakout,"),
    (["logger=tensorboard"], "logger", "'tensorboard'", "no such logger config; one of wandb"),
    (["ray=remote"], "ray", "'remote'", "no such ray config; one of cluster, local"),
    (["+experiment=nope"], "experiment", "'nope'",
     "one of correction, demo, ppo_vs_appo, staleness, stragglers, sync_vs_async, worker_scaling"),
    (["-m", "+schedule=a2c,single"], "schedule", "'a2c'", "no such schedule config; one of a2c_vector"),
    (["-m", "+experiment=sync_vs_async", "suite=procgen"], "suite", "'procgen'",
     "one of atari, box2d, classic, minatar, mujoco"),
    (["hydra/launcher=nope"], "hydra/launcher", "'nope'", "no such hydra/launcher config; one of basic, joblib"),
    (["-m", "algo=a2c,trpo"], "algo", "'trpo'", ALGOS),
    (["algo=5"], "algo", "5", ALGOS),
    (["experiment=demo"], "experiment", "'demo'", "is in the defaults list; add one with +experiment=demo"),
    (["+algo=a2c"], "algo", "'a2c'", "is chosen already; drop the +"),
    (["++algo=a2c"], "algo", "'a2c'", "is a config group; drop the ++"),
    (["+seed=3"], "seed", "3", "is set already; drop the +"),
    (["+hydra/foo=bar"], "hydra/foo", "'bar'", "there is no such config group"),
    # override syntax, several values outside a multirun, interpolations
    (["seed=[1,2"], "seed", "'[1,2'", "is not a valid override"),
    (["algo.lr"], "algo.lr", "''", "is not a valid override (no '=')"),
    (["seed='0"], "seed", "\"'0\"", "is not a valid override (cannot read \"'0\")"),
    (["=5"], "", "5", "an override needs a key"),
    (["-m", "hydra.launcher.n_jobs=1,2"], "hydra.launcher.n_jobs", "'1,2'", "Hydra's own settings cannot be swept"),
    (["seed=0,1"], "seed", "'0,1'", "several values run only as a multirun (add -m)"),
    (["algo.lr=${nope}"], "algo.lr", "'${nope}'", "cannot be resolved: Interpolation key 'nope' not found"),
    (["logger.wandb.mode=${oc.env:NOPE}"], "logger.wandb.mode", "'${oc.env:NOPE}'", "cannot be resolved"),
    (["algo.mode=???"], "algo.mode", "'???'", "must be set"),
    # values of the right type that cannot work (experiments.config.validate)
    (["algo.lr=-1"], "algo.lr", "-1.0", "must be a finite number > 0"),
    (["eval.interval=0"], "eval.interval", "0", "must be a positive integer"),
    (["algo=single", "backend=simulated"], "backend", "'simulated'", "algo=single has no workers to simulate"),
    (["algo=a3c", "backend=simulated", "sim.straggler_fraction=2"], "sim.straggler_fraction", "2.0",
     "must be a probability"),
    (["algo=a3c", "backend=simulated", "resume=true"], "resume", "True", "is checkpointed at its end only"),
    (["eval.episodes=-1"], "eval.episodes", "-1", "must be >= 0 (0: no evaluation)"),
    (["env.id=CartPol-v1"], "env.id", "'CartPol-v1'", "did you mean CartPole-v1"),
    (["algo=a3c", "algo.staleness.delay=2"], "algo.staleness.delay", "2", "needs algo.lock=true"),
    (["algo=a2c", "algo.epochs=4"], "algo.epochs", "4", "is an algo=ppo and algo=appo setting"),
    (["algo=ppo", "algo.minibatches=3"], "algo.minibatches", "3",
     "must split a batch of algo.num_envs * algo.n_steps = 512 transitions into equal minibatches"),
    (["algo=ppo", "algo.clip_range=-0.1"], "algo.clip_range", "-0.1", "must be a finite number > 0"),
    (["algo=ppo", "algo.target_kl=0"], "algo.target_kl", "0.0", "must be > 0"),
    (["algo=a2c", "backend=ray"], "algo.mode", "'vector'", "with backend=ray use algo.mode=workers"),
    (["-m", "seed=0,1", "algo.lr=0.001,fast"], "algo.lr", "'fast'", "must be a float"),
    (["-m", "+experiment=staleness", "algo.staleness.delay=-1"], "algo.staleness.delay", "-1", "must be >= 0"),
]


def check(arguments: list[str]) -> None:
    check_command_line(arguments)
    if "-m" in arguments:
        compose_jobs([argument for argument in arguments if argument != "-m"])


@pytest.mark.parametrize("arguments, key, value, reason", BAD_INPUTS, ids=[" ".join(row[0]) for row in BAD_INPUTS])
def test_bad_input_names_the_key_and_the_value(arguments, key, value, reason, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        check(arguments)
    error = raised.value
    assert error.key == key
    assert str(error).startswith(f"{key}={value}: ")
    assert reason in error.reason and "\n" not in str(error)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_job_of_a_multirun_is_named(capsys):
    with pytest.raises(SystemExit) as exit_, exit_on_config_error():
        check(["-m", "seed=0,1", "algo.lr=0.001,fast", "hydra.sweep.dir=elsewhere"])
    assert exit_.value.code == 2
    line = "error: invalid config (job seed=0 algo.lr=fast): algo.lr='fast': must be a float\n"
    assert capsys.readouterr().err == line


@pytest.mark.parametrize("arguments", [
    ["--help"],
    ["--cfg", "job", "hydra.run.dir=somewhere"],
    ["++algo.lr=0.01", "+cpu_budget=2"],
    ["algo=a3c", "+algo.staleness.max=3", "model.hidden_sizes.0=32"],
    ["+schedule=a2c_workers"],
    ["+experiment=demo"],
    ["-m", "+schedule=a3c_hogwild,single", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
])
def test_good_input_passes(arguments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(arguments)
    assert list(tmp_path.iterdir()) == []


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


TRAIN = [sys.executable, "-m", "experiments.train"]
SVRL_TRAIN = Path(sys.executable).parent / "svrl-train"


@pytest.mark.parametrize("command, line", [
    (TRAIN + ["algo.lr=fast"], "algo.lr='fast': must be a float"),
    (TRAIN + ["total_env_steps=1e5"], "total_env_steps=100000.0: must be an integer; write 100000"),
    (TRAIN + ["+algo.lrr=0.1"], "algo.lrr=0.1: algo has no key lrr; did you mean lr?"),
    (TRAIN + ["+foo=bar"], "foo='bar': the config has no key foo"),
    (TRAIN + ["algo=trpo"], f"algo='trpo': no such algo config; {ALGOS}"),
    (TRAIN + ["seed=[1,2"], "seed='[1,2': is not a valid override"),
    (TRAIN + ["algo.lr=-1"], "algo.lr=-1.0: must be a finite number > 0"),
    (TRAIN + ["-m", "seed=0,1", "algo.lr=0.001,fast"], "(job seed=0 algo.lr=fast): algo.lr='fast': must be a float"),
    ([str(SVRL_TRAIN), "resume=maybe"], "resume='maybe': must be a boolean (true or false)"),
    ([sys.executable, "-m", "experiments.plan", "+experiment=nope"], "experiment='nope': no such experiment config"),
], ids=["type", "int", "plus-key", "plus-top-key", "group", "syntax", "semantic", "multirun", "svrl-train", "plan"])
def test_the_command_line_prints_one_line_exits_2_and_creates_nothing(command, line, tmp_path):
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed")
    result = run(command, tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: invalid config")
    assert line in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run or sweep directory, no outputs/, no W&B run


def test_refusing_bad_input_loads_no_torch():
    """The command line's error path stays fast: torch (about 2 s to import) loads only when a run trains."""
    probe = "import sys, experiments.train; sys.exit('torch' in sys.modules)"
    assert run([sys.executable, "-c", probe], ROOT).returncode == 0
