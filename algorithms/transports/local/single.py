"""One learner process: the single-worker baseline (``algo=single``) and A2C's vector mode (``algo=a2c``).

One process steps ``algo.num_envs`` envs in lockstep (one for ``single``), acts for all of them in one
batched forward pass per step, and updates once per ``num_envs * n_steps`` transitions. With one env,
A2C's vector mode is this same loop and gives ``single``'s parameters exactly.
"""

from __future__ import annotations

import torch

from algorithms.config import RunConfig
from algorithms.core.envs import make_vector_env
from algorithms.core.evaluation import take_snapshot
from algorithms.core.model import build_model, learner_device
from algorithms.core.optimizers import make_optimizer
from algorithms.core.rollout import start_collector
from algorithms.infra.checkpoint import (
    Checkpoint,
    check_collectors,
    make_checkpoint,
    restore_model,
    restore_rng_state,
    rng_state,
)
from algorithms.infra.messages import Record, record_episodes, record_update
from algorithms.updates import rule_for
from algorithms.updates.rule import Progress, Source, Target


def run(cfg: RunConfig, record: Record) -> None:
    """collect -> the update rule learns from the rollout -> record, until the budget or a stop; checkpoints on the
    way."""
    torch.set_num_threads(cfg.torch_threads)
    algo, num_envs = cfg.algo, cfg.algo.num_envs
    envs = make_vector_env(cfg.env, num_envs, algo.vector_backend, algo.start_method)
    try:
        model = build_model(cfg, envs).place(learner_device(cfg))
        optimizer = make_optimizer(model, algo)
        progress, collector_state = Progress(), None
        if (state := record.resume_state) is not None:
            restore_model(state, model, optimizer)
            collector_state = check_collectors(state, 1)[0]
            if state["rng"] is not None:
                restore_rng_state(state["rng"])
            progress = Progress(state["policy_version"], state["env_steps"])
        collector = start_collector(cfg, envs, 0, progress.env_steps, collector_state)
        rule = rule_for(cfg, Target(optimizer, model.flat_params))

        def checkpoint() -> Checkpoint:
            return make_checkpoint(model.state_dict(), optimizer.state_dict(), progress.env_steps, progress.version,
                                   collectors=[collector.state_dict()], rng=rng_state())

        while progress.env_steps < cfg.total_env_steps and not record.stop_requested:
            episodes = collector.collect(model)
            record_episodes(record, 0, progress.env_steps, episodes)
            for learned in rule.learn(model, collector.rollout, progress, [Source(0, progress.version)],
                                      collector.steps_per_collect):
                record_update(record, learned.worker, learned.row, **learned.extra)
            if record.evaluation_due(progress.env_steps):
                record.evaluate(take_snapshot(model.flat_params, progress.env_steps, progress.version,
                                              collector.obs_normalizer))
            if record.checkpoint_due(progress.env_steps):
                record.save_checkpoint(checkpoint())
        record.save_checkpoint(checkpoint())
    finally:
        envs.close()
