"""The checkpoint format: written and read in one place, and every bad part refused by name."""

from __future__ import annotations

import pytest
import torch

from algorithms.infra.checkpoint import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint, write_checkpoint
from tests.conftest import train_run

FAST = ["env=cartpole", "total_env_steps=300", "checkpoint_interval=100", "log_interval=100"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A real single-worker checkpoint, read back through the format's reader."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    train_run(run_dir, "algo=single", *FAST)
    return read_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_a_run_writes_every_part_of_the_format(saved):
    assert saved["format"] == CHECKPOINT_FORMAT
    assert (saved["env_steps"], saved["policy_version"]) == (300, 60)
    assert len(saved["collectors"]) == 1 and saved["rng"] is not None and saved["snapshots"] is None
    assert saved["record"]["env_steps"] == 300


def test_a_written_checkpoint_reads_back_equal(saved, tmp_path):
    path = tmp_path / "copy.pt"
    write_checkpoint(path, saved)
    again = read_checkpoint(path)
    assert again.keys() == saved.keys()
    for name, tensor in saved["model"].items():
        assert torch.equal(again["model"][name], tensor)
    assert not path.with_suffix(".tmp").exists()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda state: state.pop("collectors"), "has no part 'collectors'"),
    (lambda state: state.update(env_steps="300"), "checkpoint part 'env_steps' is a str"),
    (lambda state: state.update(format=CHECKPOINT_FORMAT + 1), f"checkpoint format {CHECKPOINT_FORMAT + 1}"),
    (lambda state: state.pop("format"), "checkpoint format None"),
])
def test_a_checkpoint_missing_or_mistyping_a_part_is_refused_naming_it(saved, tmp_path, damage, message):
    state = dict(saved)
    damage(state)
    path = tmp_path / "last.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"^{path}: .*{message}"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        write_checkpoint(tmp_path / "other.pt", state)


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_an_unreadable_file_is_refused_naming_it(saved, tmp_path, content):
    path = tmp_path / "last.pt"
    write_checkpoint(path, saved)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(CheckpointError, match=f"^{path}: cannot be read"):
        read_checkpoint(path)


def resume(run_dir, *overrides: str):
    return train_run(run_dir, *FAST, "resume=true", "total_env_steps=400", *overrides)


@pytest.mark.parametrize(("first", "then", "message"), [
    (["algo=single"], ["algo=single", "model.hidden_sizes=[32,32]"],
     r"checkpoint part 'model' does not fit this run's model: actor.0.bias is \(64,\) in the checkpoint, \(32,\) here"),
    (["algo=a2c", "algo.mode=workers", "algo.num_workers=2"], ["algo=a2c", "algo.mode=workers", "algo.num_workers=3"],
     r"checkpoint part 'collectors' holds the state of 2 workers' collectors; it cannot resume with "
     r"algo.num_workers=3"),
    (["algo=a3c", "algo.mode=parameter_server", "algo.staleness.delay=2"],
     ["algo=a3c", "algo.mode=parameter_server", "algo.staleness.delay=3"],
     r"checkpoint part 'snapshots' holds 3 parameter versions; algo.staleness.delay=3 needs 4"),
])
def test_a_part_that_does_not_fit_the_resumed_run_is_refused_naming_it(tmp_path, first, then, message):
    """The checkpoint's own check, behind the record's refusal of a changed experiment (tests/test_integrity.py):
    a deliberate change that the checkpoint cannot take is still refused, naming the part."""
    run_dir = tmp_path / "run"
    train_run(run_dir, *FAST, *first)
    with pytest.raises(CheckpointError, match=message):
        resume(run_dir, *then, "resume_accept_changes=true")
