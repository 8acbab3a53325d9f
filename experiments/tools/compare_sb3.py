"""This harness's A2C or PPO next to Stable-Baselines3's, on deterministic evaluation returns, against published scores.

For every env and seed, on the published run's settings (``--algo a2c``: the env file's values with the zoo's
``n_envs`` and ``n_timesteps``; ``--algo ppo``: ``conf/tuned/ppo_ENV.yaml``, CleanRL's or the zoo's, budget included):

- ours: ``algo=a2c`` or ``algo=ppo`` (vector mode) trained in this process into a run directory, evaluated at its end
  by its own ``eval.*`` (deterministic, ``--episodes`` episodes);
- SB3's: ``experiments.tools.sb3_peer.build_peer`` on the same config over the same envs (``VecNormalize`` where the
  env file normalizes), trained the same env steps, evaluated by ``evaluate_policy`` on as many deterministic
  episodes of a fresh env with the training statistics frozen, as the zoo evaluates.

It prints a Markdown table (mean and standard deviation over seeds of each run's evaluation mean, next to the
published score, its source, env id and budget) and writes it with every run's numbers as JSON to ``--out``.
Stable-Baselines3 is a development dependency.

    python -m experiments.tools.compare_sb3 --env cartpole acrobot lunarlander halfcheetah --seeds 0 1 2
    python -m experiments.tools.compare_sb3 --algo ppo --env cartpole acrobot lunarlander --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, cast

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.config import ConfigError, validate
from experiments.train import CONFIG_DIR, train


class Published(NamedTuple):
    """A published score (mean and standard deviation of returns as its source measures them: the zoo's over the
    deterministic evaluation episodes of one agent, CleanRL's training episodes'), where it is published, on which env
    id and budget, and the overrides that put our run on its settings beyond what the config composes."""

    source: str
    env_id: str
    mean: float
    std: float
    steps: int
    overrides: tuple[str, ...] = ()


ZOO = "rl-baselines3-zoo benchmark.md"
CLEANRL = "CleanRL ppo.py (Huang et al. 2022)"
# rl-baselines3-zoo's A2C: the env files hold its settings except hyperparams/a2c.yml's n_envs (1 where it sets none).
ZOO_A2C = {
    "cartpole": Published(ZOO, "CartPole-v1", 500.0, 0.0, 500_000, ("algo.num_envs=8",)),
    "acrobot": Published(ZOO, "Acrobot-v1", -83.353, 17.213, 500_000, ("algo.num_envs=16",)),
    "lunarlander": Published(ZOO, "LunarLander-v2", 155.751, 80.419, 200_000, ("algo.num_envs=8",)),
    "halfcheetah": Published(ZOO, "HalfCheetah-v3", 3041.174, 157.265, 1_000_000, ("algo.num_envs=1",)),
}
# PPO: conf/tuned/ppo_ENV.yaml holds each source's settings, envs included.
PUBLISHED = {
    "a2c": ZOO_A2C,
    "ppo": {
        "cartpole": Published(CLEANRL, "CartPole-v1", 490.0, 6.0, 500_000),
        "acrobot": Published(CLEANRL, "Acrobot-v1", -86.0, 1.0, 500_000),
        "lunarlander": Published(ZOO, "LunarLander-v2", 242.119, 31.823, 1_000_000),
    },
}


def compose_run(algo: str, env: str, seed: int, steps: int, episodes: int) -> DictConfig:
    overrides = [f"algo={algo}", *PUBLISHED[algo][env].overrides, f"env={env}", f"seed={seed}",
                 f"total_env_steps={steps}", f"checkpoint_interval={steps}", f"eval.episodes={episodes}",
                 "eval.deterministic=true", "logger.wandb.mode=disabled", "quiet=true"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    try:
        validate(cfg)
    except ConfigError as error:
        raise SystemExit(f"error: {env} seed {seed}: {error}") from error
    return cfg


def our_evaluation(cfg: DictConfig, run_dir: Path) -> float:
    record = train(cfg, str(run_dir))
    if record.status != "completed":
        raise SystemExit(f"error: our run in {run_dir} ended {record.status}: {record.error}")
    with (run_dir / "evals.csv").open(newline="") as handle:
        return float(list(csv.DictReader(handle))[-1]["return_mean"])


def sb3_evaluation(cfg: DictConfig) -> float:
    """SB3's A2C or PPO trained on ``cfg`` and evaluated as the zoo does."""
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

    from algorithms.core.envs import make_env
    from experiments.tools.sb3_peer import build_peer

    torch.set_num_threads(cfg.torch_threads)
    peer = build_peer(cfg, envs_from="ours")
    peer.learn(total_timesteps=cfg.total_env_steps)
    eval_env: VecEnv = DummyVecEnv([lambda: Monitor(make_env(cfg.env))])  # Monitor: the raw returns, as the zoo's
    if isinstance(training_env := peer.get_env(), VecNormalize):
        normalized = VecNormalize(eval_env, training=False, norm_obs=cfg.env.normalize_obs, norm_reward=False,
                                  clip_obs=cfg.env.clip_obs)
        normalized.obs_rms = training_env.obs_rms
        eval_env = normalized
    eval_env.seed(cfg.seed + 1_000_000_000)  # apart from training's seeds, as our evaluation is
    mean, _ = evaluate_policy(peer, eval_env, n_eval_episodes=cfg.eval.episodes, deterministic=True)
    eval_env.close()
    peer.get_env().close()
    return float(cast(float, mean))  # a mean: evaluate_policy's type also covers its per-episode lists


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {deviation:.1f}"


