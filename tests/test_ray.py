"""The Ray backend: config rules; on one local Ray cluster (2 CPUs, the session's ``cluster``), the
parameter-server and workers schedules give the local backend's parameters and run record, worker actors
killed mid-run are restarted and recorded, exhausted restarts fail the run clearly, a synchronous run
resumes as a local one does, and no actor outlives its run; a Ctrl-C'd command line leaves no Ray
process behind and a checkpoint that matches its record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from algorithms.infra.messages import LOSS_STATS
from algorithms.infra.supervision import WorkerFailure
from experiments.config import ConfigError, validate
from experiments.tools.throughput import main as throughput_main
from tests.conftest import (
    check_applied_versions,
    check_two_workers_delayed_by_one,
    compose_config,
    read_csv,
    read_meta,
    train_run,
)
from tests.processes import SharedMemoryWatch, alive, wait_until_gone  # noqa: E402

ray = pytest.importorskip("ray")
from algorithms.infra.messages import (  # noqa: E402
    Episode,  # noqa: E402
    Push,
    to_wire,
)
from algorithms.infra.reaper import descendants  # noqa: E402
from algorithms.infra.supervision import NonFiniteUpdate  # noqa: E402
from algorithms.transports.ray import SynchronousServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PS = ["algo=a3c", "algo.mode=parameter_server", "backend=ray", "log_interval=500"]
EXPLODING_ENV = "tests.exploding_env:ExplodingCartPole-v0"
WORKERS = ["algo=a2c", "algo.mode=workers", "algo.num_envs=1", "backend=ray", "log_interval=500"]
IMPALA = ["algo=impala", "algo.batch_size=1", "backend=ray", "log_interval=500"]


# --------------------------------------------------------------------------- config (no cluster)
@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["algo=a3c", "backend=ray"], "algo.mode", "with backend=ray use algo.mode=parameter_server"),
    (["algo=single", "backend=ray"], "backend", "algo=single is a one-process schedule"),
    (["algo=a2c", "backend=ray"], "algo.mode", "mode=vector is a one-process schedule"),
    ([*WORKERS, "ray.cpus_per_worker=-1"], "ray.cpus_per_worker", "must be a finite number >= 0"),
    ([*PS, "ray.server_cpus=nan"], "ray.server_cpus", "must be a finite number >= 0"),
    ([*PS, "ray.num_cpus=0"], "ray.num_cpus", "must be a positive integer"),
    ([*WORKERS, "algo.num_workers=3", "ray.num_cpus=2"], "ray.num_cpus", "cannot place the run's actors"),
    ([*PS, "ray=cluster", "ray.num_cpus=4"], "ray.num_cpus", "sizes a local cluster"),
    ([*PS, "ray.start_timeout_s=0"], "ray.start_timeout_s", "must be a finite number of seconds > 0"),
    ([*PS, "algo.vector_backend=async", "algo.num_workers=1"], "algo.vector_backend", "step their envs themselves"),
])
def test_bad_ray_config_is_rejected_naming_key_and_value(overrides, key, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert error.value.key == key and str(error.value).startswith(f"{key}=")
    assert message in str(error.value)


def test_ray_configs_validate_and_the_cluster_group_connects():
    validate(compose_config(*PS, "algo.staleness.delay=2", "algo.staleness.max=3", "algo.staleness.lr_scaling=inverse"))
    validate(compose_config(*WORKERS, "algo.num_workers=4", "ray.cpus_per_worker=0.5", "ray.num_cpus=2"))
    cfg = compose_config(*PS, "ray=cluster")
    validate(cfg)
    assert cfg.ray.address == "auto" and cfg.ray.cpus_per_worker == 1.0
    assert compose_config(*PS).ray.address is None


def test_command_line_rejects_hogwild_on_ray_before_creating_anything(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.train", "algo=a3c", "backend=ray",
                             f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert "error: invalid config: algo.mode='hogwild': hogwild is a shared-memory schedule" in result.stderr
    assert "algo.mode=parameter_server" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the a2c server, called directly
def synchronous_server(*overrides: str) -> SynchronousServer:
    cfg = compose_config(*WORKERS, "algo.num_workers=2", "total_env_steps=60", *overrides)
    validate(cfg)
    return SynchronousServer(cfg, None)


def push(server: SynchronousServer, worker: int, version: int, state: dict | None = None,
         finished: tuple = ()) -> tuple | None:
    """One worker's push of a constant gradient (no learning is checked here, only the barrier)."""
    gradient = to_wire(torch.full((server.gradients.shape[1],), 1e-3 * (worker + 1)))
    episodes = [Episode(ret, length, steps_into_rollout) for steps_into_rollout, ret, length in finished]
    return server.push(Push(worker, version, gradient, dict.fromkeys(LOSS_STATS, 0.0), episodes, 5, state, 0.0))


