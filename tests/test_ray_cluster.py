"""The Ray backend joins a cluster that is already running (``ray start --head``, given by its address or
through Ray Client's ``ray://`` address), as on a real cluster, instead of starting its own; the cluster
stays up after the run. A module of its own: the
run is a command line (a driver process of its own), and no other Ray cluster is up meanwhile."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_meta

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not open port {port} within {timeout}s")


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    """A one-node cluster started by `ray start --head --block`, stopped with its whole process group; its
    addresses by kind: the GCS's, and its Ray Client server's."""
    port, client_port = free_port(), free_port()
    command = [RAY, "start", "--head", f"--port={port}", f"--ray-client-server-port={client_port}", "--num-cpus=2",
               "--include-dashboard=false", "--disable-usage-stats", "--block"]
    head = subprocess.Popen(command, cwd=tmp_path_factory.mktemp("head"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_port(port, head)
        wait_for_port(client_port, head)
        yield {"gcs": f"127.0.0.1:{port}", "client": f"ray://127.0.0.1:{client_port}"}
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)  # `ray start --block` was seen to outlast 30 s of SIGTERM: kill what is left
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


PS = ["algo=a3c", "algo.mode=parameter_server"]
WORKERS = ["algo=a2c", "algo.mode=workers", "algo.num_envs=1"]


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "via"), [(PS, "gcs"), (WORKERS, "gcs"), (WORKERS, "client")],
                         ids=["parameter_server", "workers", "workers-ray-client"])
def test_a_run_joins_a_running_cluster_and_leaves_it_up(head_node, tmp_path, schedule, via):
    run_dir = tmp_path / "run"
    address = head_node[via]
    # `ray start` enables token authentication; a driver given an address sends the token when told to.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token"}
    result = subprocess.run([sys.executable, "-m", "experiments.train", *schedule, "backend=ray",
                             f"ray.address={address}",
                             "algo.num_workers=2", "total_env_steps=2000", "log_interval=500", "quiet=true",
                             "logger.wandb.mode=disabled", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_meta(run_dir)["status"] == "completed"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    (cluster,) = [event for event in events if event["event"] == "ray_cluster"]
    assert cluster["started_here"] is False and cluster["cpus"] == 2.0
    assert len([event for event in events if event["event"] == "worker_started"]) == 2
    host, port = head_node["gcs"].rsplit(":", 1)
    with socket.socket() as probe:  # the run disconnected; the cluster it joined is still there
        assert probe.connect_ex((host, int(port))) == 0
