"""Faults of the run record, made for real: damaged checkpoints on disk, a non-finite checkpoint, W&B online
with no API key and with no network, a full disk (a real tmpfs), a file that cannot be opened. Each must end
with a true status in meta.json, one line saying what went wrong, whole rows, and a resume that continues."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from algorithms.infra.checkpoint import CheckpointRefused, read_checkpoint, write_checkpoint
from experiments.columns import RECORD_COLUMNS
from experiments.record import RunFailed, RunRecord
from experiments.sweep import run_sweep_job
from experiments.train import train
from tests.conftest import compose_config, read_csv, read_meta, train_run
from tests.processes import ROOT, cli, events

GRID = ["algo=single", "log_interval=100", "checkpoint_interval=300"]


def steps(run_dir: Path) -> list[int]:
    return [int(row["env_steps"]) for row in read_csv(run_dir / "metrics.csv")]


def assert_whole_and_contiguous(run_dir: Path, total: int, log_interval: int) -> None:
    """Every line complete, metrics exactly on the grid up to the budget, every update once, in order."""
    for name, columns in RECORD_COLUMNS.items():
        text = (run_dir / f"{name}.csv").read_text()
        assert text.endswith("\n") and all(line.count(",") == len(columns) - 1 for line in text.splitlines())
    assert steps(run_dir) == list(range(log_interval, total + 1, log_interval))
    updates = [int(row["update"]) for row in read_csv(run_dir / "updates.csv")]
    assert updates == list(range(1, total // 5 + 1))
    assert read_csv(run_dir / "metrics.csv")[-1]["updates"] == str(total // 5)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed run whose budget (1050) is off the grid: last.pt at 1050, prev.pt at 900."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_run(run_dir, *GRID, "total_env_steps=1050")
    return run_dir


def test_each_save_keeps_the_previous_checkpoint_and_the_budget_row_ends_the_run(finished):
    assert read_checkpoint(finished / "checkpoints" / "last.pt")["env_steps"] == 1050
    assert read_checkpoint(finished / "checkpoints" / "prev.pt")["env_steps"] == 900
    assert steps(finished) == [*range(100, 1001, 100), 1050]
    assert not (finished / ".meta_reserve").exists()


DAMAGE = {"empty": lambda data: b"", "garbage": lambda data: b"not a checkpoint\n" * 10,
          "truncated": lambda data: data[: len(data) // 2],
          "missing": None}  # as a kill between the two renames of a save leaves it


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_last_checkpoint_is_named_in_one_line_and_resume_falls_back_to_prev(
        finished, tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if DAMAGE[damage] is None:
        last.unlink()
    else:
        last.write_bytes(DAMAGE[damage](last.read_bytes()))
    capsys.readouterr()
    record = train_run(run_dir, *GRID, "total_env_steps=1500", "resume=true")
    (warning,) = capsys.readouterr().err.strip().splitlines()
    named = f"{last} does not exist" if DAMAGE[damage] is None else f"{last}: cannot be read ("
    assert warning.startswith(f"warning: {named}")
    assert warning.endswith(f"; resuming from {run_dir / 'checkpoints' / 'prev.pt'}")
    assert record.status == "completed" and read_meta(run_dir)["resumed_at_env_steps"] == [900]
    assert_whole_and_contiguous(run_dir, 1500, 100)  # rows after prev.pt's point were dropped


def test_with_no_valid_checkpoint_the_run_fails_and_a_sweep_rerun_starts_it_afresh(finished, tmp_path):
    run_dir = tmp_path / "sweep" / "job"
    shutil.copytree(finished, run_dir)
    for name in ("last.pt", "prev.pt"):
        (run_dir / "checkpoints" / name).write_bytes(b"")
    meta = read_meta(run_dir)
    (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "running"}))  # as a SIGKILL leaves it
    cfg = compose_config(*GRID, "total_env_steps=1050")
    assert run_sweep_job(cfg, run_dir, run_dir.parent, "job", [], train) == "failed"
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"] == (
        f"resume=true but no checkpoint can be resumed: {run_dir}/checkpoints/last.pt: cannot be read (the file "
        f"is empty); {run_dir}/checkpoints/prev.pt: cannot be read (the file is empty)")
    assert events(run_dir)[-1]["event"] == "failed"
    assert run_sweep_job(cfg, run_dir, run_dir.parent, "job", [], train) == "completed"
    assert read_meta(run_dir)["resumed_at_env_steps"] == []
    assert steps(run_dir) == [*range(100, 1001, 100), 1050]


def test_resuming_a_completed_run_trains_nothing_and_keeps_its_rows(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = {name: read_csv(run_dir / f"{name}.csv") for name in ("episodes", "updates")}
    record = train_run(run_dir, *GRID, "total_env_steps=1050", "resume=true")
    assert record.status == "completed" and record.updates == 210
    assert steps(run_dir) == [*range(100, 1001, 100), 1050]
    assert all(read_csv(run_dir / f"{name}.csv") == rows for name, rows in before.items())


@pytest.mark.parametrize(("part", "poison", "where"), [
    ("model", lambda state: state["model"]["actor.0.bias"].fill_(float("nan")), "actor.0.bias: nan"),
    ("optimizer", lambda state: state["optimizer"]["state"][0]["square_avg"].fill_(float("inf")),
     "state.0.square_avg: inf"),
])
def test_a_non_finite_checkpoint_is_refused_logged_and_both_files_kept(finished, tmp_path, part, poison, where):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    files = {name: (run_dir / "checkpoints" / name).read_bytes() for name in ("last.pt", "prev.pt")}
    state = read_checkpoint(run_dir / "checkpoints" / "last.pt")
    poison(state)
    with pytest.raises(CheckpointRefused, match=re.escape(f"checkpoint part '{part}' holds a non-finite value")):
        write_checkpoint(tmp_path / "elsewhere.pt", state)
    assert not list(tmp_path.glob("elsewhere*"))
    with RunRecord(run_dir, compose_config(*GRID, "total_env_steps=1050", "resume=true")) as record:
        record.save_checkpoint({name: value for name, value in state.items() if name != "record"})
    refused = [entry for entry in events(run_dir) if entry["event"] == "checkpoint_refused"]
    assert [(entry["part"], entry["reason"]) for entry in refused] == [(part, f"holds a non-finite value ({where})")]
    assert record.status == "completed"
    assert {name: (run_dir / "checkpoints" / name).read_bytes() for name in files} == files


def test_after_a_divergence_the_final_checkpoint_is_refused_and_the_divergence_reported(run_dir):
    hogwild = ["algo=a3c", "algo.num_workers=1", "log_interval=100", "checkpoint_interval=100"]
    train_run(run_dir, *hogwild, "total_env_steps=300")
    good = (run_dir / "checkpoints" / "last.pt").read_bytes()
    # A step that overflows float32: the resumed run's first update makes the parameters infinite.
    with pytest.raises(RuntimeError, match="non-finite"):
        train_run(run_dir, *hogwild, "total_env_steps=600", "resume=true", "algo.lr=3e38", "resume_accept_changes=true")
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and "non-finite" in meta["error"]
    assert [entry["part"] for entry in events(run_dir) if entry["event"] == "checkpoint_refused"] == ["model"]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == good


# --------------------------------------------------------------------------- the metrics grid
def test_a_metrics_row_waits_until_every_worker_of_a_synchronous_update_is_recorded(run_dir):
    """Fed as a2c's trainer records its updates: one call per worker, all at the update's env steps."""
    with RunRecord(run_dir, compose_config("log_interval=100", "total_env_steps=600")) as record:
        for version in range(60):  # two workers of 5 env steps each: 10 steps per update
            for worker in (0, 1):
                record.update(worker, (version + 1) * 10, version, version, applied=True, lr=7e-4)
    rows = read_csv(run_dir / "metrics.csv")
    assert steps(run_dir) == list(range(100, 601, 100))
    assert [(int(row["updates"]), int(row["policy_version"])) for row in rows] == [
        (20 * row, 10 * row) for row in range(1, 7)]


# --------------------------------------------------------------------------- files that cannot be written
def test_a_file_that_cannot_be_opened_fails_the_run_and_says_which(run_dir):
    (run_dir / "updates.csv").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        train_run(run_dir, *GRID, "total_env_steps=300")
    meta = read_meta(run_dir)
    assert meta["status"] == "failed"
    assert meta["error"] == f"IsADirectoryError: [Errno 21] Is a directory: '{run_dir / 'updates.csv'}'"
    assert events(run_dir)[-1]["event"] == "failed"


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs; the tests run as root here and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill_after_rows(run_dir: Path, rows: int, filler: Path) -> None:
    """Once the run has ``rows`` metrics rows, write zeros to ``filler`` until the filesystem is full."""
    deadline = time.monotonic() + 120
    while not ((run_dir / "metrics.csv").exists() and len(read_csv(run_dir / "metrics.csv")) >= rows):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with open(filler, "wb", buffering=0) as handle:
        chunk = bytes(1 << 16)
        while chunk:
            try:
                handle.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]


def test_a_full_disk_fails_the_run_naming_the_file_keeps_whole_rows_and_resume_continues(small_disk, capsys):
    run_dir, filler = small_disk / "run", small_disk / "filler"
    args = ["algo=single", "log_interval=500", "checkpoint_interval=1000"]
    filling = threading.Thread(target=fill_after_rows, args=(run_dir, 3, filler), daemon=True)
    filling.start()
    with pytest.raises(RunFailed) as failure:
        train_run(run_dir, *args, "total_env_steps=50000")  # the disk fills long before the budget
    filling.join()
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"] == str(failure.value)
    assert re.fullmatch(rf"OSError: \[Errno 28\] No space left on device: '{re.escape(str(run_dir))}/[^']+'",
                        meta["error"])
    assert f"failed ({meta['error']})" in capsys.readouterr().out
    for name, columns in RECORD_COLUMNS.items():  # no torn line, in any file
        text = (run_dir / f"{name}.csv").read_text()
        assert text.endswith("\n") and all(line.count(",") == len(columns) - 1 for line in text.splitlines())
    assert all(isinstance(entry, dict) for entry in events(run_dir))
    assert not (run_dir / ".meta_reserve").exists()  # freed to write meta.json, then removed

    filler.unlink()
    total = (read_checkpoint(run_dir / "checkpoints" / "last.pt")["env_steps"] // 500 + 3) * 500
    assert train_run(run_dir, *args, "resume=true", f"total_env_steps={total}").status == "completed"
    assert_whole_and_contiguous(run_dir, total, 500)


# --------------------------------------------------------------------------- W&B online without W&B
def no_wandb_credentials(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a machine that never logged in to W&B (a fresh home, no WANDB_* variables)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    return {**env, "HOME": str(home), **extra}


WANDB_ONLINE = ["algo=single", "total_env_steps=500", "log_interval=250", "quiet=true", "logger.wandb.mode=online"]


def run_online(tmp_path: Path, *overrides: str, **env: str) -> tuple[Path, subprocess.CompletedProcess, float]:
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = subprocess.run(cli(*WANDB_ONLINE, *overrides, f"hydra.run.dir={run_dir}"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**no_wandb_credentials(tmp_path), "PYTHONPATH": str(ROOT), **env})
    return run_dir, result, time.monotonic() - started


def wandb_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "W&B" in line or "wandb" in line.lower()]


def test_wandb_online_without_a_network_says_so_in_one_line_and_mirrors_offline(tmp_path):
    # A key of the right form: W&B tries its server until WANDB_INIT_TIMEOUT (10 s by default) runs out.
    run_dir, result, seconds = run_online(tmp_path, WANDB_API_KEY="0" * 40, WANDB_INIT_TIMEOUT="3")
    assert result.returncode == 0, result.stderr
    (line,) = wandb_lines(result.stderr)
    assert line.startswith("warning: W&B online mode cannot start (") and line.endswith("; mirroring offline instead")
    meta = read_meta(run_dir)
    assert meta["status"] == "completed"
    assert (meta["wandb"]["mode"], meta["wandb"]["requested"]) == ("offline", "online")
    assert meta["wandb"]["fallback_reason"].startswith("online: CommError: ")
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert seconds < 60  # on a slow, busy machine; W&B's default timeout held it 95 s


def test_wandb_online_without_an_api_key_and_fallback_fail_fails_the_run_in_one_line(tmp_path):
    run_dir, result, _ = run_online(tmp_path, "logger.wandb.fallback=fail")
    assert result.returncode == 1
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"] == (
        "W&B online mode cannot start (no W&B API key: set WANDB_API_KEY or run `wandb login`) and "
        "logger.wandb.fallback=fail")
    assert events(run_dir)[-1]["event"] == "failed" and steps(run_dir) == []


# --------------------------------------------------------------------------- the W&B mirror during a run
def record_updates(record: RunRecord, versions: range, lag: int) -> None:
    """One worker's 5-step updates, each applied ``lag`` versions after the one it synced to (or at once)."""
    for version in versions:
        record.update(0, (version + 1) * 5, max(0, version - lag), version, applied=True, lr=7e-4)


