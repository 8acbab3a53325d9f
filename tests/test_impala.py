"""IMPALA: the off-policy loss against the on-policy one, equivalence with ``single``, lag as data (one row per
unroll), controlled lag, faults, resume, configuration errors, and learning CartPole."""

from __future__ import annotations

import math
import os
import signal
from collections import Counter

import numpy as np
import pytest
import torch

from algorithms.core.envs import make_vector_env
from algorithms.core.model import build_model
from algorithms.core.rollout import Unrolls, start_collector, unroll_from
from algorithms.infra.checkpoint import read_checkpoint
from algorithms.infra.shared_memory import ParameterBoard
from algorithms.infra.supervision import WorkerFailure
from algorithms.updates.actor_critic import compute_gradients
from algorithms.updates.off_policy import OffPolicyActorCritic
from experiments.config import ConfigError, validate
from tests.conftest import compose_config, read_csv, read_meta, train_run
from tests.processes import worker_pids
from tests.test_a3c import kill_a_worker_once_running
from tests.test_resume import assert_identical, final_state, records

IMPALA = ["algo=impala", "log_interval=100", "checkpoint_interval=1000"]
# One actor that acts again only after its unroll's update: single's schedule.
LOCKSTEP = [*IMPALA, "algo.num_workers=1", "algo.batch_size=1", "algo.queue_depth=1", "algo.wait_for_update=true"]


def updates(run_dir) -> list[dict]:
    return [{name: float(value) for name, value in row.items()} for row in read_csv(run_dir / "updates.csv")]


def episodes(run_dir) -> list[tuple[str, ...]]:
    rows = read_csv(run_dir / "episodes.csv")
    return [(row["env_steps"], row["worker"], row["return"], row["length"]) for row in rows]


# --------------------------------------------------------------------------- the loss
def collected_unroll(*overrides: str) -> tuple:
    cfg = compose_config("algo=impala", "algo.num_envs=2", "algo.n_steps=8", *overrides)
    envs = make_vector_env(cfg.env, cfg.algo.num_envs)
    model = build_model(cfg, envs)
    collector = start_collector(cfg, envs, 0)
    for _ in range(3):  # some episodes under way, some ended
        collector.collect(model)
    return cfg, envs, model, collector


def gradient_of(model, loss) -> tuple[torch.Tensor, dict[str, float]]:
    stats = loss()
    return model.flat_grads.clone(), stats


def off_policy_step(cfg, model, unroll) -> dict[str, float]:
    """The gradient of IMPALA's one step on ``unroll``, left in ``model.flat_grads``, and its statistics."""
    return next(OffPolicyActorCritic(cfg).gradients(model, unroll))


def test_on_policy_the_off_policy_loss_is_the_n_step_loss():
    cfg, envs, model, collector = collected_unroll()
    try:
        unroll = unroll_from(collector, model, 0)
        expected, expected_stats = gradient_of(model, lambda: compute_gradients(model, collector.rollout, cfg.algo))
        for correction in ("vtrace", "none", "truncated_is", "ppo_clip", "decoupled"):
            cfg.algo.correction = correction
            gradient, stats = gradient_of(model, lambda: off_policy_step(cfg, model, unroll))
            assert stats["importance_ratio"] == 1.0  # the actor's log-probabilities are the learner's, bit for bit
            torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-7)
            # The policy loss is a surrogate with the same gradient: -mean(w * r * A) at r = 1, not -mean(A log pi).
            same = [name for name in expected_stats if name != "policy_loss"]
            assert {name: stats[name] for name in same} == pytest.approx({name: expected_stats[name] for name in same},
                                                                         rel=1e-5)
    finally:
        envs.close()


def test_off_policy_the_corrections_differ_and_the_ratio_is_reported_truncated():
    cfg, envs, model, collector = collected_unroll()
    try:
        unroll = unroll_from(collector, model, 0)
        # The behaviour policy gave every taken action more probability than the learner does: ratios e^-0.5.
        stale = Unrolls(**{**vars(unroll), "behaviour_log_probs": unroll.behaviour_log_probs + 0.5})
        gradients = {}
        for correction in ("vtrace", "none", "truncated_is", "ppo_clip", "decoupled"):
            cfg.algo.correction = correction
            gradients[correction], stats = gradient_of(model, lambda: off_policy_step(cfg, model, stale))
            assert stats["importance_ratio"] == pytest.approx(math.exp(-0.5), rel=1e-5)
        for correction in ("vtrace", "truncated_is", "ppo_clip", "decoupled"):
            assert not torch.allclose(gradients[correction], gradients["none"]), correction
        # Ratios above rho_bar are truncated to it: from a less likely behaviour, every ratio counts as 1.
        cfg.algo.correction = "vtrace"
        fresh = Unrolls(**{**vars(unroll), "behaviour_log_probs": unroll.behaviour_log_probs - 0.5})
        assert gradient_of(model, lambda: off_policy_step(cfg, model, fresh))[1]["importance_ratio"] == 1.0
    finally:
        envs.close()


