"""``device``: refused where it cannot work, ``auto`` falls back to the CPU bit for bit, and on a machine with a
GPU the CUDA learner matches the CPU one (``experiments/tools/gpu_check.py``, which a GPU machine runs whole)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from algorithms.core.nets import ActorCritic
from experiments.config import ConfigError, validate
from tests.conftest import compose_config, train_run

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize(("overrides", "message"), [
    (["algo=single", "device=gpu"], "must be cpu, cuda, cuda:N or auto"),
    (["algo=a3c", "algo.num_workers=2", "device=cuda"], "learns in worker processes that stay on the CPU"),
    (["algo=a2c", "algo.mode=workers", "algo.num_workers=2", "device=cuda:0"], "stay on the CPU"),
    pytest.param(["algo=single", "device=cuda"], "this machine has 0 CUDA devices",
                 marks=pytest.mark.skipif(CUDA, reason="this machine has a GPU")),
])
def test_a_device_that_cannot_work_is_refused_naming_it(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        validate(compose_config(*overrides))
    assert error.value.key == "device"


@pytest.mark.skipif(CUDA, reason="auto picks the GPU here")
@pytest.mark.parametrize("schedule", [["algo=single"], ["algo=a3c", "algo.mode=parameter_server",
                                                          "algo.num_workers=1"]])
def test_auto_without_a_gpu_learns_on_the_cpu_exactly(tmp_path, schedule):
    common = [*schedule, "env=cartpole", "total_env_steps=300", "log_interval=100"]
    params = []
    for device in ("cpu", "auto"):
        train_run(tmp_path / device, *common, f"device={device}")
        params.append(torch.load(tmp_path / device / "checkpoints" / "last.pt", weights_only=False)["model"])
    assert all(torch.equal(params[0][name], params[1][name]) for name in params[0])


def test_placing_a_model_keeps_one_flat_buffer_and_its_values():
    model = ActorCritic(spaces.Box(0, 1, (4, 10, 10), np.uint8), spaces.Discrete(3), [64])
    before = model.flat_params.clone()
    model.place(torch.device("cpu"))
    assert torch.equal(model.flat_params, before)
    assert all(param.data_ptr() >= model.flat_params.data_ptr() for param in model.parameters())
    model.torso.convolutions[0].weight.data.add_(1.0)  # a layer's parameter is a view of the flat buffer
    assert not torch.equal(model.flat_params, before)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_cuda_learner_matches_the_cpu_learner_on_one_batch_of_each_torso():
    from experiments.tools.gpu_check import BATCHES, compare_one_batch

    for name, (space, actions) in BATCHES.items():
        assert compare_one_batch(name, space, actions)["ok"], name


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_the_gpu_check_says_in_one_line_that_it_needs_a_gpu(capsys):
    from experiments.tools.gpu_check import main

    assert main([]) == 2
    assert capsys.readouterr().err == "error: no CUDA device here; this check needs one\n"
