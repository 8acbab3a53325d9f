"""APPO (algo=appo): with one actor in lockstep it is PPO's one-process schedule; its lag per minibatch step is data
on every transport; max_policy_lag leaves out what is too old, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from algorithms.core.rollout import behaviour_log_probs
from algorithms.infra.checkpoint import read_checkpoint
from algorithms.schedules.actor_learner import InFlightUnroll
from algorithms.schedules.worker import RolloutWorker
from tests.conftest import compose_config, read_csv, train_run
from tests.test_resume import records

FAST = ["logger.wandb.mode=disabled", "quiet=true"]
# One actor acting again only once its unroll's update is published, one unroll a batch: every batch is on-policy.
LOCKSTEP = ["algo=appo", "algo.num_workers=1", "algo.batch_size=1", "algo.queue_depth=1", "algo.wait_for_update=true"]
SMALL = ["algo.num_envs=2", "algo.n_steps=16", "algo.epochs=2", "algo.minibatches=4", *FAST]


def test_one_actor_in_lockstep_gives_the_parameters_of_ppo(tmp_path: Path):
    """On-policy, uncorrected, with lambda 1 (V-trace's advantages are then GAE's): the same samples, shuffles and
    steps as algo=ppo; the parameters agree to float32 rounding (the learner computes the values in one batched
    pass, PPO's collector while acting)."""
    common = ["seed=5", "total_env_steps=640", "algo.gae_lambda=1.0", *SMALL]
    train_run(tmp_path / "ppo", "algo=ppo", *common)
    train_run(tmp_path / "appo", *LOCKSTEP, "algo.correction=none", *common)
    ppo, appo = (read_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("ppo", "appo"))
    assert ppo["policy_version"] == appo["policy_version"] == 20 * 8
    for name, tensor in ppo["model"].items():
        torch.testing.assert_close(appo["model"][name], tensor, rtol=1e-4, atol=1e-6)
    ppo_rows, appo_rows = (read_csv(tmp_path / name / "updates.csv") for name in ("ppo", "appo"))
    versions = [[(row["version_at_sync"], row["version_at_apply"]) for row in rows] for rows in (ppo_rows, appo_rows)]
    assert versions[0] == versions[1]


@pytest.mark.parametrize("backend", ["local", "simulated"])
def test_max_policy_lag_leaves_out_older_samples_and_records_it(tmp_path: Path, backend: str):
    """The actor acts 3 versions behind (staleness.delay): bounded at 3 every sample is kept, at 2 every batch from
    the third version on is dropped, its rows recorded as not applied, and the run completes without learning on."""
    common = [*LOCKSTEP, *SMALL, "algo.staleness.delay=3", "total_env_steps=320", "log_interval=64",
              f"backend={backend}"]
    train_run(tmp_path / "kept", *common, "algo.max_policy_lag=3")
    kept = read_csv(tmp_path / "kept" / "updates.csv")
    assert all(row["applied"] == "1" for row in kept) and len(kept) == 10 * 8
    assert {float(row["lag_dropped"]) for row in read_csv(tmp_path / "kept" / "metrics.csv")} == {0.0}
    record = train_run(tmp_path / "bounded", *common, "algo.max_policy_lag=2")
    assert record.status == "completed" and record.env_steps == 320
    rows = read_csv(tmp_path / "bounded" / "updates.csv")
    # Batch 1, acted with version 0, takes its 8 steps; batch 2 was acted with version 8 - 3 = 5, lag 3 > 2, and is
    # dropped, as are the 8 after it (the version stays at 8).
    assert [row["applied"] for row in rows] == ["1"] * 8 + ["0"] * 9
    assert {row["version_at_apply"] for row in rows[8:]} == {"8"}
    assert float(read_csv(tmp_path / "bounded" / "metrics.csv")[-1]["lag_dropped"]) == 1.0


def test_one_simulated_actor_in_lockstep_gives_the_local_run_bit_for_bit(tmp_path: Path):
    common = [*LOCKSTEP, *SMALL, "seed=3", "total_env_steps=640", "algo.staleness.delay=2"]
    train_run(tmp_path / "local", *common)
    train_run(tmp_path / "simulated", *common, "backend=simulated")
    for name in ("updates.csv", "episodes.csv"):  # all but the clocks
        rows = [[{key: value for key, value in row.items() if key != "wall_time"} for row in records(run)[name]]
                for run in (tmp_path / "local", tmp_path / "simulated")]
        assert rows[0] == rows[1], name
    local, simulated = (read_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("local", "simulated"))
    assert all(torch.equal(local["model"][name], simulated["model"][name]) for name in local["model"])


def test_two_actors_record_each_step_with_the_version_its_unroll_was_acted_with(tmp_path: Path):
    """Two free-running actors, two unrolls of 32 steps a batch: 8 steps a batch, a row per unroll and step; within a
    batch the version applied to grows by one a step, and every row's lag is at least the step's index in it."""
    train_run(tmp_path, "algo=appo", *SMALL, "total_env_steps=1280", "log_interval=320")
    rows = read_csv(tmp_path / "updates.csv")
    assert len(rows) == 1280 // 64 * 8 * 2
    for batch in range(len(rows) // 16):
        part = rows[16 * batch: 16 * (batch + 1)]
        assert [int(row["version_at_apply"]) for row in part[::2]] == list(range(8 * batch, 8 * (batch + 1)))
        assert all(int(row["staleness"]) >= index // 2 for index, row in enumerate(part))
        assert {row["worker"] for row in part} <= {"0", "1"}


def test_a_resumed_run_continues_from_the_checkpoint(tmp_path: Path):
    args = ["algo=appo", *SMALL, "log_interval=320", "checkpoint_interval=320"]
    first = train_run(tmp_path, *args, "total_env_steps=640")
    # A new budget re-anneals the learning rate: a deliberate change of the experiment.
    second = train_run(tmp_path, *args, "total_env_steps=1280", "resume=true", "resume_accept_changes=true")
    assert second.status == "completed" and second.env_steps >= 1280
    rows = read_csv(tmp_path / "updates.csv")
    assert [int(row["update"]) for row in rows] == list(range(1, len(rows) + 1))
    assert min(int(row["version_at_sync"]) for row in rows[len(rows) // 2 + 16:]) >= first.policy_version
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt")["policy_version"] == second.policy_version


# --------------------------------------------------------------------------- in-flight updates
def test_an_in_flight_unroll_keeps_each_step_s_behaviour_version_and_log_probabilities():
    cfg = compose_config("algo=appo", "algo.num_envs=2", "algo.n_steps=8", "algo.in_flight_updates=true")
    actor = RolloutWorker(cfg, 0, 0)
    try:
        first = actor.model.flat_params.clone()
        unroll = InFlightUnroll(actor, 7)
        for _ in range(3):
            assert unroll.step()
        newer = first + 0.05 * torch.randn_like(first)
        unroll.load(lambda out: (out.copy_(newer), 9)[1])  # version 9 is published after the third step
        while unroll.step():
            pass
        ready, acted = unroll.finish()
    finally:
        actor.close()
    assert ready.version == 7 and acted.behaviour_versions.tolist() == [[7, 7]] * 3 + [[9, 9]] * 5
    rollout = actor.collector.rollout
    expected = behaviour_log_probs(rollout, actor.model, 3)
    torch.testing.assert_close(acted.behaviour_log_probs[3:], expected, rtol=0, atol=0)
    actor.model.flat_params.copy_(first)
    torch.testing.assert_close(acted.behaviour_log_probs[:3], behaviour_log_probs(rollout, actor.model, 0, 3),
                               rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["local", "simulated"])
def test_in_flight_updates_change_nothing_when_nothing_is_published_during_an_unroll(tmp_path: Path, backend: str):
    """One actor in lockstep: no version is published while it acts, so the unrolls are those of the plain schedule."""
    common = [*LOCKSTEP, *SMALL, "seed=2", "total_env_steps=320", f"backend={backend}"]
    train_run(tmp_path / "plain", *common)
    train_run(tmp_path / "in_flight", *common, "algo.in_flight_updates=true")
    plain, in_flight = (read_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("plain", "in_flight"))
    assert all(torch.equal(plain["model"][name], in_flight["model"][name]) for name in plain["model"])


@pytest.mark.parametrize("backend", ["local", "simulated"])
def test_actors_taking_in_flight_updates_train_and_record(tmp_path: Path, backend: str):
    record = train_run(tmp_path, "algo=appo", "algo.num_workers=2", *SMALL, "algo.in_flight_updates=true",
                       "total_env_steps=1280", "log_interval=320", f"backend={backend}")
    assert record.status == "completed" and record.env_steps >= 1280
    rows = read_csv(tmp_path / "updates.csv")
    assert len(rows) == 1280 // 64 * 8 * 2 and all(row["applied"] == "1" for row in rows)
