"""One command from run directories to figures, tables and a report page.

    python -m analysis.report RUNS_DIR [RUNS_DIR ...] --out DIR      (or: svrl-report ...)

writes ``DIR/figures/*.png|pdf``, ``DIR/tables/*.md|tex`` and ``DIR/report.md`` (figures embedded as
images, tables inline, skipped runs and skipped figures listed with their reasons), then prints where
the report is. Thresholds default to each env's ``env.solved_return`` from the runs' Hydra configs.
``--metric eval`` makes every return curve, return table and threshold read the evaluation episodes'
return (``evals.csv``) instead of the training episodes' (``metrics.csv``); the report says which.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures, stats
from analysis.figures import DEFAULT_DPI
from analysis.load import RunSet, SkippedRun, SkippedRunWarning, load_runs, load_wandb

FIGURES = ("return_vs_steps", "return_vs_time", "staleness_distribution", "staleness_vs_workers",
           "return_vs_staleness", "throughput_vs_workers", "speedup_vs_workers", "barrier_wait_vs_workers")
# Captions name the return they show: {returns} is the metric with how it is measured, {name} its name.
CAPTIONS = {
    "return_vs_steps": "Sample efficiency: {returns} against environment steps.",
    "return_vs_time": "Return against wall-clock seconds: {returns}. A condition's curve ends where its shortest "
                      "run ends, so every point averages the same seeds.",
    "staleness_distribution": "Distribution (ECDF) of gradient staleness, per worker count, for multi-worker "
                              "schedules.",
    "staleness_vs_workers": "Mean gradient staleness per run against the number of workers.",
    "return_vs_staleness": "Final {name} against mean gradient staleness, one point per multi-worker run.",
    "throughput_vs_workers": "Environment steps per second (from the first to the last logged interval) "
                             "against the number of workers.",
    "speedup_vs_workers": "Speedup in wall-clock time to threshold (in {name}) over the 1-worker runs of the same "
                          "schedule; dashed: ideal linear speedup. Runs that never reached the threshold are left "
                          "out.",
    "barrier_wait_vs_workers": "Share of worker time spent waiting at the synchronisation barrier, for "
                               "synchronous multi-worker schedules.",
}


METRICS = ("train", "eval")


@dataclass(frozen=True)
class ReturnMetric:
    """The return that every curve, return table and threshold uses, in the report's words."""

    option: str  # the --metric value
    name: str
    detail: str  # how it is measured
    final: str  # which value is a run's final return
    crossing: str  # which value reaches a threshold first
    axis: str  # the y-axis label of the return curves

    @property
    def described(self) -> str:
        return f"{self.name} ({self.detail})"


@dataclass
class ReportOptions:
    envs: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)  # overrides of the configs' solved_return
    x_axes: tuple[str, ...] = ("env_steps", "wall_time")
    figures: tuple[str, ...] = FIGURES
    estimator: str = "iqm"
    confidence: float = stats.DEFAULT_CONFIDENCE
    budget_seconds: float | None = None
    dpi: int = DEFAULT_DPI
    metric: str = "train"  # one of METRICS


@dataclass
class Analysis:
    """Everything the figures and tables are drawn from."""

    runset: RunSet
    options: ReportOptions
    thresholds: dict[str, float]
    summary: pd.DataFrame
    env_ids: dict[str, str]
    returns: pd.DataFrame  # the rows the return measures come from: runset.metrics or runset.evals
    metric: ReturnMetric

    @property
    def series(self) -> list[str]:
        """Condition columns that distinguish lines within one env panel."""
        return [column for column in self.runset.conditions if column not in ("env_name", "algo", "mode")]

    @property
    def lines(self) -> list[str]:
        """Condition columns that distinguish lines in a per-worker-count figure."""
        return [column for column in self.series if column != "num_workers"]

    @property
    def scaling_conditions(self) -> list[str]:
        """Condition columns that a worker count is compared within (its 1-worker baseline shares them)."""
        return [column for column in self.runset.conditions if column != "num_workers"]