def waits(future: Future) -> bool:
    """Whether ``future`` is still blocked a moment from now."""
    time.sleep(0.2)
    return not future.done()


def test_the_synchronous_server_holds_each_push_until_the_round_is_complete():
    server = synchronous_server()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(push, server, 0, 0)
        assert waits(first)
        rejoined = pool.submit(server.join, 0)  # worker 0 restarted after its push: it waits for the round too
        assert waits(rejoined)
        last = push(server, 1, 0)
        assert first.result(5) == last == rejoined.result(5) and last[0] == 1
    assert server.join(1) == last  # the next round's parameters, to a worker that joins it
    updates = [(args, kwargs) for name, args, kwargs in server.rows.take() if name == "update"]
    assert [args for args, _ in updates] == [(0, 10, 0, 0), (1, 10, 0, 0)]  # worker, env steps, versions
    assert updates[0][1]["wait_time"] >= 0.4 and updates[1][1]["wait_time"] == 0  # 0 waited for 1


@pytest.mark.parametrize(("overrides", "checkpointed"), [
    (["checkpoint_interval=25"], [30, 50, 60]),  # after the rounds crossing 25 and 50, and after the last
    (["checkpoint_interval=1000"], [60]),
])
def test_the_synchronous_server_checkpoints_after_the_rounds_the_local_workers_do(overrides, checkpointed):
    server = synchronous_server(*overrides)
    reply, states = server.join(0), {}
    with ThreadPoolExecutor(1) as pool:
        while reply is not None:
            version, _, with_state = reply
            states[version] = [{"worker": worker, "version": version} if with_state else None for worker in (0, 1)]
            other = pool.submit(push, server, 1, version, states[version][1])
            reply = push(server, 0, version, states[version][0])
            assert other.result(5) == reply
    saved = [args[0] for name, args, _ in server.rows.take() if name == "save_checkpoint"]
    assert [state["env_steps"] for state in saved] == checkpointed
    assert [state["collectors"] for state in saved] == [states[state["policy_version"] - 1] for state in saved]


def test_a_stop_ends_the_synchronous_run_after_a_round_that_brings_the_collectors_states():
    server = synchronous_server("total_env_steps=1000")
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(push, server, 1, 0)
        server.request_stop()  # mid-round: round 0 did not ask for states, so round 1 is the last
        assert push(server, 0, 0)[2] is True and other.result(5)[2] is True
        other = pool.submit(push, server, 1, 1, {"worker": 1})
        assert push(server, 0, 1, {"worker": 0}) is None and other.result(5) is None
    (saved,) = [args[0] for name, args, _ in server.rows.take() if name == "save_checkpoint"]
    assert saved["env_steps"] == 20 and saved["collectors"] == [{"worker": 0}, {"worker": 1}]


def test_an_unfinished_round_s_episodes_are_recorded_when_the_run_ends():
    server = synchronous_server()
    with ThreadPoolExecutor(1) as pool:
        pushed = pool.submit(push, server, 0, 0, None, [(3, 21.0, 21)])
        assert waits(pushed)
        calls, _, _ = server.drain(ending=True)  # worker 1 failed for good: its round will not complete
        assert calls == [("episode", (0, 6, 21.0, 21), {})]  # 3 steps into worker 0's rollout, 2 workers
        push(server, 1, 0)  # only to release the waiting thread
        pushed.result(5)


# --------------------------------------------------------------------------- one local cluster for the rest
def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def events(run_dir: Path, kind: str | None = None) -> list[dict]:
    entries = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [entry for entry in entries if kind is None or entry["event"] == kind]


def updates(run_dir: Path) -> list[dict]:
    return [{key: float(value) if key in ("wall_time", "lr", "wait_time") else int(value)
             for key, value in row.items()} for row in read_csv(run_dir / "updates.csv")]


def started_pids(run_dir: Path) -> list[int]:
    return [entry["pid"] for entry in events(run_dir) if entry["event"] in ("worker_started", "worker_restarted")]


