"""Tests of analysis/: loading real run directories, skipping broken ones, statistics against values
computed by hand from the CSV files, and the report command producing every figure and table.

The runs are real: one Hydra multirun (3 seeds x CartPole and Acrobot, 3000 env steps each) is trained
once per session. Only ``algo=single`` exists yet, so the figures about workers and staleness are fed
copies of those runs whose ``meta.json`` names another schedule or worker count (see ``relabelled``);
their metrics are the real metrics of the copied run. Runs on simulated workers, whose ``wall_time`` is virtual
seconds, are real too: a multirun of both simulated schedules at 1 and 2 workers (see ``simulated_sweep``).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import figures, report, stats
from analysis.load import RECORD_FILES, SkippedRun, SkippedRunWarning, _numeric_if_all, load_runs, parse_overrides
from experiments.columns import EVAL_COLUMNS, RECORD_COLUMNS
from tests.conftest import built_once, read_csv

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (1, 2, 3)
ENVS = ("acrobot", "cartpole")
FIGURE_FILES = [f"{name}.{ext}" for name in report.FIGURES for ext in ("png", "pdf")]
TABLES = ("final_return", "mean_return", "time_to_threshold", "throughput", "staleness", "probability_of_improvement")


@pytest.fixture(scope="session")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real multirun sweep, launched by the real command line: 2 envs x 3 seeds (run once for all workers)."""
    return built_once(tmp_path_factory, "analysis-sweep", lambda built: subprocess.run(
        [sys.executable, "-m", "experiments.train", "-m", f"seed={','.join(map(str, SEEDS))}",
         f"env={','.join(ENVS)}", "total_env_steps=3000", "log_interval=500", "quiet=true",
         "logger.wandb.mode=disabled", f"hydra.sweep.dir={built / 'sweep'}"],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )) / "sweep"


def run_of(sweep: Path, env: str, seed: int) -> Path:
    (path,) = sweep.glob(f"env={env},*seed={seed},*")
    return path


def copy_run(source: Path, destination: Path, **meta_fields) -> Path:
    """Copy a real run directory, changing only the given ``meta.json`` fields."""
    shutil.copytree(source, destination)
    meta = json.loads((destination / "meta.json").read_text())
    meta.update(meta_fields)
    (destination / "meta.json").write_text(json.dumps(meta))
    return destination


# Schedules and worker counts given to copies of the real single-worker runs, so that the worker,
# staleness, speedup and barrier figures have groups to draw. Their staleness and waits are the copied
# runs' real zeros.
RELABELLINGS = [("a3c", "hogwild", 1), ("a3c", "hogwild", 2), ("a3c", "hogwild", 4), ("a2c", "workers", 1),
                ("a2c", "workers", 2)]