def test_the_parameter_board_gives_the_last_published_version():
    board = ParameterBoard(0, torch.zeros(4))
    out = torch.empty(4)
    assert board.read_into(out) == 0 and torch.equal(out, torch.zeros(4))
    board.publish(7, torch.arange(4.0))
    assert board.read_into(out) == 7 and torch.equal(out, torch.arange(4.0))


# --------------------------------------------------------------------------- whole runs
def test_one_actor_waiting_for_each_update_gives_the_parameters_of_single(tmp_path):
    common = ["seed=3", "total_env_steps=1500"]
    train_run(tmp_path / "single", "algo=single", *common)
    record = train_run(tmp_path / "impala", *LOCKSTEP, *common)
    assert record.status == "completed"
    single, impala = (read_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("single", "impala"))
    assert single["policy_version"] == impala["policy_version"] == 300
    # The same actions were sampled all along (every episode ends at the same step with the same return); the
    # parameters agree to float32 rounding, not bit for bit: the learner computes V(x) in one batched torch pass
    # (and V-trace's targets as corrections to it), single from the values its actor computed step by step.
    assert episodes(tmp_path / "impala") == episodes(tmp_path / "single")
    for name, tensor in single["model"].items():
        torch.testing.assert_close(impala["model"][name], tensor, rtol=1e-5, atol=1e-6)
    rows = updates(tmp_path / "impala")
    assert [row["staleness"] for row in rows] == [0] * 300
    assert {float(row["importance_ratio"]) for row in read_csv(tmp_path / "impala" / "metrics.csv")} == {1.0}


def test_delay_makes_the_actor_act_exactly_k_versions_behind(run_dir):
    train_run(run_dir, *LOCKSTEP, "algo.staleness.delay=3", "total_env_steps=500")
    rows = updates(run_dir)
    assert [row["staleness"] for row in rows] == [min(version, 3) for version in range(100)]
    assert [row["version_at_apply"] for row in rows] == list(range(100))
    ratios = [float(row["importance_ratio"]) for row in read_csv(run_dir / "metrics.csv")]
    assert ratios[0] < 1.0  # acting three versions behind the learner, the actions' ratios are no longer 1


def test_two_actors_record_every_unroll_with_the_versions_it_was_acted_with_and_applied_to(run_dir):
    record = train_run(run_dir, *IMPALA, "algo.num_workers=2", "algo.batch_size=2", "total_env_steps=3000")
    assert record.status == "completed"
    rows = updates(run_dir)
    assert len(rows) == 2 * record.policy_version == 3000 // 5
    assert Counter(row["version_at_apply"] for row in rows) == {version: 2 for version in range(record.policy_version)}
    assert {row["worker"] for row in rows} == {0, 1}
    for row in rows:
        assert row["staleness"] == row["version_at_apply"] - row["version_at_sync"] >= 0
    for worker in (0, 1):  # an actor acts with the versions the learner publishes, in order
        synced = [row["version_at_sync"] for row in rows if row["worker"] == worker]
        assert synced == sorted(synced)
    assert max(row["staleness"] for row in rows) >= 1  # actors ran ahead of the learner
    ratios = [float(row["importance_ratio"]) for row in read_csv(run_dir / "metrics.csv")]
    assert all(0 < ratio <= 1 for ratio in ratios)
    assert len(read_csv(run_dir / "episodes.csv")) > 0
    assert worker_pids(os.getpid()) == []


def test_a_killed_actor_is_logged_and_restarted(run_dir):
    killed: list[int] = []
    thread = kill_a_worker_once_running(run_dir, killed)
    record = train_run(run_dir, *IMPALA, "algo.num_workers=2", "algo.batch_size=1", "total_env_steps=8000")
    thread.join()
    assert killed, "the run ended before an actor could be killed"
    assert record.status == "completed" and record.env_steps >= 8000
    failures = read_meta(run_dir)["worker_failures"]
    assert len(failures) == 1 and failures[0]["exitcode"] == -signal.SIGKILL
    assert (run_dir / "events.jsonl").read_text().count('"worker_restarted"') == 1
    rows = updates(run_dir)
    assert [row["version_at_apply"] for row in rows] == list(range(len(rows)))
    assert worker_pids(os.getpid()) == []


def test_a_death_beyond_max_restarts_fails_the_run_with_a_checkpoint(run_dir):
    killed: list[int] = []
    thread = kill_a_worker_once_running(run_dir, killed)
    with pytest.raises(WorkerFailure, match=r"killed by SIGKILL.*no restart is left \(algo.max_restarts=0\)"):
        train_run(run_dir, *IMPALA, "algo.num_workers=2", "algo.max_restarts=0", "total_env_steps=8000")
    thread.join()
    meta = read_meta(run_dir)
    assert meta["status"] == "failed"
    assert read_checkpoint(run_dir / "checkpoints" / "last.pt")["policy_version"] == meta["final"]["policy_version"] > 0
    assert worker_pids(os.getpid()) == []


