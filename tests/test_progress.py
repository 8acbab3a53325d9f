"""Long work shows progress: a sweep prints a line per finished job with the jobs done of the total and an ETA; the
report command says how many runs it read from where, and each figure and table as it writes it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.sweep import duration, progress_line

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"^\[(?P<done>\d+)/(?P<total>\d+)\] (?P<outcome>\w+) in (?P<took>\S+), "
                      r"(?P<eta>ETA \S+|all done): (?P<job>\S+)$")


def command(module: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The demo study, cut to two schedules, two seeds and 500 env steps: four short runs in one process."""
    tmp_path = tmp_path_factory.mktemp("progress")
    sweep = tmp_path / "demo"
    result = command("experiments.train", "-m", "+experiment=demo", "+schedule=single,a2c_vector", "seed=0,1",
                     "total_env_steps=500", "log_interval=100", "logger.wandb.mode=disabled",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return sweep, result


def test_a_sweep_prints_a_line_per_finished_job_with_the_jobs_done_and_an_eta(demo):
    sweep, result = demo
    lines = [match.groupdict() for line in result.stdout.splitlines() if (match := PROGRESS.match(line))]
    assert [(line["done"], line["total"], line["outcome"]) for line in lines] == [
        (str(done), "4", "completed") for done in (1, 2, 3, 4)]
    assert all(line["eta"].startswith("ETA ") for line in lines[:-1]) and lines[-1]["eta"] == "all done"
    assert {line["job"] for line in lines} == {path.name for path in sweep.iterdir() if path.is_dir()}


def test_the_eta_is_the_time_left_at_the_rate_the_jobs_that_ran_finished():
    entries = [{"outcome": "skipped"}, {"outcome": "completed"}, {"outcome": "failed"}]
    line = progress_line(entries, total=7, elapsed=100.0, job="seed=1", outcome="failed", took=40.0)
    # 2 jobs ran in 100 s (the skipped one costs nothing): 50 s a job, 4 jobs left
    assert line == "[3/7, 1 failed] failed in 40s, ETA 3m20s: seed=1"
    assert progress_line(entries, total=3, elapsed=100.0, job="", outcome="failed", took=None) == (
        "[3/3, 1 failed] failed, all done: (no overrides)")
    assert progress_line(entries[:1], total=3, elapsed=1.0, job="a=1", outcome="skipped", took=0.0).endswith(
        "ETA unknown: a=1")
    assert [duration(seconds) for seconds in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]


def test_the_report_says_what_it_reads_and_draws(demo, tmp_path):
    sweep, _ = demo
    out = tmp_path / "report"
    result = command("analysis.report", str(sweep), "--out", str(out), "--figures", "return_vs_steps",
                     "staleness_vs_workers", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report: {(out / 'report.md').resolve()}"  # stdout stays the report's path
    lines = result.stderr.splitlines()
    assert lines[:3] == [f"read 4 runs from {sweep}", f"drawing 2 figures and 6 tables into {out}",
                         "figure return_vs_steps: figures/return_vs_steps.png"]
    assert lines[3].startswith("figure staleness_vs_workers: ")
    assert lines[4:] == [f"table {name}: tables/{name}.md" for name in (
        "final_return", "mean_return", "time_to_threshold", "throughput", "staleness", "probability_of_improvement")]
