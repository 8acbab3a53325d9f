"""The checkpoint format: one typed, versioned dictionary, written and read only here.

Every schedule builds its checkpoint with :func:`make_checkpoint` and resumes through :func:`restore_model`
and the checks below; the run record adds its own counters under ``record`` and writes the file with
:func:`write_checkpoint`, which refuses a checkpoint holding a non-finite parameter or optimizer statistic
(:class:`CheckpointRefused`), reads the new file back before it replaces the old one, and can keep the old
one. :func:`read_checkpoint` refuses a file of another format or with a missing or mistyped part, and the
resume checks refuse parts that do not fit the run (a model of other shapes, collectors of another worker
count, a snapshot ring of another delay), each with a :class:`CheckpointError` that names the part in one
line. See docs/architecture.md for the layout.
"""

from __future__ import annotations

import io
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, cast

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
# A checkpoint with a NaN or inf here would resume a diverged run.
FINITE_PARTS: tuple[Literal["model", "optimizer"], ...] = ("model", "optimizer")


class Checkpoint(TypedDict):
    format: int  # CHECKPOINT_FORMAT
    model: dict[str, torch.Tensor]  # the (global) model's state_dict
    optimizer: dict[str, Any]  # its optimizer's state_dict
    env_steps: int
    policy_version: int
    collectors: list[dict[str, Any]]  # Collector.state_dict() of each worker that keeps one; [] when none does
    # (each with its episodes in progress, and its envs pickled when they can be: see algorithms.core.envs)
    rng: dict[str, Any] | None  # the training process's torch/numpy/python generators (in-process schedules)
    snapshots: dict[str, Any] | None  # SnapshotRing.state_dict() when algo.staleness.delay > 0
    record: NotRequired[dict[str, Any]]  # the run record's counters, added by the record when it saves


class ModelState(TypedDict):
    """What :func:`restore_model` loads: a :class:`Checkpoint`, or the copy of those two parts a synchronous worker
    starts from."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


PART_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": int, "model": dict, "optimizer": dict, "env_steps": int, "policy_version": int,
    "collectors": list, "rng": (dict, type(None)), "snapshots": (dict, type(None)), "record": dict,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the file or the part and what is wrong."""


def make_checkpoint(model: dict[str, torch.Tensor], optimizer: dict[str, Any], env_steps: int, policy_version: int,
                    collectors: list[dict[str, Any]] | None = None, rng: dict[str, Any] | None = None,
                    snapshots: dict[str, Any] | None = None) -> Checkpoint:
    """A checkpoint without the record's part (the record adds it when saving)."""
    return {"format": CHECKPOINT_FORMAT, "model": model, "optimizer": optimizer, "env_steps": int(env_steps),
            "policy_version": int(policy_version), "collectors": list(collectors or []), "rng": rng,
            "snapshots": snapshots}


class CheckpointRefused(CheckpointError):
    """A checkpoint not worth keeping (a non-finite value): it is not written and the previous files stay."""

    def __init__(self, part: str, reason: str):
        self.part, self.reason = part, reason
        super().__init__(f"checkpoint part {part!r} {reason}")