def assert_same_training(reference: Path, other: Path) -> None:
    a, b = checkpoint(reference), checkpoint(other)
    assert a["policy_version"] == b["policy_version"]
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for name, tensor in a["optimizer"]["state"][0].items():
        assert torch.equal(tensor, b["optimizer"]["state"][0][name]), name
    episodes = [[{key: value for key, value in row.items() if key != "wall_time"}
                 for row in read_csv(run / "episodes.csv")] for run in (reference, other)]
    assert len(episodes[0]) > 10 and episodes[0] == episodes[1]


def test_actors_import_this_checkout(cluster):
    @ray.remote
    def where() -> str:
        import algorithms.transports.ray

        return algorithms.transports.ray.__file__

    assert Path(ray.get(where.remote())).resolve().parents[2] == ROOT


@pytest.mark.parametrize(("algo", "optimizer"), [(PS, "adam"), (WORKERS, "rmsprop")])
def test_one_worker_actor_gives_the_parameters_of_single(cluster, tmp_path, algo, optimizer):
    common = ["seed=3", "total_env_steps=1000", f"algo.optimizer={optimizer}"]
    train_run(tmp_path / "single", "algo=single", *common)
    record = train_run(tmp_path / "ray", *algo, "algo.num_workers=1", *common)
    assert record.status == "completed" and record.policy_version == 200
    assert_same_training(tmp_path / "single", tmp_path / "ray")
    assert all(row["staleness"] == 0 for row in updates(tmp_path / "ray"))
    assert [entry["nodes"] for entry in events(tmp_path / "ray", "ray_cluster")] == [1]
    assert wait_until_gone(started_pids(tmp_path / "ray")) == []  # the run's actors are gone with it


def test_two_worker_actors_give_the_local_backends_synchronous_run(cluster, tmp_path):
    common = ["algo=a2c", "algo.mode=workers", "algo.num_envs=1", "algo.num_workers=2", "seed=1",
              "total_env_steps=1000", "checkpoint_interval=300", "log_interval=500"]
    train_run(tmp_path / "local", *common)
    # evaluated at the end (in the driver's background thread), which leaves the training as it is
    record = train_run(tmp_path / "ray", *common, "backend=ray", "eval.episodes=2")
    assert record.status == "completed" and record.policy_version == 100 and record.updates == 200
    assert_same_training(tmp_path / "local", tmp_path / "ray")
    (final,) = read_csv(tmp_path / "ray" / "evals.csv")
    assert (final["env_steps"], final["policy_version"], final["episodes"]) == ("1000", "100", "2")
    assert len(checkpoint(tmp_path / "ray")["collectors"]) == 2
    local, rows = updates(tmp_path / "local"), updates(tmp_path / "ray")
    keys = ("update", "env_steps", "worker", "version_at_sync", "version_at_apply", "staleness", "applied", "lr")
    assert [[row[key] for key in keys] for row in rows] == [[row[key] for key in keys] for row in local]
    assert all(row["wait_time"] >= 0 for row in rows)
    # in each round, the worker whose gradient arrived last waited for nobody
    assert all(min(a["wait_time"], b["wait_time"]) == 0 for a, b in zip(rows[::2], rows[1::2], strict=True))
    metrics = read_csv(tmp_path / "ray" / "metrics.csv")
    assert metrics[0].keys() == read_csv(tmp_path / "local" / "metrics.csv")[0].keys()
    assert all(float(row["staleness_max"]) == 0 and float(row["barrier_wait_mean"]) >= 0 for row in metrics)


@pytest.mark.slow
def test_a_resumed_synchronous_run_gives_the_local_backends_resumed_run(cluster, tmp_path):
    """A Ray a2c run's final checkpoint holds every worker's collector state: resuming it on Ray continues
    exactly as the local backend resumes its own (a local checkpoint is the same format: the local backend's
    own resume, in tests/test_a2c.py, covers it)."""
    common = ["algo=a2c", "algo.mode=workers", "algo.num_envs=2", "algo.num_workers=2", "seed=2",
              "log_interval=200", "checkpoint_interval=300"]
    for run, backends in (("local", ("local", "local")), ("mixed", ("ray", "ray"))):
        train_run(tmp_path / run, *common, f"backend={backends[0]}", "total_env_steps=800")
        saved = checkpoint(tmp_path / run)
        assert saved["env_steps"] == 800 and len(saved["collectors"]) == 2
        record = train_run(tmp_path / run, *common, f"backend={backends[1]}", "total_env_steps=1600", "resume=true")
        assert record.status == "completed" and read_meta(tmp_path / run)["resumed_at_env_steps"] == [800]
    assert_same_training(tmp_path / "local", tmp_path / "mixed")
    assert checkpoint(tmp_path / "mixed")["policy_version"] == 80
    assert [row["update"] for row in updates(tmp_path / "mixed")] == list(range(1, 161))