def test_staleness_past_wandb_s_histogram_limit_is_binned_and_mirrored(run_dir, capsys):
    with RunRecord(run_dir, compose_config("log_interval=500", "total_env_steps=5000",
                                           "logger.wandb.mode=offline")) as record:
        record_updates(record, range(1000), lag=700)  # 701 staleness values: more than W&B's 512 bins
    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and "dropped" not in meta["wandb"]
    assert max(float(row["staleness_max"]) for row in read_csv(run_dir / "metrics.csv")) == 700
    assert "W&B" not in capsys.readouterr().err


def test_a_wandb_mirror_that_fails_mid_run_is_dropped_in_one_line_and_the_record_stays_whole(run_dir, capsys):
    with RunRecord(run_dir, compose_config("log_interval=100", "total_env_steps=1000",
                                           "logger.wandb.mode=offline")) as record:
        record_updates(record, range(100), lag=0)
        record.wandb_run.finish()  # the W&B run ends under the record: its next log raises
        record_updates(record, range(100, 200), lag=0)
    meta = read_meta(run_dir)
    assert meta["status"] == "completed" and meta["wandb"]["dropped"].startswith("at env step 500: UsageError")
    assert steps(run_dir) == list(range(100, 1001, 100))
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert line.startswith("warning: W&B logging failed at env step 500 (UsageError")
