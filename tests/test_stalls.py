"""Workers that hang, injected for real: a worker process SIGSTOPped while the others train is named in a
``worker_stalled`` event and killed, then restarted where its schedule restarts workers (Hogwild, parameter
server, impala actors, Ray actors) or the run fails naming it (a2c workers, whose round cannot go on without it);
a straggler hung at the end of the budget is stopped, not waited for; a killed worker's ``worker_failed`` names
its pid, exit code and signal. ``algo.worker_stall_s`` is a few seconds here (60 by default)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from algorithms.infra.checkpoint import read_checkpoint
from algorithms.infra.supervision import ProgressWatch, WorkerFailure, silence_detail
from experiments.config import ConfigError, validate
from tests.conftest import compose_config, read_csv, read_meta, train_run
from tests.processes import alive, events, worker_pids

STALL = "algo.worker_stall_s=2"  # a2c; runs that restart a worker allow it 3 s to start again under load
RESTARTING = "algo.worker_stall_s=3"
HOGWILD = ["algo=a3c", "algo.mode=hogwild", "algo.num_workers=2", "log_interval=500"]


def of_kind(run_dir: Path, kind: str) -> list[dict]:
    return [entry for entry in events(run_dir) if entry["event"] == kind]


@contextlib.contextmanager
def signal_worker_once_running(run_dir: Path, worker: int, signum: int = signal.SIGSTOP) -> Iterator[list[int]]:
    """Send ``signum`` to ``worker``'s process (its pid from the run's ``worker_started`` event) once the run has
    written a metrics row; yields the list the pid is put in. A process left stopped is killed afterwards."""
    sent: list[int] = []

    def send() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not sent:
            metrics = run_dir / "metrics.csv"
            started = (run_dir / "events.jsonl").exists() and [
                entry["pid"] for entry in of_kind(run_dir, "worker_started") if entry["worker"] == worker]
            if started and metrics.exists() and len(metrics.read_text().splitlines()) > 1:
                os.kill(started[0], signum)
                sent.append(started[0])
            time.sleep(0.02)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        thread.join()
        for pid in sent:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def check_stalled_and_killed(run_dir: Path, pid: int, *reasons: str) -> dict:
    """One ``worker_stalled`` event naming worker 1 and ``pid`` (for one of ``reasons``), then its ``worker_failed``:
    SIGKILLed for it."""
    (stalled,) = of_kind(run_dir, "worker_stalled")
    assert (stalled["worker"], stalled["pid"]) == (1, pid) and stalled["reason"] in reasons
    assert stalled["silent_s"] >= 2 and 0 <= stalled["idle_s"] <= stalled["silent_s"] and stalled["env_steps"] > 0
    (failed,) = read_meta(run_dir)["worker_failures"]
    assert (failed["worker"], failed["pid"], failed["exitcode"], failed["signal"]) == (1, pid, -signal.SIGKILL,
                                                                                    "SIGKILL")
    assert failed["reason"].startswith("stalled (no progress for ")
    assert failed["reason"].endswith(f"s while {stalled['reason']}) and was killed")
    assert failed["idle_s"] == stalled["idle_s"]  # the run's own wait on it, in meta.json too
    return stalled


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [
    HOGWILD,
    ["algo=impala", "algo.num_workers=2", "algo.batch_size=1", "log_interval=500"],
], ids=["hogwild", "impala"])
def test_a_hung_worker_is_named_killed_and_restarted_and_the_run_completes(run_dir, schedule):
    with signal_worker_once_running(run_dir, worker=1) as stopped:
        record = train_run(run_dir, *schedule, RESTARTING, "total_env_steps=25000")
    assert stopped, "the run ended before a worker could be stopped"
    assert record.status == "completed" and record.env_steps >= 25000
    # A Hogwild worker stopped inside the global lock holds up the other: the others wait for it.
    check_stalled_and_killed(run_dir, stopped[0], "other workers progressed", "the other workers waited for it")
    (restart,) = of_kind(run_dir, "worker_restarted")
    assert restart["worker"] == 1 and restart["pid"] != stopped[0]
    after = [row for row in read_csv(run_dir / "updates.csv") if int(row["env_steps"]) > restart["env_steps"]]
    assert {row["worker"] for row in after} == {"0", "1"}  # the restarted worker trained again
    assert not alive(stopped[0]) and worker_pids(os.getpid()) == []


def test_a_straggler_hung_at_the_end_is_stopped_not_waited_for(run_dir):
    # Worker 0 spends the budget alone well within worker_stall_s; the run then waits for worker 1 only that long.
    # (A parameter server: a Hogwild worker stopped inside the global lock would hold up the other.)
    started = time.monotonic()
    with signal_worker_once_running(run_dir, worker=1) as stopped:
        record = train_run(run_dir, "algo=a3c", "algo.mode=parameter_server", "algo.num_workers=2", "log_interval=500",
                           "algo.worker_stall_s=6", "total_env_steps=2000", "eval.episodes=1")
    assert stopped and record.status == "completed" and record.env_steps >= 2000
    stalled = check_stalled_and_killed(run_dir, stopped[0], "the run waited for it to finish")
    assert 0 < stalled["idle_s"] < 6  # recorded: the seconds the finished run spent waiting on it
    assert read_meta(run_dir)["stalled_idle_s"] == stalled["idle_s"]  # and the run's total of them
    assert of_kind(run_dir, "worker_restarted") == []  # a finishing run restarts no one
    assert len(read_csv(run_dir / "evals.csv")) == 1  # the final evaluation ran
    assert time.monotonic() - started < 40, "the run waited for its straggler"
    assert worker_pids(os.getpid()) == []


def test_a_hung_a2c_worker_fails_the_run_in_one_line_naming_it_and_keeps_the_checkpoint(run_dir):
    with signal_worker_once_running(run_dir, worker=1) as stopped, pytest.raises(WorkerFailure) as failure:
        train_run(run_dir, "algo=a2c", "algo.mode=workers", "algo.num_workers=2", "algo.num_envs=1", STALL,
                  "log_interval=500", "checkpoint_interval=500", "total_env_steps=10000000")
    message = str(failure.value)
    assert message.startswith("worker 1 stalled (no progress for ") and "\n" not in message
    assert "while the other workers waited for it) and was killed at env step" in message
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"] == f"WorkerFailure: {message}"
    check_stalled_and_killed(run_dir, stopped[0], "the other workers waited for it")
    saved = read_checkpoint(run_dir / "checkpoints" / "last.pt")  # the run can resume from it
    assert 0 < saved["env_steps"] <= int(read_csv(run_dir / "updates.csv")[-1]["env_steps"])
    assert worker_pids(os.getpid()) == []


def test_a_sigkilled_workers_failure_names_its_pid_exit_code_and_signal(run_dir):
    with signal_worker_once_running(run_dir, worker=1, signum=signal.SIGKILL) as killed:
        record = train_run(run_dir, "algo=a3c", "algo.mode=parameter_server", "algo.num_workers=2",
                           "log_interval=500", "total_env_steps=5000")
    assert killed and record.status == "completed"
    (failed,) = read_meta(run_dir)["worker_failures"]
    assert (failed["worker"], failed["pid"], failed["exitcode"], failed["signal"]) == (1, killed[0], -9, "SIGKILL")
    assert failed["reason"] == "died with exit code -9 (killed by SIGKILL)"
    assert of_kind(run_dir, "worker_stalled") == []


def silent_workers(stall_s: float = 0.2) -> ProgressWatch:
    """A watch of workers 0, 1 and 2, none of which has shown progress for longer than ``stall_s``."""
    watch = ProgressWatch(stall_s)
    for worker in (0, 1, 2):
        watch.expect(worker)
    time.sleep(stall_s + 0.05)
    return watch


def test_only_a_worker_silent_while_others_progress_or_wait_for_it_is_stalled():
    watch = silent_workers()
    watch.listened()
    assert watch.stalled() == []  # nobody progressed: the run's watchdog answers, naming every worker
    silent = "silent: worker 0 for 0s, worker 1 for 0s, worker 2 for 0s"
    assert silence_detail(watch, [2]) == f" (the others wait for workers [2]; {silent})"
    assert silence_detail(watch) == f" ({silent})"
    assert [stall.worker for stall in watch.stalled(waited_on=[2])] == [2]
    assert watch.stalled(waited_on=[2]) == []  # named once: no longer watched, until restarted
    assert [(stall.worker, stall.cause) for stall in watch.stalled(finishing=True)] == [
        (0, "the run waited for it to finish"), (1, "the run waited for it to finish")]
    watch = silent_workers()
    watch.heard(0)  # worker 0 goes on, in the later half of the others' silence
    watch.unblocked(1)  # the trainer answered worker 1: its silence starts again
    watch.listened()
    (stall,) = watch.stalled()
    assert (stall.worker, stall.cause) == (2, "other workers progressed") and stall.silent_s >= 0.2
    assert stall.idle_s < 0.05  # the run itself did not wait for it
    watch = silent_workers()
    watch.restarted(2)  # a synchronous round waited for worker 2's restart: the others waited, they did not hang
    watch.heard(2)
    watch.listened()
    assert watch.stalled() == []


@pytest.mark.parametrize("value", ["0", "-1", "inf"])
def test_a_stall_limit_that_is_not_a_positive_time_is_refused(value):
    with pytest.raises(ConfigError) as error:
        validate(compose_config("algo=a3c", f"algo.worker_stall_s={value}"))
    assert error.value.key == "algo.worker_stall_s"


@pytest.mark.slow
def test_a_hung_ray_worker_actor_at_the_a2c_barrier_is_named_killed_and_restarted(cluster, run_dir):
    with signal_worker_once_running(run_dir, worker=1) as stopped:
        record = train_run(run_dir, "algo=a2c", "algo.mode=workers", "algo.num_workers=2", "algo.num_envs=1",
                           "backend=ray", "log_interval=500", RESTARTING, "total_env_steps=4000")
    assert stopped and record.status == "completed" and record.env_steps >= 4000
    (stalled,) = of_kind(run_dir, "worker_stalled")
    assert (stalled["worker"], stalled["pid"], stalled["reason"]) == (1, stopped[0], "the other workers waited for it")
    assert stalled["idle_s"] > 1  # the round waited for it
    (failed,) = read_meta(run_dir)["worker_failures"]
    assert failed["worker"] == 1 and failed["pid"] == stopped[0] and failed["reason"].startswith("stalled")
    (restart,) = of_kind(run_dir, "worker_restarted")
    assert restart["worker"] == 1 and restart["pid"] != stopped[0]
    assert not alive(stopped[0])
