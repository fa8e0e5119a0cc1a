"""The clock of the benchmarks: wait for the device, time a number of steps, name what ran them.

Speed measurement lives here, beside the scripts that use it, not in the course (``course_utils`` teaches).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, TypeVar

import torch

from course_utils.runtime import device_label

T = TypeVar("T")


def synchronize(device: torch.device | str) -> None:
    """Wait until the device has finished its queued work (a no-op on the CPU); time GPU code only after it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_steps(step: Callable[[T], object], source: Iterator[T], device: torch.device | str, *, steps: int,
               warmup: int = 0) -> float:
    """Seconds for ``steps`` calls of ``step`` on items drawn from ``source``, after ``warmup`` untimed calls.

    The device is synchronized before the clock starts and after the last call, so work still queued
    on a GPU is counted. Drawing from ``source`` is inside the clock (an input pipeline is part of a step).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"time_steps needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}.")
    for _ in range(warmup):
        step(next(source))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(source))
    synchronize(device)
    return time.perf_counter() - start


def device_name(device: torch.device | str) -> str:
    """What a timing ran on, for tables: the GPU's model, or the CPU's architecture, cores and torch threads
    (the label ``course_utils.runtime.describe`` prints, one definition for both)."""
    return device_label(device)
