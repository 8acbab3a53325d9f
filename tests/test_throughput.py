"""The throughput benchmark: run specs, and a real (tiny) benchmark that writes its table and JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from experiments.tools.throughput import RunSpec, main, parse_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("text", "spec"), [
    ("single", RunSpec("single", "serial")),
    ("a2c", RunSpec("a2c", "vector")),
    ("a2c:vector:8e", RunSpec("a2c", "vector", num_envs=8)),
    ("a2c:workers:2", RunSpec("a2c", "workers", num_workers=2)),
    ("a2c:workers:4w:2envs", RunSpec("a2c", "workers", num_workers=4, num_envs=2)),
    ("a3c:parameter_server:2w", RunSpec("a3c", "parameter_server", num_workers=2)),
    ("a3c:parameter_server:2w:ray", RunSpec("a3c", "parameter_server", num_workers=2, backend="ray")),
    ("a2c:workers:2w:1e:local", RunSpec("a2c", "workers", num_workers=2, num_envs=1)),
])
def test_run_specs_are_read(text, spec):
    assert parse_spec(text) == spec


def test_run_spec_labels_and_overrides_name_the_backend():
    spec = parse_spec("a2c:workers:2w:1e:ray")
    assert spec.label == "a2c:workers:2w:1e:ray" and spec.overrides()[-1] == "backend=ray"
    assert parse_spec("a2c:workers:2w:1e:local").label == "a2c:workers:2w:1e"


@pytest.mark.parametrize(("text", "message"), [
    ("trpo", "unknown algorithm 'trpo'"),
    ("a2c:hogwild:2", "algo a2c has modes vector, workers, not 'hogwild'"),
    ("a2c:workers:two", "cannot read 'two'"),
    ("a2c:workers:ray:2w", "cannot read 'ray'; expected N or Nw .* or a backend .* last"),
])
def test_bad_run_specs_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


def test_benchmark_runs_every_spec_and_writes_its_json(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    main(["--runs", "single", "a2c:vector:2e", "a2c:workers:2w:1e", "--steps", "1200", "--raw-seconds", "0.2",
          "--json", str(path)])
    table = capsys.readouterr().out
    result = json.loads(path.read_text())
    assert [run["spec"] for run in result["runs"]] == ["single:serial", "a2c:vector:2e", "a2c:workers:2w:1e"]
    assert [(run["num_workers"], run["num_envs"]) for run in result["runs"]] == [(1, 1), (1, 2), (2, 1)]
    for run in result["runs"]:
        assert run["status"] == ["completed"]
        assert run["steady_sps_median"] > 0 and run["raw_sps_median"] > 0
        assert run["fraction_of_raw"] == pytest.approx(run["steady_sps_median"] / run["raw_sps_median"])
        assert run["spec"] in table
    assert result["machine"]["cpu_count"] >= 1 and result["steps"] == 1200


def test_benchmark_measures_every_run_again_in_another_checkout(tmp_path, capsys):
    other = tmp_path / "other"
    clone = subprocess.run(["git", "clone", "--quiet", str(ROOT), str(other)], capture_output=True, text=True,
                           timeout=120)
    if clone.returncode != 0:
        pytest.skip(f"no git checkout of this commit to measure against: {clone.stderr.strip()}")
    path = tmp_path / "throughput.json"
    main(["--runs", "single", "--steps", "2000", "--raw-seconds", "0.2", "--set", "model.hidden_sizes=[32,32]",
          "--against", str(other), "--json", str(path)])
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run "))
    result = json.loads(path.read_text())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert result["against"] == {"dir": str(other.resolve()), "git_commit": head, "git_dirty": False}
    (run,) = result["runs"]
    assert run["status"] == ["completed"] and len(run["against_sps"]) == 1 and run["against_sps"][0] > 0
    assert run["vs_against"] == pytest.approx(run["steady_sps_median"] / run["against_sps_median"])
    assert header.endswith("vs local vs other")


def test_against_needs_a_checkout_of_this_project(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs", "single", "--against", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "not a checkout of this project" in capsys.readouterr().err


def test_benchmark_times_stable_baselines3_on_the_one_learner_specs(tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    path = tmp_path / "throughput.json"
    main(["--env", "minatar_breakout", "--runs", "a2c:vector:2e", "--steps", "600", "--raw-seconds", "0.1",
          "--sb3", "ours", "--json", str(path)])
    result = json.loads(path.read_text())
    (run,) = result["runs"]
    assert result["sb3_envs"] == "ours" and len(run["sb3_sps"]) == 1 and run["sb3_sps"][0] > 0
    assert run["vs_sb3"] == pytest.approx(run["steady_sps_median"] / run["sb3_sps_median"])
    assert "vs SB3" in capsys.readouterr().out


def test_the_stable_baselines3_peer_of_a_ppo_run_is_its_ppo_on_the_same_settings():
    """SB3's PPO with our batch split (minibatch = num_envs * n_steps / minibatches), epochs, clipping and Adam."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from experiments.tools.sb3_peer import build_peer
    from tests.conftest import compose_config

    peer = build_peer(compose_config("algo=ppo", "env=cartpole", "algo.target_kl=0.02"), "ours")
    assert isinstance(peer, PPO)
    assert (peer.n_steps, peer.batch_size, peer.n_epochs, peer.target_kl) == (128, 128, 4, 0.02)
    assert peer.clip_range(1.0) == peer.clip_range_vf(1.0) == 0.2
    assert peer.ent_coef == 0.01 and peer.vf_coef == 0.25 and peer.gae_lambda == 0.95
    assert peer.policy.optimizer.defaults["eps"] == 1e-5
    peer.env.close()
