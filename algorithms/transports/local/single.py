"""One learner process: the single-worker baseline (``algo=single``) and A2C's vector mode (``algo=a2c``).

One process steps ``algo.num_envs`` envs in lockstep (one for ``single``), acts for all of them in one
batched forward pass per step, and updates once per ``num_envs * n_steps`` transitions. With one env,
A2C's vector mode is this same loop and gives ``single``'s parameters exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from algorithms.core.envs import make_vector_env
from algorithms.core.evaluation import take_snapshot
from algorithms.core.model import build_model, learner_device
from algorithms.core.optimizers import make_optimizer, set_learning_rate
from algorithms.core.rollout import start_collector
from algorithms.infra.checkpoint import check_collectors, make_checkpoint, restore_model, restore_rng_state, rng_state
from algorithms.infra.messages import Record, UpdateRow, record_episodes, record_update
from algorithms.updates.actor_critic import compute_gradients
from algorithms.updates.guard import NonFiniteGuard
from algorithms.updates.rule import learning_rate


def run(cfg: Any, record: Record) -> None:
    """collect -> returns and loss -> step -> record, until the budget or a stop; checkpoint on the way."""
    torch.set_num_threads(cfg.torch_threads)
    algo, num_envs = cfg.algo, cfg.algo.num_envs
    envs = make_vector_env(cfg.env, num_envs, algo.vector_backend, algo.start_method)
    try:
        model = build_model(cfg, envs).place(learner_device(cfg))
        optimizer = make_optimizer(model, algo)
        env_steps, version, collector_state = 0, 0, None
        if (state := record.resume_state) is not None:
            restore_model(state, model, optimizer)
            collector_state = check_collectors(state, 1)[0]
            if state["rng"] is not None:
                restore_rng_state(state["rng"])
            env_steps, version = state["env_steps"], state["policy_version"]
        collector = start_collector(cfg, envs, 0, env_steps, collector_state)

        def checkpoint() -> dict[str, Any]:
            return make_checkpoint(model.state_dict(), optimizer.state_dict(), env_steps, version,
                                   collectors=[collector.state_dict()], rng=rng_state())

        guard = NonFiniteGuard(algo, worker=0)
        while env_steps < cfg.total_env_steps and not record.stop_requested:
            episodes = collector.collect(model)
            record_episodes(record, 0, env_steps, episodes)
            lr = learning_rate(algo, env_steps, cfg.total_env_steps)
            set_learning_rate(optimizer, lr)
            stats = compute_gradients(model, collector.rollout, algo)
            env_steps += collector.steps_per_collect
            applied = guard.admits(stats, version, env_steps)
            if applied:
                optimizer.step()
                guard.check_parameters(model.flat_params, version, env_steps)
            record_update(record, 0, UpdateRow(env_steps, version, version, applied, lr, **stats))
            version += applied
            if record.evaluation_due(env_steps):
                record.evaluate(take_snapshot(model.flat_params, env_steps, version, collector.obs_normalizer))
            if record.checkpoint_due(env_steps):
                record.save_checkpoint(checkpoint())
        record.save_checkpoint(checkpoint())
    finally:
        envs.close()
