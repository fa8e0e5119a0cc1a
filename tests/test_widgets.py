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


def test_latent_explorer_redraws_the_decoded_image_when_a_slider_moves(monkeypatch):
    pytest.importorskip("ipywidgets")
    shown = []  # the figures the explorer puts in its output area, as the mean brightness of their image
    monkeypatch.setattr(widgets, "_show", lambda fig: shown.append(float(fig.axes[0].images[0].get_array().mean())))
    box = widgets.latent_explorer(decode_images, z_dim=3, n_sliders=2)
    sliders = [w for row in box.children[:-1] for w in row.children]
    assert [s.description for s in sliders] == ["z[0]", "z[1]"]  # n_sliders of them; z[2] stays 0
    assert shown == [pytest.approx(0.5)]  # drawn once at z = 0: sigmoid(0)
    sliders[0].value = 2.0
    assert shown[-1] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-6)  # z[0] = 2 decoded
    sliders[1].value = -1.0  # z[1] does not move this decoder's brightness, but the image is drawn again
    assert len(shown) == 3 and shown[-1] == pytest.approx(shown[-2])