def write_checkpoint(path: Path, checkpoint: Checkpoint, keep_previous_as: Path | None = None) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a crash leaves the previous file or the new one, whole.

    The new file is read back and validated before it replaces anything; the file it replaces is kept as
    ``keep_previous_as`` when given. A crash between the two renames leaves only ``keep_previous_as``.
    """
    validate_parts(checkpoint, str(path))
    for part in FINITE_PARTS:
        if (where := nonfinite_entry(checkpoint[part])) is not None:
            raise CheckpointRefused(part, f"holds a non-finite value ({where})")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    tmp = path.with_suffix(".tmp")
    write_file(tmp, buffer.getvalue())
    try:
        read_checkpoint(tmp)
    except CheckpointError:
        tmp.unlink()
        raise
    if keep_previous_as is not None and path.exists():
        os.replace(path, keep_previous_as)
    os.replace(tmp, path)


def write_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, synced to disk; on failure (a full disk) remove it and raise an
    OSError that names it."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        path.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error


def nonfinite_entry(part: Any, where: str = "") -> str | None:
    """Where a NaN or infinity sits in a nest of dicts, lists and tensors (``"actor.0.bias: nan"``), or None."""
    if isinstance(part, torch.Tensor):
        if part.is_floating_point() and not bool(torch.isfinite(part).all()):
            bad = part[~torch.isfinite(part)].flatten()[0].item()
            return f"{where}: {bad}"
        return None
    if isinstance(part, float):
        return None if math.isfinite(part) else f"{where}: {part}"
    items = part.items() if isinstance(part, dict) else enumerate(part) if isinstance(part, list | tuple) else ()
    for key, value in items:
        if (found := nonfinite_entry(value, f"{where}.{key}" if where else str(key))) is not None:
            return found
    return None


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        # On the CPU whatever device wrote it: loading into the model then copies to the model's device.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a torn or foreign file
        message = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
        empty = path.exists() and path.stat().st_size == 0
        reason = "the file is empty" if empty else f"{type(error).__name__}: {message}"
        raise CheckpointError(f"{path}: cannot be read ({reason})") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint")
    validate_parts(state, str(path))
    return cast(Checkpoint, state)  # every part checked just above


def validate_parts(state: Mapping[str, Any], source: str) -> None:
    """Every part present with its type, in this format; ``record`` may be absent before the record adds it."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    for part, kind in PART_TYPES.items():
        if part == "record" and part not in state:
            continue
        if part not in state:
            raise CheckpointError(f"{source}: the checkpoint has no part {part!r}")
        if not isinstance(state[part], kind):
            raise CheckpointError(f"{source}: checkpoint part {part!r} is a {type(state[part]).__name__}")


def restore_model(checkpoint: ModelState, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the model and optimizer parts, after checking that every parameter has the model's shape."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved = {name: tuple(tensor.shape) for name, tensor in checkpoint["model"].items()}
    if saved != expected:
        differing = sorted(name for name in expected.keys() | saved.keys() if expected.get(name) != saved.get(name))
        raise CheckpointError(f"checkpoint part 'model' does not fit this run's model: {differing[0]} is "
                              f"{saved.get(differing[0])} in the checkpoint, {expected.get(differing[0])} here")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])


def check_collectors(checkpoint: Checkpoint, num_workers: int) -> list[dict[str, Any]]:
    """The collectors part, which must hold one state per worker."""
    collectors = checkpoint["collectors"]
    if len(collectors) != num_workers:
        raise CheckpointError(f"checkpoint part 'collectors' holds the state of {len(collectors)} workers' "
                              f"collectors; it cannot resume with algo.num_workers={num_workers}")
    return collectors


def check_snapshots(checkpoint: Checkpoint, delay: int) -> dict[str, Any] | None:
    """The snapshot ring, which must hold ``delay + 1`` versions (``None`` from a run without a delay)."""
    snapshots = checkpoint["snapshots"]
    if snapshots is not None and len(snapshots["slots"]) != delay + 1:
        raise CheckpointError(f"checkpoint part 'snapshots' holds {len(snapshots['slots'])} parameter versions; "
                              f"algo.staleness.delay={delay} needs {delay + 1}")
    return snapshots


def dropped_partial_episodes(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """The episodes in progress at the checkpoint that a resume cannot continue: those of collectors
    whose envs could not be saved (each as worker, env, steps so far and return so far)."""
    return [
        {"worker": worker, "env": env, "length": int(length), "return": float(ret)}
        for worker, collector in enumerate(checkpoint["collectors"])
        if collector.get("envs") is None and "episodes_in_progress" in collector
        for env, (ret, length) in enumerate(zip(collector["episodes_in_progress"]["returns"],
                                                collector["episodes_in_progress"]["lengths"], strict=True))
        if length > 0
    ]


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
