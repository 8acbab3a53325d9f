"""The calibration measures every cost of the simulated workers' model and writes a profile the config takes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from algorithms.config import SimConfig
from experiments.tools.calibrate import main, measure, time_updates
from experiments.train import CONFIG_DIR


def test_the_profile_has_every_measured_cost_and_loads_as_the_sim_config(tmp_path, capsys):
    out = tmp_path / "sim" / "here.yaml"
    main(["--out", str(out), "--repeats", "20", "env=cartpole", "algo=a3c"])
    profile = OmegaConf.load(out)
    measured = ("forward_s", "backward_s", "apply_s", "update_s", "message_s", "byte_s", "unroll_s")
    assert all(math.isfinite(profile[name]) and profile[name] > 0 for name in measured)
    # a difference of timings (a rollout less its forward passes), clamped at 0 should noise invert it
    assert math.isfinite(profile.env_step_s) and profile.env_step_s >= 0
    assert profile.latency_s == 0
    assert profile.backward_s > profile.forward_s  # a gradient costs more than acting
    # impala's behaviour pass over an unroll costs more than one acting pass, its learner's update than a step
    assert profile.unroll_s > profile.forward_s
    assert min(profile.learn_s, profile.learn_unroll_s) >= 0  # a line's parts, clamped at 0 should noise invert one
    assert profile.learn_s + 8 * profile.learn_unroll_s > profile.apply_s
    sim = OmegaConf.merge(OmegaConf.structured(SimConfig), profile)  # the schema takes every key and type
    assert sim.apply_s == profile.apply_s and sim.update_s == profile.update_s and sim.straggler_fraction == 0.0
    assert capsys.readouterr().out == out.read_text()  # the timed run's summary line stays off stdout


def test_the_update_is_timed_part_by_part_on_the_real_path_of_any_schedule_s_config():
    """An a2c config (two envs per worker) is timed as a one-worker a3c loop with its env, model and rollout: its
    rollouts of 5 steps over 2 envs take longer than the 5 acting forward passes in them, and each part is real
    work, the bookkeeping left over (update_s) included."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["env=cartpole", "algo=a2c", "algo.num_envs=2"])
    loop = time_updates(cfg, 20)
    assert set(loop) == {"rollout", "gradient", "step", "rest"}
    assert all(math.isfinite(seconds) and seconds > 0 for seconds in loop.values())
    costs = measure(cfg, repeats=20)
    assert costs["env_step_s"] > 0 and costs["update_s"] > 0


def test_a_bad_config_exits_with_status_2_before_measuring(tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(tmp_path / "p.yaml"), "algo.lr=-1"])
    assert exited.value.code == 2 and not (tmp_path / "p.yaml").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "fitted_cost"), [("a3c_parameter_server", "update_s"),
                                                      ("impala", "learn_s")])
def test_validation_runs_the_schedule_real_and_simulated_and_tables_both(tmp_path, capsys, schedule, fitted_cost):
    from experiments.tools.validate_simulation import main as validate_main

    out = tmp_path / "validation.json"
    validate_main(["--workers", "1", "--schedules", schedule, "--steps", "1000", "--trials", "2", "--repeats", "50",
                   "--out", str(out), "env=cartpole"])
    result = json.loads(out.read_text())
    assert result["costs"]["update_s"] >= 0  # every calibrated cost reaches the simulated run
    first, second = result["calibrations"]  # one a round; each cost the median (of two: their mean)
    assert result["costs"]["backward_s"] == pytest.approx((first["backward_s"] + second["backward_s"]) / 2)
    (row,) = result["rows"]
    assert (row["schedule"], row["workers"]) == (schedule, 1)
    for run in ("real", "simulated"):  # one a3c worker is never stale, on either clock
        assert row[run]["sps"] > 0 and (schedule == "impala" or row[run]["staleness_mean"] == 0)
    assert row["ratio"] == pytest.approx(row["simulated"]["sps"] / row["real"]["sps"])
    trials = row["real"]["sps_trials"]
    assert len(trials) == 2 and row["real"]["sps"] == pytest.approx(np.mean(trials))  # the median of two
    # The cost fitted at one worker makes the simulated worker step at the real one's rate, unless even a
    # free update is slower than the real one (a calibration taken under load): then it is 0.
    assert row["fitted_ratio"] == pytest.approx(row["fitted"]["sps"] / row["real"]["sps"])
    assert row["fitted_cost"] == fitted_cost
    if row["fitted_s"] > 0:
        assert row["fitted_ratio"] == pytest.approx(1.0, rel=0.02)
    else:
        assert row["fitted_ratio"] < 1.0
    assert f"| {schedule} | 1 |" in capsys.readouterr().out
