"""Runtime helpers: device choice, seeding, and the course's quick mode.

Every notebook's Setup cell calls these three things::

    device = get_device()          # cuda > mps > cpu
    seed_everything(0)             # python, numpy, torch (and pyro, if installed)
    EPOCHS = scaled(full=30, quick=1)   # quick mode is set by COURSE_QUICK=1

Speed measurement (synchronizing, step timers) lives in ``benchmarks/timing.py``, not here.
"""
from __future__ import annotations

import os
import platform
import random
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")

_VALID_PREFER = ("cuda", "mps", "cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(prefer: str | None = None, *, default: str | None = None) -> torch.device:
    """Return the device to compute on.

    prefer=None picks the best available (cuda > mps > cpu), or ``default`` where given (notebook 01 asks
    for the CPU: its tensors are too small for a GPU to pay). The environment variable COURSE_DEVICE
    overrides either choice (e.g. COURSE_DEVICE=cpu to force the CPU, COURSE_DEVICE=cuda to try a GPU).
    prefer="cuda" (or "mps") raises a RuntimeError that says what to do when that
    device is not there, instead of silently falling back to the CPU.
    """
    asked = f"get_device(prefer={prefer!r})"
    if prefer is None and os.environ.get("COURSE_DEVICE", "").strip():
        prefer = os.environ["COURSE_DEVICE"]
        asked = f"COURSE_DEVICE={prefer!r}"
    elif prefer is None:
        prefer = default
        asked = f"get_device(default={prefer!r})"
    if prefer is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    on_cpu = ("unset COURSE_DEVICE (or set COURSE_DEVICE=cpu)" if asked.startswith("COURSE_DEVICE")
              else "call get_device() without prefer")
    name = str(prefer).strip().lower()  # COURSE_DEVICE=CPU means the CPU
    kind, _, index = name.partition(":")
    if kind not in _VALID_PREFER or (index and not index.isdigit()):
        raise ValueError(f"{asked} is not a device: use one of {_VALID_PREFER} (a GPU may carry an index, "
                         "e.g. cuda:1), or leave it unset for the automatic choice.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"A CUDA GPU was asked for ({asked}), but torch sees none "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}). "
            "Check `nvidia-smi`, install a CUDA build of torch (see README, 'Getting a CPU-only or CUDA build'), "
            f"or {on_cpu} to run on the CPU."
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise RuntimeError(f"{asked}: torch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0. "
                           "Name one of them, or use plain 'cuda'.")
    if kind == "mps" and not _mps_available():
        raise RuntimeError(
            f"An Apple GPU was asked for ({asked}), but torch.backends.mps is not available. "
            f"Use macOS 12.3+ on Apple silicon with a recent torch, or {on_cpu}."
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy, torch (CPU and all GPUs) and Pyro if it is installed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import pyro
    except ImportError:  # Pyro is only needed by notebook 04
        return
    pyro.set_rng_seed(seed)


_FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                "off": False, "": False}


def env_flag(name: str, meaning: str) -> bool:
    """The on/off environment variable ``name`` (1/true/yes/on or 0/false/no/off/unset). Any other value is an
    error that says which values mean what: a typo must not silently pick the other behaviour."""
    value = os.environ.get(name, "")
    try:
        return _FLAG_VALUES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{name}={value!r} is not understood: set {name}=1 {meaning}, or 0 (or leave it unset) "
                         "for the default.") from None


def is_quick() -> bool:
    """True when the course runs in quick mode (COURSE_QUICK=1, as set by the tests); unset or 0: full mode.

    Any other value (COURSE_QUICK=2, =quick...) is an error that says which values mean what: a typo must not
    silently run the full mode."""
    value = os.environ.get("COURSE_QUICK", "")
    if value.strip().lower() not in _FLAG_VALUES:
        raise ValueError(f"COURSE_QUICK={value!r} is not a mode: set COURSE_QUICK=1 for quick mode, or 0 (or leave "
                         "it unset) for full mode.")
    return env_flag("COURSE_QUICK", "for quick mode")


def scaled(full: T, quick: T) -> T:
    """Pick the full-mode value, or the quick-mode value when COURSE_QUICK=1.

    The one way a notebook changes sizes between modes: ``EPOCHS = scaled(full=60, quick=1)``.
    """
    return quick if is_quick() else full


def sized(*, gpu: T, cpu: T, quick: T, device: torch.device | str | None = None) -> T:
    """Like ``scaled``, with full mode split by device class: ``gpu`` on a CUDA device, ``cpu`` elsewhere.

    ``EPOCHS = sized(gpu=30, cpu=5, quick=1)``; ``device`` defaults to ``get_device()``.
    """
    if is_quick():
        return quick
    device = torch.device(device) if device is not None else get_device()
    return gpu if device.type == "cuda" else cpu


def has_float64(device: torch.device | str) -> bool:
    """False for Apple GPUs (``mps``), which have no float64 ("Cannot convert a MPS Tensor to float64")."""
    return torch.device(device).type != "mps"


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64: on its own device where that device has float64, else on the CPU.

    For one-off computations whose precision matters more than where they run (a log-determinant, a
    mixture density, a Cholesky factor); a per-step running sum should stay on its device instead.
    """
    return (t if has_float64(t.device) else t.cpu()).double()


def device_label(device: torch.device | str) -> str:
    """The GPU's model, or the CPU's architecture, cores and torch threads (``describe`` prints it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return device.type


def describe(device: torch.device | None = None) -> str:
    """One line naming the mode, the device and the torch version, for Setup cells."""
    device = device or get_device()
    mode = "quick" if is_quick() else "full"
    return f"mode={mode} device={device} ({device_label(device)}) torch={torch.__version__}"
