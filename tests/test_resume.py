"""Resume equivalence: a single-process run stopped at any update and resumed is the uninterrupted run.

The stop is a real SIGINT sent to this process from inside the record at a chosen update; the record's
own handler turns it into a stop after that update, as it does for Ctrl-C at a terminal. Parameters,
optimizer state and every record file (but wall-clock columns) must then be equal, bit for bit, to a run
that was never stopped; for envs that cannot be saved the resume starts fresh episodes and says which
partial episodes it dropped.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.record import RunRecord
from tests.conftest import read_csv, read_meta, train_run

WALL_CLOCK = {"wall_time", "sps"}
RECORD_FILES = ("metrics.csv", "updates.csv", "episodes.csv")


def interrupt_at(monkeypatch: pytest.MonkeyPatch, update: int) -> None:
    """SIGINT this process once the record has logged ``update`` updates."""
    record_update = RunRecord.update

    def update_then_interrupt(self: RunRecord, *args, **kwargs) -> None:
        record_update(self, *args, **kwargs)
        if self.updates == update:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunRecord, "update", update_then_interrupt)


def records(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    return {name: [{key: value for key, value in row.items() if key not in WALL_CLOCK}
                   for row in read_csv(run_dir / name)] for name in RECORD_FILES}


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def assert_identical(first, second) -> None:
    """Equal nests of dicts, sequences, tensors and arrays, value for value."""
    if isinstance(first, torch.Tensor | np.ndarray):
        assert type(first) is type(second) and first.shape == second.shape and (first == second).all()
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_identical(first[key], second[key])
    elif isinstance(first, list | tuple):
        assert len(first) == len(second)
        for one, other in zip(first, second, strict=True):
            assert_identical(one, other)
    else:
        assert first == second


def stopped_and_resumed(run_dir: Path, monkeypatch: pytest.MonkeyPatch, stops: list[int], *overrides: str) -> None:
    for stop in stops:
        with monkeypatch.context() as patch:
            interrupt_at(patch, stop)
            assert train_run(run_dir, *overrides, f"resume={run_dir.exists()}").status == "interrupted"
    assert train_run(run_dir, *overrides, "resume=true").status == "completed"


SETTINGS = {
    # single: CartPole's episodes run across the stops; checkpoints fall between the log rows.
    "single": ["algo=single", "env=cartpole", "total_env_steps=1500", "log_interval=200",
               "checkpoint_interval=350"],
    # a2c vector with normalized observations and rewards: their running statistics and discounted returns.
    "a2c_vector_normalized": ["algo=a2c", "algo.mode=vector", "algo.num_envs=4", "env=pendulum",
                              "total_env_steps=1600", "log_interval=320", "checkpoint_interval=640"],
    # a2c vector on MinAtar: the CNN over uint8 grids, sticky actions and difficulty ramping in the envs' state.
    "a2c_vector_minatar": ["algo=a2c", "algo.mode=vector", "algo.num_envs=2", "env=minatar_breakout",
                           "total_env_steps=600", "log_interval=100", "checkpoint_interval=250"],
    # ppo: several shuffled minibatch steps per batch (torch's generator), stops between batches.
    "ppo": ["algo=ppo", "env=cartpole", "algo.n_steps=16", "total_env_steps=1280", "log_interval=256",
            "checkpoint_interval=512"],
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_stopped_and_resumed_run_equals_the_uninterrupted_run(tmp_path, monkeypatch, setting):
    overrides = SETTINGS[setting]
    train_run(tmp_path / "straight", *overrides)
    # Stops after the first update, mid-interval, and at an update that is also a log row.
    updates = len(read_csv(tmp_path / "straight" / "updates.csv"))
    stops = [1, updates // 3 + 1, 2 * updates // 3]
    stopped_and_resumed(tmp_path / "stopped", monkeypatch, stops, *overrides)

    assert read_meta(tmp_path / "stopped")["resumed_at_env_steps"] != []
    assert records(tmp_path / "stopped") == records(tmp_path / "straight")
    straight, stopped = final_state(tmp_path / "straight"), final_state(tmp_path / "stopped")
    for part in ("model", "optimizer", "env_steps", "policy_version", "rng"):
        assert_identical(stopped[part], straight[part])
    events = [json.loads(line)["event"] for line in (tmp_path / "stopped" / "events.jsonl").read_text().splitlines()]
    assert events.count("resumed") == len(stops) and "partial_episodes_dropped" not in events


def test_envs_that_cannot_be_saved_start_fresh_episodes_and_the_record_names_the_dropped_ones(tmp_path, monkeypatch):
    """LunarLander's Box2D world cannot be pickled: the resume says which partial episodes it dropped."""
    run_dir = tmp_path / "run"
    overrides = ["algo=a2c", "algo.mode=vector", "algo.num_envs=2", "env=lunarlander", "algo.n_steps=5",
                 "total_env_steps=200", "log_interval=100", "checkpoint_interval=100"]
    stopped_and_resumed(run_dir, monkeypatch, [3], *overrides)
    saved = final_state(run_dir)
    assert saved["collectors"][0]["envs"] is None
    entries = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    [dropped] = [entry for entry in entries if entry["event"] == "partial_episodes_dropped"]
    assert dropped["env_steps"] == 30
    assert [(episode["worker"], episode["env"], episode["length"]) for episode in dropped["episodes"]] == [
        (0, 0, 15), (0, 1, 15)]
    assert "could not be saved" in dropped["reason"]
