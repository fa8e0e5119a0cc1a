import random

import numpy as np
import pytest
import torch

from course_utils import runtime


def test_get_device_default_is_available():
    device = runtime.get_device()
    assert device.type in ("cuda", "mps", "cpu")
    torch.zeros(1, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_one_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA GPU was asked for"):
        runtime.get_device("cuda")


def test_get_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="use one of"):
        runtime.get_device("tpu")


def test_course_device_env_overrides(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert runtime.get_device() == torch.device("cpu")


def test_seed_everything_reproduces_all_generators():
    def draw():
        import pyro.distributions as dist
        return (random.random(), np.random.rand(), torch.rand(1).item(), dist.Normal(0, 1).sample().item())
    runtime.seed_everything(123)
    first = draw()
    runtime.seed_everything(123)
    assert draw() == first


def test_quick_mode_and_scaled(monkeypatch):
    monkeypatch.setenv("COURSE_QUICK", "1")
    assert runtime.is_quick() and runtime.scaled(full=60, quick=1) == 1
    monkeypatch.setenv("COURSE_QUICK", "0")
    assert not runtime.is_quick() and runtime.scaled(full=60, quick=1) == 60
    monkeypatch.delenv("COURSE_QUICK")
    assert not runtime.is_quick()


def test_a_default_device_replaces_the_automatic_choice_but_not_course_device(monkeypatch):
    # notebook 01 runs on the CPU even beside a GPU, unless COURSE_DEVICE names a device
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert runtime.get_device(default="cpu") == torch.device("cpu")
    assert runtime.get_device() == torch.device("cuda")
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    assert runtime.get_device(default="cpu") == torch.device("cuda")


def test_sized_picks_by_mode_and_device_class(monkeypatch):
    monkeypatch.setenv("COURSE_QUICK", "1")
    assert runtime.sized(gpu=3, cpu=2, quick=1, device="cuda") == 1
    monkeypatch.setenv("COURSE_QUICK", "0")
    assert runtime.sized(gpu=3, cpu=2, quick=1, device="cuda") == 3
    assert runtime.sized(gpu=3, cpu=2, quick=1, device="cpu") == 2


def test_course_device_is_read_case_blind_and_named_in_its_errors(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "CPU")
    assert runtime.get_device() == torch.device("cpu")
    torch.zeros(1, device=runtime.get_device())
    monkeypatch.setenv("COURSE_DEVICE", " Cpu ")
    assert runtime.get_device() == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"COURSE_DEVICE='gpu' is not a device: use one of"):
        runtime.get_device()
    monkeypatch.setenv("COURSE_DEVICE", "cuda:x")
    with pytest.raises(ValueError, match="COURSE_DEVICE='cuda:x'"):
        runtime.get_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COURSE_DEVICE", "CUDA")
    with pytest.raises(RuntimeError, match=r"COURSE_DEVICE='CUDA'.*COURSE_DEVICE=cpu"):
        runtime.get_device()


def test_an_unknown_quick_mode_is_an_error_naming_the_allowed_values(monkeypatch):
    for value in ("1", "true", "ON", " yes "):
        monkeypatch.setenv("COURSE_QUICK", value)
        assert runtime.is_quick(), value
    for value in ("0", "", "false", "off"):
        monkeypatch.setenv("COURSE_QUICK", value)
        assert not runtime.is_quick(), value
    monkeypatch.setenv("COURSE_QUICK", "2")
    with pytest.raises(ValueError, match=r"COURSE_QUICK='2' is not a mode: set COURSE_QUICK=1 for quick mode, or 0"):
        runtime.scaled(full=60, quick=1)


def test_device_label_names_the_cpu_and_describe_prints_it():
    label = runtime.device_label("cpu")
    assert label.startswith("CPU (") and f"{torch.get_num_threads()} torch threads" in label
    assert label in runtime.describe(torch.device("cpu"))
