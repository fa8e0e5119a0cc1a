"""Interactive widgets: the latent explorer, and the morph between two codes (a plain figure).

Each widget is built around a plain drawing function that returns a figure, so the
same picture appears in a static page, in a test, and behind the sliders in JupyterLab.
"""
from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import torch

from .plots import image_grid

def _show(fig: plt.Figure) -> None:
    """Display a figure in the current output (works with any matplotlib backend, Agg included) and free it."""
    from IPython.display import display
    display(fig)
    plt.close(fig)


DecodeFn = Callable[[torch.Tensor], torch.Tensor]  # z [M, D] -> images [M, C, H, W] in [0, 1]


@torch.no_grad()
def draw_latent(decode_images: DecodeFn, z: Sequence[float], device: torch.device | str = "cpu",
                title: str | None = None) -> plt.Figure:
    """Decode one latent vector ``z`` (length D) and draw the image."""
    z_t = torch.as_tensor(list(z), dtype=torch.float32, device=device).unsqueeze(0)  # [1, D]
    image = decode_images(z_t)
    fig = image_grid(image, nrow=1, scale=3.0)
    fig.suptitle(title or "z = [" + ", ".join(f"{v:+.2f}" for v in z) + "]", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # leave room for the title above the image
    return fig


@torch.no_grad()
def draw_morph(decode_images: DecodeFn, z_start: torch.Tensor, z_end: torch.Tensor, steps: int = 10,
               title: str | None = None) -> plt.Figure:
    """Decode ``steps`` evenly spaced points on the line from ``z_start`` to ``z_end`` (each ``[D]``)."""
    t = torch.linspace(0, 1, steps, device=z_start.device).unsqueeze(1)  # [steps, 1]
    z = (1 - t) * z_start.unsqueeze(0) + t * z_end.unsqueeze(0)  # [steps, D]
    return image_grid(decode_images(z), nrow=steps, title=title, scale=1.2)


def latent_explorer(decode_images: DecodeFn, z_dim: int, device: torch.device | str = "cpu",
                    n_sliders: int | None = None, limit: float = 3.0):
    """Sliders over the first ``n_sliders`` latent dimensions (the rest stay 0), decoded live.

    Returns the ipywidgets box; display it in a notebook. Moving a slider redraws the
    image from ``draw_latent`` in the output area below the sliders.
    """
    import ipywidgets as widgets

    n_sliders = min(z_dim, n_sliders or z_dim)
    sliders = [widgets.FloatSlider(value=0.0, min=-limit, max=limit, step=0.1, description=f"z[{i}]",
                                   continuous_update=False) for i in range(n_sliders)]
    output = widgets.Output()

    def redraw(_change=None):
        z = [s.value for s in sliders] + [0.0] * (z_dim - n_sliders)
        with output:
            output.clear_output(wait=True)
            _show(draw_latent(decode_images, z, device=device))

    for s in sliders:
        s.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(sliders[i:i + 4]) for i in range(0, n_sliders, 4)] + [output])
