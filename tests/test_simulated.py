"""Simulated workers: real learning on a virtual clock, deterministic at any worker count, the same updates as the
local schedules where the schedule fixes their order, and staleness and barrier waits as theory predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import read_csv, read_meta, train_run
from tests.test_resume import WALL_CLOCK, assert_identical, final_state, records

SIMULATED = ["backend=simulated", "env=cartpole", "algo.num_envs=1"]


def staleness(run_dir) -> np.ndarray:
    return np.array([int(row["staleness"]) for row in read_csv(run_dir / "updates.csv")])


def assert_same_learning(reference, other) -> None:
    """The same updates, episodes and final parameters; only the clocks (and the barrier waits they time) differ."""
    for name in ("updates.csv", "episodes.csv"):
        rows = [[{key: value for key, value in row.items() if key != "wait_time"} for row in records(run)[name]]
                for run in (reference, other)]
        assert_identical(*rows)
    assert_identical(final_state(reference)["model"], final_state(other)["model"])


@pytest.mark.parametrize("mode", ["hogwild", "parameter_server"])
def test_one_simulated_a3c_worker_gives_the_parameters_of_single(tmp_path, mode):
    common = ["env=cartpole", "total_env_steps=3000", "seed=3"]
    train_run(tmp_path / "single", "algo=single", *common)
    record = train_run(tmp_path / "sim", "algo=a3c", f"algo.mode={mode}", "algo.num_workers=1", "backend=simulated",
                       *common)
    assert record.status == "completed"
    assert_same_learning(tmp_path / "single", tmp_path / "sim")
    meta = read_meta(tmp_path / "sim")
    assert meta["clock"] == "simulated" and meta["cost_model"]["apply_s"] == pytest.approx(2e-4)


def test_simulated_a2c_workers_give_the_local_workers_updates(tmp_path):
    common = ["algo=a2c", "algo.mode=workers", "algo.num_workers=2", "algo.num_envs=2", "env=cartpole",
              "total_env_steps=2000", "seed=1"]
    train_run(tmp_path / "local", *common)
    train_run(tmp_path / "sim", *common, "backend=simulated")
    assert_same_learning(tmp_path / "local", tmp_path / "sim")
    assert_identical(final_state(tmp_path / "local")["optimizer"], final_state(tmp_path / "sim")["optimizer"])


def test_a_simulated_run_is_bit_reproducible_at_64_workers_with_stragglers_and_jitter(tmp_path):
    setting = [*SIMULATED, "algo=a3c", "algo.mode=parameter_server", "algo.num_workers=64", "total_env_steps=3200",
               "sim.jitter_sigma=0.3", "sim.straggler_fraction=0.1", "sim.straggler_slowdown=5", "log_interval=320"]
    for name in ("first", "second"):
        train_run(tmp_path / name, *setting)
    for name in ("metrics.csv", "updates.csv", "episodes.csv"):  # wall-clock columns included: virtual seconds
        assert read_csv(tmp_path / "first" / name) == read_csv(tmp_path / "second" / name)
    assert_identical(final_state(tmp_path / "first")["model"], final_state(tmp_path / "second")["model"])
    assert len(set(staleness(tmp_path / "first"))) > 5  # jitter and stragglers spread the order of pushes


@pytest.mark.parametrize("workers", [4, 16, 64])
def test_homogeneous_a3c_workers_are_about_n_minus_1_versions_stale(tmp_path, workers):
    # Each worker pushes every 5 env steps: after the first cycle, a push waits for the other N - 1 of its cycle.
    record = train_run(tmp_path / "run", *SIMULATED, "algo=a3c", "algo.mode=parameter_server",
                       f"algo.num_workers={workers}", f"total_env_steps={workers * 5 * 6}")
    assert record.status == "completed"
    later = staleness(tmp_path / "run")[2 * workers:]
    assert later.mean() == pytest.approx(workers - 1, abs=0.1)
    first_cycle = staleness(tmp_path / "run")[:workers]  # all synced at version 0 and arrived together
    assert list(first_cycle) == list(range(workers))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
def test_the_a2c_barrier_wait_grows_with_stragglers_as_order_statistics_predict(tmp_path, fraction):
    """A task takes c, or s c with probability p: the round waits for its slowest of N, so a worker waits
    E[max] - E[task] = c (s - 1) (1 - (1 - p)^N - p) on average."""
    workers, slowdown = 8, 4.0
    run_dir = tmp_path / "run"
    record = train_run(run_dir, *SIMULATED, "algo=a2c", "algo.mode=workers", f"algo.num_workers={workers}",
                       "total_env_steps=12000", f"sim.straggler_fraction={fraction}",
                       f"sim.straggler_slowdown={slowdown}")
    sim, algo = record.cfg.sim, record.cfg.algo
    task = algo.n_steps * algo.num_envs * sim.env_step_s + algo.n_steps * sim.forward_s + sim.backward_s
    expected = task * (slowdown - 1) * (1 - (1 - fraction) ** workers - fraction)
    waits = [float(row["wait_time"]) for row in read_csv(run_dir / "updates.csv")]
    assert np.mean(waits) == pytest.approx(expected, rel=0.15, abs=1e-9)


def test_simulated_time_is_the_cost_model_s(tmp_path):
    """One worker without jitter: each update costs a task, two messages and an apply, nothing of this machine's."""
    record = train_run(tmp_path / "run", *SIMULATED, "algo=a3c", "algo.mode=parameter_server",
                       "algo.num_workers=1", "total_env_steps=500", "sim.message_s=0.01", "sim.byte_s=0")
    sim, algo = record.cfg.sim, record.cfg.algo
    task = algo.n_steps * sim.env_step_s + algo.n_steps * sim.forward_s + sim.backward_s
    walls = [float(row["wall_time"]) for row in read_csv(tmp_path / "run" / "updates.csv")]
    assert walls == pytest.approx([0.01 + (update + 1) * (task + 0.01 + sim.apply_s + sim.update_s) + update * 0.01
                                   for update in range(len(walls))])
    assert WALL_CLOCK <= set(read_csv(tmp_path / "run" / "metrics.csv")[0])
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["env_steps"] == 500


