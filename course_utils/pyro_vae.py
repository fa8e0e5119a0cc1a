"""A course VAE as a Pyro model and guide, its hand-written twin, and a step timer (notebook 04).

    pyro.clear_param_store()
    vae = PyroVAE(MLPVAE(z_dim=20))                  # the networks stay plain torch modules
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceMeanField_ELBO())
    svi.step(x)                                       # x: binary images [B, 1, 28, 28]

``PyroVAE`` wraps any network with ``encode(x, *context) -> (z_loc, z_logvar)`` and
``decode(z, *context)`` (``course_utils.models.MLPVAE``, ``ConvVAE``, or a conditional net that
takes a label as context). ``neg_elbo`` is the same objective written by hand; at identical
parameters and identical noise the two agree to float precision (tests/test_pyro_vae.py).

``step_time_table`` times one optimization step of each way of training (hand-written, SVI with
each ELBO, JIT, Pyro's loss with torch's optimizer) on the device in use;
``python -m course_utils.pyro_vae`` prints that table in markdown.

References: Kingma & Welling 2014 (the VAE); Bingham et al. 2019 (Pyro); Pyro's
``examples/vae/vae.py`` for the model/guide layout.
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from .losses import bernoulli_nll, kl_diag_normal, log_normal_diag
from .runtime import time_steps

Likelihood = Callable[[torch.Tensor], dist.Distribution]


def bernoulli_likelihood(x_logits: torch.Tensor) -> dist.Distribution:
    """p(x|z) per pixel from the decoder's logits: the course's likelihood for binary images."""
    return dist.Bernoulli(logits=x_logits)


def latent_size(net: nn.Module) -> int:
    """The latent size of a network: its ``z_dim`` attribute (every course model has one)."""
    z_dim = getattr(net, "z_dim", None)
    if not isinstance(z_dim, int):
        raise TypeError(f"cannot tell the latent size of {type(net).__name__}: give it an integer `z_dim` "
                        "attribute or pass z_dim=... to PyroVAE.")
    return z_dim


class PyroVAE:
    """A network with ``encode``/``decode`` seen as a Pyro ``model`` (prior and likelihood) and ``guide`` (q).

    - ``likelihood(decoder output)`` returns the per-pixel distribution of x given z; the model makes
      the pixel dimensions one event with ``.to_event``. Another likelihood is one argument, e.g.
      ``likelihood=lambda x_logits: dist.ContinuousBernoulli(logits=x_logits)``.
    - ``mean_over_batch=True`` scales every site by 1/B, so Pyro's loss is the per-image mean negative
      ELBO, the number the hand-written ``neg_elbo`` reports (unscaled, Pyro sums over the batch).
    - ``*context`` (e.g. a one-hot digit label) goes on to ``encode`` and ``decode``: a conditional VAE.
    - ``name`` prefixes the parameters in Pyro's param store. Call ``pyro.clear_param_store()`` before
      wrapping a new network under a name already used. Otherwise ``pyro.module`` (with its default
      ``update_module_params=False``) returns the old network's tensors and SVI hands those to its
      optimizer, while the loss is computed with the new network's own parameters: the old tensors
      receive no gradient and stay exactly as they are, and the new network's gradients pile up, never
      applied and never zeroed. Nothing learns. If that happened, clear the store *and* zero the
      network's gradients (``net.zero_grad()``), or the first step applies all the stale ones at once.
    """

    def __init__(self, net: nn.Module, *, likelihood: Likelihood = bernoulli_likelihood, name: str = "vae",
                 mean_over_batch: bool = True, z_dim: int | None = None):
        for method in ("encode", "decode"):
            if not callable(getattr(net, method, None)):
                raise TypeError(f"PyroVAE needs a network with encode(x) and decode(z) methods (like "
                                f"course_utils.models.MLPVAE); {type(net).__name__} has no {method}().")
        self.net, self.likelihood, self.name = net, likelihood, name
        self.mean_over_batch = mean_over_batch
        self.z_dim = z_dim or latent_size(net)

    def _scale(self, x: torch.Tensor) -> float:
        return 1.0 / x.shape[0] if self.mean_over_batch else 1.0

    def model(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        """p(z) p(x|z): z ~ N(0, I) for each image, then the observed x ~ likelihood(decode(z))."""
        pyro.module(self.name, self.net)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self._scale(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))  # [B, D]
            x_out = self.net.decode(z, *context)  # [B, C, H, W]
            pyro.sample("x", self.likelihood(x_out).to_event(x.dim() - 1), obs=x)

    def guide(self, x: torch.Tensor, *context: torch.Tensor) -> None:
        """q(z|x) = N(z_loc, diag exp(z_logvar)) from the encoder: the amortized posterior."""
        pyro.module(self.name, self.net)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self._scale(x)):
            z_loc, z_logvar = self.net.encode(x, *context)  # [B, D] each
            pyro.sample("z", dist.Normal(z_loc, torch.exp(0.5 * z_logvar)).to_event(1))


def nll_from(likelihood: Likelihood) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Turn a Pyro likelihood into ``-log p(x|z)`` per example ``[B]``, the form
    ``course_utils.losses.iw_log_likelihood(likelihood=...)`` takes: one definition serves both."""
    def nll(x_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -likelihood(x_out).log_prob(x).reshape(x.shape[0], -1).sum(1)  # [B, C, H, W] -> [B]
    return nll


def neg_elbo(net: nn.Module, x: torch.Tensor, *context: torch.Tensor, analytic_kl: bool = True,
             validate: bool | None = None) -> dict:
    """The hand-written negative ELBO of a Bernoulli VAE, mean over the batch (``fit``'s loss_fn form).

    recon = -log p(x|z) at one reparameterized z; kl = KL(q(z|x) || N(0, I)) in closed form
    (``analytic_kl=True``, what ``TraceMeanField_ELBO`` computes) or its one-sample Monte Carlo
    estimate log q(z|x) - log p(z) (what ``Trace_ELBO`` computes). Draws one [B, D] normal, as
    Pyro's guide does, so the same seed gives both the same z. ``validate``: ``bernoulli_nll``'s range check
    of x (default: ``losses.set_validation``'s setting; on a GPU the check is a host sync).
    """
    z_loc, z_logvar = net.encode(x, *context)  # [B, D] each
    z = z_loc + torch.exp(0.5 * z_logvar) * torch.randn_like(z_loc)
    recon = bernoulli_nll(net.decode(z, *context), x, validate=validate)  # [B]
    if analytic_kl:
        kl = kl_diag_normal(z_loc, z_logvar)
    else:
        kl = log_normal_diag(z, z_loc, z_logvar) - log_normal_diag(z, 0.0, 0.0)
    loss = (recon + kl).mean()
    return {"loss": loss, "recon": recon.mean(), "kl": kl.mean(), "z_loc": z_loc, "z_logvar": z_logvar}


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


# ----------------------------------------------------------------------------------------
# Time per optimization step
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str                   # the row's label
    elbo: type | None = None    # a Pyro ELBO class; None for the hand-written loss
    svi: bool = True            # Pyro: SVI.step with pyro.optim.Adam (returns a float: a host sync per step)
    #                             False: elbo.differentiable_loss + torch.optim.Adam (Pyro's loss still reads
    #                             its value back from the device, except the JIT loss compiled once)
    sync: bool = False          # hand-written: read float(loss) every step, as SVI.step does
    validate: bool = True       # Pyro's argument and support checks, or the hand-written loss's range check of
    #                             the data (each check reads from the device: a host sync on a GPU)


VARIANTS = (
    Variant("hand-written (torch Adam)", validate=False),  # step_time_table checks the data once, untimed
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
            loss = neg_elbo(net, x, validate=variant.validate)["loss"]
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

    ``runtime.time_steps`` keeps the clock: the device is synchronized before it starts and after the
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
    lo, hi = torch.aminmax(x)  # checked once here, so that the timed hand-written steps can skip the check
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
    from .data import binarize, mnist_tensors
    from .models import MLPVAE
    from .runtime import describe, device_name, get_device

    parser = argparse.ArgumentParser(description="Time per step: hand-written VAE vs Pyro (notebook 04's table).")
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
