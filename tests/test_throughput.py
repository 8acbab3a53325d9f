"""The throughput benchmark: run specs, and a real (tiny) benchmark that writes its table and JSON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from experiments.tools.throughput import NO_BASELINE, RunSpec, main, parse_spec

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
    """A multi-worker spec without its 1-worker spec gets one added: its efficiency is measured against it."""
    path, markdown = tmp_path / "throughput.json", tmp_path / "throughput.md"
    main(["--runs", "single", "a2c:vector:2e", "a2c:workers:2w:1e", "--steps", "1200", "--raw-seconds", "0.2",
          "--json", str(path), "--markdown", str(markdown)])
    table = capsys.readouterr().out
    result = json.loads(path.read_text())
    assert [run["spec"] for run in result["runs"]] == ["single:serial", "a2c:vector:2e", "a2c:workers:2w:1e"]
    assert [(run["num_workers"], run["num_envs"]) for run in result["runs"]] == [(1, 1), (1, 2), (2, 1)]
    (baseline,) = result["baselines"]
    assert baseline["spec"] == "a2c:workers:1w:1e" and baseline["added"] and baseline["efficiency"] is None
    for run in result["runs"] + result["baselines"]:
        assert run["status"] == ["completed"]
        assert run["steady_sps_median"] > 0 and run["raw_sps_median"] > 0
        assert run["fraction_of_raw"] == pytest.approx(run["steady_sps_median"] / run["raw_sps_median"])
        assert run["spec"] in table and f"`{run['spec']}`" in markdown.read_text()
        assert run["cores"] == os.cpu_count() and run["oversubscribed"] == (run["busy_processes"] > os.cpu_count())
    single, vector, workers = result["runs"]
    assert single["efficiency"] is vector["efficiency"] is None and single["efficiency_note"] is None
    assert workers["efficiency"] == pytest.approx(workers["steady_sps_median"] / (2 * baseline["steady_sps_median"]))
    assert [run["busy_processes"] for run in (single, vector, workers, baseline)] == [1, 1, 2, 1]
    assert result["machine"]["cpu_count"] >= 1 and result["steps"] == 1200
    header, rule, *rows = markdown.read_text().splitlines()
    assert header.split(" | ")[6:8] == ["efficiency", "busy/cores"]
    workers_row = next(row for row in rows if row.startswith("| `a2c:workers:2w:1e` |"))
    assert f"| {workers['efficiency']:.2f} | 2/{os.cpu_count()}" in workers_row
    assert any(row.startswith("| `a2c:workers:1w:1e` + |") for row in rows)
    assert "+ added by the benchmark" in table
    assert "efficiency" in next(line for line in table.splitlines() if line.startswith("run "))


def test_efficiency_uses_the_given_one_worker_run_and_is_na_without_one(tmp_path, capsys):
    """The 1-worker spec asked for is the baseline (nothing added); with --no-baselines a schedule without one
    says n/a; a run with more busy processes than cores is marked over."""
    path = tmp_path / "throughput.json"
    main(["--runs", "a3c:hogwild:1w", "a3c:hogwild:2w", "impala:actor_learner:2w", "--steps", "700",
          "--steps-per-worker", "--raw-seconds", "0.1", "--no-baselines", "--json", str(path)])
    table = capsys.readouterr().out
    result = json.loads(path.read_text())
    one, two, impala = result["runs"]
    assert [run["env_steps"] for run in result["runs"]] == [700, 1400, 1400] and result["steps_per_worker"]
    assert result["baselines"] == [] and not one["added"]
    assert two["efficiency"] == pytest.approx(two["steady_sps_median"] / (2 * one["steady_sps_median"]))
    assert impala["efficiency"] is None and impala["efficiency_note"] == NO_BASELINE
    assert NO_BASELINE in next(line for line in table.splitlines() if line.startswith("impala:actor_learner:2w"))
    assert impala["busy_processes"] == 3  # two actors and the learner
    cores = os.cpu_count() or 1
    assert impala["oversubscribed"] == (cores < 3)
    assert (f"3/{cores} over" in table) == (cores < 3) and ("over: more busy processes" in table) == (cores < 3)


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


def test_no_run_starts_past_the_time_limit(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    main(["--runs", "single", "a3c:hogwild:2w", "--steps", "600", "--time-limit", "0", "--json", str(path)])
    result = json.loads(path.read_text())
    assert result["runs"] == result["baselines"] == [] and result["time_limit"] == 0
    assert result["not_run"] == ["single:serial", "a3c:hogwild:1w", "a3c:hogwild:2w"]
    assert "not run, past --time-limit 0 s: single:serial, a3c:hogwild:1w, a3c:hogwild:2w" in capsys.readouterr().out


def test_a_run_that_gives_no_rate_is_reported_and_the_others_measured(tmp_path, capsys):
    """appo on CartPole updates every 512 steps (2 unrolls of 128 steps in 2 envs): 400 steps leave no steady rate."""
    path = tmp_path / "throughput.json"
    main(["--runs", "appo:actor_learner:1w", "single", "--steps", "400", "--raw-seconds", "0.05",
          "--json", str(path)])
    result = json.loads(path.read_text())
    assert [run["spec"] for run in result["runs"]] == ["single:serial"] and result["not_run"] == []
    assert list(result["failed"]) == ["appo:actor_learner:1w"]
    assert "too few metrics rows for a steady-state rate" in result["failed"]["appo:actor_learner:1w"]
    assert "no rate for appo:actor_learner:1w: RuntimeError" in capsys.readouterr().out