def analyse(runset: RunSet, options: ReportOptions) -> Analysis:
    """Statistics of ``runset`` (as :func:`runs_for_metric` leaves it) for the report's figures and tables."""
    runset = runset.select(options.envs)
    returns = runset.evals if options.metric == "eval" else runset.metrics
    thresholds = {**stats.thresholds_from_runs(runset.runs), **options.thresholds}
    summary = stats.run_summary(runset.metrics, runset.updates, runset.labels, thresholds, returns)
    env_ids = dict(runset.runs[["env_name", "env_id"]].drop_duplicates().itertuples(index=False))
    return Analysis(runset, options, thresholds, summary, env_ids, returns, return_metric(options.metric, runset))


def runs_for_metric(runset: RunSet, metric: str) -> RunSet:
    """The runs that have the return ``metric`` reads. Under eval a run without evaluations is skipped, with
    why it has none, rather than counted as having no return; applied twice it skips nothing more."""
    if metric == "train":
        return runset
    lacking = [SkippedRun(run, f"no evaluations, which --metric eval reads: {why}")
               for run, why in runset.no_evaluations.items()]
    return runset.only(set(runset.runs["run_id"]) - set(runset.no_evaluations), lacking)


def return_metric(option: str, runset: RunSet) -> ReturnMetric:
    if option == "train":
        return ReturnMetric(option, "training return", "mean of the most recent return_window training episodes",
                            final="at the end of training",
                            crossing="the first logged interval whose return reaches the threshold",
                            axis="training return")
    return ReturnMetric(option, "evaluation return", _evaluation_detail(runset),
                        final="at each run's last evaluation (its final one)",
                        crossing="the first evaluation whose mean return reaches the threshold",
                        axis="evaluation return")


def _evaluation_detail(runset: RunSet) -> str:
    """E.g. ``mean of 10 deterministic evaluation episodes every 5,000 env steps``, from the runs analysed."""
    evals = runset.evals
    if evals.empty:
        return "no run has evaluations"
    episodes = " or ".join(f"{count:g}" for count in sorted(evals["episodes"].unique()))
    kinds = " or ".join(sorted({"deterministic" if flag else "sampled-action" for flag in evals["deterministic"]}))
    intervals = runset.runs.loc[runset.runs["run_id"].isin(evals["run_id"]), "eval_interval"]
    schedules = " or ".join(sorted({_evaluation_schedule(interval) for interval in intervals}))
    return f"mean of {episodes} {kinds} evaluation episodes {schedules}"


def _evaluation_schedule(interval: float) -> str:
    if math.isnan(interval):
        return "at an interval no .hydra/config.yaml records"
    if math.isinf(interval):
        return "at the end of training only"
    return f"every {interval:,.0f} env steps"


# --------------------------------------------------------------------------- figures
def _multi_worker_schedules(summary: pd.DataFrame) -> pd.Series:
    """Rows of schedules that have at least one run with more than one worker."""
    return summary["schedule"].isin(summary.loc[summary.num_workers > 1, "schedule"])


def _curves(x: str) -> Callable[[Analysis], figures.Figure]:
    def draw(analysis: Analysis) -> figures.Figure:
        opts = analysis.options
        curves = stats.interpolate_curves(analysis.returns, analysis.runset.labels, x=x)
        aggregated = stats.aggregate_curves(curves, analysis.runset.conditions, x=x, estimator=opts.estimator,
                                            confidence=opts.confidence)
        return figures.plot_curves(analysis.returns, aggregated, analysis.series, x, opts.estimator,
                                   opts.confidence, analysis.thresholds, analysis.env_ids, analysis.metric.axis)

    return draw


def _staleness_distribution(analysis: Analysis) -> figures.Figure:
    updates = analysis.runset.updates
    multi = updates["schedule"].isin(analysis.summary.loc[_multi_worker_schedules(analysis.summary), "schedule"])
    if not multi.any():
        raise figures.NoData("no multi-worker runs")
    return figures.plot_staleness_distribution(updates[multi], analysis.env_ids)


def _vs_workers(value: str, ylabel: str, rows: Callable[[pd.DataFrame], pd.Series], missing: str,
                scale: float = 1.0) -> Callable[[Analysis], figures.Figure]:
    def draw(analysis: Analysis) -> figures.Figure:
        selected = analysis.summary[rows(analysis.summary)]
        if selected.empty:
            raise figures.NoData(missing)
        opts = analysis.options
        return figures.plot_vs_workers(selected, value, analysis.lines, ylabel, opts.estimator, opts.confidence,
                                       analysis.env_ids, scale)

    return draw


