"""Who may write a run directory, and whether a resume continues the same experiment.

:func:`admit` runs before a run touches its directory: before Hydra starts (``experiments.train``'s command line,
for a run directory that exists already) and again when the run record opens (every run and sweep job). It

- takes the directory's lock, ``.lock``: an exclusive ``flock`` that the operating system drops with the process
  holding it, so a second writer is refused while the first lives, and a killed run never blocks its own resume;
- with ``resume=true``, compares the composed config with the one the record says the run last ran with
  (``meta.json``'s ``config``) and refuses any difference that changes the experiment, naming every differing
  key with both values. :data:`HARMLESS_CHANGES` are the keys that cannot change a result, and so is the budget
  (``total_env_steps``) under a constant learning rate; they are allowed and listed in the ``resumed`` event.
  ``resume_accept_changes=true`` accepts the other differences too, and the record keeps them (``meta.json``'s
  ``resumes``).

A refusal is a :class:`RunRefused`: one line, exit status 2, nothing written. The module imports neither torch nor
the record, so that the command line refuses in a fraction of a second.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

LOCK_FILE = ".lock"
# Keys a resume may change, and why none of them can change what the run learns or measures.
HARMLESS_CHANGES = {
    "quiet": "the terminal's progress bar only",
    "logger": "the W&B mirror only; the local record is the source of truth",
    "eval.interval": "evaluations play their own envs with a snapshot of the policy, apart from training",
    "checkpoint_interval": "saving reads the training state and changes none of it",
    "blowup_factor": "warnings only",
    "blowup_window": "warnings only",
    "blowup_floor": "warnings only",
    "cpu_budget": "how many jobs of a sweep run at once",
    "ray.start_timeout_s": "how long a Ray run waits for its actors to start",
    "ray.ship_code": "whether a Ray run uploads the code it already runs",
}
# How an invocation starts, not what it runs: never compared.
INVOCATION_KEYS = ("resume", "resume_accept_changes")
# The process's held locks, by directory: a run locked before Hydra starts is admitted again when its record opens.
_HELD: dict[Path, int] = {}


class RunRefused(RuntimeError):
    """A run that must not write its directory: another run holds it, or a resume would change the experiment."""


class RunDirectoryBusy(RunRefused):
    """Another process holds the run directory's lock."""


@dataclass
class Admission:
    """What a resume changes: ``harmless`` and ``accepted`` keys, each ``key -> [recorded, new]``; ``checked`` is
    false when the record holds no config to compare with (a record written before configs were recorded)."""

    harmless: dict[str, list[Any]] = field(default_factory=dict)
    accepted: dict[str, list[Any]] = field(default_factory=dict)
    checked: bool = True


def admit(run_dir: Path, cfg: DictConfig) -> Admission:
    """Lock ``run_dir`` for this process and check a resume against its record; RunRefused if either fails."""
    lock(run_dir)
    if not cfg.resume or not any((run_dir / "checkpoints").glob("*.pt")):
        return Admission()
    recorded = recorded_config(run_dir)
    if recorded is None:
        return Admission(checked=False)
    harmless, changed = experiment_changes(recorded, experiment_config(cfg))
    if changed and not cfg.resume_accept_changes:
        raise RunRefused(f"resume=true: the experiment differs from the one recorded in {run_dir / 'meta.json'}: "
                         f"{describe_changes(changed)} (resume_accept_changes=true resumes with them, and the record "
                         "keeps them)")
    return Admission(harmless, changed)


def lock(run_dir: Path) -> None:
    """Take ``run_dir``'s lock, creating the directory; RunRefused, naming the holder, if another process has it."""
    key = run_dir.resolve()
    if key in _HELD:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunRefused(f"hydra.run.dir={str(run_dir)!r}: cannot be written ({error.strerror})") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunDirectoryBusy(f"hydra.run.dir={str(run_dir)!r}: another run is writing into it ({holder}); wait "
                               "for it to end, or give this run another directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD[key] = fd


def unlock(run_dir: Path) -> None:
    """Release this process's lock on ``run_dir`` (the file stays: removing it would race a waiting writer)."""
    fd = _HELD.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file releases its flock


def experiment_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's resolved config without Hydra's own node: what ``meta.json`` records as ``config``."""
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"]),
                                       resolve=True)
    assert isinstance(container, dict)
    return {str(key): value for key, value in container.items()}


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "meta.json").read_text()).get("config")
    except (OSError, ValueError):
        return None


def experiment_changes(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, list[Any]],
                                                                                     dict[str, list[Any]]]:
    """The keys whose values differ, split into harmless ones and those that change the experiment."""
    before, after = ({key: value for key, value in _flatten(tree) if key not in INVOCATION_KEYS}
                     for tree in (recorded, new))
    differing = {key: [before.get(key), after.get(key)] for key in sorted(before.keys() | after.keys())
                 if key not in before or key not in after or before[key] != after[key]}
    harmless = {key: values for key, values in differing.items()
                if _harmless(key) or (key == "total_env_steps" and _constant_learning_rate(before, after))}
    return harmless, {key: values for key, values in differing.items() if key not in harmless}


def describe_changes(changes: Mapping[str, list[Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def _constant_learning_rate(*configs: Mapping[str, Any]) -> bool:
    """Whether the learning rate is constant in each flattened config: then the budget only says where the run stops
    (a linear schedule anneals to zero at the budget, so there a new budget changes every step after the resume)."""
    return all(config.get("algo.lr_schedule") == "constant" for config in configs)


def _harmless(key: str) -> bool:
    return any(key == harmless or key.startswith(f"{harmless}.") for harmless in HARMLESS_CHANGES)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
