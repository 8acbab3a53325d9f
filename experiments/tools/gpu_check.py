"""Check a CUDA learner against the CPU one: ``python -m experiments.tools.gpu_check`` on a machine with a GPU.

1. For each pixel torso (Atari's Nature CNN on 4x84x84 frame stacks, MinAtar's on 10x10 grids) and the MLP,
   one batch of observations, actions and returns: the loss parts and the gradient computed on the GPU must
   match the CPU's (float32 tolerance: the GPU's convolutions sum in another order).
2. Short real runs with ``device=cuda`` of every schedule whose learner can sit on the GPU (single, a2c
   vector, the a3c parameter server) on MinAtar Breakout, and a2c vector on Atari Pong: each must complete,
   with a finite checkpoint; their env steps per second are printed beside the CPU's.

Exit status 0 when everything matches, 1 when something differs, 2 when there is no GPU. About two minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from algorithms.config import AlgoConfig
from algorithms.core.nets import ActorCritic
from algorithms.core.rollout import Rollout
from algorithms.infra.checkpoint import nonfinite_entry
from algorithms.updates.actor_critic import compute_gradients

RTOL, ATOL = 1e-4, 1e-5
BATCHES: dict[str, tuple[spaces.Box, int]] = {  # name: (observation space, action count)
    "atari_nature_cnn": (spaces.Box(0, 255, (4, 84, 84), np.uint8), 6),
    "minatar_cnn": (spaces.Box(0, 1, (4, 10, 10), np.uint8), 3),
    "mlp": (spaces.Box(-np.inf, np.inf, (8,), np.float32), 4),
}
RUNS = {
    "single minatar_breakout": ["algo=single", "env=minatar_breakout", "total_env_steps=4000"],
    "a2c vector minatar_breakout": ["algo=a2c", "algo.num_envs=16", "env=minatar_breakout", "total_env_steps=20000"],
    "a3c parameter_server minatar_breakout": ["algo=a3c", "algo.mode=parameter_server", "algo.num_workers=4",
                                              "env=minatar_breakout", "total_env_steps=20000"],
    "a2c vector atari_pong": ["algo=a2c", "algo.num_envs=16", "env=atari_pong", "total_env_steps=8000"],
}


def random_rollout(space: spaces.Box, actions: int, steps: int = 5, envs: int = 16) -> Rollout:
    rng = np.random.default_rng(0)
    shape = (steps, envs)
    if space.dtype == np.uint8:
        obs = torch.from_numpy(rng.integers(0, int(space.high.max()) + 1, shape + space.shape, dtype=np.uint8))
    else:
        obs = torch.from_numpy(rng.standard_normal(shape + space.shape).astype(np.float32))
    zeros = torch.zeros(shape)
    return Rollout(obs=obs, actions=torch.from_numpy(rng.integers(0, actions, shape)),
                   rewards=torch.from_numpy(rng.standard_normal(shape).astype(np.float32)),
                   values=torch.from_numpy(rng.standard_normal(shape).astype(np.float32)),
                   terminated=zeros, truncated=zeros, truncation_values=zeros, next_value=torch.zeros(envs))


def compare_one_batch(name: str, space: spaces.Box, actions: int) -> dict[str, Any]:
    """The loss parts and clipped gradient of one batch, on the CPU and on the GPU, from the same parameters."""
    algo, rollout = AlgoConfig(name="a2c", mode="vector", entropy_coef=0.01), random_rollout(space, actions)
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = ActorCritic(space, spaces.Discrete(actions), [64, 64]).place(torch.device(device))
        stats = compute_gradients(model, rollout, algo)
        results[device] = (stats, model.flat_grads.cpu())
    (cpu_stats, cpu_grad), (gpu_stats, gpu_grad) = results["cpu"], results["cuda"]
    losses_match = all(np.isclose(cpu_stats[key], gpu_stats[key], rtol=RTOL, atol=ATOL) for key in cpu_stats)
    gradient_gap = float((cpu_grad - gpu_grad).abs().max())
    return {"check": name, "cpu": cpu_stats, "cuda": gpu_stats, "max_gradient_difference": gradient_gap,
            "ok": losses_match and bool(torch.allclose(cpu_grad, gpu_grad, rtol=RTOL * 10, atol=ATOL * 10))}


def timed_run(overrides: list[str], device: str, run_dir: Path) -> dict[str, Any]:
    """A real run of the command line; its status, env steps per second and whether its checkpoint is finite."""
    command = [sys.executable, "-m", "experiments.train", *overrides, f"device={device}", "quiet=true",
               "logger.wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    meta = json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").exists() else {}
    checkpoint = run_dir / "checkpoints" / "last.pt"
    finite = checkpoint.exists() and nonfinite_entry(torch.load(checkpoint, weights_only=False)["model"]) is None
    return {"status": meta.get("status", f"exit {done.returncode}: {done.stderr.strip()[-300:]}"),
            "sps": (meta.get("final") or {}).get("sps"), "finite": finite, "seconds": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device here; this check needs one", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "batches": [], "runs": []}
    for name, (space, actions) in BATCHES.items():
        results["batches"].append(check := compare_one_batch(name, space, actions))
        print(f"{name:>22}: {'ok' if check['ok'] else 'DIFFERS'} "
              f"(max gradient difference {check['max_gradient_difference']:.2e})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in RUNS.items():
            row: dict[str, Any] = {
                "run": name, **{device: timed_run(overrides, device, Path(tmp) / f"{len(results['runs'])}-{device}")
                                 for device in ("cuda", "cpu")}}
            row["ok"] = row["cuda"]["status"] == "completed" and row["cuda"]["finite"]
            results["runs"].append(row)
            print(f"{name:>38}: cuda {row['cuda']['status']} {row['cuda']['sps'] or 0:.0f} steps/s, "
                  f"cpu {row['cpu']['status']} {row['cpu']['sps'] or 0:.0f} steps/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    ok = all(item["ok"] for item in results["batches"] + results["runs"])
    print("all checks passed" if ok else "some checks FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
