"""Rerun a finished run from its saved config and compare: ``python -m experiments.reproduce RUN_DIR``.

The rerun trains into a new directory (``RUN_DIR-reproduced-<time>`` unless ``--out`` is given) from
the original's ``.hydra/config.yaml``, warns when the package versions or the git commit differ from
the original's, and prints the two runs' final metrics side by side. Single-process runs with the same
code and versions reproduce exactly: every metrics column except the wall-clock ones and the final
parameters are identical, which the comparison reports (``--require-identical`` turns a difference
into exit status 1).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.config import Config, exit_on_invalid
from experiments.record import git_state, package_versions
from experiments.train import train

WALL_CLOCK_COLUMNS = ("wall_time", "sps")
COMPARED = ("env_steps", "updates", "episodes", "return_mean", "return_max", "policy_loss", "value_loss",
            "entropy", "staleness_mean", "wall_time", "sps")


def load_run_config(run_dir: Path) -> DictConfig:
    """The original run's config, typed by the schema (so a stale key or value fails loudly)."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise SystemExit(f"error: {run_dir} has no .hydra/config.yaml: is it a run directory?")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved))
    assert isinstance(cfg, DictConfig)  # merged into the schema's DictConfig
    cfg.resume = False
    return cfg


def provenance_warnings(original: dict[str, Any]) -> list[str]:
    warnings = []
    current_versions = package_versions()
    for package, version in original.get("versions", {}).items():
        if current_versions.get(package) != version:
            warnings.append(f"{package} differs: original {version}, now {current_versions.get(package)}")
    current_git = git_state()
    if original.get("git_commit") != current_git["git_commit"]:
        warnings.append(f"git commit differs: original {original.get('git_commit')}, now {current_git['git_commit']}")
    if original.get("git_dirty") or current_git["git_dirty"]:
        warnings.append("a source tree had uncommitted changes (git_dirty), so the code may differ")
    return warnings


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def identical_runs(original: Path, rerun: Path) -> dict[str, bool]:
    """Whether the metrics (wall-clock columns aside) and the final parameters are exactly equal."""
    def strip(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{key: value for key, value in row.items() if key not in WALL_CLOCK_COLUMNS} for row in rows]

    def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
        return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]

    first, second = final_parameters(original), final_parameters(rerun)
    return {
        "metrics": strip(metric_rows(original)) == strip(metric_rows(rerun)),
        "parameters": first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first),
    }


def side_by_side(original: Path, rerun: Path) -> str:
    first, second = metric_rows(original)[-1], metric_rows(rerun)[-1]
    width = max(len(name) for name in COMPARED)
    lines = [f"{'final metric':<{width}}  {'original':>14}  {'reproduced':>14}"]
    for name in COMPARED:
        lines.append(f"{name:<{width}}  {_short(first.get(name)):>14}  {_short(second.get(name)):>14}")
    return "\n".join(lines)


def _short(value: str | None) -> str:
    if value in (None, ""):
        return "-"
    number = float(value)
    return f"{number:.0f}" if number.is_integer() else f"{number:.6g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory")
    parser.add_argument("--out", type=Path, help="where the rerun goes (default: RUN_DIR-reproduced-<time>)")
    parser.add_argument("--require-identical", action="store_true",
                        help="exit 1 unless metrics and final parameters are identical")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    original = json.loads((run_dir / "meta.json").read_text())
    if original["status"] != "completed":
        raise SystemExit(f"error: {run_dir} is {original['status']!r}; only completed runs can be reproduced")
    cfg = load_run_config(run_dir)
    exit_on_invalid(cfg)
    for warning in provenance_warnings(original):
        print(f"warning: {warning}", file=sys.stderr)
    out = args.out or run_dir.with_name(f"{run_dir.name}-reproduced-{dt.datetime.now():%Y%m%d-%H%M%S}")
    shutil.copytree(run_dir / ".hydra", out / ".hydra")
    record = train(cfg, str(out), original.get("overrides", []))
    if record.status != "completed":
        return 1
    same = identical_runs(run_dir, out)
    print(side_by_side(run_dir, out))
    print(f"metrics identical (wall-clock columns aside): {'yes' if same['metrics'] else 'no'}; "
          f"final parameters identical: {'yes' if same['parameters'] else 'no'}")
    if original["algo"] == "a3c" and original["num_workers"] > 1:
        print("note: asynchronous workers interleave by timing, so such runs reproduce statistically, not exactly")
    return 1 if args.require_identical and not all(same.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