def _synchronous_multi_worker(summary: pd.DataFrame) -> pd.Series:
    """Multi-worker schedules none of whose gradients was ever stale."""
    stale = summary.groupby("schedule")["staleness_max"].max()
    return _multi_worker_schedules(summary) & summary["schedule"].map(stale).eq(0)


def _return_vs_staleness(analysis: Analysis) -> figures.Figure:
    summary = analysis.summary[_multi_worker_schedules(analysis.summary)]
    if summary.empty:
        raise figures.NoData("no multi-worker runs")
    return figures.plot_return_vs_staleness(summary, analysis.env_ids, f"final {analysis.metric.axis}")


def _speedup(analysis: Analysis) -> figures.Figure:
    if not analysis.thresholds:
        raise figures.NoData("no threshold: give --threshold ENV=RETURN or env.solved_return in the config")
    table = speedup_table(analysis)
    # A condition with no multi-worker run has only its baseline point (1 by definition): nothing to show.
    scaled = table.groupby(analysis.scaling_conditions, dropna=False)["num_workers"].transform("max") > 1
    table = table[scaled & table["speedup"].notna()]
    if not (table.num_workers > 1).any():
        raise figures.NoData("no multi-worker condition with a 1-worker baseline that reached the threshold")
    return figures.plot_speedup(table, analysis.lines, analysis.env_ids, analysis.thresholds,
                                analysis.options.confidence)


def speedup_table(analysis: Analysis) -> pd.DataFrame:
    return stats.speedup(analysis.summary, analysis.scaling_conditions, confidence=analysis.options.confidence)


DRAW: dict[str, Callable[[Analysis], figures.Figure]] = {
    "return_vs_steps": _curves("env_steps"),
    "return_vs_time": _curves("wall_time"),
    "staleness_distribution": _staleness_distribution,
    "staleness_vs_workers": _vs_workers("staleness_mean", "mean staleness (policy versions behind)",
                                        _multi_worker_schedules, "no multi-worker runs"),
    "return_vs_staleness": _return_vs_staleness,
    "throughput_vs_workers": _vs_workers("steps_per_second", "environment steps per second",
                                         lambda summary: pd.Series(True, index=summary.index), "no runs"),
    "speedup_vs_workers": _speedup,
    "barrier_wait_vs_workers": _vs_workers("barrier_wait_share", "barrier wait (% of worker time)",
                                           _synchronous_multi_worker, "no synchronous multi-worker runs",
                                           scale=100.0),
}
X_AXIS_FIGURES = {"env_steps": "return_vs_steps", "wall_time": "return_vs_time"}


def selected_figures(options: ReportOptions) -> list[str]:
    left_out = {name for axis, name in X_AXIS_FIGURES.items() if axis not in options.x_axes}
    return [name for name in options.figures if name not in left_out]


# --------------------------------------------------------------------------- tables
def _number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _with_ci(row: pd.Series, estimate: str = "estimate") -> str:
    if math.isnan(row["low"]):
        return _number(row[estimate])
    return f"{_number(row[estimate])} [{_number(row['low'])}, {_number(row['high'])}]"


def _condition_columns(analysis: Analysis, frame: pd.DataFrame) -> pd.DataFrame:
    columns = {"env_name": "env", "schedule": "schedule", "num_workers": "workers"}
    columns.update({key: key for key in analysis.runset.swept})
    return frame[list(columns)].rename(columns=columns)