def test_impala_actors_give_the_local_impala_run(cluster, tmp_path):
    # One actor acting again only after its unroll's update: the same schedule on both transports, bit for bit.
    common = ["algo=impala", "algo.num_workers=1", "algo.batch_size=1", "algo.queue_depth=1",
              "algo.wait_for_update=true", "seed=4", "total_env_steps=1000", "log_interval=500",
              "algo.staleness.delay=2"]
    train_run(tmp_path / "local", *common)
    record = train_run(tmp_path / "ray", *common, "backend=ray", "eval.episodes=2")
    assert record.status == "completed" and record.policy_version == 200
    assert_same_training(tmp_path / "local", tmp_path / "ray")
    assert [row["staleness"] for row in updates(tmp_path / "ray")] == [min(version, 2) for version in range(200)]
    (final,) = read_csv(tmp_path / "ray" / "evals.csv")
    assert (final["env_steps"], final["policy_version"]) == ("1000", "200")
    assert wait_until_gone(started_pids(tmp_path / "ray")) == []


def test_appo_actors_give_the_local_appo_run(cluster, tmp_path):
    # APPO's epochs over impala's transport: one actor in lockstep, the same run on both transports, bit for bit.
    common = ["algo=appo", "algo.num_workers=1", "algo.batch_size=1", "algo.queue_depth=1", "algo.wait_for_update=true",
              "algo.num_envs=2", "algo.n_steps=16", "algo.epochs=2", "algo.minibatches=4", "seed=4",
              "total_env_steps=640", "log_interval=320", "algo.staleness.delay=2"]
    train_run(tmp_path / "local", *common)
    record = train_run(tmp_path / "ray", *common, "backend=ray")
    assert record.status == "completed" and record.policy_version == 20 * 8
    assert_same_training(tmp_path / "local", tmp_path / "ray")
    assert wait_until_gone(started_pids(tmp_path / "ray")) == []


def test_parameter_server_actor_answers_each_gradient_with_delayed_parameters(cluster, run_dir):
    # Acrobot normalizes observations: worker 0's statistics travel with its pushes to the evaluations
    record = train_run(run_dir, *PS, "algo.num_workers=2", "algo.staleness.delay=1", "total_env_steps=2000",
                       "env=acrobot", "eval.episodes=2", "eval.interval=1000")
    assert record.status == "completed" and record.env_steps >= 2000
    evaluations = read_csv(run_dir / "evals.csv")
    assert len(evaluations) == 2 and int(evaluations[-1]["policy_version"]) == record.policy_version
    rows = updates(run_dir)
    check_two_workers_delayed_by_one(rows)
    metrics = read_csv(run_dir / "metrics.csv")
    assert all(float(row["staleness_mean"]) >= 1 and float(row["staleness_max"]) >= 1 for row in metrics)
    assert checkpoint(run_dir)["policy_version"] == record.policy_version == len(rows)
    assert wait_until_gone(started_pids(run_dir)) == []


def kill_a_worker_once_running(run_dir: Path, killed: list[int]) -> threading.Thread:
    """SIGKILL the process of worker actor 0 once the run has written a metrics row."""
    def kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = run_dir / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) > 1:
                pid = next(entry["pid"] for entry in events(run_dir, "worker_started") if entry["worker"] == 0)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.parametrize("algo", [PS, WORKERS, IMPALA], ids=["parameter_server", "workers", "impala"])
def test_a_killed_worker_actor_is_restarted_resynced_and_recorded(cluster, run_dir, algo):
    killed: list[int] = []
    thread = kill_a_worker_once_running(run_dir, killed)
    record = train_run(run_dir, *algo, "algo.num_workers=2", "total_env_steps=6000")
    thread.join()
    assert killed, "the run ended before a worker could be killed"
    assert record.status == "completed" and record.env_steps >= 6000
    failures = read_meta(run_dir)["worker_failures"]
    assert len(failures) == 1 and failures[0]["worker"] == 0 and failures[0]["pid"] == killed[0]
    assert failures[0]["reason"].startswith("actor died")
    (restart,) = events(run_dir, "worker_restarted")
    assert restart["worker"] == 0 and restart["restart"] == 1 and restart["pid"] != killed[0]
    assert not alive(killed[0])
    rows = updates(run_dir)
    if "algo=a3c" in algo or "algo=impala" in algo:
        check_applied_versions(rows)
    # the restarted worker trains on (well past any gradient it had in flight when it died)
    assert len([row for row in rows if row["worker"] == 0 and row["env_steps"] > restart["env_steps"] + 1000]) >= 20
    if "algo=a2c" in algo:  # the round the worker died in was redone: every round has both workers' gradients
        assert record.policy_version == 600 and record.updates == 1200
        assert [row["version_at_sync"] for row in rows] == [version for version in range(600) for _ in (0, 1)]
    assert wait_until_gone(started_pids(run_dir)) == []


