"""Latent-space diagnostics: is the VAE converging, and which dimensions carry information?

Notebook 05 teaches these; ``course_utils.train.fit`` records them every epoch through
``LatentStats``. All functions are pure functions of ``z_loc, z_logvar`` (``[N, D]``, the
parameters of q(z|x) for N data points) or of the running sums ``LatentStats`` collects
during training (so ``fit`` needs no second pass over the data).

- mean mu / mean sigma: the two numbers many tutorials watch (notebook 05 shows why they
  are not enough: sigma -> 1 for a data point means that dimension says nothing about it);
- per-dimension KL to the prior: a dimension with KL ~ 0 for every x carries no information;
- active units (Burda, Grosse & Salakhutdinov 2015, section 5.2): dimension u is active
  when Cov_x(E_q[z_u|x]) > 0.01;
- aggregate-posterior moments: q(z) = E_x q(z|x) has per-dimension mean E_x[mu] and
  variance Var_x(mu) + E_x[sigma^2] (law of total variance); the prior asks for 0 and 1;
- ``aggregate_gaussian_kl``: KL(N(m, S) || N(0, I)) for the Gaussian with the aggregate
  posterior's mean and full covariance, a lower bound on KL(q(z) || p(z));
- ``aggregate_kl``: KL(q(z) || p(z)) itself, by Monte Carlo with the exact mixture density;
- ``draw_dashboard`` / ``LiveDashboard``: the training curves as one figure, redrawn live
  by ``fit(..., on_epoch_end=LiveDashboard())``.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from .data import map_batches
from .losses import log_normal_diag
from . import runtime  # runtime.has_float64 is looked up at call time: a test stands in for a device without float64
from .runtime import as_float64

if TYPE_CHECKING:  # matplotlib is imported only when a dashboard is drawn (train.py imports this module)
    import matplotlib.pyplot as plt

ACTIVE_THRESHOLD = 0.01


def _check_latents(z_loc: torch.Tensor, z_logvar: torch.Tensor | None = None) -> None:
    if z_loc.dim() != 2:
        raise ValueError(f"expected z_loc of shape [N, D] (one row per data point), got {tuple(z_loc.shape)}; "
                         "flatten extra dimensions with z_loc.flatten(1).")
    if z_logvar is not None and z_logvar.shape != z_loc.shape:
        raise ValueError(f"z_loc {tuple(z_loc.shape)} and z_logvar {tuple(z_logvar.shape)} must have the same shape.")


def mean_mu_sigma(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> tuple[float, float]:
    """(mean of mu, mean of sigma = exp(logvar / 2)) over all examples and dimensions."""
    _check_latents(z_loc, z_logvar)
    return z_loc.mean().item(), torch.exp(0.5 * z_logvar).mean().item()


def kl_per_dim(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> torch.Tensor:
    """Mean over examples of KL(q(z_u|x) || N(0, 1)) for each dimension u, shape ``[D]`` (nats).

    Kingma & Welling 2014, Appendix B, one dimension at a time: 1/2 (sigma^2 + mu^2 - 1 - log sigma^2).
    Summed over u it is the KL term of the ELBO averaged over the data.
    """
    _check_latents(z_loc, z_logvar)
    return (0.5 * (torch.exp(z_logvar) + z_loc ** 2 - 1.0 - z_logvar)).mean(dim=0)


def active_units(z_loc: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> torch.Tensor:
    """Boolean ``[D]``: Var_x(E_q[z_u|x]) > threshold (Burda et al. 2015, section 5.2).

    E_q[z_u|x] is mu_u(x), so the test asks whether the encoder's mean moves with x.
    """
    _check_latents(z_loc)
    return z_loc.var(dim=0, unbiased=False) > threshold


def aggregate_moments(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and variance of the aggregate posterior q(z) = E_x q(z|x), each ``[D]``.

    By the law of total variance: Var[z_u] = Var_x(mu_u) + E_x[sigma_u^2].
    """
    _check_latents(z_loc, z_logvar)
    mean = z_loc.mean(dim=0)
    var = z_loc.var(dim=0, unbiased=False) + torch.exp(z_logvar).mean(dim=0)
    return mean, var