def build_tables(analysis: Analysis) -> dict[str, pd.DataFrame]:
    """The report's tables as frames of formatted strings, keyed by file name."""
    summary, conditions, opts = analysis.summary, analysis.runset.conditions, analysis.options
    if summary.empty:
        return {}
    estimator = figures.estimator_name(opts.estimator)
    ci = f"{opts.confidence:.0%} CI"

    def summarized(value: str) -> pd.DataFrame:
        return stats.summarize(summary, value, conditions, opts.estimator, opts.confidence)

    final = summarized("final_return")
    tables = {"final_return": _condition_columns(analysis, final).assign(**{
        "seeds": final["n_runs"], f"final return, {estimator} [{ci}]": final.apply(_with_ci, axis=1)})}

    steps, seconds = summarized("steps_to_threshold"), summarized("seconds_to_threshold")
    speedups = speedup_table(analysis).set_index(conditions)
    ttt = _condition_columns(analysis, steps).assign(**{
        "threshold": steps["env_name"].map(lambda env: f"{analysis.thresholds[env]:g}" if env in analysis.thresholds
                                          else "–"),
        "reached": [f"{n}/{total}" for n, total in zip(steps["n_runs"], steps["n_total"], strict=True)],
        f"env steps, {estimator} [{ci}]": steps.apply(_with_ci, axis=1),
        f"seconds, {estimator} [{ci}]": seconds.apply(_with_ci, axis=1),
    })
    keys = pd.MultiIndex.from_frame(steps[conditions])
    ttt["speedup vs 1 worker"] = [_with_ci(speedups.loc[key], "speedup") if key in speedups.index else "–"
                                  for key in keys]
    ttt["efficiency"] = [_number(speedups.loc[key, "efficiency"]) if key in speedups.index else "–"
                         for key in keys]
    tables["time_to_threshold"] = ttt

    throughput = summarized("steps_per_second")
    tables["throughput"] = _condition_columns(analysis, throughput).assign(**{
        "seeds": throughput["n_runs"], f"env steps/s, {estimator} [{ci}]": throughput.apply(_with_ci, axis=1)})

    staleness = summarized("staleness_mean")
    worst = summary.groupby(conditions, sort=True, dropna=False)[["staleness_max", "dropped_share"]].max()
    worst = worst.reindex(pd.MultiIndex.from_frame(staleness[conditions]))
    tables["staleness"] = _condition_columns(analysis, staleness).assign(**{
        "seeds": staleness["n_runs"], f"mean staleness, {estimator} [{ci}]": staleness.apply(_with_ci, axis=1),
        "max staleness": [_number(value) for value in worst["staleness_max"]],
        "dropped gradients (max over seeds)": [f"{value:.1%}" if not math.isnan(value) else "–"
                                               for value in worst["dropped_share"]]})

    improvement = stats.probability_of_improvement(analysis.returns, conditions, opts.budget_seconds,
                                                   opts.confidence)
    tables["probability_of_improvement"] = pd.DataFrame({
        "env": improvement["env_name"], "X": improvement["x"], "Y": improvement["y"],
        "wall-clock budget (s)": improvement["budget_seconds"].map(_number),
        f"P(X > Y) [{ci}]": improvement.apply(_with_ci, axis=1, estimate="probability"),
        "runs X/Y": [f"{x}/{y}" for x, y in zip(improvement["n_x"], improvement["n_y"], strict=True)],
    })
    return {name: table.astype(str) for name, table in tables.items()}


def markdown_table(table: pd.DataFrame) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([row(table.columns), row(["---"] * table.shape[1]),
                      *(row(values) for values in table.itertuples(index=False))]) + "\n"


LATEX_ESCAPES = str.maketrans({"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
                               "}": r"\}", "–": "--", "~": r"\textasciitilde{}", ">": "$>$", "<": "$<$"})