def test_a_death_beyond_max_restarts_fails_the_run_clearly(cluster, run_dir):
    killed: list[int] = []
    thread = kill_a_worker_once_running(run_dir, killed)
    with pytest.raises(WorkerFailure, match=r"worker 0 \(pid \d+\) died at env step \d+, and no restart is left "
                                            r"\(algo.max_restarts=0\)"):
        train_run(run_dir, *PS, "algo.num_workers=2", "algo.max_restarts=0", "total_env_steps=20000")
    thread.join()
    assert killed
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and "no restart is left" in meta["error"] and "worker 0" in meta["error"]
    assert events(run_dir, "worker_restarted") == []
    assert checkpoint(run_dir)["policy_version"] == meta["final"]["policy_version"] > 0  # the final checkpoint
    assert wait_until_gone(started_pids(run_dir)) == []


def test_a_worker_exception_is_logged_with_its_traceback_and_restarted(cluster, run_dir):
    # Each worker's env raises on its 300th step, in the same synchronous round: the first failure is
    # restarted (and that worker redoes the round), the second one ends the run.
    with pytest.raises(WorkerFailure, match=r"raised an exception at env step 590, and no restart is left "
                                            r"\(algo.max_restarts=1\): RuntimeError: simulator diverged"):
        train_run(run_dir, *WORKERS, "algo.num_workers=2", "algo.max_restarts=1", f"env.id={EXPLODING_ENV}",
                  "total_env_steps=5000")
    meta = read_meta(run_dir)
    assert meta["status"] == "failed"
    assert sorted(failure["worker"] for failure in meta["worker_failures"]) == [0, 1]
    assert all("RuntimeError: simulator diverged" in failure["error"] for failure in meta["worker_failures"])
    assert len(events(run_dir, "worker_restarted")) == 1
    assert len(read_csv(run_dir / "updates.csv")) == 118  # the 59 rounds before both workers' 300th step
    assert wait_until_gone(started_pids(run_dir)) == []


@pytest.mark.parametrize("schedule", ["parameter_server", "workers", "impala"])
def test_a_diverged_ray_run_fails_at_once_naming_the_update_and_keeps_a_finite_checkpoint(cluster, run_dir, schedule):
    # Each worker's env gives a NaN reward on its 100th step: the server refuses that update and stops the run.
    with SharedMemoryWatch() as shared_memory, pytest.raises(
            NonFiniteUpdate, match=r"non-finite (policy_loss|value_loss) in worker [01]'s update at "
                                   r"policy version \d+, env step \d+ \(algo.on_nonfinite=fail\)"):
        train_run(run_dir, *{"parameter_server": PS, "workers": WORKERS, "impala": IMPALA}[schedule],
                  "algo.num_workers=2", "env.id=tests.exploding_env:NaNRewardCartPole-v0", "total_env_steps=2000",
                  "checkpoint_interval=100")
    meta = read_meta(run_dir)
    assert meta["status"] == "failed" and meta["error"].startswith("NonFiniteUpdate")
    saved = checkpoint(run_dir)
    assert all(bool(torch.isfinite(tensor).all()) for tensor in saved["model"].values())
    assert events(run_dir, "worker_restarted") == []
    assert wait_until_gone(started_pids(run_dir)) == []
    assert not shared_memory.leaked()  # the server actor holds no process lock


