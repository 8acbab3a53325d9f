"""A run's checkpoints: ``checkpoints/last.pt`` and ``prev.pt`` (the one before), when the next is due, and which
one a resume continues from."""

from __future__ import annotations

import sys
from pathlib import Path

from algorithms.infra.checkpoint import Checkpoint, CheckpointError, read_checkpoint, write_checkpoint
from experiments.record.meta import RunFailed
from experiments.record.metrics import next_on_grid


def checkpoint_paths(run_dir: Path) -> tuple[Path, Path]:
    """A run's latest checkpoint and the one before it, which a resume falls back to."""
    return run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "prev.pt"


class Checkpoints:
    """The checkpoints of one run, due every ``interval`` env steps."""

    def __init__(self, run_dir: Path, interval: int):
        self.last, self.previous = checkpoint_paths(run_dir)
        self.interval = interval
        self.next_at = interval

    def due(self, env_steps: int) -> bool:
        return env_steps >= self.next_at

    def schedule_after(self, env_steps: int) -> None:
        """The next checkpoint is due at the grid point past ``env_steps`` (the latest one's, or a resume's)."""
        self.next_at = next_on_grid(env_steps, self.interval)

    def create_dir(self) -> None:
        self.last.parent.mkdir(exist_ok=True)

    def exist(self) -> bool:
        return self.last.exists() or self.previous.exists()

    def discard(self) -> None:
        """On a fresh start: an older run's checkpoint must never become this run's fallback."""
        for path in (self.last, self.previous):
            path.unlink(missing_ok=True)

    def save(self, state: Checkpoint) -> None:
        """Write ``last.pt``, keeping the one it replaces as ``prev.pt``."""
        write_checkpoint(self.last, state, keep_previous_as=self.previous)

    def load(self) -> Checkpoint:
        """last.pt, or prev.pt when last.pt is missing or damaged (said in one line); RunFailed if neither."""
        problems = []
        for path in (self.last, self.previous):
            try:
                state = read_checkpoint(path) if path.exists() else None
            except CheckpointError as error:
                problems.append(str(error))
                continue
            if state is None:
                problems.append(f"{path} does not exist")
                continue
            if problems:
                print(f"warning: {problems[0]}; resuming from {path}", file=sys.stderr)
            return state
        raise RunFailed(f"resume=true but no checkpoint can be resumed: {'; '.join(problems)}")
