"""Every schedule trains on the pixel suites (MinAtar grids, Atari frame stacks) from the real command line:
the run completes with a CNN, every update a row, and MinAtar's games recorded."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from tests.conftest import read_csv, read_meta
from tests.processes import ROOT, cli
from tests.test_ray import WORKERS as RAY_WORKERS

SCHEDULES = {
    "single": ["algo=single"],
    "a2c-vector": ["algo=a2c", "algo.num_envs=2"],
    "a2c-workers": ["algo=a2c", "algo.mode=workers", "algo.num_workers=2", "algo.num_envs=1"],
    "a3c-hogwild": ["algo=a3c", "algo.num_workers=2"],
    "a3c-parameter-server": ["algo=a3c", "algo.mode=parameter_server", "algo.num_workers=2"],
    "ray-a2c-workers": [*RAY_WORKERS, "algo.num_workers=2", "ray.num_cpus=2"],
}
SUITES = {  # env, env steps: MinAtar Breakout's random games end within about 10 steps; Pong's take thousands
    "minatar": ("minatar_breakout", 200),
    "atari": ("atari_pong", 60),
}


# Every schedule on MinAtar; on Atari the one-process schedules and Hogwild's spawned workers, which build the
# ALE stack in processes of their own (the other multi-process schedules build theirs the same way).
CASES = [*[(name, "minatar") for name in SCHEDULES], *[(name, "atari") for name in ("single", "a2c-vector",
                                                                                   "a3c-hogwild")]]


@pytest.mark.parametrize(("schedule", "suite"), [
    pytest.param(*case, marks=pytest.mark.slow) if case[0].startswith("ray") else case for case in CASES])
def test_every_schedule_trains_on_the_pixel_suites(tmp_path, schedule, suite):
    env, steps = SUITES[suite]
    run_dir = tmp_path / "run"
    done = subprocess.run(cli(*SCHEDULES[schedule], f"env={env}", f"total_env_steps={steps}", "log_interval=20",
                              "quiet=true", "logger.wandb.mode=disabled", f"hydra.run.dir={run_dir}"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert read_meta(run_dir)["status"] == "completed"
    updates = read_csv(run_dir / "updates.csv")
    assert updates and int(updates[-1]["env_steps"]) >= steps
    model = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert any(name.endswith("0.weight") and tensor.dim() == 4 for name, tensor in model.items())  # a CNN learned
    if suite == "minatar":
        assert read_csv(run_dir / "episodes.csv"), "random MinAtar Breakout games end within the budget"