def aggregate_gaussian_kl(z_loc: torch.Tensor, z_logvar: torch.Tensor) -> float:
    """KL(N(m, S) || N(0, I)) in nats, where m and S are the aggregate posterior's mean and covariance.

    S = Cov_x(mu) + diag(E_x[sigma^2]) (law of total covariance). Because log N(z; 0, I) is
    quadratic in z, KL(q(z) || p(z)) = KL(q(z) || N(m, S)) + KL(N(m, S) || p(z)): this number is a
    lower bound on the aggregate posterior's mismatch with the prior, and it sees correlations
    between dimensions that the per-dimension moments miss. Computed in float64.
    """
    _check_latents(z_loc, z_logvar)
    mu, var = as_float64(z_loc), torch.exp(as_float64(z_logvar))
    mean = mu.mean(dim=0)
    centered = mu - mean
    cov = centered.T @ centered / mu.shape[0] + torch.diag(var.mean(dim=0))  # [D, D]
    logdet = torch.linalg.slogdet(cov)[1]
    return float(0.5 * (torch.trace(cov) + mean @ mean - mu.shape[1] - logdet))


def _log_aggregate_density(z: torch.Tensor, z_loc: torch.Tensor, z_logvar: torch.Tensor,
                          chunk: int = 512) -> torch.Tensor:
    """log q(z) ``[M]`` for points z ``[M, D]`` under the finite mixture q(z) = 1/N sum_n N(z; mu_n, diag sigma_n^2).

    The exact density of the aggregate posterior of N data points, in float64. The Gaussian exponent is
    expanded into two matrix products, so M x N pairs cost O(M N D) without an [M, N, D] tensor.
    """
    _check_latents(z_loc, z_logvar)
    if z.dim() != 2 or z.shape[1] != z_loc.shape[1]:
        raise ValueError(f"expected points z of shape [M, {z_loc.shape[1]}], got {tuple(z.shape)}.")
    z, z_loc, z_logvar = as_float64(z), as_float64(z_loc), as_float64(z_logvar)
    inv_var = torch.exp(-z_logvar)                                                      # [N, D]
    const = -0.5 * ((z_loc ** 2 * inv_var).sum(1) + z_logvar.sum(1) + z_loc.shape[1] * math.log(2 * math.pi))  # [N]
    out = []
    for start in range(0, z.shape[0], chunk):
        zc = z[start:start + chunk]                                                     # [m, D]
        exponent = -0.5 * (zc ** 2) @ inv_var.T + zc @ (z_loc * inv_var).T + const     # [m, N]
        out.append(torch.logsumexp(exponent, dim=1) - math.log(z_loc.shape[0]))
    return torch.cat(out)


def aggregate_kl(z_loc: torch.Tensor, z_logvar: torch.Tensor, n_samples: int = 2000,
                 generator: torch.Generator | None = None) -> float:
    """Monte Carlo estimate of KL(q(z) || N(0, I)) in nats for the aggregate posterior of the N data points.

    z is drawn from q(z) (a random data point, then z ~ q(z|x)), and log q(z) is the exact mixture
    density (``_log_aggregate_density``), so the estimate is unbiased. With E_x KL(q(z|x) || p(z)) it
    completes the "ELBO surgery" identity (Hoffman & Johnson 2016):
    E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)), where I(x; z) <= log N for N data points.
    ``generator`` (on any device; the draw happens there) makes the draw reproducible.
    """
    _check_latents(z_loc, z_logvar)
    n, d = z_loc.shape
    on = generator.device if generator is not None else torch.device("cpu")  # a CUDA generator draws on CUDA
    pick = torch.randint(0, n, (n_samples,), generator=generator, device=on).to(z_loc.device)
    eps = torch.randn(n_samples, d, generator=generator, device=on).to(z_loc.device)
    z = z_loc[pick] + torch.exp(0.5 * z_logvar[pick]) * eps                            # [n_samples, D]
    log_p = log_normal_diag(as_float64(z), 0.0, 0.0)                                       # log N(z; 0, I)
    return float((_log_aggregate_density(z, z_loc, z_logvar) - log_p).mean())


def encode_dataset(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_loc, z_logvar) ``[N, D]`` of ``model.encode`` over ``x`` in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    try:
        return map_batches(lambda xb: tuple(t.flatten(1) for t in model.encode(xb)), x, batch_size)
    finally:
        model.train(was_training)


class LatentStats:
    """Running sums over batches of (z_loc, z_logvar) ``[B, D]``, kept on the device.

    The sums are float64, or float32 on a device without float64 (Apple GPUs): moving each batch
    to the CPU instead would cost a host sync every step. ``summary()`` gives the same numbers as
    the functions above applied to the whole data set at once, from one pass and one host sync.
    """

    def __init__(self):
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, z_loc: torch.Tensor, z_logvar: torch.Tensor) -> None:
        dtype = torch.float64 if runtime.has_float64(z_loc.device) else torch.float32
        z_loc, z_logvar = z_loc.detach().flatten(1).to(dtype), z_logvar.detach().flatten(1).to(dtype)
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