def test_throughput_measures_both_backends_in_one_run(cluster, tmp_path, capsys):
    path = tmp_path / "throughput.json"
    throughput_main(["--runs", "a3c:parameter_server:2w", "a3c:parameter_server:2w:ray", "--steps", "1500",
                     "--raw-seconds", "0.2", "--ray-calls", "100", "--json", str(path)])
    result = json.loads(path.read_text())
    local, remote = result["runs"]
    assert (local["backend"], remote["backend"]) == ("local", "ray")
    assert remote["spec"] == "a3c:parameter_server:2w:ray" and remote["status"] == ["completed"]
    assert local["vs_local"] is None
    assert remote["vs_local"] == pytest.approx(remote["steady_sps_median"] / local["steady_sps_median"])
    floor = result["ray_call_round_trip_ms"]
    assert 0 < floor["empty"] < 1000 and 0 < floor["parameters"] < 1000
    # float32 parameters of CartPole's actor and critic (4-64-64 each) and their heads (64-2, 64-1)
    assert floor["parameter_bytes"] == 4 * (2 * (4 * 64 + 64 + 64 * 64 + 64) + 64 * 2 + 2 + 64 + 1)
    out = capsys.readouterr().out
    assert "a3c:parameter_server:2w:ray" in out and "Ray actor-to-actor call round trip here" in out


# --------------------------------------------------------------------------- the command line, its own cluster
def live_descendants(root: int) -> set[int]:
    """Every live process below ``root`` in the process tree."""
    return {pid for pid in descendants(root) if alive(pid)}


@pytest.mark.slow
@pytest.mark.parametrize("algo", [PS, WORKERS], ids=["parameter_server", "workers"])
def test_ctrl_c_stops_a_ray_run_cleanly_and_leaves_no_ray_process(tmp_path, algo):
    run_dir = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *algo, "algo.num_workers=2", "total_env_steps=10000000",
         "quiet=true", "logger.wandb.mode=disabled", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "metrics.csv").exists() and len((run_dir / "metrics.csv").read_text().splitlines()) > 2):
            assert time.monotonic() < deadline and trainer.poll() is None, trainer.communicate()[0]
            time.sleep(0.1)
        started = live_descendants(trainer.pid)
        assert len(started) >= 4  # this run's cluster: GCS, raylet, the server and worker actors at least
        os.killpg(trainer.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        assert trainer.wait(timeout=90) == 130, trainer.communicate()[0]
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert wait_until_gone(sorted(started)) == [], "orphan Ray processes"
    meta = read_meta(run_dir)
    assert meta["status"] == "interrupted"
    versions = max(row["version_at_apply"] for row in updates(run_dir)) + 1  # every update is applied
    saved = checkpoint(run_dir)
    assert saved["policy_version"] == meta["final"]["policy_version"] == versions > 0
    assert saved["env_steps"] == saved["record"]["env_steps"] == meta["final"]["env_steps"]
    if "algo=a2c" in algo:  # the last round brought the collectors' states: the run can resume
        assert len(saved["collectors"]) == 2



@pytest.mark.slow
def test_a_sigkilled_driver_leaves_no_ray_process_and_resumes(tmp_path):
    """SIGKILL gives the driver no chance to stop its cluster: Ray's own processes must follow it, and the
    run resumes from its last checkpoint with every policy version recorded once."""
    run_dir = tmp_path / "run"
    args = [*PS, "algo.num_workers=2", "checkpoint_interval=1000", "quiet=true", "logger.wandb.mode=disabled",
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    trainer = subprocess.Popen([sys.executable, "-m", "experiments.train", *args, "total_env_steps=10000000"],
                               cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    try:
        with SharedMemoryWatch(trainer.pid) as shared_memory:
            deadline = time.monotonic() + 120
            while not ((run_dir / "checkpoints" / "last.pt").exists() and len(read_csv(run_dir / "metrics.csv")) > 3):
                assert time.monotonic() < deadline and trainer.poll() is None
                time.sleep(0.1)
            started = live_descendants(trainer.pid)
            os.kill(trainer.pid, signal.SIGKILL)
            trainer.wait(timeout=30)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert wait_until_gone(sorted(started)) == [], "orphan Ray processes"
    assert not shared_memory.leaked()
    assert read_meta(run_dir)["status"] == "running"  # a SIGKILL leaves no chance to write more
    total = (int(read_csv(run_dir / "metrics.csv")[-1]["env_steps"]) // 1000 + 1) * 1000
    resumed = subprocess.run([sys.executable, "-m", "experiments.train", *args, "resume=true",
                              f"total_env_steps={total}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = updates(run_dir)
    assert [row["update"] for row in rows] == list(range(1, len(rows) + 1))
    check_applied_versions(rows)
    assert checkpoint(run_dir)["policy_version"] == len(rows)  # every update applied, each recorded once
