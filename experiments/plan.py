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

Before expanding, :func:`study_sweep` fits a study to the user's env and worker count: an env given by ``env.id``
replaces the study's suite of envs (and in a study is named by its id unless ``env.name`` is given), and
``algo.num_workers`` goes to the schedules that take workers, while the one-process schedules (single, the vector
modes) keep their one process. Planning and launching make the same sweep.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.types import ChoiceSweep, Override
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from algorithms import NoSuchSchedule, Schedule, schedule_for
from algorithms.schedule_checks import Pinned
from experiments.composition import (
    SCHEDULE_GROUP,
    compose_checked,
    parse_overrides,
    refuse_sweeps,
    validate_checked,
    workers_option,
    written,
)
from experiments.config import ConfigError, exit_on_config_error
from experiments.sweep import busy_processes, limit_parallel_jobs, previous_status, sweep_jobs

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
NEXT_ACTION = {None: "run", "completed": "skip", "failed": "rerun"}
WORKERS_KEY = "algo.num_workers"


def study_sweep(sweeper_params: Mapping[str, object], arguments: Sequence[str],
                config_name: str = "config") -> tuple[dict[str, str], list[str]]:
    """The sweeper's params and the command line's overrides that run what the user asked of a study (or any sweep):

    - ``env.id=...`` without ``env=...`` replaces the env suite the params sweep (``env``): the study runs that env
      only. In a study (``+experiment=...``), an env given by a single ``env.id`` is named by its registered id
      (``env.name=Maze-v0``) unless ``env.name`` is given; its budget and threshold must be given
      (``validate_checked`` refuses another env's).
    - ``algo.num_workers`` over a sweep of schedules that mixes one-process schedules with schedules that take workers
      goes to the latter only: ``+schedule=single,a2c_workers algo.num_workers=4`` runs ``+schedule=single`` and
      ``+schedule=[a2c_workers,workers_4]`` (a sweep of counts gives one job per count for each such schedule).

    Needs an initialized Hydra (it composes each schedule once, to learn whether it runs one process)."""
    params = {str(key): str(value) for key, value in sweeper_params.items()}
    arguments = list(arguments)
    given = {override.key_or_group: override for override in parse_overrides(arguments)
             if not override.is_hydra_override()}
    if "env.id" in given and "env" not in given:
        params = {key: value for key, value in params.items() if key.lstrip("+") != "env"}
        env_id = given["env.id"]
        if "experiment" in given and "env.name" not in given and not env_id.is_sweep_override():
            arguments.append(f"env.name={str(env_id.value()).rpartition(':')[2].replace('/', '_')}")
    return _workers_to_multi_worker_schedules(params, arguments, config_name)


def _last(overrides: Sequence[Override], key: str) -> Override | None:
    return next((override for override in reversed(overrides) if override.key_or_group == key), None)


def _workers_to_multi_worker_schedules(params: dict[str, str], arguments: list[str],
                                       config_name: str) -> tuple[dict[str, str], list[str]]:
    """``algo.num_workers`` moved into the sweep of schedules, for the schedules that take workers (study_sweep)."""
    in_params, in_arguments = parse_overrides([f"{key}={value}" for key, value in params.items()]), \
        parse_overrides(arguments)
    schedules = _last([*in_params, *in_arguments], SCHEDULE_GROUP)  # the command line wins, as in Hydra's sweep
    workers = _last([*in_params, *in_arguments], WORKERS_KEY)
    sweep = None if schedules is None else schedules.value()
    if schedules is None or workers is None or not isinstance(sweep, ChoiceSweep):
        return params, arguments
    counts = list(workers.sweep_string_iterator()) if workers.is_sweep_override() else [str(workers.value())]
    fixed = [written(override) for override in [*in_params, *in_arguments] if not override.is_sweep_override()
             and not override.is_hydra_override() and override.key_or_group not in (SCHEDULE_GROUP, WORKERS_KEY)]
    options = [[str(name) for name in (element if isinstance(element, list) else [element])] for element in sweep.list]
    one_process = [_runs_one_process(schedules.get_key_element(), option, fixed, config_name) for option in options]
    if all(one_process) or not any(one_process) or not all(count.isdigit() and int(count) for count in counts):
        return params, arguments  # nothing to tell apart (or a count that validation refuses)
    elements = []
    for option, alone in zip(options, one_process, strict=True):
        elements += [_element(option)] if alone else [_element([*option, workers_option(int(n))]) for n in counts]
    line = f"{schedules.get_key_element()}={','.join(elements)}"
    new_params = {key: line.partition("=")[2] if key.lstrip("+") == SCHEDULE_GROUP else value
                  for key, value in params.items() if key.lstrip("+") != WORKERS_KEY}
    new_arguments = [line if override.key_or_group == SCHEDULE_GROUP else written(override)
                     for override in in_arguments if override.key_or_group != WORKERS_KEY]
    return new_params, new_arguments


def _element(option: list[str]) -> str:
    return option[0] if len(option) == 1 else f"[{','.join(option)}]"


def _runs_one_process(key: str, option: list[str], fixed: list[str], config_name: str) -> bool:
    """Whether the schedule this option of the schedule group composes into pins its worker count (``algo=single``
    and the vector modes run one process); a combination without a schedule is left for validation to refuse."""
    cfg = compose_checked([f"{key}={_element(option)}", *fixed], RunMode.RUN, config_name)
    try:
        return runs_one_process(schedule_for(cfg.algo.name, cfg.algo.mode, cfg.backend))
    except NoSuchSchedule:
        return False


def runs_one_process(schedule: Schedule) -> bool:
    """Whether a schedule's entry pins ``algo.num_workers``: it runs one process, whatever the study's worker count."""
    return any(isinstance(check, Pinned) and WORKERS_KEY in check.values for check in schedule.checks)


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
        """Fit the sweep to the user's env and workers (:func:`study_sweep`; the sweeper reads ``config`` after
        this), check every job, and fit a parallel launcher to the CPU budget."""
        name = config.hydra.job.config_name
        with exit_on_config_error():
            params, arguments = study_sweep(config.hydra.sweeper.get("params") or {}, config.hydra.overrides.task,
                                            name)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweeper.params = params
                config.hydra.overrides.task = arguments
            job_cfgs = compose_valid_jobs(params, arguments, name)
        limit_parallel_jobs(config, job_cfgs)


def compose_jobs(arguments: Sequence[str], config_name: str = "config") -> tuple[DictConfig, list[DictConfig]]:
    """The sweep's base config (with its ``hydra`` node) and every job's validated config; ConfigError if bad."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        base = compose_checked(arguments, RunMode.MULTIRUN, config_name)
        params, arguments = study_sweep(base.hydra.sweeper.get("params") or {}, arguments, config_name)
        return base, compose_valid_jobs(params, arguments, config_name)


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
