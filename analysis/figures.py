"""Paper figures (seaborn, saved as PNG and PDF).

Each ``plot_*`` function takes frames from :mod:`analysis.load` / :mod:`analysis.stats` and returns a
matplotlib figure, or raises :class:`NoData` saying why it cannot be drawn (e.g. no multi-worker runs for
the staleness figures), which the report turns into a note. Colours belong to a schedule (algo/mode) and
are the same in every figure; within a schedule, worker counts differ by line style, marker or shade.
Legends give the number of seeds behind every line or point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the report runs on headless machines and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.container import Container  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from analysis.stats import condition_label, summarize  # noqa: E402

_COLORBLIND = sns.color_palette("colorblind")
# Fixed colours for the schedules the harness has, so a schedule looks the same in every figure and paper.
SCHEDULE_COLOURS = {
    "single/serial": _COLORBLIND[7],
    "a2c/vector": _COLORBLIND[0],
    "a2c/workers": _COLORBLIND[9],
    "a3c/hogwild": _COLORBLIND[3],
    "a3c/parameter_server": _COLORBLIND[1],
}
# Colours for schedules added later, handed out in name order.
SPARE_COLOURS = [_COLORBLIND[index] for index in (2, 4, 5, 6, 8)]
LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
PANEL_SIZE = (4.4, 3.4)
MIN_WIDTH = 6.4  # inches: wide enough for the legend under a single panel
LEGEND_ROW_HEIGHT = 0.25  # inches


DEFAULT_DPI = 200


class NoData(Exception):
    """A figure that the loaded runs cannot support; the message says what is missing."""


def schedule_palette(schedules: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    unknown = sorted(set(schedules) - set(SCHEDULE_COLOURS))
    spare = {name: SPARE_COLOURS[index % len(SPARE_COLOURS)] for index, name in enumerate(unknown)}
    return {**SCHEDULE_COLOURS, **spare}


def save_figure(fig: Figure, out_dir: Path, name: str, dpi: int = DEFAULT_DPI, vector: bool = True) -> list[Path]:
    """Write ``name.png`` (at ``dpi``) and, with ``vector``, ``name.pdf`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", *([out_dir / f"{name}.pdf"] if vector else [])]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


def _panels(titles: Sequence[str], rows: int = 1) -> tuple[Figure, np.ndarray]:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    columns = max(1, len(titles) // rows)
    width = max(PANEL_SIZE[0] * columns, MIN_WIDTH)
    fig, axes = plt.subplots(rows, columns, figsize=(width, PANEL_SIZE[1] * rows),
                             squeeze=False, layout="constrained")
    for ax, title in zip(axes.flat, titles, strict=True):
        ax.set_title(title)
    return fig, axes


def _seeds(counts: Iterable[int]) -> str:
    counts = sorted(set(int(count) for count in counts))
    text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{text} seed{'s' if counts[-1] != 1 else ''}"


def _series_index(data: pd.DataFrame, series: Sequence[str]) -> dict[tuple, int]:
    """A fixed position for every series, so that it gets the same marker and line style in every panel."""
    keys = data.groupby(list(series), sort=True, dropna=False).size().index
    return {key if isinstance(key, tuple) else (key,): index for index, key in enumerate(keys)}


def natural_key(label: str) -> list[str | float]:
    """Sorts labels with their numbers by value: ``delay=4`` before ``delay=16``, ``0.05`` before ``0.1``."""
    return [float(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", label))]


def _legend_below(fig: Figure, handles: list, title: str) -> None:
    """A legend under the panels, entries in label order (references such as the ideal line go first)."""
    # As many columns as fit the figure's width (about 12 legend characters per inch at this font size).
    handles = sorted(handles, key=lambda handle: (not handle.get_label().startswith("ideal"),
                                                  natural_key(handle.get_label())))
    longest = max(len(handle.get_label()) for handle in handles) + 6
    fig.set_figwidth(max(fig.get_figwidth(), longest / 12))  # a label longer than the panels widens the figure
    columns = max(1, min(len(handles), int(fig.get_figwidth() * 12 / longest)))
    # The legend gets room of its own (a row is about a quarter inch, its title another), so that many conditions
    # lengthen the figure instead of squeezing the panels.
    fig.set_figheight(fig.get_figheight() + LEGEND_ROW_HEIGHT * (math.ceil(len(handles) / columns) + 1))
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, title=title, frameon=False)


def estimator_name(estimator: str) -> str:
    return "IQM" if estimator == "iqm" else estimator


def _env_titles(frame: pd.DataFrame, env_ids: Mapping[str, str]) -> list[str]:
    return [env_ids.get(env, env) for env in sorted(frame["env_name"].unique())]


# --------------------------------------------------------------------------- learning curves
def _curve_colours(logged: pd.DataFrame, series: Sequence[str]) -> Callable[[tuple], tuple[float, float, float]]:
    """A colour per schedule (the same in every figure); when one schedule has several conditions (a staleness or
    lag sweep), a colour per condition instead, in order along a sequential map, so that the sweep reads as one."""
    schedules = logged["schedule"].unique()
    keys = sorted(logged.groupby(list(series), sort=True, dropna=False).size().index,
                  key=lambda key: natural_key(str(key)))
    if len(schedules) > 1 or len(keys) < 2:
        palette = schedule_palette(schedules)
        return lambda key: palette[dict(zip(series, key, strict=True))["schedule"]]
    colours = dict(zip(keys, sns.color_palette("viridis", len(keys)), strict=True))
    return lambda key: colours[key]


def plot_curves(returns: pd.DataFrame, aggregated: pd.DataFrame, series: Sequence[str], x: str, estimator: str,
                confidence: float, thresholds: Mapping[str, float], env_ids: Mapping[str, str],
                xlabel: str, ylabel: str) -> Figure:
    """Return vs ``x`` (env steps or seconds), one panel per env, one line per condition.

    ``returns`` are the runs' logged returns (training metrics or evaluations) and ``ylabel`` says which;
    ``xlabel`` says what ``x`` counts (for seconds, on which clock);
    ``aggregated`` comes from :func:`analysis.stats.aggregate_curves`; ``series`` are its condition
    columns other than ``env_name``. The thick line is the estimate over seeds and the band its bootstrap
    CI, drawn where every seed has data; each run's logged points are drawn as a thin faint line, so a
    condition whose seeds share no range is still visible.
    """
    logged = returns.dropna(subset=["return_mean"])
    if logged.empty:
        raise NoData("no run has finished an episode")
    envs = sorted(logged["env_name"].unique())
    colour_of = _curve_colours(logged, series)
    fig, axes = _panels(_env_titles(logged, env_ids))
    # One legend entry per condition across panels; its seed count may differ between envs.
    seed_counts = logged.groupby([*series, "env_name"], dropna=False)["run_id"].nunique().groupby(
        list(series), dropna=False).agg(list)
    handles: dict[str, Line2D] = {}
    for ax, env in zip(axes.flat, envs, strict=True):
        env_runs = logged[logged.env_name == env]
        env_rows = aggregated[aggregated.env_name == env]
        unshared = []
        for keys, runs in env_runs.groupby(list(series), sort=True, dropna=False):
            condition = dict(zip(series, keys, strict=True))
            colour = colour_of(keys)
            style = _variant_style(env_runs, series, condition)
            for _, run in runs.groupby("run_id", sort=True):
                ax.plot(run[x], run["return_mean"], color=colour, linestyle=style, linewidth=0.6, alpha=0.35,
                        marker=_lone_point(run))
            line = env_rows.merge(pd.DataFrame([condition]), on=list(series))
            label = f"{condition_label(series, keys)} ({_seeds(seed_counts[keys])})"
            (handle,) = ax.plot(line[x], line["estimate"], color=colour, linestyle=style, linewidth=2, label=label,
                                marker=_lone_point(line))
            handles.setdefault(label, handle)
            if line.empty:
                unshared.append(keys)
            else:  # when no condition has a shared point, the empty frame's columns are objects, which no band takes
                ax.fill_between(line[x], line["low"], line["high"], color=colour, alpha=0.2, linewidth=0)
        if unshared:
            total = env_runs.groupby(list(series), dropna=False).ngroups
            ax.text(0.98, 0.03, f"{len(unshared)} of {total} conditions: seeds share no range,\nsingle runs only",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize="x-small", color="0.3")
        if env in thresholds:
            ax.axhline(thresholds[env], color="0.3", linestyle=(0, (1, 2)), linewidth=1)
            ax.annotate(f"threshold {thresholds[env]:g}", xy=(0.01, thresholds[env]),
                        xycoords=("axes fraction", "data"),
                        va="bottom", fontsize="small", color="0.3")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=0)
    _legend_below(fig, list(handles.values()),
                  f"{estimator_name(estimator)} over seeds (thin: single runs), band: {confidence:.0%} bootstrap CI")
    return fig


def _lone_point(points: pd.DataFrame) -> str | None:
    """A marker for a line of a single point, which the line alone would not show (e.g. a run evaluated only at
    its end)."""
    return "o" if len(points) == 1 else None


def _variant_style(env_rows: pd.DataFrame, series: Sequence[str], condition: dict) -> str:
    """A line style for a condition within its schedule: the i-th variant (e.g. worker count) gets style i."""
    others = [column for column in series if column != "schedule"]
    same_schedule = env_rows[env_rows.schedule == condition["schedule"]]
    variants = sorted({tuple(row) for row in same_schedule[others].itertuples(index=False)}, key=str)
    index = variants.index(tuple(condition[column] for column in others)) if others else 0
    return LINE_STYLES[index % len(LINE_STYLES)]


# --------------------------------------------------------------------------- staleness
def plot_staleness_distribution(updates: pd.DataFrame, env_ids: Mapping[str, str]) -> Figure:
    """ECDF of the staleness of every gradient, one panel per env and schedule, one line per worker count."""
    if updates.empty:
        raise NoData("no multi-worker runs with an updates.csv")
    panels = sorted({(env, schedule) for env, schedule in updates[["env_name", "schedule"]].itertuples(index=False)})
    envs = sorted({env for env, _ in panels})
    fig, axes = _panels([f"{env_ids.get(env, env)}: {schedule}" for env, schedule in panels], rows=len(envs))
    palette = schedule_palette(updates["schedule"])
    for ax, (env, schedule) in zip(axes.flat, panels, strict=True):
        rows = updates[(updates.env_name == env) & (updates.schedule == schedule)]
        workers = sorted(rows["num_workers"].unique())
        shades = sns.light_palette(palette[schedule], n_colors=len(workers) + 1)[1:]
        for shade, count in zip(shades, workers, strict=True):
            subset = rows[rows.num_workers == count]
            seeds = subset["run_id"].nunique()
            sns.ecdfplot(subset, x="staleness", ax=ax, color=shade,
                         label=f"{count} worker{'s' if count != 1 else ''} ({_seeds([seeds])})")
        ax.set_xlabel("staleness (policy versions behind)")
        ax.set_ylabel("fraction of gradients")
        ax.set_xlim(-0.5, max(1, rows["staleness"].max()) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(title="gradients pooled over seeds", fontsize="small", title_fontsize="small")
    return fig


def plot_lag_distribution(updates: pd.DataFrame, series: Sequence[str], env_ids: Mapping[str, str]) -> Figure:
    """ECDF of the lag of every update row (the versions between the policy that acted its data and the one its step
    was applied to), one panel per env, one line per condition, every algorithm on one axis: PPO's later epochs,
    DD-PPO's rounds, A3C's stale gradients and the actors' unrolls alike."""
    if updates.empty:
        raise NoData("no runs with an updates.csv")
    envs = sorted(updates["env_name"].unique())
    fig, axes = _panels([env_ids.get(env, env) for env in envs])
    colours = _curve_colours(updates, series)
    for ax, env in zip(axes.flat, envs, strict=True):
        rows = updates[updates.env_name == env]
        for condition, subset in sorted(rows.groupby(list(series), dropna=False), key=lambda item: natural_key(
                ", ".join(map(str, item[0])))):
            key = condition if isinstance(condition, tuple) else (condition,)
            sns.ecdfplot(subset, x="staleness", ax=ax, color=colours(key), linestyle=_variant_style(
                rows, series, dict(zip(series, key, strict=True))),
                label=f"{', '.join(map(str, key))} ({_seeds([subset['run_id'].nunique()])})")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("lag (policy versions from acting to the step)")
        ax.set_ylabel("fraction of update rows")
        ax.legend(title="rows pooled over seeds", fontsize="x-small", title_fontsize="small")
    return fig


def plot_vs_workers(summary: pd.DataFrame, value: str, series: Sequence[str], ylabel: str, estimator: str,
                    confidence: float, env_ids: Mapping[str, str], scale: float = 1.0) -> Figure:
    """A per-run measure vs worker count: runs as faint points, the estimate over seeds with its CI as a line."""
    data = summary.dropna(subset=[value])
    if data.empty:
        raise NoData(f"no run has a value for {value}")
    fig, axes = _panels(_env_titles(data, env_ids))
    palette = schedule_palette(data["schedule"])
    position = _series_index(data, series)
    handles: dict[str, Artist | Container] = {}  # by label: lines and error bars
    for ax, env in zip(axes.flat, sorted(data["env_name"].unique()), strict=True):
        env_rows = data[data.env_name == env]
        for keys, runs in env_rows.groupby(list(series), sort=True, dropna=False):
            index = position[keys]
            colour = palette[dict(zip(series, keys, strict=True))["schedule"]]
            agg = summarize(runs, value, ["num_workers"], estimator, confidence)
            label = f"{condition_label(series, keys)} ({_seeds(agg['n_runs'])} per point)"
            ax.scatter(runs["num_workers"], runs[value] * scale, color=colour, alpha=0.35, s=14, linewidths=0)
            handle = ax.errorbar(agg["num_workers"], agg["estimate"] * scale,
                                 yerr=_error_bars(agg, scale), color=colour, marker=MARKERS[index % len(MARKERS)],
                                 linestyle=LINE_STYLES[index % len(LINE_STYLES)], capsize=3, label=label)
            handles.setdefault(label, handle)
        _worker_axis(ax, env_rows["num_workers"])
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)  # every measure drawn here is a non-negative amount; 0 keeps ratios honest
        ax.set_ylim(top=max(ax.get_ylim()[1], 1e-3))
    _legend_below(fig, list(handles.values()),
                  f"{estimator_name(estimator)} over seeds, bars: {confidence:.0%} bootstrap CI; points: single runs")
    return fig


def _error_bars(agg: pd.DataFrame, scale: float) -> np.ndarray:
    low = (agg["estimate"] - agg["low"]).clip(lower=0).fillna(0)
    high = (agg["high"] - agg["estimate"]).clip(lower=0).fillna(0)
    return np.vstack([low, high]) * scale


def _worker_axis(ax: plt.Axes, workers: pd.Series) -> None:
    counts = sorted(int(count) for count in workers.unique())
    if counts[-1] / counts[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(count) for count in counts])
    ax.minorticks_off()
    ax.set_xlabel("workers")


def plot_return_vs_staleness(summary: pd.DataFrame, env_ids: Mapping[str, str], ylabel: str) -> Figure:
    """Final return (``ylabel`` says which) against mean staleness, one point per run; colour: schedule,
    marker: worker count."""
    data = summary.dropna(subset=["staleness_mean", "final_return"])
    if data.empty:
        raise NoData("no multi-worker run has both a final return and recorded staleness")
    fig, axes = _panels(_env_titles(data, env_ids))
    palette = schedule_palette(data["schedule"])
    workers = sorted(data["num_workers"].unique())
    marker_of = {count: MARKERS[index % len(MARKERS)] for index, count in enumerate(workers)}
    for ax, env in zip(axes.flat, sorted(data["env_name"].unique()), strict=True):
        env_rows = data[data.env_name == env]
        for (schedule, count), runs in env_rows.groupby(["schedule", "num_workers"], sort=True):
            ax.scatter(runs["staleness_mean"], runs["final_return"], color=palette[schedule], marker=marker_of[count],
                       s=36, alpha=0.8, edgecolors="white", linewidths=0.5)
        ax.set_xlabel("mean staleness (policy versions behind)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.05 * max(1.0, env_rows["staleness_mean"].max()), None)
        ax.set_xlim(right=max(ax.get_xlim()[1], 1.0))
    handles: list[Artist] = [Patch(color=palette[name], label=name) for name in sorted(data["schedule"].unique())]
    handles += [Line2D([], [], color="0.4", marker=marker_of[count], linestyle="",
                       label=f"{count} worker{'s' if count != 1 else ''}") for count in workers]
    _legend_below(fig, handles, f"one point per run ({len(data)} runs)")
    return fig


# --------------------------------------------------------------------------- scaling
def plot_speedup(speedups: pd.DataFrame, series: Sequence[str], env_ids: Mapping[str, str],
                 thresholds: Mapping[str, float], confidence: float, ylabel: str) -> Figure:
    """Speedup in time-to-threshold over the 1-worker runs vs workers, with the ideal linear speedup; ``ylabel``
    says on which clock the times were measured."""
    data = speedups.dropna(subset=["speedup"])
    if data.empty:
        raise NoData("no condition has a 1-worker baseline and runs that reached the threshold")
    fig, axes = _panels([f"{env_ids.get(env, env)} (threshold {thresholds[env]:g})"
                         for env in sorted(data["env_name"].unique())])
    palette = schedule_palette(data["schedule"])
    position = _series_index(data, series)
    handles: dict[str, Artist | Container] = {}  # by label: lines and error bars
    for ax, env in zip(axes.flat, sorted(data["env_name"].unique()), strict=True):
        env_rows = data[data.env_name == env]
        counts = np.array(sorted(env_rows["num_workers"].unique()), dtype=float)
        (ideal,) = ax.plot(counts, counts, color="0.5", linestyle="--", linewidth=1, label="ideal (linear)")
        handles.setdefault(ideal.get_label(), ideal)
        for keys, rows in env_rows.groupby(list(series), sort=True, dropna=False):
            index = position[keys]
            colour = palette[dict(zip(series, keys, strict=True))["schedule"]]
            label = f"{condition_label(series, keys)} ({_seeds(rows['n_runs'])} reached it per point)"
            agg = rows.rename(columns={"speedup": "estimate"})
            handle = ax.errorbar(rows["num_workers"], rows["speedup"], yerr=_error_bars(agg, 1.0), color=colour,
                                 marker=MARKERS[index % len(MARKERS)], capsize=3, label=label)
            handles.setdefault(label, handle)
        _worker_axis(ax, env_rows["num_workers"])
        if ax.get_xscale() == "log":  # keep the ideal line straight
            ax.set_yscale("log", base=2)
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel(ylabel)
    _legend_below(fig, list(handles.values()), f"mean time of 1-worker runs / mean time of k-worker runs, "
                                               f"bars: {confidence:.0%} bootstrap CI")
    return fig