def table(algo: str, results: dict[str, dict[str, Any]]) -> str:
    name = algo.upper()
    lines = [f"| env | env steps | seeds | ours ({name}) | Stable-Baselines3 {name} | published {name} |",
             "| --- | --- | --- | --- | --- | --- |"]
    for env, result in results.items():
        score = PUBLISHED[algo][env]
        lines.append(f"| {env} | {result['steps']:,} | {len(result['ours'])} | {spread(result['ours'])} | "
                     f"{spread(result['sb3'])} | {score.mean:.1f} ± {score.std:.1f} ({score.source}, "
                     f"{score.env_id}, {score.steps:,} steps) |")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.tools.compare_sb3",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=sorted(PUBLISHED), default="a2c")
    parser.add_argument("--env", nargs="+", choices=sorted({env for envs in PUBLISHED.values() for env in envs}),
                        help="default: every env with a published score for --algo")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="env steps of every run (default: the published)")
    parser.add_argument("--episodes", type=int, default=10, help="deterministic evaluation episodes per run")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directories and results (default: runs/compare_sb3, runs/compare_sb3_ppo for ppo)")
    args = parser.parse_args(argv)
    published = PUBLISHED[args.algo]
    args.env = args.env or sorted(published)
    if unpublished := [env for env in args.env if env not in published]:
        parser.error(f"--env {' '.join(unpublished)}: no published {args.algo} score (choose from "
                     f"{', '.join(sorted(published))})")
    args.out = args.out or Path("runs/compare_sb3" + ("" if args.algo == "a2c" else f"_{args.algo}"))
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps {args.steps}: must be a positive number of env steps")
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes}: must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    configs = {(env, seed): compose_run(args.algo, env, seed, args.steps or PUBLISHED[args.algo][env].steps,
                                        args.episodes)
               for env in args.env for seed in args.seeds}  # every config checked before the first run
    results: dict[str, dict[str, Any]] = {}
    for (env, seed), cfg in configs.items():
        result = results.setdefault(env, {"steps": cfg.total_env_steps, "ours": [], "sb3": [], "seconds": []})
        started = time.monotonic()
        result["ours"].append(our_evaluation(cfg, args.out / f"{env}_s{seed}"))
        result["sb3"].append(sb3_evaluation(cfg))
        result["seconds"].append(time.monotonic() - started)
        print(f"  {env} seed {seed}: ours {result['ours'][-1]:.1f}, SB3 {result['sb3'][-1]:.1f} "
              f"({result['seconds'][-1]:.0f} s)", file=sys.stderr, flush=True)
    print(table(args.algo, results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"algo": args.algo, "episodes": args.episodes,
                                                       "seeds": args.seeds, "results": results}, indent=2))
    (args.out / "results.md").write_text(table(args.algo, results) + "\n")


if __name__ == "__main__":
    main()
