"""The course's VAE blocks: a config and keyword overrides both reach the model."""
import pytest
import torch

from course_utils.models import ConvConfig, ConvVAE, MLPVAE


def test_overrides_apply_to_a_given_config_instead_of_vanishing():
    base = ConvConfig(z_dim=8, channels=(4, 8), hidden=16)
    model = ConvVAE(base, z_dim=3)
    assert model.config == ConvConfig(z_dim=3, channels=(4, 8), hidden=16) and model.z_dim == 3
    assert base.z_dim == 8  # the caller's config is left as it was
    z_loc, z_logvar = model.encode(torch.zeros(2, 1, 28, 28))
    assert z_loc.shape == z_logvar.shape == (2, 3)
    assert ConvVAE(z_dim=5, channels=(4,), hidden=8).config == ConvConfig(z_dim=5, channels=(4,), hidden=8)
    assert ConvVAE(base).config is base


def test_an_unknown_override_names_the_fields():
    with pytest.raises(TypeError, match="z_dim"):
        ConvVAE(ConvConfig(), zdim=3)
    with pytest.raises(TypeError, match="hidden"):
        ConvVAE(hiden=3)


def test_both_models_reconstruct_the_image_shape_and_check_their_input():
    for model in (ConvVAE(z_dim=2, channels=(4, 8), hidden=16), MLPVAE(z_dim=2, hidden=(16,))):
        x_logits, z_loc, z_logvar = model(torch.zeros(3, 1, 28, 28))
        assert x_logits.shape == (3, 1, 28, 28) and z_loc.shape == (3, 2)
        with pytest.raises(ValueError, match="unsqueeze"):
            model.encode(torch.zeros(3, 28, 28))