# --- the training dashboard -------------------------------------------------------------------

DASHBOARD_PANELS = ("loss", "kl", "active_units", "mean_mu", "mean_sigma", "kl_d")
_PANEL_TITLES = {"loss": "loss (nats per image)", "kl": "KL (nats per image)", "active_units": "active units",
                 "mean_mu": "mean mu", "mean_sigma": "mean sigma"}
_REFERENCE_LINE = {"mean_mu": 0.0, "mean_sigma": 1.0}


def _dashboard_size(n_panels: int) -> tuple[float, float]:
    ncols = min(3, n_panels)
    return 3.8 * ncols, 2.8 * math.ceil(n_panels / ncols)


def draw_dashboard(history: dict, fig: "plt.Figure | None" = None, title: str | None = None,
                   panels: Sequence[str] = DASHBOARD_PANELS) -> "plt.Figure":
    """The latent diagnostics of a ``fit`` history as one figure (train solid, test dashed).

    Each panel is a per-epoch curve of ``train_<name>`` / ``test_<name>``, except ``kl_d``:
    the last epoch's per-dimension KL (test if present), sorted: a dimension near 0 nats is
    unused. Pass ``fig`` to redraw into an existing figure.
    """
    import matplotlib.pyplot as plt

    from .plots import _finish, history_panel  # matplotlib is imported only when a dashboard is drawn

    if fig is None:
        fig = plt.figure(figsize=_dashboard_size(len(panels)))
    fig.clear()
    ncols = min(3, len(panels))
    axes = fig.subplots(math.ceil(len(panels) / ncols), ncols, squeeze=False).flat
    for ax, name in zip(axes, panels):
        if name == "kl_d":
            split = "test" if history.get("test_kl_d") else "train"
            rows = history.get(f"{split}_kl_d") or []
            if rows:
                kl_d = sorted(rows[-1], reverse=True)
                ax.bar(range(len(kl_d)), kl_d, width=1.0, color="tab:purple")
            ax.set_xlabel("dimension, sorted"), ax.set_title(f"KL per dimension ({split}, last epoch)")
            ax.grid(alpha=0.3, axis="y")
            continue
        history_panel(ax, history, name, title=_PANEL_TITLES.get(name, name))
        if name in _REFERENCE_LINE:  # what the prior asks for
            ax.axhline(_REFERENCE_LINE[name], color="gray", lw=0.8, ls=":")
    first = next((ax for ax in fig.axes if ax.get_legend_handles_labels()[0]), None)
    return _finish(fig, title, legend_from=first)


class LiveDashboard:
    """An ``on_epoch_end`` callback for ``fit`` that redraws ``draw_dashboard`` in place.

        dashboard = LiveDashboard(title="z=20")
        history = fit(model, loss_fn, x_train, test_data=x_test, epochs=10, on_epoch_end=dashboard)

    In Jupyter the figure is shown once through an IPython display handle and updated after every
    ``every`` epochs (no new output per epoch, no widget state needed, so it also works headless and
    in a saved notebook). Outside IPython it prints one line per update instead.
    """

    def __init__(self, title: str | None = None, every: int = 1, panels: Sequence[str] = DASHBOARD_PANELS):
        if every < 1:
            raise ValueError(f"LiveDashboard(every={every}): redraw every 1 or more epochs.")
        self.title, self.every, self.panels = title, every, tuple(panels)
        self.fig: "plt.Figure | None" = None
        self.handle = None
        self.updates = 0

    def __call__(self, history: dict) -> None:
        epoch = history["epoch"][-1] if history.get("epoch") else 0
        if epoch % self.every == 0 or history.get("loaded_from_cache"):  # a loaded run is drawn whatever its length
            self.update(history)

    def update(self, history: dict) -> None:
        """Redraw now, whatever the epoch (``fit`` calls the dashboard once for a run loaded from its cache)."""
        import matplotlib.pyplot as plt

        if self.fig is None:
            self.fig = plt.figure(figsize=_dashboard_size(len(self.panels)))
            plt.close(self.fig)  # the display handle shows it; keep the inline backend from showing it again
        draw_dashboard(history, fig=self.fig, title=self.title, panels=self.panels)
        self.updates += 1
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython ships with Jupyter
            get_ipython = None
        if get_ipython is None or get_ipython() is None:
            last = {k: history[f"test_{k}"][-1] for k in ("loss", "kl", "active_units") if history.get(f"test_{k}")}
            print(f"epoch {(history.get('epoch') or [0])[-1]}: " + ", ".join(f"{k}={v:.4g}" for k, v in last.items()))
            return
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)
