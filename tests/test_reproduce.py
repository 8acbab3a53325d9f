"""Reproduction of a finished run from its saved config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.reproduce import main as reproduce

ROOT = Path(__file__).resolve().parents[1]


def test_a_single_process_run_reproduces_exactly_and_version_drift_is_reported(tmp_path, capsys):
    original = tmp_path / "original"
    trained = subprocess.run(
        [sys.executable, "-m", "experiments.train", "algo=single", "env=acrobot", "seed=4", "total_env_steps=3000",
         "log_interval=1000", "quiet=true", "logger.wandb.mode=disabled", f"hydra.run.dir={original}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert trained.returncode == 0, trained.stderr

    assert reproduce([str(original), "--out", str(tmp_path / "again"), "--require-identical"]) == 0
    out = capsys.readouterr()
    assert "metrics identical (wall-clock columns aside): yes; final parameters identical: yes" in out.out
    assert "return_mean" in out.out and "warning: torch" not in out.err
    assert json.loads((tmp_path / "again" / "meta.json").read_text())["env_id"] == "Acrobot-v1"

    # An original recorded under another torch version is still rerun, with a warning.
    meta = json.loads((original / "meta.json").read_text())
    meta["versions"]["torch"] = "1.13.1"
    (original / "meta.json").write_text(json.dumps(meta))
    assert reproduce([str(original), "--out", str(tmp_path / "third")]) == 0
    assert "warning: torch differs: original 1.13.1" in capsys.readouterr().err


def test_only_completed_runs_are_reproduced(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(SystemExit, match="is 'failed'; only completed runs can be reproduced"):
        reproduce([str(run)])
