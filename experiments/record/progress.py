"""What a run shows at its terminal: a progress bar while it trains (unless ``quiet``), and one summary line at its
end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


class ProgressBar:
    """A tqdm bar of env steps, moved on at each metrics row."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.bar: Any = None

    def open(self, env_steps: int) -> None:
        """Show the bar from ``env_steps`` (where a resumed run continues), unless the run is ``quiet``."""
        if self.cfg.quiet:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=self.cfg.total_env_steps, initial=env_steps, unit="step",
                        unit_scale=True, dynamic_ncols=True, mininterval=0.5,
                        desc=f"{self.cfg.algo.name}/{self.cfg.algo.mode} {self.cfg.env.id}")

    def advance(self, row: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.update(row["env_steps"] - self.bar.n)
        ret = row["return_mean"]
        self.bar.set_postfix_str(
            f"{row['sps']:.0f} steps/s, return {'-' if math.isnan(ret) else f'{ret:.1f}'}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary_line(cfg: DictConfig, run_dir: Path, status: str, error: str | None, final: dict[str, Any],
                 virtual: bool) -> str:
    """How the run ended, in one line: ``final`` is meta.json's, ``virtual`` whether its seconds are simulated."""
    ret = "no finished episode" if final["return_mean"] is None else (
        f"return_mean {final['return_mean']:.1f} over the last {final['return_window']} episodes")
    if (evaluation := final["eval"]) is not None:
        ret += (f"; evaluation at {evaluation['env_steps']} env steps: return_mean {evaluation['return_mean']:.1f} "
                f"over {evaluation['episodes']} episodes")
    error = f" ({error})" if error else ""
    return (f"{status}{error}: {cfg.algo.name}/{cfg.algo.mode} on {cfg.env.id}, "
            f"seed {cfg.seed}: {final['env_steps']} env steps in {final['wall_time']:.1f}"
            f"{' virtual ' if virtual else ''}s "
            f"({final['sps']:.0f} steps/s), {ret}. Run record: {run_dir}")
