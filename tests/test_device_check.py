"""The prepared device check (``experiments/tools/device_check.py``): its reduced form for real on this machine, into
a temporary directory, and its ``--timeout`` guard stopping it with what it has written."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from algorithms import SCHEDULES
from algorithms.infra.reaper import stat_fields
from experiments.tools.device_check import FULL, REDUCED, RESERVE_S, main, preflight
from tests.processes import alive

CUDA = torch.cuda.is_available()


def session_members(session: int) -> list[int]:
    """Live processes in the session a stage's subprocess led."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[3]) == session and alive(int(entry.name)):
            members.append(int(entry.name))
    return members


def test_the_full_plan_is_every_multi_worker_schedule_at_1_to_16_workers_within_8_minutes():
    specs = {(job.env, spec) for job in FULL.jobs for spec in job.specs(FULL.workers, ray=False)}
    local = [schedule for (algo, mode, backend), schedule in SCHEDULES.items()
             if backend == "local" and schedule.worker_processes]
    for env in ("cartpole", "minatar_breakout"):
        for schedule in local:
            for workers in (1, 2, 4, 8, 16):
                assert sum(1 for job_env, spec in specs if job_env == env and
                           spec.startswith(f"{schedule.algo}:{schedule.mode}:{workers}w")) == 1
    assert len(specs) == 2 * len(local) * 5 == 60
    with_ray = [spec for job in FULL.jobs for spec in job.specs(FULL.workers, ray=True) if spec.endswith(":ray")]
    assert len(with_ray) == 2 * 4 * 5 and "a3c:parameter_server:16w:ray" in with_ray
    assert FULL.validate_workers == (1, 2, 4, 8)
    planned = sum(FULL.shares.values()) + sum(job.seconds for job in FULL.jobs)
    assert planned + RESERVE_S <= FULL.timeout < 8 * 60
    assert preflight(FULL) == []  # every config the 16-core machine will run is valid


@pytest.mark.slow
def test_the_reduced_check_runs_the_whole_pipeline_and_writes_its_json_and_markdown(tmp_path):
    started = time.monotonic()
    assert main(["--reduced", "--out", str(tmp_path), "--timeout", "240"]) == 0
    seconds = time.monotonic() - started
    report = json.loads((tmp_path / "device_check_reduced.json").read_text())
    text = (tmp_path / "device_check_reduced.md").read_text()
    assert report["form"] == "reduced" and report["preflight"] == [] and report["seconds"] <= seconds + 0.1
    assert report["machine"]["cpu_count"] >= 1 and report["git_commit"]
    gpu, cartpole, minatar, validation = report["stages"]
    if CUDA:
        assert gpu["status"] == "ok" and len(gpu["result"]["batches"]) == 3
    else:
        assert (gpu["stage"], gpu["status"], gpu["reason"]) == ("gpu_check", "skipped", "no GPU")
        assert "| gpu_check | skipped | 0.0 | no GPU |" in text
    for stage, job in zip((cartpole, minatar), REDUCED.jobs, strict=True):
        assert (stage["stage"], stage["status"]) == (job.name, "ok")
        runs = stage["result"]["runs"]
        assert [run["spec"] for run in runs] == job.specs(REDUCED.workers, ray=False)
        assert stage["result"]["baselines"] == [] and stage["result"]["failed"] == {}
        assert all(run["status"] == ["completed"] and run["steady_sps_median"] > 0 for run in runs)
        for run in runs:
            assert (run["efficiency"] is None) == (run["num_workers"] == 1)
            assert run["env_steps"] == job.steps * run["num_workers"]
        assert "| `a3c:parameter_server:2w` | 2 | 1 |" in stage["markdown"] and stage["markdown"].strip() in text
    assert validation["status"] == "ok"
    assert [(row["schedule"], row["workers"]) for row in validation["result"]["rows"]] == [
        ("a3c_parameter_server", 1), ("a3c_parameter_server", 2)]
    # What docs/results asks of every result page (tests/test_docs.py), so that the full check's README.md passes.
    assert re.search(r"\b[0-9a-f]{7}\b", text) and re.search(r"\b20\d\d-\d\d-\d\d\b", text)
    assert "```bash\n.venv/bin/python -m experiments.tools.device_check --reduced" in text
    assert "[`device_check_reduced.json`](device_check_reduced.json)" in text
    assert "## Throughput, CartPole, 300 steps per worker" in text
    assert "## Throughput, MinAtar Breakout, 100 steps per worker" in text
    assert "## The simulator against real runs (CartPole)" in text and "| a3c_parameter_server | 2 |" in text


@pytest.mark.slow
def test_the_timeout_stops_the_check_and_it_writes_what_it_has(tmp_path):
    """With too little time the stage running at its limit is stopped, with every process of its session, and the
    later ones are not run; the check still writes its JSON and Markdown, in time, and exits with status 1."""
    timeout = RESERVE_S + 10
    started = time.monotonic()
    assert main(["--reduced", "--out", str(tmp_path), "--timeout", str(timeout)]) == 1
    assert time.monotonic() - started <= timeout + 1
    report = json.loads((tmp_path / "device_check_reduced.json").read_text())
    statuses = {stage["stage"]: stage["status"] for stage in report["stages"]}
    assert list(statuses) == ["gpu_check", *(job.name for job in REDUCED.jobs), "validate_simulation"]
    assert set(statuses.values()) - {"ok", "skipped"} <= {"timed out", "partial", "not run"}
    assert {"timed out", "not run"} & set(statuses.values())
    sessions = [stage["session"] for stage in report["stages"] if "session" in stage]
    deadline = time.monotonic() + 20
    while any(session_members(session) for session in sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for session in sessions for pid in session_members(session)]
    assert "| stage | status | seconds | note |" in (tmp_path / "device_check_reduced.md").read_text()
