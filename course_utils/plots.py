"""Plot helpers: each takes tensors or a history and returns a matplotlib Figure.

Nothing is written to disk; a notebook shows the figure (or saves it, if it wants to).
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch


def _to_numpy_images(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] or [N, H, W] tensor -> [N, H, W] (gray) or [N, H, W, 3] array in [0, 1]."""
    x = images.detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1|3, H, W], got {tuple(images.shape)}.")
    x = x.clamp(0, 1)
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, nrow: int | None = None, title: str | None = None,
               row_labels: Sequence[str] | None = None, scale: float = 1.0) -> plt.Figure:
    """Images ``[N, C, H, W]`` (values in [0, 1]) in a grid of ``nrow`` columns."""
    arr = _to_numpy_images(images)
    n = len(arr)
    ncol = nrow or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrows, ncol, figsize=(scale * ncol * 0.9, scale * nrows * 0.9 + (0.4 if title else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i < n:
            ax.imshow(arr[i], cmap="gray" if arr.ndim == 3 else None, vmin=0, vmax=1)
    if row_labels:
        for r, label in enumerate(row_labels[:nrows]):
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center")
    title_inches = 0.4 if title else 0.0
    if title:
        fig.suptitle(title)
    # keep a band of fixed height for the title, however many rows the grid has
    fig.tight_layout(pad=0.2, h_pad=0.6, rect=(0, 0, 1, 1 - title_inches / fig.get_figheight()))  # rows apart
    return fig


def history_panel(ax: plt.Axes, history: dict, metric: str, title: str | None = None) -> None:
    """Draw one metric of a ``fit`` history on ``ax``: per-epoch train (solid) and test (dashed) curves, with
    integer epoch ticks. ``training_curves`` and ``diagnostics.draw_dashboard`` draw their panels with it."""
    epochs = history.get("epoch") or list(range(1, len(history.get(f"train_{metric}", [])) + 1))
    for split, style in (("train", "-"), ("test", "--")):
        values = history.get(f"{split}_{metric}")
        if values:
            ax.plot(epochs[:len(values)], values, style, marker="o", ms=3, label=split)
    ax.set_xlabel("epoch"), ax.set_title(title or metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def training_curves(history: dict, metrics: Sequence[str] = ("loss",), title: str | None = None,
                    logy: bool = False) -> plt.Figure:
    """Per-epoch train (solid) and test (dashed) curves of each metric, one panel per metric."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        history_panel(ax, history, metric)
        if logy:
            ax.set_yscale("log")
    return _finish(fig, title, legend_from=axes[0, 0])


def _finish(fig: plt.Figure, title: str | None = None, legend_from: plt.Axes | None = None) -> plt.Figure:
    """The figure with its title (if any) and its panels laid out; what every multi-panel helper returns.

    ``legend_from``: one legend for the whole figure, with that panel's entries, in a band below the panels
    (outside the data)."""
    band = 0.0
    handles, labels = legend_from.get_legend_handles_labels() if legend_from is not None else ([], [])
    if handles:
        band = min(0.3, 0.4 / fig.get_figheight())  # 0.4 inch for the legend
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, band, 1, 1))
    return fig


def latent_scatter(z: torch.Tensor, labels: torch.Tensor | None = None, title: str | None = None,
                   ax: plt.Axes | None = None, s: float = 3.0, alpha: float = 0.6) -> plt.Figure:
    """2-D latent codes ``[N, 2]`` (or 3-D, ``[N, 3]``) coloured by ``labels`` ``[N]``.

    The axes are labelled as in the notebooks' prose, $z_1$, $z_2$ (, $z_3$): code column ``z[:, 0]`` is $z_1$.
    """
    z = z.detach().float().cpu().numpy()
    if z.ndim != 2 or z.shape[1] not in (2, 3):
        raise ValueError(f"latent_scatter expects [N, 2] or [N, 3] codes, got {z.shape}; project higher dimensions first.")
    c = None if labels is None else labels.detach().cpu().numpy()
    three_d = z.shape[1] == 3
    if ax is None:
        fig = plt.figure(figsize=(5, 4.5))
        ax = fig.add_subplot(projection="3d" if three_d else None)
    else:
        fig = ax.figure
    points = ax.scatter(*z.T, c=c, cmap="tab10" if c is not None else None, s=s, alpha=alpha)
    if c is not None:
        classes = np.unique(c)
        handles = [plt.Line2D([], [], marker="o", ls="", color=points.cmap(points.norm(k))) for k in classes]
        ax.legend(handles, [str(k) for k in classes], fontsize=7, markerscale=1, loc="best", ncol=2)
    ax.set_xlabel("$z_1$"), ax.set_ylabel("$z_2$")
    if three_d:
        ax.set_zlabel("$z_3$")
    else:
        ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    return fig


def manifold_grid(decode_images, n: int = 15, z_range: tuple[float, float] = (0.03, 0.97), title: str | None = None,
                  device: torch.device | str = "cpu") -> plt.Figure:
    """Decode a grid of 2-D latent points taken at the prior's quantiles (Kingma & Welling, Fig. 4).

    ``decode_images(z [M, 2]) -> images [M, C, H, W]`` in [0, 1] (e.g. sigmoid of the logits).
    """
    q = torch.linspace(*z_range, n)
    values = torch.distributions.Normal(0.0, 1.0).icdf(q)
    zy, zx = torch.meshgrid(values.flip(0), values, indexing="ij")  # top row = large z[1]
    z = torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1).to(device)  # [n*n, 2]
    with torch.no_grad():
        images = decode_images(z)
    return image_grid(images, nrow=n, title=title, scale=0.6)
