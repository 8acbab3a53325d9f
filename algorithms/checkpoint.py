"""The checkpoint format: one typed, versioned dictionary, written and read only here.

Every schedule builds its checkpoint with :func:`make_checkpoint` and resumes through :func:`restore_model`
and the checks below; the run record adds its own counters under ``record`` and writes the file with
:func:`write_checkpoint` (atomically). :func:`read_checkpoint` refuses a file of another format or with a
missing or mistyped part, and the resume checks refuse parts that do not fit the run (a model of other
shapes, collectors of another worker count, a snapshot ring of another delay), each with a
:class:`CheckpointError` that names the part. See docs/architecture.md for the layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypedDict

import torch

CHECKPOINT_FORMAT = 1


class Checkpoint(TypedDict):
    format: int  # CHECKPOINT_FORMAT
    model: dict[str, torch.Tensor]  # the (global) model's state_dict
    optimizer: dict[str, Any]  # its optimizer's state_dict
    env_steps: int
    policy_version: int
    collectors: list[dict[str, Any]]  # Collector.state_dict() of each worker that keeps one; [] when none does
    rng: dict[str, Any] | None  # the training process's torch/numpy/python generators (in-process schedules)
    snapshots: dict[str, Any] | None  # SnapshotRing.state_dict() when algo.staleness.delay > 0
    record: dict[str, Any]  # the run record's counters, added by the record when it saves


PART_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": int, "model": dict, "optimizer": dict, "env_steps": int, "policy_version": int,
    "collectors": list, "rng": (dict, type(None)), "snapshots": (dict, type(None)), "record": dict,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message names the file or the part and what is wrong."""


def make_checkpoint(model: dict[str, torch.Tensor], optimizer: dict[str, Any], env_steps: int, policy_version: int,
                    collectors: list[dict[str, Any]] | None = None, rng: dict[str, Any] | None = None,
                    snapshots: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint without the record's part (the record adds it when saving)."""
    return {"format": CHECKPOINT_FORMAT, "model": model, "optimizer": optimizer, "env_steps": int(env_steps),
            "policy_version": int(policy_version), "collectors": list(collectors or []), "rng": rng,
            "snapshots": snapshots}


def write_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a crash leaves the previous file or the new one, whole."""
    validate_parts(checkpoint, str(path))
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        state = torch.load(path, weights_only=False)
    except Exception as error:  # torch raises many kinds for a torn or foreign file
        raise CheckpointError(f"{path}: cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint")
    validate_parts(state, str(path))
    return state  # type: ignore[return-value]


def validate_parts(state: dict[str, Any], source: str) -> None:
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


def restore_model(checkpoint: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the model and optimizer parts, after checking that every parameter has the model's shape."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved = {name: tuple(tensor.shape) for name, tensor in checkpoint["model"].items()}
    if saved != expected:
        differing = sorted(name for name in expected.keys() | saved.keys() if expected.get(name) != saved.get(name))
        raise CheckpointError(f"checkpoint part 'model' does not fit this run's model: {differing[0]} is "
                              f"{saved.get(differing[0])} in the checkpoint, {expected.get(differing[0])} here")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])


def check_collectors(checkpoint: dict[str, Any], num_workers: int) -> list[dict[str, Any]]:
    """The collectors part, which must hold one state per worker."""
    collectors = checkpoint["collectors"]
    if len(collectors) != num_workers:
        raise CheckpointError(f"checkpoint part 'collectors' holds the state of {len(collectors)} workers' "
                              f"collectors; it cannot resume with algo.num_workers={num_workers}")
    return collectors


def check_snapshots(checkpoint: dict[str, Any], delay: int) -> dict[str, Any] | None:
    """The snapshot ring, which must hold ``delay + 1`` versions (``None`` from a run without a delay)."""
    snapshots = checkpoint["snapshots"]
    if snapshots is not None and len(snapshots["slots"]) != delay + 1:
        raise CheckpointError(f"checkpoint part 'snapshots' holds {len(snapshots['slots'])} parameter versions; "
                              f"algo.staleness.delay={delay} needs {delay + 1}")
    return snapshots
