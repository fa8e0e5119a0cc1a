import importlib.util
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import matplotlib

os.environ.setdefault("COURSE_QUICK", "1")
matplotlib.use("Agg")  # this process draws off screen; the notebooks' kernels use the inline backend (../conftest.py)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def lab_args() -> list[str]:
    """The arguments `make lab` (the README's door) gives `jupyter lab`, read with `make -n`: nothing runs."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-n", "-s", "lab"], cwd=root, capture_output=True, text=True, check=True).stdout
    line = [line for line in out.splitlines() if "jupyter lab" in line][-1]
    return shlex.split(line.split("jupyter lab", 1)[1])


def _benchmark_script(name: str):
    """benchmarks/<name>.py imported as a module (the folder is scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    """benchmarks/recipe_02.py: notebook 02's large model trained with notebook 07's loop (course_utils.speedrun)."""
    return _benchmark_script("recipe_02")


@pytest.fixture(scope="module")
def step_02():
    """benchmarks/step_02.py: notebook 07's training step, variant by variant."""
    return _benchmark_script("step_02")


def _device_reads_per_step(step, x) -> dict:
    """Every read of a tensor's value into Python during one call of step (on a GPU, each is a host sync),
    as {(kind, file:line): count}; torch.optim's own step counters, which stay on the CPU, are left out."""
    import sys
    from collections import Counter
    reads, originals = Counter(), {}

    def watching(name):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "/torch/optim/" not in caller:
                reads[(name, f"{caller.rsplit('/', 1)[-1]}:{sys._getframe(1).f_lineno}")] += 1
            return originals[name](self, *args, **kwargs)
        return read

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        originals[name] = getattr(torch.Tensor, name)
    try:
        for name in originals:
            setattr(torch.Tensor, name, watching(name))
        step(x)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return dict(reads)


@pytest.fixture
def device_reads():
    """device_reads(step, x): the reads of tensor values into Python during step(x) (on a GPU, host syncs)."""
    return _device_reads_per_step