@pytest.fixture(scope="session")
def relabelled(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(sweep, tree / "sweep")
    for algo, mode, workers in RELABELLINGS:
        for run in sorted(path for path in sweep.iterdir() if path.is_dir()):
            copy_run(run, tree / f"{algo}-{mode}-{workers}" / run.name, algo=algo, mode=mode, num_workers=workers)
    return tree


@pytest.fixture(scope="session")
def simulated_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real multirun on simulated workers (virtual seconds): a2c workers and the a3c parameter server, 1 and 2
    workers, on CartPole, one seed; all four reach a return of 20, the 1-worker runs too (tested below)."""
    return built_once(tmp_path_factory, "analysis-simulated-sweep", lambda built: subprocess.run(
        [sys.executable, "-m", "experiments.train", "-m", "+schedule=a2c_workers,a3c_parameter_server",
         "algo.num_workers=1,2", "backend=simulated", "seed=1", "env=cartpole", "total_env_steps=3000",
         "log_interval=500", "quiet=true", "logger.wandb.mode=disabled", f"hydra.sweep.dir={built / 'sweep'}"],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )) / "sweep"


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    return [{key: float(value) if value else math.nan for key, value in row.items()}
            for row in read_csv(run_dir / "metrics.csv")]


def write_evals(run_dir: Path, evaluations: list[tuple[int, float, list[float]]], **cells: str) -> None:
    """Replace the run's evals.csv by these evaluations (env step, training seconds, each episode's return), every
    episode as long as its return (CartPole's reward is 1 a step); ``cells`` overwrite columns of every row."""
    with (run_dir / "evals.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, EVAL_COLUMNS)
        writer.writeheader()
        for version, (env_steps, wall_time, returns) in enumerate(evaluations):
            episodes = " ".join(f"{value:g}" for value in returns)
            mean = float(np.mean(returns))
            writer.writerow({
                "env_steps": env_steps, "wall_time": wall_time, "policy_version": version, "episodes": len(returns),
                "return_mean": mean, "return_std": float(np.std(returns)), "return_min": min(returns),
                "return_max": max(returns), "length_mean": mean, "deterministic": True, "eval_seconds": 0.25,
                "returns": episodes, "lengths": episodes, **cells})


def without_evals(run_dir: Path) -> Path:
    """The run as recorded before evaluation existed."""
    (run_dir / "evals.csv").unlink(missing_ok=True)
    return run_dir


# --------------------------------------------------------------------------- loading
def test_columns_analysis_requires_are_part_of_the_run_record():
    for name, (required, _) in RECORD_FILES.items():
        assert set(required) <= set(RECORD_COLUMNS[name]), name


def test_the_record_columns_name_the_loss_statistics_algorithms_report():
    from algorithms.infra.messages import LOSS_STATS as ALGORITHM_LOSS_STATS
    from experiments.columns import LOSS_STATS

    assert LOSS_STATS == ALGORITHM_LOSS_STATS


def test_analysis_imports_neither_torch_nor_the_training_code():
    check = ("import sys, analysis.report, analysis.load, analysis.figures, analysis.stats; "
             "assert 'torch' not in sys.modules and 'algorithms' not in sys.modules, "
             "sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'algorithms'))[:5]")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_loads_every_run_of_a_sweep_with_its_metadata(sweep: Path):
    runset = load_runs(sweep)
    assert runset.skipped == []
    assert len(runset.runs) == len(SEEDS) * len(ENVS)
    assert sorted(runset.runs["env_name"].unique()) == list(ENVS)
    assert sorted(runset.runs["seed"].unique()) == list(SEEDS)
    assert set(runset.runs["schedule"]) == {"single/serial"}
    # Thresholds come from each run's .hydra/config.yaml (conf/env/*.yaml solved_return).
    assert runset.runs.groupby("env_name")["solved_return"].first().to_dict() == {"acrobot": -100.0,
                                                                                   "cartpole": 475.0}
    # The constant overrides (total_env_steps, log_interval) are not conditions; seed and env are columns.
    assert runset.swept == []
    assert runset.conditions == ["env_name", "schedule", "algo", "mode", "num_workers"]
    one = run_of(sweep, "cartpole", 2)
    run_id = runset.runs.loc[(runset.runs.env_name == "cartpole") & (runset.runs.seed == 2), "run_id"].item()
    assert run_id == f"sweep/{one.name}"
    for name, frame in (("metrics", runset.metrics), ("episodes", runset.episodes), ("updates", runset.updates)):
        rows = frame[frame.run_id == run_id]
        assert len(rows) == len(read_csv(one / f"{name}.csv"))
        assert set(rows["seed"]) == {2} and set(rows["env_name"]) == {"cartpole"}
    assert list(runset.metrics.loc[runset.metrics.run_id == run_id, "env_steps"]) == list(range(500, 3001, 500))


def test_loads_a_single_run_directory(sweep: Path):
    one = run_of(sweep, "acrobot", 1)
    runset = load_runs(one)
    assert list(runset.runs["run_id"]) == [one.name]
    assert runset.runs["env_id"].item() == "Acrobot-v1"


def test_runs_of_several_roots_keep_distinct_names(sweep: Path, tmp_path: Path):
    for seed, machine in enumerate(("a", "b")):  # the same run with another seed on each machine
        copy_run(run_of(sweep, "acrobot", 1), tmp_path / machine / "runs" / "r", seed=seed)
    roots = [tmp_path / "a" / "runs", tmp_path / "b" / "runs"]
    runset = load_runs([*roots, roots[0]])  # a root given twice is read once
    assert sorted(runset.runs["run_id"]) == ["a/runs/r", "b/runs/r"]
    assert len(runset.metrics) == 2 * len(read_csv(run_of(sweep, "acrobot", 1) / "metrics.csv"))


def test_overrides_that_vary_become_condition_columns(sweep: Path, tmp_path: Path):
    assert parse_overrides(["seed=1", "env=cartpole", "algo.lr=1e-3", "+model.activation=relu", "quiet=true",
                            "logger.wandb.mode=disabled", "hydra.run.dir=x"]) == {
        "algo.lr": "1e-3", "model.activation": "relu"}
    # Runs trained in-process have no .hydra/: their overrides come from meta.json.
    for seed, lr in ((1, "7e-4"), (2, "1e-3")):
        copy = copy_run(run_of(sweep, "cartpole", seed), tmp_path / f"lr{lr}", overrides=[f"algo.lr={lr}"])
        shutil.rmtree(copy / ".hydra")
    runset = load_runs(tmp_path)
    assert runset.swept == ["algo.lr"]
    assert "algo.lr" in runset.conditions
    assert sorted(runset.metrics["algo.lr"].unique()) == [7e-4, 1e-3]  # numbers: conditions sort by value
    assert runset.runs["solved_return"].isna().all()  # no Hydra config: no default threshold


def _rewrite(path: Path, edit) -> None:
    path.write_text(edit(path.read_text()))


def _set_meta(**fields):
    def breaker(run: Path) -> None:
        _rewrite(run / "meta.json", lambda text: json.dumps({**json.loads(text), **fields}))
    return breaker


def _duplicate_last_line(name: str):
    def breaker(run: Path) -> None:
        _rewrite(run / name, lambda text: text + text.splitlines()[-1] + "\n")
    return breaker


def _edit_line_3(edit_line):
    def breaker(run: Path) -> None:
        def edit(text: str) -> str:
            lines = text.splitlines()
            lines[2] = edit_line(lines[2])
            return "\n".join(lines) + "\n"
        _rewrite(run / "metrics.csv", edit)
    return breaker


def _set_field(line: str, index: int, value: str) -> str:
    fields = line.split(",")
    fields[index] = value
    return ",".join(fields)


def _write_bytes(name: str, data: bytes):
    return lambda run: (run / name).write_bytes(data)


def _patch_byte(name: str, offset: int, byte: int):
    def breaker(run: Path) -> None:
        data = bytearray((run / name).read_bytes())
        data[offset] = byte
        (run / name).write_bytes(bytes(data))
    return breaker


def _reencode(name: str, encoding: str):
    return lambda run: (run / name).write_bytes((run / name).read_text().encode(encoding))


def _replace_by_folder(name: str):
    def breaker(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()
    return breaker


BREAKERS = {
    "missing meta.json": (lambda run: (run / "meta.json").unlink(), "meta.json is missing"),
    "truncated meta.json": (lambda run: _rewrite(run / "meta.json", lambda text: text[: len(text) // 2]),
                            "meta.json is truncated"),
    "still running": (_set_meta(status="running"), "status is 'running'"),
    "failed": (_set_meta(status="failed", error="RuntimeError: boom"), "the run failed: RuntimeError: boom"),
    "interrupted": (_set_meta(status="interrupted"), "interrupted"),
    "missing metrics.csv": (lambda run: (run / "metrics.csv").unlink(), "metrics.csv is missing"),
    "missing updates.csv": (lambda run: (run / "updates.csv").unlink(), "updates.csv is missing"),
    "empty episodes.csv": (lambda run: (run / "episodes.csv").write_text(""), "episodes.csv is empty"),
    "truncated metrics.csv": (lambda run: _rewrite(run / "metrics.csv", lambda text: text[:-20]),
                              "metrics.csv is truncated"),
    "row with a missing field": (_edit_line_3(lambda line: line.rsplit(",", 1)[0]),
                                 "metrics.csv line 3 has the wrong number of fields"),
    "duplicate metrics rows": (_duplicate_last_line("metrics.csv"), "metrics.csv has 1 duplicate rows"),
    "duplicate updates rows": (_duplicate_last_line("updates.csv"), "updates.csv has 1 duplicate rows"),
    "header mismatch": (lambda run: _rewrite(run / "metrics.csv",
                                             lambda text: text.replace("return_mean", "episode_return", 1)),
                        "metrics.csv header does not match the run record: no column return_mean"),
    "no metrics rows": (lambda run: _rewrite(run / "metrics.csv", lambda text: text.splitlines()[0] + "\n"),
                        "metrics.csv has a header but no rows"),
    # Files that cannot be decoded or parsed.
    "non-UTF-8 metrics.csv": (_patch_byte("metrics.csv", 12, 0xFF),
                              "metrics.csv is not UTF-8 text (byte 0xff at offset 12)"),
    "binary episodes.csv": (_write_bytes("episodes.csv", bytes(range(256)) * 4),
                            "episodes.csv is not UTF-8 text (byte 0x80 at offset 128)"),
    "zero-filled updates.csv": (_write_bytes("updates.csv", bytes(4096)),
                                "updates.csv holds NUL bytes (the first at offset 0)"),
    "metrics.csv is a folder": (_replace_by_folder("metrics.csv"), "metrics.csv cannot be read (Is a directory)"),
    "text in a number column": (_edit_line_3(lambda line: _set_field(line, 1, "12.5s")),
                                "metrics.csv line 3 column wall_time is not a number: '12.5s'"),
    "stray quote": (_edit_line_3(lambda line: '"' + line), "metrics.csv cannot be parsed as CSV"),
    "UTF-16 meta.json": (_reencode("meta.json", "utf-16"), "meta.json is not UTF-8 text (byte 0xff at offset 0)"),
    "meta.json not JSON": (_write_bytes("meta.json", b"<html>502 Bad Gateway</html>"),
                           "meta.json is truncated or not valid JSON"),
    "meta.json not an object": (_write_bytes("meta.json", b"[1, 2]"), "meta.json holds a list, not a JSON object"),
    "mistyped meta.json": (_set_meta(num_workers="two"), "meta.json num_workers is 'two', not an integer"),
    "unknown clock": (_set_meta(clock="sundial"), "meta.json clock is 'sundial', not 'real' or 'simulated'"),
    "config.yaml not YAML": (_write_bytes(".hydra/config.yaml", b"algo: [unclosed\n"),
                             ".hydra/config.yaml is not valid YAML"),
    "config.yaml not a mapping": (_write_bytes(".hydra/config.yaml", b"- algo\n"),
                                  ".hydra/config.yaml holds a list, not a mapping"),
    "non-UTF-8 config.yaml": (_write_bytes(".hydra/config.yaml", "env:\n  name: caf\u00e9\n".encode("latin-1")),
                              ".hydra/config.yaml is not UTF-8 text (byte 0xe9 at offset 16)"),
    "overrides.yaml not a list": (_write_bytes(".hydra/overrides.yaml", b"seed: 1\n"),
                                  ".hydra/overrides.yaml holds a dict, not a list"),
    # evals.csv: each episode's return listed, and the kind of action, checked.
    "evals returns not numbers": (lambda run: write_evals(run, [(1000, 1.0, [10, 30])], returns="10 x"),
                                  "evals.csv line 2 column returns is not a list of 2 numbers: '10 x'"),
    "evals lengths missing one": (lambda run: write_evals(run, [(1000, 1.0, [10, 30])], lengths="10"),
                                  "evals.csv line 2 column lengths is not a list of 2 numbers: '10'"),
    "evals deterministic not a flag": (lambda run: write_evals(run, [(1000, 1.0, [10])], deterministic="maybe"),
                                       "evals.csv line 2 column deterministic is not True or False: 'maybe'"),
    "duplicate evals rows": (lambda run: write_evals(run, [(1000, 1.0, [10]), (1000, 1.5, [20])]),
                             "evals.csv has 1 duplicate rows (repeated env_steps values)"),
}


@pytest.mark.parametrize("breakage", list(BREAKERS))
def test_broken_runs_are_skipped_with_a_warning_naming_run_and_reason(sweep: Path, tmp_path: Path, breakage: str):
    source = run_of(sweep, "cartpole", 1)
    copy_run(source, tmp_path / "tree" / "good")
    broken = copy_run(source, tmp_path / "tree" / "broken")
    breaker, reason = BREAKERS[breakage]
    breaker(broken)
    with pytest.warns(SkippedRunWarning, match="skipping run tree/broken: ") as caught:
        runset = load_runs(tmp_path / "tree")
    assert len([warning for warning in caught if warning.category is SkippedRunWarning]) == 1
    assert list(runset.runs["run_id"]) == ["tree/good"]
    assert set(runset.metrics["run_id"]) == {"tree/good"}
    (skipped,) = runset.skipped
    assert skipped.run == "tree/broken"
    assert reason in skipped.reason


def test_two_envs_ending_equal_episodes_at_one_step_are_two_episodes(sweep: Path, tmp_path: Path):
    run = copy_run(run_of(sweep, "cartpole", 1), tmp_path / "run")
    episodes = len(load_runs(run).episodes)
    _duplicate_last_line("episodes.csv")(run)
    assert len(load_runs(run).episodes) == episodes + 1


def test_empty_folders_among_a_sweeps_runs_are_counted_and_other_folders_ignored(sweep: Path, tmp_path: Path):
    tree = tmp_path / "tree"
    good = copy_run(run_of(sweep, "cartpole", 1), tree / "sweep" / "good")
    (tree / "sweep" / "killed").mkdir()  # a job killed before it wrote anything
    (tree / "sweep" / "killed-early" / "checkpoints").mkdir(parents=True)  # RunRecord's first act
    shutil.copytree(good / ".hydra", tree / "sweep" / "hydra-only" / ".hydra")  # killed before the record
    (tree / "sweep" / ".submitit").mkdir()  # a launcher's hidden folder
    report.main([str(tree / "sweep"), "--out", str(tree / "sweep" / "report"), "--figures", "return_vs_steps"])
    (tree / "started" / "job-0").mkdir(parents=True)  # a sweep all of whose jobs were killed at once
    (tree / "started" / "multirun.yaml").write_text("hydra: {}\n")
    (tree / "unrelated").mkdir()  # an empty folder beside sweeps, not among runs
    with pytest.warns(SkippedRunWarning):
        runset = load_runs(tree)
    assert list(runset.runs["run_id"]) == ["tree/sweep/good"]
    empty = "the directory is empty: a job killed before it wrote its record, or a stray folder"
    assert runset.skipped == [SkippedRun("tree/started/job-0", empty),
                              SkippedRun("tree/sweep/hydra-only", "meta.json is missing"),
                              SkippedRun("tree/sweep/killed", empty), SkippedRun("tree/sweep/killed-early", empty)]


def _change_wall_times(run: Path, factor: float) -> None:
    """What a rerun of the same config and seed on another machine changes: the wall-clock columns."""
    for name in RECORD_FILES:
        if not (run / f"{name}.csv").exists():  # evals.csv of a run recorded before evaluation existed
            continue
        lines = (run / f"{name}.csv").read_text().splitlines()
        column = lines[0].split(",").index("wall_time")
        rows = [_set_field(line, column, str(float(line.split(",")[column]) * factor)) for line in lines[1:]]
        (run / f"{name}.csv").write_text("\n".join([lines[0], *rows]) + "\n")


def _edit_config(run: Path, edit) -> None:
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    edit(config)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def test_copies_and_reruns_of_a_run_are_skipped_so_that_no_seed_counts_twice(sweep: Path, tmp_path: Path):
    tree = tmp_path / "tree"
    original = copy_run(run_of(sweep, "cartpole", 1), tree / "a")
    shutil.copytree(original, tree / "b-copy")
    rerun = copy_run(original, tree / "c-rerun")
    _change_wall_times(rerun, 1.5)
    # Settings that are not experimental factors do not make another experiment.
    _edit_config(rerun, lambda config: config.update(quiet=False, logger={"wandb": {"mode": "offline"}}))
    shutil.copytree(rerun, tree / "d-copy-of-rerun")
    other_config = copy_run(original, tree / "e-other-lr")
    _change_wall_times(other_config, 2.0)
    _edit_config(other_config, lambda config: config["algo"].update(lr=0.125))
    copy_run(original, tree / "f-other-schedule", algo="a3c", mode="hogwild")  # another condition: kept
    copy_run(original, tree / "g-other-seed", seed=7)  # kept
    with pytest.warns(SkippedRunWarning) as caught:
        runset = load_runs(tree)
    assert list(runset.runs["run_id"]) == ["tree/a", "tree/f-other-schedule", "tree/g-other-seed"]
    assert len(runset.metrics) == 3 * len(read_csv(original / "metrics.csv"))
    counted_once = "only tree/a is analysed, so that seed 1 counts once"
    assert runset.skipped == [
        SkippedRun("tree/b-copy", "duplicate of tree/a (a copy: same condition, seed and record)", "tree/a"),
        SkippedRun("tree/c-rerun", f"same config and seed as tree/a, different content (a rerun?); {counted_once}",
                   "tree/a"),
        SkippedRun("tree/d-copy-of-rerun", "duplicate of tree/c-rerun (a copy: same condition, seed and record)",
                   "tree/a"),
        SkippedRun("tree/e-other-lr", "same condition and seed as tree/a but another .hydra/config.yaml (algo.lr "
                   f"0.0007 vs 0.125) that no override names, so the analysis cannot tell them apart; {counted_once}",
                   "tree/a"),
    ]
    assert [str(warning.message) for warning in caught] == [f"skipping run {skip.run}: {skip.reason}"
                                                             for skip in runset.skipped]


def test_report_completes_and_lists_every_unusable_run(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    runs = tmp_path / "runs"
    original = copy_run(run_of(sweep, "cartpole", 1), runs / "a")
    shutil.copytree(original, runs / "copy")
    _change_wall_times(copy_run(original, runs / "rerun"), 1.5)
    _patch_byte("metrics.csv", 12, 0xFF)(copy_run(run_of(sweep, "cartpole", 2), runs / "latin"))
    _write_bytes("meta.json", bytes(range(256)))(copy_run(run_of(sweep, "cartpole", 3), runs / "garbage"))
    (runs / "killed").mkdir()
    assert report.main([str(runs), "--out", str(tmp_path / "out"), "--figures", "return_vs_steps"]) == 0
    assert "skipping run runs/latin: metrics.csv is not UTF-8 text" in capsys.readouterr().err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Runs analysed: 1; runs skipped: 5" in text
    for run, reason in (("copy", "duplicate of runs/a"), ("garbage", "meta.json is not UTF-8 text"),
                        ("killed", "the directory is empty"), ("latin", "metrics.csv is not UTF-8 text"),
                        ("rerun", "same config and seed as runs/a, different content (a rerun?)")):
        assert f"- `runs/{run}`: {reason}" in text
    assert "is left out so that no seed counts twice; the first by path is analysed" in text
    assert "![return_vs_steps](figures/return_vs_steps.png)" in text


def test_report_lists_and_counts_skipped_runs(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    copy_run(run_of(sweep, "cartpole", 1), tmp_path / "runs" / "good")
    copy_run(run_of(sweep, "cartpole", 2), tmp_path / "runs" / "killed", status="running")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--figures", "return_vs_steps"]) == 0
    assert "skipping run runs/killed: status is 'running'" in capsys.readouterr().err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Runs analysed: 1; runs skipped: 1" in text
    assert "- `runs/killed`: status is 'running'" in text


def test_report_without_a_usable_run_says_so(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    copy_run(run_of(sweep, "cartpole", 1), tmp_path / "runs" / "crashed", status="failed", error=None)
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert "svrl-report: Every run found was skipped" in capsys.readouterr().err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "**Every run found was skipped (see the skipped runs): no usable run to analyse.**" in text
    assert "- `runs/crashed`: the run failed: no error recorded" in text
    assert "*Skipped: no runs to analyse.*" in text
    (tmp_path / "nothing").mkdir()
    assert report.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "**No run directory found under the sources: nothing to analyse.**" in text
    assert report.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert report.main([str(tmp_path / "out" / "report.md"), "--out", str(tmp_path / "out")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- statistics
def test_iqm_and_bootstrap_interval_basics():
    # IQM of 8 values drops the lowest 2 and the highest 2: mean(3, 4, 5, 6).
    assert stats.iqm(np.array([7.0, 1, 100, 3, 5, 2, 6, 4])) == pytest.approx(4.5)
    low, high = stats.bootstrap_ci(np.array([5.0]), np.mean)
    assert np.isnan(low).all() and np.isnan(high).all()  # one run: no interval
    low, high = stats.bootstrap_ci(np.array([2.0, 2.0, 2.0]), np.mean)
    assert low.item() == high.item() == 2.0


def test_curves_are_interpolated_per_run_without_extrapolating(sweep: Path):
    runset = load_runs(sweep)
    # 13 points over 0..3000: a point every 250 steps, half-way between logged rows.
    curves = stats.interpolate_curves(runset.metrics, runset.labels, x="env_steps", num_points=13)
    run = run_of(sweep, "cartpole", 3)
    rows = metric_rows(run)
    curve = curves[curves.run_id == f"sweep/{run.name}"].set_index("env_steps")["return_mean"]
    assert np.isnan(curve[0.0]) and np.isnan(curve[250.0])  # before the first logged interval
    assert curve[500.0] == pytest.approx(rows[0]["return_mean"])
    assert curve[750.0] == pytest.approx((rows[0]["return_mean"] + rows[1]["return_mean"]) / 2)
    assert curve[3000.0] == pytest.approx(rows[-1]["return_mean"])


@pytest.mark.parametrize("estimator", ["mean", "iqm"])
def test_aggregate_over_seeds_matches_hand_computed_values(sweep: Path, estimator: str):
    runset = load_runs(sweep)
    curves = stats.interpolate_curves(runset.metrics, runset.labels, x="env_steps", num_points=7)  # the logged steps
    aggregated = stats.aggregate_curves(curves, runset.conditions, x="env_steps", estimator=estimator)
    point = aggregated[(aggregated.env_name == "cartpole") & (aggregated.env_steps == 1500)].iloc[0]
    values = [metric_rows(run_of(sweep, "cartpole", seed))[2]["return_mean"] for seed in SEEDS]
    # With 3 seeds the IQM trims nothing (25% of 3 rounds down to 0) and equals the mean.
    assert point["estimate"] == pytest.approx(sum(values) / 3)
    assert point["n_runs"] == 3
    # A percentile interval of a mean lies within the range of the values and contains the estimate.
    assert min(values) <= point["low"] <= point["estimate"] <= point["high"] <= max(values)
    assert 0.0 not in set(aggregated["env_steps"])  # no seed has a return before its first interval


def test_per_run_summary_matches_hand_computed_values(sweep: Path):
    run = run_of(sweep, "cartpole", 1)
    rows = metric_rows(run)
    returns = [row["return_mean"] for row in rows]
    best = returns.index(max(returns))  # the first row that reaches the run's best return
    runset = load_runs(run)
    def summary_at(threshold: float):
        return stats.run_summary(runset.metrics, runset.updates, runset.labels, {"cartpole": threshold}).iloc[0]

    summary = summary_at(max(returns))
    assert summary["final_return"] == pytest.approx(returns[-1])
    steps = [row["env_steps"] for row in rows]
    area = sum((returns[i] + returns[i + 1]) / 2 * (steps[i + 1] - steps[i]) for i in range(len(rows) - 1))
    assert summary["mean_return"] == pytest.approx(area / (steps[-1] - steps[0]))
    assert summary["steps_per_second"] == pytest.approx(
        (rows[-1]["env_steps"] - rows[0]["env_steps"]) / (rows[-1]["wall_time"] - rows[0]["wall_time"]))
    assert summary["steps_to_threshold"] == rows[best]["env_steps"]
    assert summary["seconds_to_threshold"] == pytest.approx(rows[best]["wall_time"])
    # The single-worker schedule applies every gradient fresh and never waits.
    assert (summary["staleness_mean"], summary["staleness_max"], summary["dropped_share"],
            summary["barrier_wait_share"]) == (0, 0, 0, 0)
    unreachable = summary_at(max(returns) + 1)
    assert np.isnan(unreachable["steps_to_threshold"]) and np.isnan(unreachable["seconds_to_threshold"])


def test_speedup_and_efficiency_against_the_one_worker_runs(sweep: Path, tmp_path: Path):
    one, two = run_of(sweep, "cartpole", 1), run_of(sweep, "cartpole", 2)
    copy_run(one, tmp_path / "w1", algo="a3c", mode="hogwild", num_workers=1)
    copy_run(two, tmp_path / "w2", algo="a3c", mode="hogwild", num_workers=2)
    threshold = min(max(row["return_mean"] for row in metric_rows(run)) for run in (one, two))
    seconds = [next(row["wall_time"] for row in metric_rows(run) if row["return_mean"] >= threshold)
               for run in (one, two)]
    runset = load_runs(tmp_path)
    summary = stats.run_summary(runset.metrics, runset.updates, runset.labels, {"cartpole": threshold})
    table = stats.speedup(summary, ["env_name", "schedule", "algo", "mode"]).set_index("num_workers")
    assert table.loc[1, "speedup"] == 1.0 and np.isnan(table.loc[1, "low"])
    assert table.loc[2, "speedup"] == pytest.approx(seconds[0] / seconds[1])
    assert table.loc[2, "efficiency"] == pytest.approx(seconds[0] / seconds[1] / 2)
    assert np.isnan(table.loc[2, "low"])  # one run on each side: no interval


def test_probability_of_improvement_matches_counting_pairs(sweep: Path, tmp_path: Path):
    # Ties count one half: x=1 beats 0; x=2 beats 0 and ties 2; x=3 beats all three -> 5.5 of 9 pairs.
    assert stats.probability_greater(np.array([1.0, 2, 3]), np.array([0.0, 2, 2.5])) == pytest.approx(5.5 / 9)
    # CartPole: the sweep's first job (Acrobot, seed 1) also times the process's start-up, so its first
    # row comes late enough that it may share no wall-clock range with the others.
    for seed in SEEDS:
        copy_run(run_of(sweep, "cartpole", seed), tmp_path / f"single{seed}")
    for seed in (1, 2):
        copy_run(run_of(sweep, "cartpole", seed), tmp_path / f"async{seed}", algo="a3c", mode="hogwild")
    runset = load_runs(tmp_path)
    # A budget inside every run's logged wall-clock range, between its first and last rows.
    first_rows = [metric_rows(run)[0]["wall_time"] for run in tmp_path.iterdir()]
    last_rows = [metric_rows(run)[-1]["wall_time"] for run in tmp_path.iterdir()]
    assert max(first_rows) < min(last_rows)
    budget = (max(first_rows) + min(last_rows)) / 2

    def return_at(run: Path) -> float:
        rows = metric_rows(run)
        later = next(i for i, row in enumerate(rows) if row["wall_time"] >= budget and i > 0)
        before, after = rows[later - 1], rows[later]
        fraction = (budget - before["wall_time"]) / (after["wall_time"] - before["wall_time"])
        return before["return_mean"] + fraction * (after["return_mean"] - before["return_mean"])

    a3c = [return_at(tmp_path / f"async{seed}") for seed in (1, 2)]
    single = [return_at(tmp_path / f"single{seed}") for seed in SEEDS]
    expected = sum((x > y) + 0.5 * (x == y) for x in a3c for y in single) / 6
    table = stats.probability_of_improvement(runset.metrics, runset.conditions, budget_seconds=budget)
    (row,) = table.itertuples()
    assert (row.x, row.y) == ("a3c/hogwild, 1 worker", "single/serial, 1 worker")
    assert row.probability == pytest.approx(expected)
    assert (row.n_x, row.n_y) == (2, 3)


# --------------------------------------------------------------------------- the report
def test_report_command_writes_every_figure_and_table(relabelled: Path, tmp_path: Path):
    out = tmp_path / "report"
    completed = subprocess.run(
        [sys.executable, "-m", "analysis.report", str(relabelled), "--out", str(out),
         "--threshold", "cartpole=40", "--threshold", "acrobot=-300"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300,
    )
    assert completed.stdout.strip() == f"report: {(out / 'report.md').resolve()}"
    for name in FIGURE_FILES:
        assert (out / "figures" / name).stat().st_size > 10_000, name
    text = (out / "report.md").read_text()
    assert "Skipped:" not in text
    for name in report.FIGURES:
        assert f"![{name}](figures/{name}.png)" in text
    for name in TABLES:
        markdown = (out / "tables" / f"{name}.md").read_text()
        latex = (out / "tables" / f"{name}.tex").read_text()
        assert markdown in text
        assert latex.startswith("\\begin{table}") and "\\bottomrule" in latex
    # 6 conditions per env, 2 envs, 3 seeds each.
    final = (out / "tables" / "final_return.md").read_text().splitlines()
    assert len(final) == 2 + 12
    assert "| cartpole | a3c/hogwild | 4 | 3 |" in (out / "tables" / "final_return.md").read_text()
    assert "mean staleness, IQM [95\\% CI]" in (out / "tables" / "staleness.tex").read_text()
    ttt = (out / "tables" / "time_to_threshold.md").read_text()
    assert "| cartpole | a3c/hogwild | 4 | 40 |" in ttt


def test_figures_without_data_are_skipped_with_a_note(sweep: Path, tmp_path: Path):
    report.main([str(sweep), "--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    for name in ("staleness_distribution", "staleness_vs_workers", "return_vs_staleness"):
        assert f"### {name.replace('_', ' ')}\n\n*Skipped: no multi-worker runs.*" in text
        assert not (tmp_path / "figures" / f"{name}.png").exists()
    assert "*Skipped: no synchronous multi-worker runs.*" in text
    assert "### speedup vs workers\n\n*Skipped: no multi-worker condition" in text
    for name in ("return_vs_steps", "return_vs_time", "throughput_vs_workers"):
        assert (tmp_path / "figures" / f"{name}.png").exists()
    # Default thresholds: env.solved_return from the runs' configs.
    assert "Thresholds: acrobot -100, cartpole 475" in text


def test_report_options_select_envs_x_axis_and_figures(sweep: Path, tmp_path: Path):
    report.main([str(sweep), "--out", str(tmp_path), "--env", "CartPole-v1", "--x", "wall_time",
                 "--figures", "return_vs_steps", "return_vs_time", "--threshold", "cartpole=60",
                 "--estimator", "mean"])
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == ["return_vs_time.pdf",
                                                                              "return_vs_time.png"]
    text = (tmp_path / "report.md").read_text()
    assert "Thresholds: cartpole 60" in text and "acrobot" not in text
    assert "final return, mean [95% CI]" in (tmp_path / "tables" / "final_return.md").read_text()


def test_report_dpi_sets_the_png_resolution(sweep: Path, tmp_path: Path):
    from PIL import Image

    sizes = {}
    for dpi in (50, 100):
        report.main([str(sweep), "--out", str(tmp_path / str(dpi)), "--figures", "return_vs_steps", "--dpi", str(dpi)])
        with Image.open(tmp_path / str(dpi) / "figures" / "return_vs_steps.png") as image:
            sizes[dpi] = image.size
    assert sizes[100] == (2 * sizes[50][0], 2 * sizes[50][1])


def test_a_report_records_when_from_which_commit_and_by_which_command_it_was_made(sweep: Path, tmp_path: Path):
    arguments = [str(sweep), "--out", str(tmp_path), "--figures", "return_vs_steps", "--for-docs"]
    report.main(arguments)
    text = (tmp_path / "report.md").read_text()
    made = re.search(r"^Made: (\d{4}-\d\d-\d\d \d\d:\d\d UTC), commit ([0-9a-f]{7})[^,]*, by `(.+)`  $", text, re.M)
    assert made and made[3] == f"python -m analysis.report {' '.join(arguments)}"
    commits = {json.loads(path.read_text())["git_commit"][:7] for path in sweep.rglob("meta.json")}
    runs = len(list(sweep.rglob("meta.json")))
    assert re.search(rf"^Runs trained at: {'|'.join(commits)} \({runs}\)  $", text, re.M)


def test_a_report_for_the_docs_keeps_screen_sized_pngs_and_markdown_only(sweep: Path, tmp_path: Path):
    from PIL import Image

    report.main([str(sweep), "--out", str(tmp_path / "paper"), "--figures", "return_vs_steps"])
    report.main([str(sweep), "--out", str(tmp_path / "docs"), "--figures", "return_vs_steps", "--for-docs"])
    written = {out: sorted(path.relative_to(tmp_path / out).as_posix() for path in (tmp_path / out).rglob("*.*"))
               for out in ("paper", "docs")}
    assert written["docs"] == [name for name in written["paper"] if not name.endswith((".pdf", ".tex"))]
    assert ".pdf" not in (tmp_path / "docs" / "report.md").read_text()
    assert ".tex" not in (tmp_path / "docs" / "report.md").read_text()
    sizes = {}
    for out in ("paper", "docs"):
        with Image.open(tmp_path / out / "figures" / "return_vs_steps.png") as image:
            sizes[out] = image.size
    assert sizes["paper"] == (2 * sizes["docs"][0], 2 * sizes["docs"][1])  # 200 dpi and 100 dpi


def test_a_schedule_keeps_its_colour_whatever_else_is_plotted():
    alone = figures.schedule_palette(["a3c/hogwild"])
    crowded = figures.schedule_palette(["single/serial", "a3c/hogwild", "a2c/vector", "new/mode"])
    assert alone["a3c/hogwild"] == crowded["a3c/hogwild"]
    assert len({crowded[name] for name in ("single/serial", "a3c/hogwild", "a2c/vector", "new/mode")}) == 4


# --------------------------------------------------------------------------- --metric eval
# Evaluations of two CartPole seeds of single/serial and one of a3c/hogwild. With threshold 55, seed 1 first
# reaches it at 2000 steps (2.0 s) and seed 2 at 1000 (1.5 s); their final evaluations return 50 and 90. At 2.0 s
# seed 1 returns 60, seed 2 60 (70 at 1.5 s, 30 at 3.5 s) and the a3c run 50 (0 at 1.0 s, 100 at 3.0 s).
EVALUATIONS = {
    "single1": [(1000, 1.0, [10, 30]), (2000, 2.0, [50, 70]), (3000, 3.0, [40, 60])],
    "single2": [(1000, 1.5, [60, 80]), (2000, 3.5, [20, 40]), (3000, 5.0, [80, 100])],
    "async1": [(1000, 1.0, [0, 0]), (3000, 3.0, [100, 100])],
}


@pytest.fixture
def evaluated(sweep: Path, tmp_path: Path) -> Path:
    """Runs whose evaluations are EVALUATIONS, every 1000 env steps by their config."""
    runs = tmp_path / "runs"
    for name, evaluations in EVALUATIONS.items():
        relabel = {"algo": "a3c", "mode": "hogwild"} if name.startswith("async") else {}
        run = copy_run(run_of(sweep, "cartpole", int(name[-1])), runs / name, **relabel)
        write_evals(run, evaluations)
        _edit_config(run, lambda config: config.setdefault("eval", {}).update(interval=1000))
    return runs


def report_tables(runs: Path, out: Path, *options: str) -> dict[str, str]:
    """Run the report command on ``runs`` (thresholds at 55, means over seeds); return its tables by name."""
    assert report.main([str(runs), "--out", str(out), "--figures", "return_vs_steps", "--threshold", "cartpole=55",
                        "--estimator", "mean", *options]) == 0
    return {name: (out / "tables" / f"{name}.md").read_text() for name in TABLES}


def test_evaluations_are_read_back_with_each_episodes_values(evaluated: Path, sweep: Path):
    without_evals(copy_run(run_of(sweep, "cartpole", 3), evaluated / "old"))
    write_evals(copy_run(run_of(sweep, "acrobot", 3), evaluated / "off"), [])
    runset = load_runs(evaluated)
    assert runset.skipped == []
    rows = runset.evals[runset.evals.run_id == "runs/single2"]
    assert list(rows["env_steps"]) == [1000, 2000, 3000]
    assert list(rows["wall_time"]) == [1.5, 3.5, 5.0]
    assert list(rows["return_mean"]) == [70.0, 30.0, 90.0]
    assert list(rows["returns"]) == [(60.0, 80.0), (20.0, 40.0), (80.0, 100.0)]
    assert list(rows["lengths"]) == list(rows["returns"])
    assert list(rows["deterministic"]) == [True, True, True]
    assert set(rows["seed"]) == {2} and set(rows["schedule"]) == {"single/serial"}
    assert len(runset.evals) == 8
    assert runset.runs.set_index("run_id").loc["runs/single1", "eval_interval"] == 1000
    assert runset.no_evaluations == {
        "runs/off": "evals.csv has a header but no rows (evaluation off: eval.episodes=0)",
        "runs/old": "no evals.csv (recorded before runs were evaluated)"}


def test_metric_eval_takes_final_return_threshold_and_improvement_from_the_evaluations(evaluated: Path, tmp_path: Path):
    runset = load_runs(evaluated)
    summary = stats.run_summary(runset.metrics, runset.updates, runset.labels, {"cartpole": 55.0},
                                returns=runset.evals).set_index("run_id")
    assert list(summary["final_return"]) == [100.0, 50.0, 90.0]  # async1, single1, single2
    assert list(summary["steps_to_threshold"]) == [3000.0, 2000.0, 1000.0]
    assert list(summary["seconds_to_threshold"]) == [3.0, 2.0, 1.5]
    # Throughput is training's, whichever return is analysed.
    assert summary["steps_per_second"].equals(
        stats.run_summary(runset.metrics, runset.updates, runset.labels, {}).set_index("run_id")["steps_per_second"])

    tables = report_tables(evaluated, tmp_path / "eval", "--metric", "eval", "--budget-seconds", "2")
    assert "| cartpole | single/serial | 1 | 2 | 70.0 [50.0, 90.0] |" in tables["final_return"]
    assert "| cartpole | a3c/hogwild | 1 | 1 | 100.0 |" in tables["final_return"]
    assert "| cartpole | single/serial | 1 | 55 | 2/2 | 1,500 [1,000, 2,000] | 1.75 [1.5, 2] |" in tables[
        "time_to_threshold"]
    # At 2 s every single/serial run returns 60 and the a3c run 50: a3c never wins.
    assert "| cartpole | a3c/hogwild, 1 worker | single/serial, 1 worker | 2 | 0 | 1/2 |" in tables[
        "probability_of_improvement"]

    # The default reads the training return of metrics.csv, as if no run had evaluations.
    train = report_tables(evaluated, tmp_path / "train")
    final = np.mean([metric_rows(evaluated / name)[-1]["return_mean"] for name in ("single1", "single2")])
    assert f"| cartpole | single/serial | 1 | 2 | {report._number(final)} [" in train["final_return"]
    for run in evaluated.iterdir():
        without_evals(run)
    assert report_tables(evaluated, tmp_path / "no-evals") == train


def test_the_report_says_which_return_it_used(evaluated: Path, tmp_path: Path):
    import matplotlib.pyplot as plt

    evaluation = "evaluation return (mean of 2 deterministic evaluation episodes every 1,000 env steps)"
    training = "training return (mean of the most recent return_window training episodes)"
    for metric, returns in (("eval", evaluation), ("train", training)):
        report_tables(evaluated, tmp_path / metric, "--metric", metric)
        text = (tmp_path / metric / "report.md").read_text()
        name, detail = returns.removesuffix(")").split(" (")
        assert f"Return (`--metric {metric}`): {name}, {detail}  \n" in text
        assert f"Sample efficiency: {returns} against environment steps. ([PDF]" in text
        assert f"Final {returns} over seeds, " in text
        assert f"Time to threshold in {returns}: " in text
        assert f"higher {returns} than a run of Y" in text
        latex = (tmp_path / metric / "tables" / "final_return.tex").read_text()
        assert "\\caption{Final " + returns.replace("_", "\\_") + " over seeds, " in latex
    assert "at each run's last evaluation (its final one)" in (tmp_path / "eval" / "report.md").read_text()

    trained = [row["return_mean"] for row in metric_rows(evaluated / "single1") if not math.isnan(row["return_mean"])]
    for metric, label, single1 in (("eval", "evaluation return", [20.0, 60.0, 50.0]),
                                   ("train", "training return", trained)):
        options = report.ReportOptions(metric=metric)
        fig = report.DRAW["return_vs_steps"](report.analyse(report.runs_for_metric(load_runs(evaluated), metric),
                                                             options))
        (ax,) = fig.axes
        assert ax.get_ylabel() == label
        assert any(list(line.get_ydata()) == pytest.approx(single1) for line in ax.lines)  # the run's thin line
        plt.close(fig)


def test_a_run_without_evaluations_is_skipped_under_eval_and_analysed_under_train(
        evaluated: Path, sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    old = without_evals(copy_run(run_of(sweep, "cartpole", 3), evaluated / "old"))
    write_evals(copy_run(run_of(sweep, "acrobot", 3), evaluated / "off"), [])
    reasons = {"off": "evals.csv has a header but no rows (evaluation off: eval.episodes=0)",
               "old": "no evals.csv (recorded before runs were evaluated)"}
    report_tables(evaluated, tmp_path / "eval", "--metric", "eval")
    err = capsys.readouterr().err
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "Runs analysed: 3; runs skipped: 2" in text
    for run, reason in reasons.items():
        assert f"- `runs/{run}`: no evaluations, which --metric eval reads: {reason}" in text
        assert f"skipping run runs/{run}: no evaluations, which --metric eval reads: {reason}" in err
    assert "acrobot" not in (tmp_path / "eval" / "tables" / "final_return.md").read_text()

    report_tables(evaluated, tmp_path / "train")
    assert "Runs analysed: 5; runs skipped: 0" in (tmp_path / "train" / "report.md").read_text()
    assert "| cartpole | single/serial | 1 | 3 |" in (tmp_path / "train" / "tables" / "final_return.md").read_text()

    # No run with evaluations: nothing for --metric eval to read, said in one line, no report.
    for name in EVALUATIONS:
        shutil.rmtree(evaluated / name)
    assert old.exists()
    capsys.readouterr()  # what the reports above read and drew
    assert report.main([str(evaluated), "--out", str(tmp_path / "none"), "--metric", "eval"]) == 2
    assert capsys.readouterr().err == (
        "svrl-report: --metric eval: none of the 2 runs analysed has evaluations (no evals.csv, or one with only its "
        "header: eval.episodes=0); use --metric train, or runs trained with evaluation on\n")
    assert not (tmp_path / "none").exists()


def test_a_bad_metric_is_refused_in_one_line_naming_the_option(sweep: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_:
        report.main([str(sweep), "--out", str(tmp_path / "out"), "--metric", "evaluation"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "svrl-report: error: --metric 'evaluation': expected train or eval\n"
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- clocks
SIMULATED_NOTE = "Seconds are virtual seconds (simulated workers): the cost model's, not measured."
THRESHOLDS = ("--threshold", "cartpole=20", "--threshold", "acrobot=-300")


def report_section(text: str, title: str) -> str:
    """The lines of report.md under ``### title``, up to the next heading."""
    return text.split(f"### {title}\n", 1)[1].split("\n#", 1)[0]


def header_row(table: str) -> str:
    return table.splitlines()[0]


def axis_labels(analysis: report.Analysis, figure: str) -> set[str]:
    """The x and y labels of a figure's panels."""
    import matplotlib.pyplot as plt

    fig = report.DRAW[figure](analysis)
    labels = {label for ax in fig.axes for label in (ax.get_xlabel(), ax.get_ylabel())}
    plt.close(fig)
    return labels


def test_each_run_carries_its_clock_real_for_runs_recorded_before_it(sweep: Path, simulated_sweep: Path,
                                                                    tmp_path: Path):
    source = run_of(sweep, "cartpole", 1)
    assert json.loads((source / "meta.json").read_text())["clock"] == "real"
    older = copy_run(source, tmp_path / "runs" / "older")
    meta = json.loads((older / "meta.json").read_text())
    del meta["clock"]  # recorded before meta.json named its clock
    (older / "meta.json").write_text(json.dumps(meta))
    # The same record on another clock is another experiment, not a copy of the first: both are analysed.
    copy_run(source, tmp_path / "runs" / "relabelled", clock="simulated")
    shutil.copytree(simulated_sweep, tmp_path / "runs" / "simulated")
    runset = load_runs(tmp_path / "runs")
    assert runset.skipped == []
    clocks = runset.runs.set_index("run_id")["clock"]
    assert clocks["runs/older"] == "real" and clocks["runs/relabelled"] == "simulated"
    simulated = runset.runs[runset.runs.run_id.str.startswith("runs/simulated/")]
    assert len(simulated) == 4 and set(simulated["clock"]) == {"simulated"}
    for run_id, model in zip(simulated["run_id"], simulated["cost_model"], strict=True):
        recorded = json.loads((tmp_path / run_id / "meta.json").read_text())
        assert recorded["clock"] == "simulated" and model == recorded["cost_model"]
    assert runset.runs.set_index("run_id").loc["runs/older", "cost_model"] is None
    # Every frame carries it, and runs that mix clocks are conditions apart.
    assert set(runset.metrics.groupby("run_id")["clock"].first().items()) == set(clocks.items())
    assert "clock" in runset.conditions
    assert "clock" not in load_runs(simulated_sweep).conditions


def test_a_report_of_simulated_runs_says_its_seconds_are_virtual(simulated_sweep: Path, tmp_path: Path):
    assert report.main([str(simulated_sweep), "--out", str(tmp_path), *THRESHOLDS]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Clock: simulated: times are virtual seconds (simulated workers), the cost model's, not measured  \n" in text
    (line,) = [line for line in text.splitlines() if line.startswith("Cost model of the simulated runs")]
    model = json.loads(next(simulated_sweep.glob("*/meta.json")).read_text())["cost_model"]
    assert f"env_step_s {model['env_step_s']:g}, forward_s {model['forward_s']:g}, " in line
    for name in report.WALL_CLOCK_OUTPUTS:  # one of each, named as for real runs, none skipped
        section = report_section(text, name.replace("_", " "))
        assert SIMULATED_NOTE in section and "wall-clock" not in section, name
        assert "Skipped" not in section, name
    tables = {name: (tmp_path / "tables" / f"{name}.md").read_text() for name in TABLES}
    assert "| virtual seconds, IQM [95% CI] |" in header_row(tables["time_to_threshold"])
    assert "| env steps per virtual second, IQM [95% CI] |" in header_row(tables["throughput"])
    assert "| virtual budget (s) |" in header_row(tables["probability_of_improvement"])
    assert "seconds (simulated workers)" in (tmp_path / "tables" / "time_to_threshold.tex").read_text()
    # Every 1-worker run reached the threshold, so the speedup has its baselines.
    assert "| cartpole | a2c/workers | 2 | 20 | 1/1 |" in tables["time_to_threshold"]

    analysis = report.analyse(load_runs(simulated_sweep), report.ReportOptions(thresholds={"cartpole": 20.0}))
    assert axis_labels(analysis, "return_vs_time") == {"virtual seconds (simulated workers)", "training return"}
    for figure in ("throughput_vs_workers", "speedup_vs_workers", "barrier_wait_vs_workers"):
        (label,) = axis_labels(analysis, figure) - {"workers"}
        assert "virtual" in label, figure
    assert axis_labels(analysis, "return_vs_steps") == {"environment steps", "training return"}


def test_the_cost_model_line_gives_shared_settings_then_those_that_differ():
    runs = pd.DataFrame({"clock": ["simulated", "simulated", "simulated", "real"],
                         "cost_model": [{"env_step_s": 1e-05, "straggler_fraction": 0.1, "worker_speeds": None},
                                        {"env_step_s": 1e-05, "straggler_fraction": 0, "worker_speeds": [1, 2]},
                                        None, None]})
    assert report._cost_model_lines(runs) == [
        "Cost model of the simulated runs (meta.json `cost_model`, virtual seconds): env_step_s 1e-05; "
        "straggler_fraction 0, 0.1 by run; worker_speeds None, [1, 2] by run; not recorded by 1 run  "]
    assert report._cost_model_lines(runs[runs.clock == "real"]) == []


def test_a_report_of_real_runs_keeps_its_wall_clock_words(relabelled: Path, tmp_path: Path):
    assert report.main([str(relabelled), "--out", str(tmp_path), "--figures", "return_vs_time", *THRESHOLDS]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Clock: real: times are wall-clock seconds, measured on the machine  \n" in text
    assert "Cost model" not in text and "virtual" not in text
    assert ("Return against wall-clock seconds: training return (mean of the most recent return_window training "
            "episodes). A condition's curve ends where its shortest run ends, so every point averages the same seeds. "
            "([PDF](figures/return_vs_time.pdf))") in text
    assert ("than a run of Y at the same wall-clock budget (ties count one half).\n\n| env | X | Y | wall-clock budget "
            "(s) |") in text
    assert "| seconds, IQM [95% CI] | speedup vs 1 worker |" in text
    assert "Environment steps per second from the first to the last logged interval.\n\n" in text
    assert "| env steps/s, IQM [95% CI] |" in text

    analysis = report.analyse(load_runs(relabelled), report.ReportOptions(thresholds={"cartpole": 40.0}))
    expected = {"return_vs_time": "wall-clock time (s)", "throughput_vs_workers": "environment steps per second",
                "speedup_vs_workers": "speedup to threshold (x)",
                "barrier_wait_vs_workers": "barrier wait (% of worker time)"}
    for figure, label in expected.items():
        assert label in axis_labels(analysis, figure), figure


def test_runs_on_two_clocks_get_each_time_output_once_per_clock(sweep: Path, simulated_sweep: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture):
    out = tmp_path / "report"
    assert report.main([str(sweep), str(simulated_sweep), "--out", str(out), *THRESHOLDS]) == 0
    mixed = ("4 of the 10 runs analysed are simulated (virtual seconds), 6 real (wall-clock seconds). Each figure "
             "and table of wall_time is drawn once per clock from that clock's runs (names ending _real and "
             "_simulated), so that virtual and wall-clock seconds never share an axis; those in env steps take "
             "every run, with the clock as a condition. For one clock alone, give only its runs' directories.")
    assert f"svrl-report: {mixed}\n" in capsys.readouterr().err
    text = (out / "report.md").read_text()
    assert f"Clocks: {mixed}  \n" in text

    clocks = ("real", "simulated")
    split_figures = {f"{name}_{clock}" for name in report.FIGURES if name in report.WALL_CLOCK_OUTPUTS
                     for clock in clocks}
    whole_figures = {name for name in report.FIGURES if name not in report.WALL_CLOCK_OUTPUTS}
    # The real runs are single-worker: the speedup and barrier figures have nothing of theirs to draw.
    assert "### speedup vs workers (real clock)\n\n*Skipped: no multi-worker condition" in text
    assert "### barrier wait vs workers (real clock)\n\n*Skipped: no synchronous multi-worker runs.*" in text
    skipped = {"speedup_vs_workers_real", "barrier_wait_vs_workers_real"}
    assert {path.stem for path in (out / "figures").glob("*.png")} == whole_figures | (split_figures - skipped)
    split_tables = {f"{name}_{clock}" for name in TABLES if name in report.WALL_CLOCK_OUTPUTS for clock in clocks}
    whole_tables = {"final_return", "mean_return", "staleness"}
    assert {path.stem for path in (out / "tables").glob("*.md")} == whole_tables | split_tables

    # Each clock's outputs come from its runs alone, in its words.
    real, simulated = (report_section(text, f"return vs time ({clock} clock)") for clock in clocks)
    assert "Return against wall-clock seconds: " in real and "virtual" not in real
    assert "Return against virtual seconds: " in simulated and SIMULATED_NOTE in simulated
    real, simulated = ((out / "tables" / f"throughput_{clock}.md").read_text() for clock in clocks)
    assert "| env steps/s, IQM [95% CI] |" in header_row(real)
    assert "single/serial" in real and "a2c/workers" not in real and "a3c/parameter_server" not in real
    assert "| env steps per virtual second, IQM [95% CI] |" in header_row(simulated)
    assert "single/serial" not in simulated and "a2c/workers" in simulated
    # Outputs in env steps take every run, the clock a condition (and backend, which only the simulated runs set).
    final = (out / "tables" / "final_return.md").read_text()
    assert header_row(final).startswith("| env | schedule | workers | clock | backend | seeds |")
    assert "| cartpole | single/serial | 1 | real | local | 3 |" in final
    assert "| cartpole | a2c/workers | 2 | simulated | simulated | 1 |" in final

    analysis = report.analyse(load_runs([sweep, simulated_sweep]), report.ReportOptions())
    with pytest.raises(figures.NoData, match=r"the runs mix clocks \(6 real, 4 simulated\)"):
        report.DRAW["return_vs_time"](analysis)
    parts = report.outputs("time_to_threshold", analysis)
    assert [(part.file, part.title) for part in parts] == [
        ("time_to_threshold_real", "time to threshold (real clock)"),
        ("time_to_threshold_simulated", "time to threshold (simulated clock)")]
    assert [set(part.analysis.runset.runs["clock"]) for part in parts] == [{"real"}, {"simulated"}]
    assert [len(part.analysis.runset.runs) for part in parts] == [6, 4]
    assert [part.file for part in report.outputs("final_return", analysis)] == ["final_return"]


@pytest.mark.parametrize(("values", "expected"), [
    (["16", "4", "0"], [16, 4, 0]),
    (["0.05", "0.2", "0"], [0.05, 0.2, 0.0]),
    (["vtrace", "none"], ["vtrace", "none"]),
    (["4", "unset"], ["4", "unset"]),
])
def test_a_swept_factor_is_numeric_when_all_its_values_are_so_that_conditions_sort_by_value(values, expected):
    converted = _numeric_if_all(pd.Series(values))
    assert converted.tolist() == expected
    assert sorted(converted.tolist()) == sorted(expected)


def test_legend_labels_sort_their_numbers_by_value():
    labels = ["impala, delay=16", "impala, delay=4", "a3c, delay=64", "impala, p=0.1", "impala, p=0.05"]
    assert sorted(labels, key=figures.natural_key) == [
        "a3c, delay=64", "impala, delay=4", "impala, delay=16", "impala, p=0.05", "impala, p=0.1"]


def test_an_impala_setting_swept_beside_another_algorithm_s_runs_does_not_apply_to_them(sweep: Path, tmp_path: Path):
    for seed, correction in ((1, "none"), (2, "vtrace")):
        copy = copy_run(run_of(sweep, "cartpole", seed), tmp_path / correction, algo="impala", mode="actor_learner",
                        overrides=[f"algo.correction={correction}"])
        shutil.rmtree(copy / ".hydra")
    copy_run(run_of(sweep, "cartpole", 3), tmp_path / "a3c", algo="a3c", mode="parameter_server")
    runs = load_runs(tmp_path).runs.set_index("algo")
    assert runs.loc["a3c", "algo.correction"] == "n/a"  # not its config's unused default, vtrace
    assert sorted(runs.loc["impala", "algo.correction"]) == ["none", "vtrace"]


def test_curves_of_one_schedule_s_sweep_get_a_colour_each_and_schedules_keep_theirs():
    series = ["schedule", "algo.staleness.delay"]
    sweep = pd.DataFrame({"schedule": ["a3c/parameter_server"] * 3, "algo.staleness.delay": [16, 4, 0]})
    colour_of = figures._curve_colours(sweep, series)
    assert len({colour_of(("a3c/parameter_server", delay)) for delay in (0, 4, 16)}) == 3
    mixed = pd.DataFrame({"schedule": ["a3c/parameter_server", "a3c/parameter_server", "single/serial"],
                          "algo.staleness.delay": [0, 4, 0]})
    colour_of = figures._curve_colours(mixed, series)
    palette = figures.schedule_palette(["a3c/parameter_server", "single/serial"])
    assert colour_of(("a3c/parameter_server", 4)) == colour_of(("a3c/parameter_server", 0)) == palette[
        "a3c/parameter_server"]
