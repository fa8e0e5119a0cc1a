"""The widgets' drawing functions run as plain calls, and the widgets build headless."""
import matplotlib
import pytest
import torch

from course_utils import widgets


def decode_images(z):  # z [M, 2] -> images [M, 1, 8, 8] whose brightness follows z[0]
    return torch.sigmoid(z[:, :1, None, None] * torch.ones(1, 1, 8, 8))


def test_draw_latent_and_draw_morph_return_figures():
    fig = widgets.draw_latent(decode_images, [0.5, -1.0])
    assert isinstance(fig, matplotlib.figure.Figure)
    fig = widgets.draw_morph(decode_images, torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 0.0]), steps=5)
    assert len([ax for ax in fig.axes if ax.images]) == 5


def test_latent_explorer_redraws_when_a_slider_moves():
    pytest.importorskip("ipywidgets")
    box = widgets.latent_explorer(decode_images, z_dim=2)
    sliders = [w for row in box.children[:-1] for w in row.children]
    assert len(sliders) == 2
    sliders[0].value = 2.0  # fires the observer; it must not raise under the Agg backend


def test_morph_slider_builds():
    pytest.importorskip("ipywidgets")
    box = widgets.morph_slider(decode_images, torch.zeros(2), torch.ones(2))
    box.children[0].value = 0.5