def test_resume_continues_from_the_checkpoint(run_dir):
    common = [*IMPALA, "algo.num_workers=2", "algo.batch_size=2"]
    first = train_run(run_dir, *common, "total_env_steps=1000")
    second = train_run(run_dir, *common, "total_env_steps=2000", "resume=true")
    assert second.status == "completed" and second.env_steps >= 2000
    rows = updates(run_dir)
    assert [row["update"] for row in rows] == list(range(1, len(rows) + 1))
    assert min(row["version_at_sync"] for row in rows[len(rows) // 2 + 1:]) >= first.policy_version
    assert read_meta(run_dir)["resumed_at_env_steps"] == [first.env_steps]
    assert read_checkpoint(run_dir / "checkpoints" / "last.pt")["policy_version"] == second.policy_version
    assert worker_pids(os.getpid()) == []


def test_one_simulated_actor_in_lockstep_gives_the_local_run_bit_for_bit(tmp_path):
    common = [*LOCKSTEP, "seed=3", "total_env_steps=1500", "algo.staleness.delay=2"]
    train_run(tmp_path / "local", *common)
    record = train_run(tmp_path / "simulated", *common, "backend=simulated")
    assert record.status == "completed"
    for name in ("updates.csv", "episodes.csv"):  # all but the clocks
        rows = [[{key: value for key, value in row.items() if key != "wall_time"} for row in records(run)[name]]
                for run in (tmp_path / "local", tmp_path / "simulated")]
        assert_identical(*rows)
    assert_identical(final_state(tmp_path / "local")["model"], final_state(tmp_path / "simulated")["model"])
    assert read_meta(tmp_path / "simulated")["clock"] == "simulated"


def test_simulated_actors_are_bit_reproducible_at_64_with_stragglers(tmp_path):
    setting = ["algo=impala", "algo.num_workers=64", "algo.batch_size=8", "backend=simulated", "total_env_steps=3200",
               "log_interval=320", "sim.jitter_sigma=0.3", "sim.straggler_fraction=0.1", "sim.straggler_slowdown=5"]
    for name in ("first", "second"):
        train_run(tmp_path / name, *IMPALA, *setting)
    for name in ("metrics.csv", "updates.csv", "episodes.csv"):  # wall-clock columns included: virtual seconds
        assert read_csv(tmp_path / "first" / name) == read_csv(tmp_path / "second" / name)
    rows = updates(tmp_path / "first")
    assert len(rows) == 3200 // 5 and {row["worker"] for row in rows} == set(range(64))
    # 64 actors, 2 slots each, 8 unrolls per update: the queue holds up to 16 updates' worth of unrolls.
    assert 8 <= np.mean([row["staleness"] for row in rows]) <= 16


@pytest.mark.parametrize(("overrides", "key"), [
    (["algo=impala", "algo.correction=retrace"], "algo.correction"),
    (["algo=impala", "algo.batch_size=0"], "algo.batch_size"),
    (["algo=impala", "algo.queue_depth=0"], "algo.queue_depth"),
    (["algo=impala", "algo.num_workers=1", "algo.queue_depth=1", "algo.batch_size=2"], "algo.batch_size"),
    (["algo=impala", "algo.rho_bar=0"], "algo.rho_bar"),
    (["algo=impala", "algo.c_bar=nan"], "algo.c_bar"),
    (["algo=impala", "algo.staleness.max=4"], "algo.staleness.max"),
    (["algo=impala", "algo.staleness.lr_scaling=inverse"], "algo.staleness.lr_scaling"),
    (["algo=impala", "algo.vector_backend=async"], "algo.vector_backend"),
    (["algo=a3c", "algo.batch_size=4"], "algo.batch_size"),
    (["algo=a2c", "algo.correction=none"], "algo.correction"),
    (["algo=single", "algo.wait_for_update=true"], "algo.wait_for_update"),
])
def test_a_bad_impala_setting_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert error.value.key == key


# --------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_two_actors_learn_cartpole(run_dir):
    """The order of two actors' unrolls is not reproducible, so the bar leaves room. Measured (2 actors, 2 unrolls
    per update, 100k steps, on this 2-core machine): the 20-episode mean first reached 475 at 44k, 32k and 66k
    steps (seeds 0, 1, 2); of seven more seed-0 runs six passed 350 (two reached 500, one peaked at 447) and one
    did not. A random policy scores about 22; a learner that does not learn stays under 100.

    Cost: three busy processes (two actors, the learner) for about 19 s on two idle cores.
    """
    record = train_run(run_dir, *IMPALA, "algo.num_workers=2", "algo.batch_size=2", "total_env_steps=100000",
                       "log_interval=1000")
    assert record.status == "completed"
    returns = [float(row["return_mean"]) for row in read_csv(run_dir / "metrics.csv")]
    assert np.nanmax(returns) >= 200
