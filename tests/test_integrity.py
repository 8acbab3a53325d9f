"""Run integrity, made for real: two processes racing for one run directory (runs and sweeps), a resume per kind
of difference, torn tails in every line file, a read-only file system (a bind mount), a directory that vanishes
mid-run, and failures that read as one line. Each must leave a record that is what it says it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from experiments.admission import experiment_changes
from experiments.columns import RECORD_COLUMNS
from tests.conftest import TEST_DEFAULTS, built_once, read_csv, read_meta, train_run
from tests.processes import ROOT, cli, events, start_cli, wait_for_rows

SINGLE = ["algo=single", "log_interval=500", "checkpoint_interval=1000", "total_env_steps=3000"]
HOGWILD = ["algo=a3c", "algo.mode=hogwild", "algo.num_workers=2", "log_interval=200", "checkpoint_interval=400",
           "total_env_steps=600"]
SINGLE_FAST = ["algo=single", "log_interval=500", *TEST_DEFAULTS]
LONG = [*SINGLE_FAST, "total_env_steps=2000000"]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def copy_of(built: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(built, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "integrity_single", lambda path: train_run(path, *SINGLE))


@pytest.fixture(scope="module")
def hogwild_run(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "integrity_hogwild", lambda path: train_run(path, *HOGWILD))


# --------------------------------------------------------------------------- one writer per run directory
@pytest.mark.slow
def test_a_second_writer_is_refused_before_it_touches_a_file_and_a_killed_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    first = start_cli(tmp_path, *LONG, "checkpoint_interval=1000", f"hydra.run.dir={run_dir}")
    try:
        wait_for_rows(run_dir, 3, first)
        hydra_files = {path: path.read_bytes() for path in (run_dir / ".hydra").iterdir()}
        second = run_cli(*LONG, "checkpoint_interval=1000", "algo.lr=0.1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert second.returncode == 2 and second.stdout == ""
        assert second.stderr.strip().splitlines() == [
            f"error: hydra.run.dir='{run_dir}': another run is writing into it (pid {first.pid} on "
            f"{os.uname().nodename}); wait for it to end, or give this run another directory"]
        assert {path: path.read_bytes() for path in (run_dir / ".hydra").iterdir()} == hydra_files
    finally:
        first.kill()  # a SIGKILL: its lock dies with it
        first.wait(timeout=30)
    # A new budget is harmless under single's constant learning rate.
    resumed = run_cli(*SINGLE_FAST, "checkpoint_interval=1000", "total_env_steps=6000", "resume=true",
                      f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "metrics.csv").read_text().count("env_steps,") == 1  # one header: one writer
    assert [entry["event"] for entry in events(run_dir)].count("completed") == 1


@pytest.mark.slow
def test_a_sweep_skips_the_jobs_another_sweep_is_running_and_says_so(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep = [sys.executable, "-m", "experiments.train", "-m", *LONG, "seed=0", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(sweep, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job_dir = next(iter(wait_for_job(sweep_dir, first)))
        wait_for_rows(job_dir, 2, first)
        second = subprocess.run(sweep, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert f"skipped (another process is running it): hydra.run.dir='{job_dir}'" in second.stdout
        assert json.loads((sweep_dir / "sweep_summary.json").read_text())["counts"]["busy"] == 1
        assert read_meta(job_dir)["status"] == "running" and first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=30)


def wait_for_job(sweep_dir: Path, process: subprocess.Popen) -> Iterator[Path]:
    while process.poll() is None:
        yield from (path.parent for path in sweep_dir.glob("*/meta.json"))
    raise AssertionError("the sweep ended before its job started")


# --------------------------------------------------------------------------- a resume is the same experiment
CHANGES = {  # the kind of difference: the base run, the resume's overrides, what the refusal must name
    "hyperparameter": ("single", ["algo.lr=0.001"], "algo.lr 0.0007 -> 0.001"),
    "seed": ("single", ["seed=1"], "seed 0 -> 1"),
    "env with the same spaces": ("single", ["env.id=tests.exploding_env:ExplodingCartPole-v0"],
                                 "env.id 'CartPole-v1' -> 'tests.exploding_env:ExplodingCartPole-v0'"),
    "env with other spaces": ("single", ["env=acrobot"], "env.id 'CartPole-v1' -> 'Acrobot-v1'"),
    "model": ("single", ["model.hidden_sizes=[32,32]"], "model.hidden_sizes [64, 64] -> [32, 32]"),
    "algorithm": ("single", ["algo=a2c", "algo.mode=vector"], "algo.name 'single' -> 'a2c'"),
    "more workers": ("hogwild", ["algo.num_workers=3"], "algo.num_workers 2 -> 3"),
    "fewer workers": ("hogwild", ["algo.num_workers=1"], "algo.num_workers 2 -> 1"),
    "envs per worker": ("hogwild", ["algo.num_envs=2"], "algo.num_envs 1 -> 2"),
}


@pytest.mark.parametrize("kind", CHANGES)
def test_a_resume_that_changes_the_experiment_is_refused_naming_each_key(kind, single_run, hogwild_run, tmp_path):
    base, changes, named = CHANGES[kind]
    run_dir = copy_of(single_run if base == "single" else hogwild_run, tmp_path)
    meta = (run_dir / "meta.json").read_bytes()
    result = run_cli(*(SINGLE if base == "single" else HOGWILD), *TEST_DEFAULTS, "resume=true", *changes,
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: resume=true: the experiment differs from the one recorded in {run_dir}/meta.json")
    assert named in line and line.endswith("(resume_accept_changes=true resumes with them, and the record keeps them)")
    assert (run_dir / "meta.json").read_bytes() == meta and not (run_dir / ".hydra").exists()  # nothing written


@pytest.mark.parametrize(("schedule", "harmless"), [("constant", True), ("linear", False)])
def test_a_new_budget_is_harmless_only_under_a_constant_learning_rate(schedule, harmless):
    """A linear schedule anneals to zero at the budget: every step after the resume would change."""
    recorded, new = ({"algo": {"lr_schedule": schedule}, "total_env_steps": steps} for steps in (3000, 6000))
    assert experiment_changes(recorded, new) == (({"total_env_steps": [3000, 6000]}, {}) if harmless else
                                                 ({}, {"total_env_steps": [3000, 6000]}))


@pytest.mark.slow
def test_harmless_changes_are_listed_an_accepted_change_is_recorded_and_the_first_command_kept(single_run, tmp_path):
    run_dir = copy_of(single_run, tmp_path)
    first_command = read_meta(run_dir)["command"]
    harmless = run_cli(*SINGLE, *TEST_DEFAULTS, "resume=true", "quiet=false", "logger.wandb.mode=offline",
                       "eval.interval=1000", "checkpoint_interval=500", "total_env_steps=3500",
                       f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert harmless.returncode == 0, harmless.stderr
    resumed = [entry for entry in events(run_dir) if entry["event"] == "resumed"]
    assert resumed[-1]["harmless_changes"] == {"checkpoint_interval": [1000, 500], "eval.interval": [None, 1000],
                                               "logger.wandb.mode": ["disabled", "offline"], "quiet": [True, False],
                                               "total_env_steps": [3000, 3500]}
    assert resumed[-1]["accepted_changes"] == {} and resumed[-1]["config_checked"] is True

    accepted = run_cli(*SINGLE, *TEST_DEFAULTS, "total_env_steps=3500", "resume=true", "resume_accept_changes=true",
                       "algo.lr=0.001", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert "resuming with a changed experiment (resume_accept_changes=true): algo.lr 0.0007 -> 0.001" in accepted.stderr
    meta = read_meta(run_dir)
    assert meta["command"] == first_command and meta["overrides"] == []  # the original invocation stays
    assert [resume["accepted_changes"] for resume in meta["resumes"]] == [{}, {"algo.lr": [0.0007, 0.001]}]
    assert meta["resumes"][-1]["command"][-2:] == ["algo.lr=0.001", f"hydra.run.dir={run_dir}"]
    assert meta["config"]["algo"]["lr"] == 0.001  # what the run last ran with: the next resume compares with it


# --------------------------------------------------------------------------- torn lines
def test_torn_tails_are_cut_and_reported_and_their_rows_written_again(tmp_path):
    """A run killed after its checkpoint at 2000 env steps, mid-write of each file: the state of a SIGKILL, made
    exactly (the checkpoint before the last, and half of each file's next line)."""
    run_dir = tmp_path / "run"
    evaluated = [*SINGLE, "total_env_steps=2500", "eval.episodes=2", "eval.interval=1000"]
    train_run(run_dir, *evaluated)
    os.replace(run_dir / "checkpoints" / "prev.pt", run_dir / "checkpoints" / "last.pt")  # back at 2000 env steps
    torn = {}
    for name in (*(f"{name}.csv" for name in RECORD_COLUMNS), "events.jsonl"):
        last_line = (run_dir / name).read_text().splitlines()[-1]
        torn[name] = last_line[: len(last_line) // 2]
        with (run_dir / name).open("a") as handle:
            handle.write(torn[name])
    assert train_run(run_dir, *evaluated, "resume=true").status == "completed"
    repairs = {entry["file"]: entry for entry in events(run_dir) if entry["event"] == "record_repaired"}
    assert set(repairs) == set(torn)
    for name, text in torn.items():
        restored = name != "events.jsonl"  # a CSV row past the checkpoint is written again; an event is lost
        assert repairs[name]["bytes_cut"] == len(text.encode()) and repairs[name]["torn_text"] == text
        assert (repairs[name]["rows_restored"], repairs[name]["rows_lost"]) == (int(restored), int(not restored))
    for name, columns in RECORD_COLUMNS.items():
        assert all(line.count(",") == len(columns) - 1 for line in (run_dir / f"{name}.csv").read_text().splitlines())
    assert [int(row["env_steps"]) for row in read_csv(run_dir / "metrics.csv")] == list(range(500, 2501, 500))
    assert [int(row["update"]) for row in read_csv(run_dir / "updates.csv")] == list(range(1, 501))
    assert [int(row["env_steps"]) for row in read_csv(run_dir / "evals.csv")] == [1000, 2000, 2500]
    assert all(isinstance(entry, dict) for entry in events(run_dir))  # every line valid JSON


# --------------------------------------------------------------------------- file systems that fail
@pytest.fixture
def read_only(tmp_path) -> Iterator[Callable[[Path], None]]:
    """Make a directory read-only in place (a read-only bind mount of itself); unmounted afterwards."""
    mounted: list[Path] = []

    def make_read_only(path: Path) -> None:
        for command in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,ro,bind", str(path)]):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot bind-mount here: {result.stderr.strip()}")
            mounted.append(path)

    yield make_read_only
    for path in dict.fromkeys(reversed(mounted)):
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def assert_one_line_failure(result: subprocess.CompletedProcess | tuple[str, str], run_dir: Path) -> str:
    stdout, stderr = (result.stdout, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result
    assert "Traceback" not in stdout + stderr
    [summary] = [line for line in stdout.splitlines() if line.startswith("failed (")]
    assert summary.endswith(f"Run record: {run_dir}")
    return summary


@pytest.mark.slow
def test_a_checkpoint_on_a_read_only_file_system_fails_the_run_in_one_line(tmp_path, read_only):
    run_dir = tmp_path / "run"
    process = start_cli(tmp_path, *LONG, "checkpoint_interval=6000", "logger.wandb.mode=offline",
                        f"hydra.run.dir={run_dir}")
    wait_for_rows(run_dir, 2, process)
    read_only(run_dir / "checkpoints")
    output = process.communicate(timeout=120)
    assert process.returncode == 1
    summary = assert_one_line_failure(output, run_dir)
    assert summary.startswith(f"failed (OSError: [Errno 30] Read-only file system: '{run_dir}/checkpoints/last")
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"] in summary and events(run_dir)[-1]["event"] == "failed"
    assert not (run_dir / ".meta_reserve").exists()


def test_a_run_directory_that_cannot_be_written_is_refused_in_one_line(single_run, tmp_path, read_only):
    run_dir = copy_of(single_run, tmp_path)
    read_only(run_dir)
    result = run_cli(*SINGLE, *TEST_DEFAULTS, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: hydra.run.dir='{run_dir}': cannot be written (Read-only file system)"]


@pytest.mark.slow
def test_a_run_directory_that_vanishes_mid_run_fails_in_one_line_saying_meta_json_cannot_say_so(tmp_path):
    run_dir = tmp_path / "run"
    process = start_cli(tmp_path, *LONG, "checkpoint_interval=6000", f"hydra.run.dir={run_dir}")
    wait_for_rows(run_dir, 2, process)
    shutil.rmtree(run_dir)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert_one_line_failure((stdout, stderr), run_dir)
    assert stderr.strip().splitlines() == [
        f"error: the run failed, but meta.json cannot say so: [Errno 2] No such file or directory: "
        f"'{run_dir}/meta.json.tmp'"]


# --------------------------------------------------------------------------- failures read as one line
EXPLODING = ["env.id=tests.exploding_env:ExplodingCartPole-v0", "log_interval=100", "total_env_steps=5000",
             *TEST_DEFAULTS]


@pytest.mark.slow
def test_a_failed_run_says_why_once_and_shows_its_traceback_only_when_asked(tmp_path):
    quiet = run_cli(*EXPLODING, f"hydra.run.dir={tmp_path / 'quiet'}", cwd=tmp_path)
    assert quiet.returncode == 1
    assert_one_line_failure(quiet, tmp_path / "quiet")
    assert (quiet.stdout + quiet.stderr).count("simulator diverged") == 1
    verbose = run_cli(*EXPLODING, f"hydra.run.dir={tmp_path / 'verbose'}", cwd=tmp_path, env={"SVRL_TRACEBACK": "1"})
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr
