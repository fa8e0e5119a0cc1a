"""Time per optimization step: the hand-written VAE vs Pyro's ways of training it (notebook 04's comparison).

    python benchmarks/pyro_steps.py --batch-sizes 256 1024 [--device cuda]

``step_time_table`` times one step of each ``Variant`` (hand-written, SVI with each ELBO, JIT, Pyro's loss
with torch's optimizer) on the device in use; ``main`` prints the table in markdown. Also here:
``JitTraceMeanFieldOnce_ELBO``, a workaround for Pyro 1.9's JIT mean-field ELBO that reaches into Pyro's
private ``_differentiable_loss`` (pyproject bounds pyro-ppl for it). The course itself
(``course_utils.pyro_vae``) holds only the model, the guide and the likelihoods.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pyro
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from course_utils.data import binarize, mnist_tensors
from course_utils.losses import neg_elbo
from course_utils.models import MLPVAE
from course_utils.pyro_vae import PyroVAE
from course_utils.runtime import describe, get_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import device_name, time_steps  # noqa: E402  (benchmarks/timing.py)


class JitTraceMeanFieldOnce_ELBO(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that compiles once, as its documentation promises.

    In Pyro 1.9.2 ``JitTraceMeanField_ELBO.differentiable_loss`` checks for a cached
    ``_loss_and_surrogate_loss`` but stores the compiled function as ``_differentiable_loss``, so it
    traces the model and guide again (three forward passes) on every step. This subclass reuses the
    compiled function; the arithmetic is the same.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        compiled = getattr(self, "_differentiable_loss", None)
        if compiled is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return compiled(*args, **kwargs)


@dataclass(frozen=True)
class Variant:
    name: str                   # the row's label
    elbo: type | None = None    # a Pyro ELBO class; None for the hand-written loss
    svi: bool = True            # Pyro: SVI.step with pyro.optim.Adam (returns a float: a host sync per step)
    #                             False: elbo.differentiable_loss + torch.optim.Adam (Pyro's loss still reads
    #                             its value back from the device, except the JIT loss compiled once)
    sync: bool = False          # hand-written: read float(loss) every step, as SVI.step does
    validate: bool = True       # Pyro's argument and support checks (each check reads from the device: a host
    #                             sync on a GPU); the hand-written loss has none to switch off on a GPU


VARIANTS = (
    Variant("hand-written (torch Adam)", validate=False),
    Variant("hand-written + float(loss) each step", sync=True, validate=False),
    Variant("SVI + Trace_ELBO", Trace_ELBO),
    Variant("SVI + TraceMeanField_ELBO", TraceMeanField_ELBO),
    Variant("SVI + TraceMeanField_ELBO, validation off", TraceMeanField_ELBO, validate=False),
    Variant("SVI + JitTrace_ELBO", JitTrace_ELBO),
    Variant("SVI + JitTraceMeanField_ELBO (re-traces every step)", JitTraceMeanField_ELBO),
    Variant("SVI + JitTraceMeanField_ELBO, compiled once", JitTraceMeanFieldOnce_ELBO),
    Variant("TraceMeanField_ELBO + torch Adam, validation off", TraceMeanField_ELBO, svi=False,
            validate=False),
    Variant("JitTraceMeanField_ELBO compiled once + torch Adam, no sync", JitTraceMeanFieldOnce_ELBO, svi=False,
            validate=False),
)


def make_step(variant: Variant, net: nn.Module, lr: float = 1e-3, name: str = "timed") -> Callable[[torch.Tensor], None]:
    """One optimization step on a batch ``x`` for ``variant``; Pyro variants register ``net`` under ``name``."""
    if variant.elbo is None:
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)

        def step(x: torch.Tensor) -> None:
            loss = neg_elbo(net, x)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if variant.sync:
                float(loss.detach())
        return step

    vae = PyroVAE(net, name=name)
    elbo = variant.elbo(ignore_jit_warnings=True) if variant.elbo.__name__.startswith("Jit") else variant.elbo()
    if variant.svi:
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), loss=elbo)
        step = svi.step
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        model, guide = vae.model, vae.guide  # one object each: JIT caches its compiled loss by id(model)

        def step(x: torch.Tensor) -> None:
            loss = elbo.differentiable_loss(model, guide, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def checked_step(x: torch.Tensor) -> None:
        with pyro.validation_enabled(variant.validate):
            step(x)
    return checked_step


def time_per_step(step: Callable[[torch.Tensor], None], batches: Sequence[torch.Tensor], steps: int) -> float:
    """Milliseconds per call of ``step`` over ``steps`` calls, cycling over ``batches`` (all one size).

    ``timing.time_steps`` keeps the clock: the device is synchronized before it starts and after the
    last step, so work still queued on a GPU is counted. Warm up first (JIT compilation, allocator, cuDNN).
    """
    if not batches:
        raise ValueError("time_per_step needs at least one batch.")
    return 1000.0 * time_steps(step, itertools.cycle(batches), batches[0].device, steps=steps) / steps


def step_time_table(make_net: Callable[[], nn.Module], x: torch.Tensor, *, batch_sizes: Sequence[int] = (256, 1024),
                    variants: Sequence[Variant] = VARIANTS, steps: int = 50, rounds: int = 5, warmup: int = 10,
                    lr: float = 1e-3, seed: int = 0) -> list[dict]:
    """Time one step of every variant at every batch size on ``x``'s device.

    ``make_net()`` builds a fresh network on that device (every variant starts from the same weights:
    the same seed); ``x``: binary images ``[N, ...]`` with N >= the largest batch size. After
    ``warmup`` steps each, the variants take turns, ``rounds`` times ``steps`` steps, so a change in the
    machine's load hits all of them alike; each row keeps its median round. Returns rows
    ``{"variant", "batch_size", "ms_per_step", "ratio"}``, ratio = ms / the hand-written ms (the first
    variant without an ELBO) at that batch size. Pyro's param store is cleared before and after.
    """
    if x.shape[0] < max(batch_sizes):
        raise ValueError(f"x has {x.shape[0]} images; the largest batch size is {max(batch_sizes)}.")
    lo, hi = torch.aminmax(x)  # checked once here, untimed: on a GPU the timed steps check nothing
    if lo < 0 or hi > 1:
        raise ValueError(f"x must be images in [0, 1] (binarize them with course_utils.data.binarize); got values in "
                         f"[{lo.item():.3g}, {hi.item():.3g}].")
    rows = []
    for batch_size in batch_sizes:
        batches = [x[i:i + batch_size] for i in range(0, x.shape[0] - batch_size + 1, batch_size)]
        pyro.clear_param_store()
        steps_of = []
        for i, variant in enumerate(variants):
            torch.manual_seed(seed)
            step = make_step(variant, make_net(), lr, name=f"timed{i}")
            if warmup:
                time_per_step(step, batches, warmup)
            steps_of.append(step)
        times = [[time_per_step(step, batches, steps) for step in steps_of] for _ in range(rounds)]
        medians = torch.tensor(times).median(dim=0).values.tolist()  # [rounds, variants] -> [variants]
        reference = next((ms for v, ms in zip(variants, medians) if v.elbo is None), float("nan"))
        rows += [{"variant": v.name, "batch_size": batch_size, "ms_per_step": ms, "ratio": ms / reference}
                 for v, ms in zip(variants, medians)]
    pyro.clear_param_store()
    return rows


def format_table(rows: Sequence[dict], device_name: str) -> str:
    """The rows of ``step_time_table`` as a markdown table, one column per batch size."""
    sizes = sorted({r["batch_size"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    cell = {(r["variant"], r["batch_size"]): r for r in rows}
    head = "| variant | " + " | ".join(f"batch {b}: ms/step (x hand)" for b in sizes) + " |"
    lines = [f"Time per step on {device_name}", "", head, "|---|" + "---:|" * len(sizes)]
    for name in names:
        values = [f"{cell[name, b]['ms_per_step']:.2f} ({cell[name, b]['ratio']:.2f}x)" if (name, b) in cell else "-"
                  for b in sizes]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/pyro_steps.py",
                                     description="Time per step: hand-written VAE vs Pyro (notebook 04's comparison).")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each row reports its median round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (JIT compilation)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    args = parser.parse_args(argv)
    device = get_device(args.device)
    n = 4 * max(args.batch_sizes)
    x_gray, _ = mnist_tensors("train", device, limit=n)
    x = binarize(x_gray, generator=torch.Generator(device).manual_seed(0))
    rows = step_time_table(lambda: MLPVAE(z_dim=20, hidden=(400,)).to(device), x, batch_sizes=args.batch_sizes,
                           steps=args.steps, rounds=args.rounds, warmup=args.warmup)
    print(describe(device))
    print(format_table(rows, device_name(device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
