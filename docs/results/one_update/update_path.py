"""The cost of one update on the update path alone: the inline code that single.run had before the update rule
(commit 6e12ec5, replicated below as ``inline``) against ``UpdateRule.learn``, on the same model, optimizer and
rollout (CartPole-v1, a2c vector mode with 4 envs: the smallest model, where Python overhead weighs most),
alternating one update of each, 6,000 times, in one process. Run from the repository root:

    .venv/bin/python docs/results/one_update/update_path.py
"""
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from algorithms.config import RunConfig
from algorithms.core.envs import make_vector_env
from algorithms.core.model import build_model
from algorithms.core.optimizers import make_optimizer, set_learning_rate
from algorithms.core.rollout import start_collector
from algorithms.infra.messages import UpdateRow
from algorithms.updates import rule_for
from algorithms.updates.actor_critic import compute_gradients
from algorithms.updates.guard import NonFiniteGuard
from algorithms.updates.rule import Progress, Source, Target, learning_rate
from experiments.train import CONFIG_DIR

torch.set_num_threads(1)
with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
    dcfg = compose(config_name="config", overrides=["algo=a2c", "algo.mode=vector", "algo.num_envs=4"])
cfg = RunConfig.from_config(OmegaConf.to_object(dcfg))
envs = make_vector_env(cfg.env, 4)
model = build_model(cfg, envs)
optimizer = make_optimizer(model, cfg.algo)
collector = start_collector(cfg, envs, 0, 0, None)
collector.collect(model)
rule = rule_for(cfg, Target(optimizer, model.flat_params))
guard = NonFiniteGuard(cfg.algo, 0)
progress = Progress()

def inline():
    env_steps, version = progress.env_steps, progress.version
    lr = learning_rate(cfg.algo, env_steps, cfg.total_env_steps)
    set_learning_rate(optimizer, lr)
    stats = compute_gradients(model, collector.rollout, cfg.algo)
    env_steps += 20
    applied = guard.admits(stats, version, env_steps)
    if applied:
        optimizer.step()
        guard.check_parameters(model.flat_params, version, env_steps)
    row = UpdateRow(env_steps, version, version, applied, lr, **stats, checkpoint=False)
    progress.env_steps, progress.version = env_steps, version + applied
    return row

def rule_learn():
    rows = rule.learn(model, collector.rollout, progress, [Source(0, progress.version)], 20)
    return [learned.row for learned in rows]

times: dict[str, list[float]] = {"inline": [], "rule": []}
for _ in range(6000):
    for name, fn in (("inline", inline), ("rule", rule_learn)):
        started = time.perf_counter()
        fn()
        times[name].append((time.perf_counter() - started) * 1e6)
for name, t in times.items():
    t = t[500:]
    print(f"{name}: median {statistics.median(t):.1f} us, p10 {sorted(t)[len(t)//10]:.1f} us")
print(f"rule/inline median: {statistics.median(times['rule'][500:]) / statistics.median(times['inline'][500:]):.3f}")
