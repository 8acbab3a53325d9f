"""One command from run directories to figures, tables and a report page.

    python -m analysis.report RUNS_DIR [RUNS_DIR ...] --out DIR      (or: svrl-report ...)

writes ``DIR/figures/*.png|pdf``, ``DIR/tables/*.md|tex`` and ``DIR/report.md`` (figures embedded as
images, tables inline, skipped runs and skipped figures listed with their reasons), then prints where
the report is; ``--for-docs`` leaves out the PDF and LaTeX copies and draws the PNGs at screen resolution, as the
pages of docs/results keep them. As it goes it says, on stderr, how many runs it read from where, and each figure
and table as it writes it. Thresholds default to each env's ``env.solved_return`` from the runs' Hydra configs.
``--metric eval`` makes every return curve, return table and threshold read the evaluation episodes'
return (``evals.csv``) instead of the training episodes' (``metrics.csv``); the report says which.

Every output drawn from the record's ``wall_time`` (:data:`WALL_CLOCK_OUTPUTS`: return against time, seconds to
threshold and the speedup, steps per second, barrier wait, the probability of improvement at a time budget) says
which clock its seconds are on, in its axis labels, table headers and caption: wall-clock seconds for runs on
the machine, virtual seconds for runs on simulated workers (``backend=simulated``), which are the cost model's,
not measured. The report's header names the clock and the simulated runs' cost model.

When the runs analysed mix clocks, each of those outputs is drawn once per clock, from that clock's runs alone,
and named for it (``return_vs_time_real``, ``return_vs_time_simulated``); the header and stderr say how many runs
are on each. A virtual second is a modelled cost and a wall-clock second a measured one: on one axis, or pooled
in one estimate, they would compare a model with a machine without saying so, so they never share an axis, a
column or an estimate; nor is anything left out: each clock's runs get each of those outputs as they would alone.
Outputs counted in env steps or policy versions (return against steps, final return, staleness) are not clocked
and take every run, with the clock as a condition so that seeds of different clocks are never pooled.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shlex
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from analysis import figures, stats
from analysis.figures import DEFAULT_DPI
from analysis.load import CLOCKS, RunSet, SkippedRun, SkippedRunWarning, load_runs, load_wandb

DOCS_DPI = 100  # screen resolution: docs/results keeps its figures small enough to commit
FIGURES = ("return_vs_steps", "return_vs_time", "lag_distribution", "staleness_distribution", "staleness_vs_workers",
           "return_vs_staleness", "throughput_vs_workers", "speedup_vs_workers", "barrier_wait_vs_workers")
# The figures and tables drawn from wall_time: they name their clock, and runs of two clocks get one each per clock.
WALL_CLOCK_OUTPUTS = {"return_vs_time", "throughput_vs_workers", "speedup_vs_workers", "barrier_wait_vs_workers",
                      "time_to_threshold", "throughput", "probability_of_improvement"}
# Captions name the return they show: {returns} is the metric with how it is measured, {name} its name. Those of
# WALL_CLOCK_OUTPUTS name the clock with ClockWords' fields ({seconds}, {time}, {budget}) and end with its {note}.
CAPTIONS = {
    "return_vs_steps": "Sample efficiency: {returns} against environment steps.",
    "return_vs_time": "Return against {seconds}: {returns}. A condition's curve ends where its shortest "
                      "run ends, so every point averages the same seeds.{note}",
    "lag_distribution": "Distribution (ECDF) of the lag of every update row, every schedule on one axis: the "
                        "policy versions from the one that acted the data to the one its step was applied to "
                        "(PPO's later epochs, stale gradients, actors' unrolls).",
    "staleness_distribution": "Distribution (ECDF) of gradient staleness, per worker count, for multi-worker "
                              "schedules.",
    "staleness_vs_workers": "Mean gradient staleness per run against the number of workers.",
    "return_vs_staleness": "Final {name} against mean gradient staleness, one point per multi-worker run.",
    "throughput_vs_workers": "Environment steps per second (from the first to the last logged interval) "
                             "against the number of workers.{note}",
    "speedup_vs_workers": "Speedup in {time} to threshold (in {name}) over the 1-worker runs of the same "
                          "schedule; dashed: ideal linear speedup. Runs that never reached the threshold are left "
                          "out.{note}",
    "barrier_wait_vs_workers": "Share of worker time spent waiting at the synchronisation barrier, for "
                               "synchronous multi-worker schedules.{note}",
}


METRICS = ("train", "eval")


@dataclass(frozen=True)
class ClockWords:
    """How the outputs drawn from ``wall_time`` name their seconds, for one clock (meta.json ``clock``)."""

    clock: str
    header: str  # the report header's line
    seconds: str  # in captions: "Return against {seconds}"
    time: str  # "Speedup in {time} to threshold"
    budget: str  # "at the same {budget}"
    note: str  # the sentence closing every caption of a wall-clock output
    time_axis: str  # the x-axis of return against time
    rate_axis: str  # the y-axis of throughput; y-axis labels fit in about 30 characters
    speedup_axis: str
    barrier_axis: str
    seconds_header: str  # the time-to-threshold table's column
    rate_header: str  # the throughput table's column
    budget_header: str  # the probability-of-improvement table's column


CLOCK_WORDS = {
    "real": ClockWords(
        "real", header="real: times are wall-clock seconds, measured on the machine", seconds="wall-clock seconds",
        time="wall-clock time", budget="wall-clock budget", note="", time_axis="wall-clock time (s)",
        rate_axis="environment steps per second", speedup_axis="speedup to threshold (x)",
        barrier_axis="barrier wait (% of worker time)", seconds_header="seconds", rate_header="env steps/s",
        budget_header="wall-clock budget (s)"),
    "simulated": ClockWords(
        "simulated", header="simulated: times are virtual seconds (simulated workers), the cost model's, not measured",
        seconds="virtual seconds", time="virtual time", budget="virtual budget",
        note=" Seconds are virtual seconds (simulated workers): the cost model's, not measured.",
        time_axis="virtual seconds (simulated workers)", rate_axis="env steps/s (virtual time)",
        speedup_axis="speedup in virtual time (x)", barrier_axis="barrier wait (% virtual time)",
        seconds_header="virtual seconds", rate_header="env steps per virtual second",
        budget_header="virtual budget (s)"),
}


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
    paper_copies: bool = True  # a PDF of every figure and a LaTeX copy of every table, beside the PNG and Markdown
    command: tuple[str, ...] = ()  # the report command's arguments, recorded in the report


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

    @property
    def clock_counts(self) -> dict[str, int]:
        """How many runs are on each clock, for the clocks that have runs."""
        return clock_counts(self.runset)

    @property
    def clock(self) -> ClockWords:
        """The words of the runs' clock (real when there are no runs). Runs on two clocks have no one clock: their
        seconds must not share an axis (:attr:`by_clock` analyses each clock's runs alone)."""
        counts = self.clock_counts
        if len(counts) > 1:
            raise figures.NoData(f"the runs mix clocks ({_per_clock(counts)}), whose seconds cannot share an axis")
        return CLOCK_WORDS[next(iter(counts), "real")]

    @cached_property
    def by_clock(self) -> dict[str, Analysis]:
        """The analysis of each clock's runs alone."""
        runs = self.runset.runs
        return {clock: analyse(self.runset.only(set(runs.loc[runs["clock"] == clock, "run_id"])), self.options)
                for clock in self.clock_counts}


def analyse(runset: RunSet, options: ReportOptions) -> Analysis:
    """Statistics of ``runset`` (as :func:`runs_for_metric` leaves it) for the report's figures and tables."""
    runset = runset.select(options.envs)
    returns = runset.evals if options.metric == "eval" else runset.metrics
    thresholds = {**stats.thresholds_from_runs(runset.runs), **options.thresholds}
    summary = stats.run_summary(runset.metrics, runset.updates, runset.labels, thresholds, returns)
    env_ids = dict(runset.runs[["env_name", "env_id"]].drop_duplicates().itertuples(index=False))
    return Analysis(runset, options, thresholds, summary, env_ids, returns, return_metric(options.metric, runset))


def clock_counts(runset: RunSet) -> dict[str, int]:
    """How many of ``runset``'s runs are on each clock, in CLOCKS order, for the clocks that have runs."""
    counts = runset.runs["clock"].value_counts()
    return {clock: int(counts[clock]) for clock in CLOCKS if clock in counts}


def _per_clock(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {clock}" for clock, count in counts.items())


def mixed_clocks(runset: RunSet) -> str | None:
    """What the report does with runs on two clocks, naming how many are on each; None when they share one."""
    counts = clock_counts(runset)
    if len(counts) < 2:
        return None
    return (f"{counts['simulated']} of the {sum(counts.values())} runs analysed are simulated (virtual seconds), "
            f"{counts['real']} real (wall-clock seconds). Each figure and table of wall_time is drawn once per clock "
            "from that clock's runs (names ending _real and _simulated), so that virtual and wall-clock seconds "
            "never share an axis; those in env steps take every run, with the clock as a condition. For one clock "
            "alone, give only its runs' directories.")


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
                                   opts.confidence, analysis.thresholds, analysis.env_ids, _x_label(analysis, x),
                                   analysis.metric.axis)

    return draw


def _x_label(analysis: Analysis, x: str) -> str:
    """The return curves' x-axis: env steps, or seconds on the runs' clock."""
    return "environment steps" if x == "env_steps" else analysis.clock.time_axis


def _staleness_distribution(analysis: Analysis) -> figures.Figure:
    updates = analysis.runset.updates
    multi = updates["schedule"].isin(analysis.summary.loc[_multi_worker_schedules(analysis.summary), "schedule"])
    if not multi.any():
        raise figures.NoData("no multi-worker runs")
    return figures.plot_staleness_distribution(updates[multi], analysis.env_ids)


def _vs_workers(value: str, ylabel: Callable[[Analysis], str], rows: Callable[[pd.DataFrame], pd.Series],
                missing: str, scale: float = 1.0) -> Callable[[Analysis], figures.Figure]:
    def draw(analysis: Analysis) -> figures.Figure:
        selected = analysis.summary[rows(analysis.summary)]
        if selected.empty:
            raise figures.NoData(missing)
        opts = analysis.options
        return figures.plot_vs_workers(selected, value, analysis.lines, ylabel(analysis), opts.estimator,
                                       opts.confidence, analysis.env_ids, scale)

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
                                analysis.options.confidence, analysis.clock.speedup_axis)


