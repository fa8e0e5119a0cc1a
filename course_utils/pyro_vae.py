"""A course VAE as a Pyro model and guide, beside its hand-written twin (notebook 04).

    pyro.clear_param_store()
    vae = PyroVAE(MLPVAE(z_dim=20))                  # the networks stay plain torch modules
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceMeanField_ELBO())
    svi.step(x)                                       # x: binary images [B, 1, 28, 28]

``PyroVAE`` wraps any network with ``encode(x, *context) -> (z_loc, z_logvar)`` and
``decode(z, *context)`` (``course_utils.models.MLPVAE``, ``ConvVAE``, or a conditional net that
takes a label as context). ``neg_elbo`` (``course_utils.losses.neg_elbo``, imported here) is the same
objective written by hand; at identical parameters and identical noise the two agree to float precision
(tests/test_pyro_vae.py). How long a step takes each way is measured in ``benchmarks/pyro_steps.py``.

References: Kingma & Welling 2014 (the VAE); Bingham et al. 2019 (Pyro); Pyro's
``examples/vae/vae.py`` for the model/guide layout.
"""
from __future__ import annotations

from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .losses import neg_elbo  # noqa: F401  (the hand-written twin of PyroVAE's objective, one definition)

Likelihood = Callable[[torch.Tensor], dist.Distribution]


def bernoulli_likelihood(x_logits: torch.Tensor) -> dist.Distribution:
    """p(x|z) per pixel from the decoder's logits: the course's likelihood for binary images."""
    return dist.Bernoulli(logits=x_logits)


def _latent_size(net: nn.Module) -> int:
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
        self.z_dim = z_dim or _latent_size(net)

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
    ``course_utils.losses.iw_log_likelihood(nll=...)`` takes: one definition serves both."""
    def nll(x_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -likelihood(x_out).log_prob(x).reshape(x.shape[0], -1).sum(1)  # [B, C, H, W] -> [B]
    return nll