def walls_by_update(run_dir) -> tuple[list[float], list[int]]:
    """Every update row's virtual wall time and the update (policy version) it belongs to."""
    rows = read_csv(run_dir / "updates.csv")
    return [float(row["wall_time"]) for row in rows], [int(row["version_at_apply"]) for row in rows]


@pytest.mark.parametrize("schedule", [("a3c", "hogwild", 1), ("a3c", "parameter_server", 1), ("a2c", "workers", 2)])
def test_every_update_pays_update_s_once(tmp_path, schedule):
    """Raising sim.update_s by d delays the k-th update (an a2c round) by exactly k d, and changes nothing learned."""
    algo, mode, workers = schedule
    setting = [*SIMULATED, f"algo={algo}", f"algo.mode={mode}", f"algo.num_workers={workers}",
               "total_env_steps=600"]
    train_run(tmp_path / "free", *setting, "sim.update_s=0")
    train_run(tmp_path / "paid", *setting, "sim.update_s=0.01")
    assert records(tmp_path / "free") == records(tmp_path / "paid")  # time never changes what is learned
    (free, versions), (paid, _) = walls_by_update(tmp_path / "free"), walls_by_update(tmp_path / "paid")
    assert len(set(versions)) == 600 // (5 * workers)
    assert [late - early for early, late in zip(free, paid, strict=True)] == pytest.approx(
        [0.01 * (version + 1) for version in versions], rel=1e-9)
    assert read_meta(tmp_path / "paid")["cost_model"]["update_s"] == 0.01


def test_the_server_pays_update_s_per_push_and_hogwild_workers_each_pay_their_own(tmp_path):
    """Two workers, update_s far above a task: parameter-server pushes queue for apply_s + update_s each, while
    Hogwild workers pay it in parallel, each updating every task + update_s + apply_s."""
    setting = [*SIMULATED, "algo=a3c", "algo.num_workers=2", "total_env_steps=400", "sim.update_s=0.02",
               "sim.message_s=0.001", "sim.byte_s=0"]
    train_run(tmp_path / "server", *setting, "algo.mode=parameter_server")
    record = train_run(tmp_path / "hogwild", *setting, "algo.mode=hogwild")
    sim, algo = record.cfg.sim, record.cfg.algo
    task = algo.n_steps * sim.env_step_s + algo.n_steps * sim.forward_s + sim.backward_s
    walls, _ = walls_by_update(tmp_path / "server")
    assert np.diff(walls) == pytest.approx([sim.apply_s + sim.update_s] * (len(walls) - 1), rel=1e-9)
    rows = read_csv(tmp_path / "hogwild" / "updates.csv")
    for worker in ("0", "1"):
        mine = [float(row["wall_time"]) for row in rows if row["worker"] == worker]
        assert np.diff(mine) == pytest.approx([task + sim.update_s + sim.apply_s] * (len(mine) - 1), rel=1e-9)
    assert float(rows[-1]["wall_time"]) < 0.6 * walls[-1]  # twice the parallelism, for as many updates


def test_an_impala_update_is_one_batched_pass_and_an_unroll_pays_unroll_s(tmp_path):
    """The learner, far slower than eight actors, publishes every learn_s + batch_size * learn_unroll_s whatever the
    batch; one actor in lockstep waits for each update: an unroll (with unroll_s), its message, the update."""
    setting = [*SIMULATED, "algo=impala", "sim.byte_s=0", "sim.message_s=0.001"]
    learner_bound = [*setting, "algo.num_workers=8", "total_env_steps=800", "sim.learn_s=0.02"]
    for batch in (2, 8):
        record = train_run(tmp_path / f"batch{batch}", *learner_bound, f"algo.batch_size={batch}")
        walls, versions = walls_by_update(tmp_path / f"batch{batch}")
        update_walls = [walls[versions.index(version)] for version in sorted(set(versions))]
        assert np.diff(update_walls) == pytest.approx(
            [0.02 + batch * record.cfg.sim.learn_unroll_s] * (len(update_walls) - 1), rel=1e-9)
    record = train_run(tmp_path / "lockstep", *setting, "algo.num_workers=1", "algo.batch_size=1",
                       "algo.queue_depth=1", "algo.wait_for_update=true", "total_env_steps=300", "sim.unroll_s=0.01")
    sim, algo = record.cfg.sim, record.cfg.algo
    unroll = algo.n_steps * sim.env_step_s + algo.n_steps * sim.forward_s + 0.01
    walls, _ = walls_by_update(tmp_path / "lockstep")
    assert np.diff(walls) == pytest.approx(
        [unroll + 0.001 + sim.learn_s + sim.learn_unroll_s] * (len(walls) - 1), rel=1e-9)
