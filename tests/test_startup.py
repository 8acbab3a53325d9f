"""Start-up costs paid once: a process imports only the env packages its env needs (MinAtar without its
plotting libraries, which load on the first render), forked workers start with torch already imported, and the
start-up benchmark times a command line to its first update."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from algorithms.infra.processes import process_context
from experiments.tools.startup import main as startup_main
from tests.processes import ROOT, loaded_modules

OPTIONAL = ("minatar", "ale_py", "mujoco", "seaborn", "matplotlib")
VALIDATE_AND_STEP = f"""
import sys
from experiments.config import validate
from algorithms.core.envs import make_env
from tests.conftest import compose_config
cfg = compose_config("env=" + sys.argv[1])
validate(cfg)
env = make_env(cfg.env)
env.reset(seed=0)
env.step(env.action_space.sample())
print(",".join(name for name in {OPTIONAL!r} if name in sys.modules))
"""
RENDER_MINATAR = f"""
import sys
import gymnasium as gym
from algorithms.core.envs import register_minatar_envs
register_minatar_envs()
env = gym.make("MinAtar/Breakout-v1", render_mode="rgb_array")
env.reset(seed=0)
before = [name for name in {OPTIONAL!r} if name in sys.modules]
frame = env.render()
print(before, frame.shape, "seaborn" in sys.modules)
"""


def python(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout.rstrip("\n").rpartition("\n")[2]


@pytest.mark.parametrize(("env", "imported"), [("cartpole", ""), ("minatar_breakout", "minatar"),
                                               ("atari_pong", "ale_py"), ("hopper", "mujoco")])
def test_a_process_imports_only_the_env_package_its_env_needs(env, imported):
    assert python(VALIDATE_AND_STEP, env) == imported


def test_minatar_renders_with_its_plotting_libraries_loaded_on_the_first_render():
    assert python(RENDER_MINATAR) == "['minatar'] (10, 10, 3) True"


def test_forked_workers_start_with_torch_imported_and_no_optional_env_package():
    context = process_context("forkserver")
    queue = context.Queue()
    worker = context.Process(target=loaded_modules, args=(queue, ("torch", "gymnasium", *OPTIONAL)))
    worker.start()
    try:
        assert queue.get(timeout=60) == ["gymnasium", "torch"]
    finally:
        worker.join(timeout=10)


def test_the_startup_benchmark_times_a_command_line_here_and_in_another_checkout(tmp_path, capsys):
    path = tmp_path / "startup.json"
    startup_main(["--runs", "single", "--repeats", "1", "--against", str(ROOT), "--json", str(path)])
    result = json.loads(path.read_text())
    (here,), (there,) = result["seconds_to_first_update"]["single:serial"].values()
    assert 0 < here < 60 and 0 < there < 60
    assert result["checkouts"]["against"]["dir"] == str(ROOT)
    assert "here/against" in capsys.readouterr().out
