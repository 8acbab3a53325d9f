"""Shared test helpers: configs composed exactly as the command line composes them, and short real runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import experiments.config  # noqa: F401  (registers the schema in Hydra's ConfigStore)
from experiments.train import train

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# Fast, silent runs, without evaluation episodes, unless a test asks otherwise.
TEST_DEFAULTS = ["quiet=true", "logger.wandb.mode=disabled", "eval.episodes=0"]


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=TEST_DEFAULTS + list(overrides))


def train_run(run_dir: Path, *overrides: str):
    """Train in this process into ``run_dir``; return the closed run record."""
    return train(compose_config(*overrides), str(run_dir))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory that ``build`` fills once for the whole test run, however many xdist workers ask for it (they
    share the parent of their base temporary directories); tests only read it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a build that failed half-way
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def cluster():
    """One local Ray cluster (2 CPUs) per pytest process, started when a test first asks for it: runs in this
    process join it instead of starting their own, which costs seconds of CPU each. Tests of how a run starts
    and stops its own cluster run the command line instead."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")  # a new cluster
    try:
        yield
    finally:
        ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests run first, so that short ones fill the parallel workers' last minutes instead of one long
    test running on alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def check_applied_versions(rows: list[dict]) -> None:
    """Applied updates took each version exactly once; staleness is version_at_apply - version_at_sync."""
    applied = sorted(row["version_at_apply"] for row in rows if row["applied"])
    assert applied == list(range(applied[0], applied[0] + len(applied)))
    for row in rows:
        assert row["staleness"] == row["version_at_apply"] - row["version_at_sync"] >= 0


def check_two_workers_delayed_by_one(rows: list[dict]) -> None:
    """A parameter server with staleness.delay=1 answered each gradient with the parameters one version behind."""
    check_applied_versions(rows)
    assert {row["worker"] for row in rows} == {0, 1}
    for worker in (0, 1):
        mine = [row for row in rows if row["worker"] == worker]
        # the server answers a gradient applied at version v with the parameters one behind v + 1
        assert all(b["version_at_sync"] == a["version_at_apply"] for a, b in zip(mine, mine[1:], strict=False))
    assert all(row["staleness"] >= 1 for row in rows if row["version_at_apply"] >= 1)
