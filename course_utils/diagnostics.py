"""Latent-space diagnostics: is the VAE converging, and which dimensions carry information?

All functions are pure functions of ``z_loc, z_logvar`` (``[N, D]``) or of the running
sums that ``LatentStats`` collects during training (so ``fit`` needs no second pass).

- mean mu / mean sigma: the two numbers many tutorials watch (notebook 05 explains why
  they are not enough);
- per-dimension KL to the prior: a dimension with KL ~ 0 for every x carries no information;
- active units (Burda et al. 2015): dimension u is active when Cov_x(E_q[z_u|x]) > 0.01;
- aggregate-posterior moments: q(z) = E_x q(z|x) has per-dimension mean E_x[mu] and
  variance Var_x(mu) + E_x[sigma^2]; the prior asks for 0 and 1.
"""
from __future__ import annotations

import torch

ACTIVE_THRESHOLD = 0.01


def mean_mu_sigma(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> tuple[float, float]:
    """(mean of mu, mean of sigma = exp(logvar / 2)) over all examples and dimensions."""
    return z_loc.mean().item(), torch.exp(0.5 * z_logvar).mean().item()


def kl_per_dim(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> torch.Tensor:
    """Mean over examples of KL(q(z_u|x) || N(0, 1)) for each dimension u, shape ``[D]``."""
    return (0.5 * (torch.exp(z_logvar) + z_loc ** 2 - 1.0 - z_logvar)).mean(dim=0)


def active_units(z_loc: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> torch.Tensor:
    """Boolean ``[D]``: Var_x(E_q[z_u|x]) > threshold (Burda et al. 2015, section 5.2)."""
    return z_loc.var(dim=0, unbiased=False) > threshold


def aggregate_moments(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and variance of the aggregate posterior q(z) = E_x q(z|x), each ``[D]``.

    By the law of total variance: Var[z_u] = Var_x(mu_u) + E_x[sigma_u^2].
    """
    mean = z_loc.mean(dim=0)
    var = z_loc.var(dim=0, unbiased=False) + torch.exp(z_logvar).mean(dim=0)
    return mean, var


class LatentStats:
    """Running sums over batches of (z_loc, z_logvar) ``[B, D]``, kept on the device.

    ``summary()`` gives the same numbers as the functions above applied to the whole
    data set at once, from one pass and one host sync.
    """

    def __init__(self):
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, z_loc: torch.Tensor, z_logvar: torch.Tensor) -> None:
        z_loc, z_logvar = z_loc.detach().flatten(1).double(), z_logvar.detach().flatten(1).double()
        var = torch.exp(z_logvar)
        parts = {
            "mu": z_loc.sum(0), "mu2": (z_loc ** 2).sum(0), "var": var.sum(0),
            "sigma": torch.exp(0.5 * z_logvar).sum(0),
            "kl": (0.5 * (var + z_loc ** 2 - 1.0 - z_logvar)).sum(0),
        }
        for key, value in parts.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.n += z_loc.shape[0]

    def summary(self) -> dict[str, object]:
        """Scalars ``mean_mu``, ``mean_sigma``, ``kl``, ``active_units``; lists per dimension
        ``mu_mean_d``, ``mu_var_d`` (Cov_x of E_q[z|x]), ``agg_var_d``, ``kl_d``."""
        if self.n == 0:
            return {}
        s = {k: (v / self.n).cpu() for k, v in self.sums.items()}
        mu_var = (s["mu2"] - s["mu"] ** 2).clamp_min(0.0)
        return {
            "mean_mu": s["mu"].mean().item(),
            "mean_sigma": s["sigma"].mean().item(),
            "kl": s["kl"].sum().item(),
            "active_units": int((mu_var > ACTIVE_THRESHOLD).sum().item()),
            "mu_mean_d": s["mu"].tolist(),
            "mu_var_d": mu_var.tolist(),
            "agg_var_d": (mu_var + s["var"]).tolist(),
            "kl_d": s["kl"].tolist(),
        }
