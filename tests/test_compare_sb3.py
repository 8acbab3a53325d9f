"""The side-by-side comparison with Stable-Baselines3's A2C runs both learners and reports their evaluations."""

from __future__ import annotations

import json

import pytest

from experiments.tools.compare_sb3 import ZOO_A2C, main


def test_both_learners_are_trained_evaluated_and_tabled_next_to_the_zoo(tmp_path, capsys):
    main(["--env", "acrobot", "--seeds", "0", "1", "--steps", "1600", "--episodes", "2", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())["results"]["acrobot"]
    assert results["steps"] == 1600 and len(results["ours"]) == len(results["sb3"]) == 2
    assert all(-500 <= value <= 0 for value in results["ours"] + results["sb3"])  # Acrobot's range: -1 a step
    for seed in (0, 1):  # our runs are ordinary run records, evaluated at their end
        assert (tmp_path / f"acrobot_s{seed}" / "evals.csv").read_text().count("\n") == 2
    printed = capsys.readouterr().out
    assert "| acrobot | 1,600 | 2 |" in printed and f"{ZOO_A2C['acrobot'].mean:.1f}" in printed
    assert printed.strip().endswith((tmp_path / "results.md").read_text().strip())  # after the runs' summary lines


@pytest.mark.parametrize("arguments", [["--steps", "0"], ["--episodes", "0"], ["--env", "pong"]])
def test_bad_arguments_exit_with_status_2(tmp_path, arguments):
    with pytest.raises(SystemExit) as exited:
        main([*arguments, "--out", str(tmp_path / "out")])
    assert exited.value.code == 2 and not (tmp_path / "out").exists()