def latex_table(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``)."""
    def row(cells: Sequence[str]) -> str:
        return " & ".join(str(cell).translate(LATEX_ESCAPES) for cell in cells) + r" \\"

    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{caption.translate(LATEX_ESCAPES)}}}",
        rf"\label{{tab:{label}}}", r"\begin{tabular}{" + "l" * table.shape[1] + "}", r"\toprule",
        row(table.columns), r"\midrule", *(row(values) for values in table.itertuples(index=False)),
        r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ]) + "\n"


# As CAPTIONS, plus {final} and {crossing}: which value is final, and which reaches the threshold first.
TABLE_CAPTIONS = {
    "final_return": "Final {returns} over seeds, {final}.",
    "time_to_threshold": "Time to threshold in {returns}: {crossing}; estimates over the seeds that reached it.",
    "throughput": "Environment steps per second from the first to the last logged interval.",
    "staleness": "Gradient staleness (policy versions between a worker's sync and the update's apply).",
    "probability_of_improvement": "Probability that a run of X has a higher {returns} than a run of Y at the "
                                  "same wall-clock budget (ties count one half).",
}


def caption(template: str, metric: ReturnMetric) -> str:
    return template.format(returns=metric.described, name=metric.name, final=metric.final,
                           crossing=metric.crossing)


# --------------------------------------------------------------------------- the report
def _nothing_to_analyse(runset: RunSet, options: ReportOptions) -> str | None:
    """Why the report has no run to analyse, or None when it has some."""
    if not runset.select(options.envs).runs.empty:
        return None
    if not runset.runs.empty:
        return f"No run on {', '.join(options.envs)}: nothing to analyse"
    if runset.skipped:
        return "Every run found was skipped (see the skipped runs): no usable run to analyse"
    return "No run directory found under the sources: nothing to analyse"


def _runs_section(analysis: Analysis, runset: RunSet) -> list[str]:
    """The runs analysed per condition, or why there are none, and every skipped run with its reason."""
    runs, lines = analysis.runset.runs, []
    if runs.empty:
        lines += [f"**{_nothing_to_analyse(runset, analysis.options)}.**", ""]
    else:
        counts = runs.groupby(analysis.runset.conditions, dropna=False).size().rename("seeds").reset_index()
        lines += ["## Runs", "", markdown_table(_condition_columns(analysis, counts).assign(seeds=counts["seeds"]))]
    if runset.skipped:
        lines += ["## Skipped runs", ""] + [f"- `{skip.run}`: {skip.reason}" for skip in runset.skipped] + [""]
    if any(skip.kept for skip in runset.skipped):
        lines += ["A run with the same condition and seed as an earlier one (a copy, or a rerun) is left out so "
                  "that no seed counts twice; the first by path is analysed. To analyse another, move the "
                  "others out of the sources.", ""]
    return lines


def write_report(runset: RunSet, out: Path, options: ReportOptions, sources: Sequence[str]) -> Path:
    """Write every selected figure, every table and ``report.md`` into ``out``; return the report's path."""
    runset = runs_for_metric(runset, options.metric)
    analysis = analyse(runset, options)
    metric = analysis.metric
    out.mkdir(parents=True, exist_ok=True)
    runs = analysis.runset.runs
    lines = ["# Sync vs async RL: analysis report", "",
             f"Sources: {', '.join(f'`{source}`' for source in sources)}  ",
             f"Runs analysed: {len(runs)}; runs skipped: {len(runset.skipped)}  ",
             f"Return (`--metric {metric.option}`): {metric.name}, {metric.detail}  ",
             f"Estimator over seeds: {figures.estimator_name(options.estimator)} with {options.confidence:.0%} "
             "percentile bootstrap "
             f"confidence intervals (scipy.stats.bootstrap)  ",
             "Thresholds: " + (", ".join(f"{env} {value:g}" for env, value in sorted(analysis.thresholds.items()))
                               or "none"), ""]
    lines += _runs_section(analysis, runset)

    lines += ["## Figures", ""]
    for name in selected_figures(options):
        lines += [f"### {name.replace('_', ' ')}", ""]
        try:
            if runs.empty:
                raise figures.NoData("no runs to analyse")
            fig = DRAW[name](analysis)
        except figures.NoData as reason:
            lines += [f"*Skipped: {reason}.*", ""]
            continue
        png, pdf = figures.save_figure(fig, out / "figures", name, dpi=options.dpi)
        lines += [f"![{name}]({png.relative_to(out).as_posix()})", "",
                  f"{caption(CAPTIONS[name], metric)} ([PDF]({pdf.relative_to(out).as_posix()}))", ""]

    lines += ["## Tables", ""]
    tables_dir = out / "tables"
    tables_dir.mkdir(exist_ok=True)
    for name, table in build_tables(analysis).items():
        table_caption = caption(TABLE_CAPTIONS[name], metric)
        (tables_dir / f"{name}.md").write_text(markdown_table(table))
        (tables_dir / f"{name}.tex").write_text(latex_table(table, table_caption, name))
        lines += [f"### {name.replace('_', ' ')}", "", table_caption, "", markdown_table(table),
                  f"LaTeX: [tables/{name}.tex](tables/{name}.tex)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _threshold(text: str) -> tuple[str, float]:
    env, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return env, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ENV=RETURN, e.g. cartpole=475") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="svrl-report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run directories, sweeps or trees of them")
    parser.add_argument("--out", type=Path, required=True, help="directory for figures, tables and report.md")
    parser.add_argument("--wandb-project", help="load runs from this W&B project instead (needs network)")
    parser.add_argument("--wandb-entity", help="W&B entity of --wandb-project")
    parser.add_argument("--env", dest="envs", action="append", default=[], metavar="ENV",
                        help="analyse only this env (short name or gymnasium id); repeatable")
    parser.add_argument("--threshold", action="append", type=_threshold, default=[], metavar="ENV=RETURN",
                        help="return threshold for time-to-threshold (default: env.solved_return); repeatable")
    parser.add_argument("--x", choices=("env_steps", "wall_time", "both"), default="both",
                        help="x-axis of the return curves")
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES), metavar="NAME",
                        help=f"figures to draw (default: all): {', '.join(FIGURES)}")
    parser.add_argument("--estimator", choices=tuple(stats.ESTIMATORS), default="iqm",
                        help="aggregate over seeds (default: iqm, as rliable recommends)")
    parser.add_argument("--confidence", type=float, default=stats.DEFAULT_CONFIDENCE,
                        help="confidence level of the bootstrap intervals")
    parser.add_argument("--budget-seconds", type=float,
                        help="wall-clock budget of the probability of improvement (default: the longest "
                             "time all runs of both conditions reached)")
    parser.add_argument("--dpi", type=int, default=DEFAULT_DPI,
                        help=f"resolution of the PNG figures (default {DEFAULT_DPI}; 100 keeps them small "
                             "enough to commit)")
    parser.add_argument("--metric", default="train", metavar="{train,eval}",
                        help="the return of every curve, return table and threshold: train (default), the "
                             "training episodes' (metrics.csv), or eval, the evaluation episodes' (evals.csv)")
    args = parser.parse_args(argv)
    if args.metric not in METRICS:  # one line, without the usage, as the project's commands answer a bad value
        parser.exit(2, f"{parser.prog}: error: --metric {args.metric!r}: expected train or eval\n")
    if args.dpi < 1:
        parser.error(f"--dpi must be positive, got {args.dpi}")
    if not args.runs and not args.wandb_project:
        parser.error("give run directories, or --wandb-project")
    return args


