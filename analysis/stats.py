"""Statistics over seeds: curves on a common grid, bootstrap CIs, IQM, time-to-threshold, speedup.

Every per-run measure is computed from the recorded files alone (staleness from ``updates.csv``, never
inferred). Uncertainty comes from percentile bootstrap confidence intervals over runs, computed by
``scipy.stats.bootstrap``; with fewer than two runs a CI is undefined and reported as NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of values (25% trimmed from each end), as in rliable."""
    return scipy_stats.trim_mean(values, 0.25, axis=axis)


ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "iqm": iqm}


def bootstrap_ci(samples: np.ndarray, statistic: Callable[..., np.ndarray], confidence: float = DEFAULT_CONFIDENCE,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of ``statistic`` over the runs in axis 0 of ``samples`` (runs x points).

    Returns ``(low, high)``, one value per point; NaN when there are fewer than two runs.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.shape[0] < 2:
        nan = np.full(samples.shape[1:], np.nan)
        return nan, nan.copy()
    result = scipy_stats.bootstrap((samples,), statistic, axis=0, vectorized=True, confidence_level=confidence,
                                   n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def summarize(per_run: pd.DataFrame, value: str, by: Sequence[str], estimator: str = "mean",
              confidence: float = DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """One row per group of ``by``: ``estimate``, ``low``, ``high`` of ``value`` over runs, and ``n_runs``.

    NaN values (e.g. a run that never reached a threshold) are left out; ``n_runs`` counts the rest.
    """
    statistic = ESTIMATORS[estimator]
    rows = []
    for keys, group in per_run.groupby(list(by), sort=True, dropna=False):
        values = group[value].dropna().to_numpy(dtype=np.float64)
        estimate = float(statistic(values)) if values.size else np.nan
        low, high = bootstrap_ci(values, statistic, confidence) if values.size else (np.nan, np.nan)
        rows.append({**dict(zip(by, keys, strict=True)), "estimate": estimate, "low": float(np.squeeze(low)),
                     "high": float(np.squeeze(high)), "n_runs": int(values.size), "n_total": len(group)})
    return pd.DataFrame(rows, columns=[*by, "estimate", "low", "high", "n_runs", "n_total"])


# --------------------------------------------------------------------------- curves
def interpolate_curves(metrics: pd.DataFrame, labels: Sequence[str], x: str = "env_steps", y: str = "return_mean",
                       num_points: int = 101) -> pd.DataFrame:
    """Each run's ``y`` linearly interpolated onto a grid of ``x`` shared by every run of the same env.

    The grid spans 0 to the largest ``x`` any run of the env reached. A run has no value (NaN) outside the
    range it logged: curves are never extrapolated. Returns the identifying columns ``labels`` plus ``x``, ``y``.
    """
    parts = []
    for _, env_rows in metrics.groupby("env_name", sort=True):
        grid = np.linspace(0.0, float(env_rows[x].max()), num_points)
        for _, run in env_rows.groupby("run_id", sort=True):
            logged = run.dropna(subset=[y]).sort_values(x)
            values = np.interp(grid, logged[x], logged[y], left=np.nan, right=np.nan) if len(logged) else grid * np.nan
            parts.append(pd.DataFrame({**run[list(labels)].iloc[0].to_dict(), x: grid, y: values}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*labels, x, y])


def aggregate_curves(curves: pd.DataFrame, by: Sequence[str], x: str = "env_steps", y: str = "return_mean",
                     estimator: str = "mean", confidence: float = DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """Per group and grid point: ``estimate`` (mean or IQM over runs) with a bootstrap CI ``low``/``high``.

    A grid point is kept only where every run of the group has a value, so that the curve never silently
    changes which seeds it averages (with wall-clock on x, a group's curve ends where its fastest run ended).
    """
    statistic = ESTIMATORS[estimator]
    parts = []
    for keys, group in curves.groupby(list(by), sort=True, dropna=False):
        table = group.pivot_table(index="run_id", columns=x, values=y, dropna=False, aggfunc="first")
        table = table.loc[:, table.notna().all(axis=0)]
        if table.shape[1] == 0:
            continue
        samples = table.to_numpy(dtype=np.float64)
        low, high = bootstrap_ci(samples, statistic, confidence)
        parts.append(pd.DataFrame({**dict(zip(by, keys, strict=True)), x: table.columns.to_numpy(dtype=float),
                                   "estimate": statistic(samples, axis=0), "low": low, "high": high,
                                   "n_runs": samples.shape[0]}))
    columns = [*by, x, "estimate", "low", "high", "n_runs"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


# --------------------------------------------------------------------------- per-run measures
RUN_MEASURES = ("final_return", "mean_return", "env_steps", "wall_time", "steps_per_second", "threshold",
                "steps_to_threshold", "seconds_to_threshold", "staleness_mean", "staleness_max", "staleness_p95",
                "dropped_share", "barrier_wait_share")


def run_summary(metrics: pd.DataFrame, updates: pd.DataFrame, labels: Sequence[str],
                thresholds: Mapping[str, float], returns: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run (its identifying columns ``labels``) with final return, steps/s, time-to-threshold,
    staleness and barrier-wait measures.

    ``returns`` holds the rows (``env_steps``, ``wall_time``, ``return_mean``) the return measures come from:
    ``metrics`` (the training return) by default, or the evaluations (``evals``).

    - ``final_return``: ``return_mean`` of the last ``returns`` row that has one.
    - ``mean_return``: the return averaged over the run's env steps (the area under the learning curve, by the
      trapezoidal rule over the ``returns`` rows that have one, over the steps they span), which credits a run
      for learning early and for keeping what it learned, where ``final_return`` sees only the end.
    - ``steps_per_second``: env steps per second between the first and last metrics rows, which leaves out
      process start-up before the first interval (the whole run when there is a single row).
    - ``threshold``, ``steps_to_threshold``, ``seconds_to_threshold``: the first ``returns`` row whose
      ``return_mean`` reaches the env's threshold (NaN if none does; resolution: the log or evaluation interval).
    - ``staleness_mean``/``_max``/``_p95``, ``dropped_share``: over every gradient in ``updates.csv``.
    - ``barrier_wait_share``: the total time workers waited (``wait_time``) divided by the time the workers
      that produced updates were available: distinct workers x the run's wall-clock span.
    """
    if metrics.empty:
        return pd.DataFrame(columns=[*labels, *RUN_MEASURES])
    per_run = metrics.groupby("run_id", sort=True)[[column for column in labels if column != "run_id"]].first()
    by_run = metrics.sort_values(["run_id", "env_steps"]).groupby("run_id", sort=True)
    first, last = by_run[["env_steps", "wall_time"]].first(), by_run[["env_steps", "wall_time"]].last()
    per_run["env_steps"], per_run["wall_time"] = last["env_steps"], last["wall_time"]
    steady = (last["env_steps"] - first["env_steps"]) / (last["wall_time"] - first["wall_time"])
    per_run["steps_per_second"] = steady.where(by_run.size() > 1, last["env_steps"] / last["wall_time"])
    per_run["threshold"] = per_run["env_name"].map(lambda env: thresholds.get(env, np.nan)).astype(float)
    _return_measures(per_run, metrics if returns is None else returns, thresholds)
    # Runs loaded from W&B have no updates.csv: their staleness and waits are unknown (NaN), not zero.
    grads = updates.astype({"staleness": float, "applied": float, "wait_time": float, "wall_time": float}).groupby(
        "run_id", sort=True)
    per_run["staleness_mean"] = grads["staleness"].mean()
    per_run["staleness_max"] = grads["staleness"].max()
    per_run["staleness_p95"] = grads["staleness"].quantile(0.95)
    per_run["dropped_share"] = 1.0 - grads["applied"].mean()
    span = grads["wall_time"].max() - grads["wall_time"].min()
    span = span.where(span > 0)  # a single update spans no time: the share is undefined
    per_run["barrier_wait_share"] = grads["wait_time"].sum() / (grads["worker"].nunique() * span)
    return per_run.reset_index()


def _return_measures(per_run: pd.DataFrame, returns: pd.DataFrame, thresholds: Mapping[str, float]) -> None:
    """Add ``final_return``, ``steps_to_threshold`` and ``seconds_to_threshold`` from ``returns`` to ``per_run``."""
    ordered = returns.sort_values(["run_id", "env_steps"])
    # GroupBy.last skips NaN: the last row with a return; a run without rows in ``returns`` gets NaN.
    per_run["final_return"] = ordered.groupby("run_id", sort=True)["return_mean"].last().reindex(per_run.index)
    curves = ordered.dropna(subset=["return_mean"]).groupby("run_id", sort=True)
    per_run["mean_return"] = curves[["env_steps", "return_mean"]].apply(_curve_mean).reindex(per_run.index)
    reached = ordered[ordered["return_mean"] >= ordered["env_name"].map(thresholds).astype(float)]
    first = reached.groupby("run_id", sort=True).first()
    per_run["steps_to_threshold"] = first["env_steps"].reindex(per_run.index).astype(float)
    per_run["seconds_to_threshold"] = first["wall_time"].reindex(per_run.index).astype(float)


def _curve_mean(curve: pd.DataFrame) -> float:
    steps, returns = curve["env_steps"].to_numpy(float), curve["return_mean"].to_numpy(float)
    span = steps[-1] - steps[0]
    area = float(np.sum((returns[1:] + returns[:-1]) / 2 * np.diff(steps)))  # the trapezoidal rule
    return area / span if span > 0 else float(returns[-1])


def thresholds_from_runs(runs: pd.DataFrame) -> dict[str, float]:
    """Each env's ``env.solved_return`` as recorded in its runs' Hydra configs (envs without one are left out)."""
    known = runs.dropna(subset=["solved_return"])
    return {env: float(value) for env, value in known.groupby("env_name")["solved_return"].first().items()}


# --------------------------------------------------------------------------- comparisons
def speedup(summary: pd.DataFrame, by: Sequence[str], value: str = "seconds_to_threshold",
            confidence: float = DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """Speedup of each worker count over the 1-worker runs of the same condition, and parallel efficiency.

    ``by`` are the condition columns without ``num_workers``. speedup = mean ``value`` of the 1-worker runs /
    mean ``value`` of the k-worker runs (so for a time, larger is faster); efficiency = speedup / k. The CI
    resamples both groups of runs independently. Runs with a NaN ``value`` (threshold never reached) are
    left out and counted in ``n_runs``/``n_total``; a condition without a 1-worker run gets no rows.
    """
    rows = []
    for keys, group in summary.groupby(list(by), sort=True, dropna=False):
        baseline = group.loc[group.num_workers == 1, value].dropna().to_numpy(dtype=np.float64)
        if not baseline.size:
            continue
        for workers, runs in group.groupby("num_workers", sort=True):
            values = runs[value].dropna().to_numpy(dtype=np.float64)
            ratio = baseline.mean() / values.mean() if values.size else np.nan
            # The baseline's speedup is 1 by definition, not an estimate with an interval.
            low, high = ((np.nan, np.nan) if workers == 1
                         else _two_sample_ci(baseline, values, _ratio_of_means, confidence))
            rows.append({**dict(zip(by, keys, strict=True)), "num_workers": workers, "speedup": ratio,
                         "low": low, "high": high, "efficiency": ratio / workers,
                         "n_runs": int(values.size), "n_total": len(runs), "n_baseline": int(baseline.size)})
    return pd.DataFrame(rows, columns=[*by, "num_workers", "speedup", "low", "high", "efficiency", "n_runs",
                                       "n_total", "n_baseline"])


def _ratio_of_means(baseline: np.ndarray, values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(baseline, axis=axis) / np.mean(values, axis=axis)


def probability_greater(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 over all pairs of a run of X and a run of Y (the Mann-Whitney U / (n m))."""
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    ties = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * ties


def _two_sample_ci(x: np.ndarray, y: np.ndarray, statistic: Callable[..., np.ndarray],
                   confidence: float) -> tuple[float, float]:
    if x.size < 2 or y.size < 2:
        return np.nan, np.nan
    result = scipy_stats.bootstrap((x, y), statistic, vectorized=True, confidence_level=confidence,
                                   n_resamples=DEFAULT_RESAMPLES, method="percentile", rng=np.random.default_rng(0))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def returns_at_time(metrics: pd.DataFrame, seconds: float) -> pd.Series:
    """Each run's ``return_mean`` interpolated at wall-clock ``seconds`` (NaN outside what it logged)."""
    def at(run: pd.DataFrame) -> float:
        logged = run.dropna(subset=["return_mean"]).sort_values("wall_time")
        if logged.empty:
            return np.nan
        return float(np.interp(seconds, logged["wall_time"], logged["return_mean"], left=np.nan, right=np.nan))

    return metrics.groupby("run_id", sort=True).apply(at, include_groups=False)


def probability_of_improvement(metrics: pd.DataFrame, by: Sequence[str], budget_seconds: float | None = None,
                               confidence: float = DEFAULT_CONFIDENCE) -> pd.DataFrame:
    """P(a run of condition X beats a run of condition Y) in return at an equal budget of ``wall_time``, per env.

    ``by`` are the condition columns (``env_name`` first). Pairs compare different schedules (one algorithm
    or mode against another, at any worker counts); worker counts of one schedule are compared by the
    scaling figures instead. The budget is ``budget_seconds`` or, by default, the longest time that every
    run of both conditions reached; a run without a logged return by then is left out (see ``n_x``/``n_y``).
    ``metrics`` must be runs of one clock: a simulated run's virtual seconds do not compare with a real run's.
    Returns one row per unordered pair; P(Y > X) is 1 minus the value given.
    """
    conditions = [column for column in by if column != "env_name"]
    rows = []
    for env, env_rows in metrics.groupby("env_name", sort=True):
        groups = [(keys, rows_) for keys, rows_ in env_rows.groupby(conditions, sort=True, dropna=False)]
        for i, (keys_x, runs_x) in enumerate(groups):
            for keys_y, runs_y in groups[i + 1:]:
                if runs_x["schedule"].iloc[0] == runs_y["schedule"].iloc[0]:
                    continue
                budget = budget_seconds
                if budget is None:
                    budget = pd.concat([runs_x, runs_y]).groupby("run_id")["wall_time"].max().min()
                x = returns_at_time(runs_x, budget).dropna().to_numpy()
                y = returns_at_time(runs_y, budget).dropna().to_numpy()
                estimate = float(probability_greater(x, y)) if x.size and y.size else np.nan
                low, high = _two_sample_ci(x, y, probability_greater, confidence)
                rows.append({"env_name": env, "x": condition_label(conditions, keys_x),
                             "y": condition_label(conditions, keys_y),
                             "budget_seconds": float(budget), "probability": estimate, "low": low, "high": high,
                             "n_x": int(x.size), "n_y": int(y.size)})
    return pd.DataFrame(rows, columns=["env_name", "x", "y", "budget_seconds", "probability", "low", "high",
                                       "n_x", "n_y"])


def condition_label(columns: Sequence[str], keys: tuple) -> str:
    """A readable name for a condition: ``a3c/hogwild, 8 workers`` plus any other swept values."""
    values = dict(zip(columns, keys, strict=True))
    parts = []
    if "schedule" in values:
        parts.append(str(values["schedule"]))
    if "num_workers" in values:
        workers = int(values["num_workers"])
        parts.append(f"{workers} worker{'s' if workers != 1 else ''}")
    parts += [f"{key}={value}" for key, value in values.items() if key not in {"schedule", "algo", "mode",
                                                                                 "num_workers"}]
    return ", ".join(parts)