def speedup_table(analysis: Analysis) -> pd.DataFrame:
    return stats.speedup(analysis.summary, analysis.scaling_conditions, confidence=analysis.options.confidence)


DRAW: dict[str, Callable[[Analysis], figures.Figure]] = {
    "return_vs_steps": _curves("env_steps"),
    "return_vs_time": _curves("wall_time"),
    "lag_distribution": lambda analysis: figures.plot_lag_distribution(analysis.runset.updates, analysis.series,
                                                                       analysis.env_ids),
    "staleness_distribution": _staleness_distribution,
    "staleness_vs_workers": _vs_workers("staleness_mean", lambda _: "mean staleness (policy versions behind)",
                                        _multi_worker_schedules, "no multi-worker runs"),
    "return_vs_staleness": _return_vs_staleness,
    "throughput_vs_workers": _vs_workers("steps_per_second", lambda analysis: analysis.clock.rate_axis,
                                         lambda summary: pd.Series(True, index=summary.index), "no runs"),
    "speedup_vs_workers": _speedup,
    "barrier_wait_vs_workers": _vs_workers("barrier_wait_share", lambda analysis: analysis.clock.barrier_axis,
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
    """The condition columns of ``frame`` under their names in tables (algo and mode are in the schedule); the
    clock is one when the runs mix clocks."""
    columns = {"env_name": "env", "schedule": "schedule", "num_workers": "workers"}
    columns.update({key: key for key in analysis.runset.conditions if key not in {*columns, "algo", "mode"}})
    return frame[list(columns)].rename(columns=columns)


def _estimated(analysis: Analysis, what: str) -> str:
    """A column header of estimates over seeds, e.g. ``final return, IQM [95% CI]``."""
    opts = analysis.options
    return f"{what}, {figures.estimator_name(opts.estimator)} [{opts.confidence:.0%} CI]"


def _summarized(analysis: Analysis, value: str) -> pd.DataFrame:
    opts = analysis.options
    return stats.summarize(analysis.summary, value, analysis.runset.conditions, opts.estimator, opts.confidence)


def _seeds_and_estimate(analysis: Analysis, summarized: pd.DataFrame, what: str) -> pd.DataFrame:
    """One row per condition of ``summarized`` (:func:`_summarized`): its seeds and the estimate with its CI."""
    return _condition_columns(analysis, summarized).assign(**{
        "seeds": summarized["n_runs"], _estimated(analysis, what): summarized.apply(_with_ci, axis=1)})


def _final_return_table(analysis: Analysis) -> pd.DataFrame:
    return _seeds_and_estimate(analysis, _summarized(analysis, "final_return"), "final return")


def _mean_return_table(analysis: Analysis) -> pd.DataFrame:
    return _seeds_and_estimate(analysis, _summarized(analysis, "mean_return"), "mean return over the run")


def _time_to_threshold_table(analysis: Analysis) -> pd.DataFrame:
    conditions = analysis.runset.conditions
    steps, seconds = _summarized(analysis, "steps_to_threshold"), _summarized(analysis, "seconds_to_threshold")
    speedups = speedup_table(analysis).set_index(conditions)
    table = _condition_columns(analysis, steps).assign(**{
        "threshold": steps["env_name"].map(lambda env: f"{analysis.thresholds[env]:g}" if env in analysis.thresholds
                                          else "–"),
        "reached": [f"{n}/{total}" for n, total in zip(steps["n_runs"], steps["n_total"], strict=True)],
        _estimated(analysis, "env steps"): steps.apply(_with_ci, axis=1),
        _estimated(analysis, analysis.clock.seconds_header): seconds.apply(_with_ci, axis=1),
    })
    keys = pd.MultiIndex.from_frame(steps[conditions])
    table["speedup vs 1 worker"] = [_with_ci(speedups.loc[key], "speedup") if key in speedups.index else "–"
                                    for key in keys]
    table["efficiency"] = [_number(speedups.loc[key, "efficiency"]) if key in speedups.index else "–"
                           for key in keys]
    return table


def _throughput_table(analysis: Analysis) -> pd.DataFrame:
    return _seeds_and_estimate(analysis, _summarized(analysis, "steps_per_second"), analysis.clock.rate_header)


def _staleness_table(analysis: Analysis) -> pd.DataFrame:
    conditions = analysis.runset.conditions
    staleness = _summarized(analysis, "staleness_mean")
    worst = analysis.summary.groupby(conditions, sort=True, dropna=False)[["staleness_max", "dropped_share"]].max()
    worst = worst.reindex(pd.MultiIndex.from_frame(staleness[conditions]))
    return _seeds_and_estimate(analysis, staleness, "mean staleness").assign(**{
        "max staleness": [_number(value) for value in worst["staleness_max"]],
        "dropped gradients (max over seeds)": [f"{value:.1%}" if not math.isnan(value) else "–"
                                               for value in worst["dropped_share"]]})


def _probability_of_improvement_table(analysis: Analysis) -> pd.DataFrame:
    opts = analysis.options
    improvement = stats.probability_of_improvement(analysis.returns, analysis.runset.conditions, opts.budget_seconds,
                                                   opts.confidence)
    return pd.DataFrame({
        "env": improvement["env_name"], "X": improvement["x"], "Y": improvement["y"],
        analysis.clock.budget_header: improvement["budget_seconds"].map(_number),
        f"P(X > Y) [{opts.confidence:.0%} CI]": improvement.apply(_with_ci, axis=1, estimate="probability"),
        "runs X/Y": [f"{x}/{y}" for x, y in zip(improvement["n_x"], improvement["n_y"], strict=True)],
    })


# The report's tables, each built from an analysis with runs.
BUILD: dict[str, Callable[[Analysis], pd.DataFrame]] = {
    "final_return": _final_return_table,
    "mean_return": _mean_return_table,
    "time_to_threshold": _time_to_threshold_table,
    "throughput": _throughput_table,
    "staleness": _staleness_table,
    "probability_of_improvement": _probability_of_improvement_table,
}


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
    "mean_return": "The {returns}, averaged over each run's env steps (the area under its learning curve over "
                   "the steps it spans), over seeds: early learning and kept learning count, not only the end.",
    "time_to_threshold": "Time to threshold in {returns}: {crossing}; estimates over the seeds that reached it.{note}",
    "throughput": "Environment steps per second from the first to the last logged interval.{note}",
    "staleness": "Gradient staleness (policy versions between a worker's sync and the update's apply).",
    "probability_of_improvement": "Probability that a run of X has a higher {returns} than a run of Y at the "
                                  "same {budget} (ties count one half).{note}",
}


@dataclass(frozen=True)
class Output:
    """One figure or table of the report, and the analysis it is drawn from."""

    name: str  # its key in DRAW or BUILD
    file: str  # its file name, without extension
    title: str
    analysis: Analysis

    @property
    def caption(self) -> str:
        """Its caption, naming the return it shows and, drawn from wall_time, the clock of its seconds."""
        metric = self.analysis.metric
        clock = asdict(self.analysis.clock) if self.name in WALL_CLOCK_OUTPUTS else {}
        template = {**CAPTIONS, **TABLE_CAPTIONS}[self.name]
        return template.format(returns=metric.described, name=metric.name, final=metric.final,
                               crossing=metric.crossing, **clock)


def outputs(name: str, analysis: Analysis) -> list[Output]:
    """The figure or table ``name`` drawn from every run analysed; or, drawn from wall_time when the runs mix
    clocks, once per clock from that clock's runs alone, so that seconds of two clocks never share an axis."""
    title = name.replace("_", " ")
    if name not in WALL_CLOCK_OUTPUTS or len(analysis.clock_counts) < 2:
        return [Output(name, name, title, analysis)]
    return [Output(name, f"{name}_{clock}", f"{title} ({clock} clock)", part)
            for clock, part in analysis.by_clock.items()]


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


def _header(analysis: Analysis, runset: RunSet, sources: Sequence[str]) -> list[str]:
    """The report's first lines: how it was made, what was analysed, on which clocks, and how."""
    metric, options = analysis.metric, analysis.options
    return ["# Sync vs async RL: analysis report", "",
            *_provenance_lines(analysis, options.command),
            f"Sources: {', '.join(f'`{source}`' for source in sources)}  ",
            f"Runs analysed: {len(analysis.runset.runs)}; runs skipped: {len(runset.skipped)}  ",
            *_clock_lines(analysis),
            f"Return (`--metric {metric.option}`): {metric.name}, {metric.detail}  ",
            f"Estimator over seeds: {figures.estimator_name(options.estimator)} with {options.confidence:.0%} "
            "percentile bootstrap "
            f"confidence intervals (scipy.stats.bootstrap)  ",
            "Thresholds: " + (", ".join(f"{env} {value:g}" for env, value in sorted(analysis.thresholds.items()))
                              or "none"), ""]


def _provenance_lines(analysis: Analysis, command: Sequence[str]) -> list[str]:
    """When, from which commit and by which command the report was made, and the commits its runs were trained at."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    runs = analysis.runset.runs
    trained = runs["git_commit"].fillna("unknown").str[:7].value_counts() if "git_commit" in runs else pd.Series()
    return [f"Made: {now}, commit {_checkout_commit()}, by `python -m analysis.report {shlex.join(command)}`  ",
            "Runs trained at: " + (", ".join(f"{commit} ({count})" for commit, count in trained.items()) or "none")
            + "  "]


def _checkout_commit() -> str:
    """This checkout's commit, short, marked when the tree has uncommitted changes; ``unknown`` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return git("rev-parse", "--short=7", "HEAD") + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _clock_lines(analysis: Analysis) -> list[str]:
    """Which clock the runs' seconds are on (none when there are no runs), and the simulated runs' cost model."""
    counts = analysis.clock_counts
    if not counts:
        return []
    mixed = mixed_clocks(analysis.runset)
    clock = f"Clocks: {mixed}" if mixed else f"Clock: {analysis.clock.header}"
    return [f"{clock}  ", *_cost_model_lines(analysis.runset.runs)]


def _cost_model_lines(runs: pd.DataFrame) -> list[str]:
    """The simulated runs' cost model: the settings they share, then those that differ with their values."""
    simulated = runs.loc[runs["clock"] == "simulated", "cost_model"]
    if simulated.empty:
        return []
    recorded = [model for model in simulated if isinstance(model, dict)]
    keys = dict.fromkeys(key for model in recorded for key in model)
    values = {key: _distinct([model.get(key) for model in recorded]) for key in keys}
    unrecorded = len(simulated) - len(recorded)
    parts = [", ".join(f"{key} {shown[0]}" for key, shown in values.items() if len(shown) == 1),
             "; ".join(f"{key} {', '.join(shown)} by run" for key, shown in values.items() if len(shown) > 1),
             f"not recorded by {unrecorded} run{'s' if unrecorded != 1 else ''}" if unrecorded else ""]
    return [f"Cost model of the simulated runs (meta.json `cost_model`, virtual seconds): "
            f"{'; '.join(part for part in parts if part)}  "]


def _distinct(values: list) -> list[str]:
    """Each distinct value once as the report writes it, numbers first in increasing order."""
    numbers = sorted({value for value in values if _is_number(value)})
    return [f"{value:g}" for value in numbers] + sorted({str(value) for value in values if not _is_number(value)})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def progress(line: str) -> None:
    """Say what the report is doing: on stderr, as stdout is the report's path alone."""
    print(line, file=sys.stderr, flush=True)


def _figure_section(output: Output, out: Path, options: ReportOptions) -> list[str]:
    lines = [f"### {output.title}", ""]
    try:
        if output.analysis.runset.runs.empty:
            raise figures.NoData("no runs to analyse")
        fig = DRAW[output.name](output.analysis)
    except figures.NoData as reason:
        progress(f"figure {output.file}: skipped ({reason})")
        return [*lines, f"*Skipped: {reason}.*", ""]
    png, *pdf = figures.save_figure(fig, out / "figures", output.file, dpi=options.dpi, vector=options.paper_copies)
    progress(f"figure {output.file}: {png.relative_to(out).as_posix()}")
    caption = output.caption + "".join(f" ([PDF]({path.relative_to(out).as_posix()}))" for path in pdf)
    return [*lines, f"![{output.file}]({png.relative_to(out).as_posix()})", "", caption, ""]


def _table_section(output: Output, tables_dir: Path, paper_copies: bool) -> list[str]:
    table, name = BUILD[output.name](output.analysis).astype(str), output.file
    (tables_dir / f"{name}.md").write_text(markdown_table(table))
    latex = [f"LaTeX: [tables/{name}.tex](tables/{name}.tex)", ""] if paper_copies else []
    if paper_copies:
        (tables_dir / f"{name}.tex").write_text(latex_table(table, output.caption, name))
    progress(f"table {name}: tables/{name}.md")
    return [f"### {output.title}", "", output.caption, "", markdown_table(table), *latex]


def _sections(names: Sequence[str], analysis: Analysis, section: Callable[[Output], list[str]]) -> list[str]:
    """The report's lines for the outputs ``names``, each written by ``section``."""
    return [line for name in names for output in outputs(name, analysis) for line in section(output)]


def write_report(runset: RunSet, out: Path, options: ReportOptions, sources: Sequence[str]) -> Path:
    """Write every selected figure, every table and ``report.md`` into ``out``; return the report's path."""
    runset = runs_for_metric(runset, options.metric)
    analysis = analyse(runset, options)
    out.mkdir(parents=True, exist_ok=True)
    tables_dir = out / "tables"
    tables_dir.mkdir(exist_ok=True)
    tables = list(BUILD) if not analysis.summary.empty else []
    figure_count = len(selected_figures(options))
    progress(f"drawing {figure_count} figure{'s' * (figure_count != 1)} and {len(tables)} tables into {out}")
    lines = [*_header(analysis, runset, sources), *_runs_section(analysis, runset),
             "## Figures", "", *_sections(selected_figures(options), analysis,
                                          lambda output: _figure_section(output, out, options)),
             "## Tables", "", *_sections(tables, analysis,
                                         lambda output: _table_section(output, tables_dir, options.paper_copies))]
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
                        help="time budget of the probability of improvement, in seconds of the runs' clock (virtual "
                             "for simulated runs; default: the longest time all runs of both conditions reached)")
    parser.add_argument("--dpi", type=int, default=None,
                        help=f"resolution of the PNG figures (default {DEFAULT_DPI}, or {DOCS_DPI} with --for-docs)")
    parser.add_argument("--for-docs", action="store_true",
                        help=f"what docs/results keeps: PNGs at {DOCS_DPI} dpi and Markdown tables, without the PDF "
                             "and LaTeX copies a paper needs")
    parser.add_argument("--metric", default="train", metavar="{train,eval}",
                        help="the return of every curve, return table and threshold: train (default), the "
                             "training episodes' (metrics.csv), or eval, the evaluation episodes' (evals.csv)")
    args = parser.parse_args(argv)
    if args.metric not in METRICS:  # one line, without the usage, as the project's commands answer a bad value
        parser.exit(2, f"{parser.prog}: error: --metric {args.metric!r}: expected train or eval\n")
    if args.dpi is None:
        args.dpi = DOCS_DPI if args.for_docs else DEFAULT_DPI
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
                            budget_seconds=args.budget_seconds, dpi=args.dpi, metric=args.metric,
                            paper_copies=not args.for_docs,
                            command=tuple(sys.argv[1:] if argv is None else argv))
    no_evaluations = _no_evaluations(runset, options)
    if no_evaluations:
        print(f"svrl-report: {no_evaluations}", file=sys.stderr)
        return 2
    runset = runs_for_metric(runset, options.metric)
    left_out = f", {len(runset.skipped)} skipped" if runset.skipped else ""
    progress(f"read {len(runset.runs)} runs from {', '.join(sources)}{left_out}")
    if not args.wandb_project:  # W&B's skipped runs were warned about as they loaded
        for skipped in runset.skipped:
            print(f"skipping run {skipped.run}: {skipped.reason}", file=sys.stderr)
    mixed = mixed_clocks(runset.select(options.envs))
    if mixed:
        print(f"svrl-report: {mixed}", file=sys.stderr)
    report = write_report(runset, args.out, options, sources)
    print(f"report: {report.resolve()}")
    empty = _nothing_to_analyse(runset, options)
    if empty:
        print(f"svrl-report: {empty}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