def _no_evaluations(runset: RunSet, options: ReportOptions) -> str | None:
    """Why ``--metric eval`` has nothing to read: there are runs to analyse and none has evaluations."""
    selected = runset.select(options.envs)
    if options.metric != "eval" or selected.runs.empty or len(selected.no_evaluations) < len(selected.runs):
        return None
    return (f"--metric eval: none of the {len(selected.runs)} runs analysed has evaluations (no evals.csv, or "
            "one with only its header: eval.episodes=0); use --metric train, or runs trained with evaluation on")


def _load(args: argparse.Namespace) -> tuple[RunSet, list[str]]:
    """The runs of the command's sources, and the sources' names for the report."""
    if args.wandb_project:
        source = f"wandb:{args.wandb_entity + '/' if args.wandb_entity else ''}{args.wandb_project}"
        return load_wandb(args.wandb_project, args.wandb_entity), [source]
    with warnings.catch_warnings():  # listed once in main, without a warning's source line
        warnings.simplefilter("ignore", SkippedRunWarning)
        return load_runs(args.runs), [str(path) for path in args.runs]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runset, sources = _load(args)
    except (FileNotFoundError, NotADirectoryError) as error:
        print(f"svrl-report: {error}", file=sys.stderr)
        return 2
    options = ReportOptions(envs=args.envs, thresholds=dict(args.threshold),
                            x_axes=("env_steps", "wall_time") if args.x == "both" else (args.x,),
                            figures=tuple(args.figures), estimator=args.estimator, confidence=args.confidence,
                            budget_seconds=args.budget_seconds, dpi=args.dpi, metric=args.metric)
    no_evaluations = _no_evaluations(runset, options)
    if no_evaluations:
        print(f"svrl-report: {no_evaluations}", file=sys.stderr)
        return 2
    runset = runs_for_metric(runset, options.metric)
    if not args.wandb_project:  # W&B's skipped runs were warned about as they loaded
        for skipped in runset.skipped:
            print(f"skipping run {skipped.run}: {skipped.reason}", file=sys.stderr)
    report = write_report(runset, args.out, options, sources)
    print(f"report: {report.resolve()}")
    empty = _nothing_to_analyse(runset, options)
    if empty:
        print(f"svrl-report: {empty}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
