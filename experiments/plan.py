"""Plan a sweep before running it: ``python -m experiments.plan +experiment=demo [OVERRIDES]`` (or ``svrl-plan``).

Expands a study, or any multirun's overrides, into its jobs exactly as Hydra's basic sweeper will
(the study's ``hydra.sweeper.params`` first, then the command line, whose value wins for a key given
in both), composes and validates every job's config, and prints one line per job: its run directory
(named by its overrides), what a run of the sweep would do with it now (``run``, ``skip`` a completed
one, ``resume`` an interrupted one, ``rerun`` a failed one), its schedule, env, workers and env steps;
then the totals. ``--cfg`` also prints every job's composed config: Hydra's ``--cfg job``, per job of
the multirun. Nothing is created. Bad input is one line naming the key, the value (and the job), exit
status 2. :func:`check_command_line` makes the same checks for ``experiments.train`` before Hydra starts,
and :class:`ValidateBeforeLaunch` when Hydra launches a run or a sweep.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.composition import compose_checked, parse_overrides, refuse_sweeps, validate_checked, written
from experiments.config import ConfigError, exit_on_config_error
from experiments.sweep import busy_processes, limit_parallel_jobs, previous_status

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
NEXT_ACTION = {None: "run", "completed": "skip", "failed": "rerun"}


def sweep_jobs(sweeper_params: Mapping[str, object], arguments: Sequence[str]) -> list[list[str]]:
    """Each job's overrides, in launch order, as Hydra's basic sweeper expands them."""
    lines = [f"{key}={value}" for key, value in sweeper_params.items()] + list(arguments)
    overrides = parse_overrides(lines)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, max_batch_size=None) for job in batch]


def compose_valid_jobs(sweeper_params: Mapping[str, object], arguments: Sequence[str],
                       config_name: str = "config") -> list[DictConfig]:
    """Every job's composed and validated config (with its ``hydra`` node); ConfigError at the first bad one."""
    jobs = []
    for overrides in sweep_jobs(sweeper_params, arguments):
        try:
            job = compose_checked(overrides, RunMode.RUN, config_name)
            validate_checked(job, overrides)
        except ConfigError as error:  # named by its task overrides, as its run directory is
            task = [written(override) for override in parse_overrides(overrides) if not override.is_hydra_override()]
            error.job = " ".join(task) or "base"
            raise
        jobs.append(job)
    return jobs


class ValidateBeforeLaunch(Callback):
    """Hydra callback: reject bad configs before Hydra creates any run directory.

    ``on_run_start`` sees the composed config of a single run. ``on_multirun_start`` sees the sweep's
    base config, so it composes and checks every job of a basic sweep before the first one starts,
    then fits a parallel launcher to the CPU budget (``experiments.sweep.limit_parallel_jobs``).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_config_error():
            validate_checked(config, config.hydra.overrides.task)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_config_error():
            job_cfgs = compose_valid_jobs(config.hydra.sweeper.get("params") or {}, config.hydra.overrides.task,
                                          config.hydra.job.config_name)
        limit_parallel_jobs(config, job_cfgs)


def compose_jobs(arguments: Sequence[str], config_name: str = "config") -> tuple[DictConfig, list[DictConfig]]:
    """The sweep's base config (with its ``hydra`` node) and every job's validated config; ConfigError if bad."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        base = compose_checked(arguments, RunMode.MULTIRUN, config_name)
        return base, compose_valid_jobs(base.hydra.sweeper.get("params") or {}, arguments, config_name)


def check_command_line(argv: Sequence[str]) -> DictConfig | None:
    """Compose and validate what ``experiments.train`` would run for these arguments; ConfigError if bad. Return
    a single run's config (with its ``hydra`` node), None for a multirun or a command that runs nothing.

    Run before ``hydra.main``, which words a bad override in several lines and exits with status 1. The
    jobs of a multirun are left to :class:`ValidateBeforeLaunch`, which composes them anyway: composing
    the 45 jobs of ``sync_vs_async`` twice would add some 20 s to its start on 2 cores.
    """
    args = get_args_parser().parse_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path or args.config_dir:
        return None  # help and info run nothing; a config tree of one's own is Hydra's to check
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        # Composed as a multirun's base config, which is a single run's config when nothing is swept.
        base = compose_checked(args.overrides, RunMode.MULTIRUN, args.config_name or "config")
    if args.multirun or base.hydra.mode == RunMode.MULTIRUN:  # Hydra's own rule for a multirun
        return None
    refuse_sweeps(args.overrides)
    validate_checked(base, args.overrides)
    return base


def next_action(run_dir: Path) -> str:
    status = previous_status(run_dir)
    if status in ("interrupted", "running"):
        from experiments.record import checkpoint_paths  # imports torch: only for runs left unfinished

        return "resume" if any(path.exists() for path in checkpoint_paths(run_dir)) else "rerun"
    return NEXT_ACTION[status]


def describe(base: DictConfig, jobs: list[DictConfig]) -> str:
    sweep_dir = Path(base.hydra.sweep.dir)
    lines = [f"sweep directory: {sweep_dir}", ""]
    for index, job in enumerate(jobs):
        run_dir = sweep_dir / job.hydra.job.override_dirname
        algo = job.algo
        schedule = algo.name if algo.name == "single" else f"{algo.name}/{algo.mode}"
        lines.append(f"{index:>4}  {next_action(run_dir):<6}  {schedule:<20} {job.env.id:<16} "
                     f"workers={algo.num_workers:<3} envs={algo.num_envs:<3} steps={job.total_env_steps:<9,} "
                     f"{job.hydra.job.override_dirname}")
    actions = [next_action(sweep_dir / job.hydra.job.override_dirname) for job in jobs]
    to_run = [job for job, action in zip(jobs, actions, strict=True) if action != "skip"]
    widest = max((busy_processes(job) for job in jobs), default=0)
    lines += ["", f"{len(jobs)} jobs ({len(to_run)} to run, {len(jobs) - len(to_run)} already completed), "
                  f"{sum(job.total_env_steps for job in to_run):,} env steps to run; the widest job keeps "
                  f"{widest} processes busy"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="the multirun's overrides, e.g. +experiment=demo seed=0,1")
    parser.add_argument("--cfg", action="store_true", help="also print every job's composed config")
    args = parser.parse_intermixed_args(argv)
    with exit_on_config_error():
        base, jobs = compose_jobs(args.overrides)
    if args.cfg:
        for job in jobs:
            print(f"# job: {job.hydra.job.override_dirname or '(no overrides)'}")
            print(OmegaConf.to_yaml({key: job[key] for key in job if key != "hydra"}, resolve=True))
    print(describe(base, jobs))


if __name__ == "__main__":
    main()
