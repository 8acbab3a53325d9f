"""Train one run: ``python -m experiments.train algo=single env=cartpole seed=3`` (or ``svrl-train``).

Before Hydra starts, ``experiments.plan.check_command_line`` composes and validates what it would run:
bad input is one line naming the key and the value, exit status 2, nothing created. Then Hydra composes
the config from ``conf/``, the run record is opened in Hydra's output directory and the function that
``algorithms.SCHEDULES`` names for the run's schedule trains. The exit status is 0 for a
completed run, 1 for a failed one (its summary line says why; ``SVRL_TRACEBACK=1`` adds the traceback),
2 for a refused one (bad input, a run directory another run is writing, a resume that would change the
experiment: see ``experiments.admission``) and 130 for an interrupted one (SIGINT or SIGTERM), which is
resumable with ``resume=true hydra.run.dir=<the run directory>``. In a multirun, jobs are run, resumed
or skipped as ``experiments.sweep`` describes, and an interrupted job stops the sweep.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from algorithms import schedule_for
from algorithms.config import RunConfig
from algorithms.infra.processes import process_context
from experiments.admission import RunRefused, admit
from experiments.config import exit_on_config_error, exit_on_invalid
from experiments.plan import check_command_line
from experiments.sweep import run_sweep_job, show_traceback_if_asked

if TYPE_CHECKING:
    from experiments.record import RunRecord

EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
EXIT_REFUSED = 2
# An absolute directory: a relative config_path would be read as a Python package when the code is
# started from the console script rather than with `python -m`.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def train(cfg: DictConfig, run_dir: str, overrides: list[str] | None = None) -> RunRecord:
    """Validate ``cfg`` and train it into ``run_dir``; return the closed record."""
    exit_on_invalid(cfg)
    schedule = schedule_for(cfg.algo.name, cfg.algo.mode, cfg.backend)
    if schedule.starts_local_processes(cfg.algo.num_workers, cfg.algo.vector_backend):
        # The forkserver imports torch for the workers on another core while this process imports its own.
        process_context(cfg.algo.start_method)
    # Imported here so that bad input is refused without loading torch (about 2 s). torch optimizers
    # import torch._dynamo on their first construction (about 1.3 s); importing it before the record
    # opens keeps that one-time cost out of the wall-clock of whichever run comes first in a process.
    import torch._dynamo  # noqa: F401

    from experiments.record import RunRecord

    record = RunRecord(run_dir, cfg, overrides)
    with record:
        algorithm = schedule.load()
        # Algorithms get plain dataclasses: attribute access on them is ~100x cheaper than on a
        # DictConfig in the hot loop, and they pickle into worker processes and Ray actors needing
        # only the algorithms package.
        algorithm(RunConfig.from_config(OmegaConf.to_object(cfg)), record)
    return record


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def run_hydra_app(cfg: DictConfig) -> str:
    hydra_cfg = HydraConfig.get()
    run_dir, overrides = Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        status = run_sweep_job(cfg, run_dir, Path(hydra_cfg.sweep.dir), hydra_cfg.job.override_dirname,
                               overrides, train)
    else:
        with one_line_failures():
            status = train(cfg, str(run_dir), overrides).status
    if status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)
    return status


@contextmanager
def one_line_failures() -> Iterator[None]:
    """A refused run is one line and exit status 2; a failed one exits 1 after the record's one summary line, which
    says why (``SVRL_TRACEBACK=1`` prints the traceback too)."""
    try:
        yield
    except RunRefused as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    except Exception as error:
        from experiments.record import was_recorded  # loaded already where a run was recorded

        show_traceback_if_asked()
        if not was_recorded(error):  # a failure before the record opened: nothing has said why
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


def main() -> None:
    """``python -m experiments.train`` and ``svrl-train``: refuse bad input in one line, then run Hydra's app. A run
    directory that exists already is admitted before Hydra writes its ``.hydra`` files into it."""
    with exit_on_config_error():
        run = check_command_line(sys.argv[1:])
    run_dir = Path(run.hydra.run.dir) if run is not None else None
    if run is not None and run_dir is not None and run_dir.exists():
        with one_line_failures():
            admit(run_dir, run)
    run_hydra_app()


if __name__ == "__main__":
    main()
