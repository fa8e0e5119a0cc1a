"""gaussian_nll's logvar lines up with x from the batch dimension or is refused; kl_diag_normal's messages speak
of latents; empty batches give empty results and 0-dim inputs a message that says what to do."""
import math

import pytest
import torch
from torch.distributions import Independent, Normal

from course_utils.losses import gaussian_nll, kl_diag_normal


def reference(x_loc, x, logvar):
    scale = torch.exp(0.5 * torch.as_tensor(logvar, dtype=x.dtype)).expand(x.shape)
    return -Independent(Normal(x_loc, scale), x.dim() - 1).log_prob(x)


@pytest.mark.parametrize("logvar_shape", [None, (), (28, 1, 1, 1), (1, 1, 28, 28), (28, 1, 28, 28), (1, 1, 1, 28)])
def test_gaussian_nll_takes_logvars_that_line_up_from_the_batch_dimension(logvar_shape):
    # B = 28 = W: the case where a [B] logvar used to broadcast along the image width
    x_loc, x = torch.rand(28, 1, 28, 28, dtype=torch.float64), torch.rand(28, 1, 28, 28, dtype=torch.float64)
    logvar = math.log(0.1) if logvar_shape is None else torch.randn(logvar_shape, dtype=torch.float64)
    torch.testing.assert_close(gaussian_nll(x_loc, x, logvar), reference(x_loc, x, logvar))


@pytest.mark.parametrize("logvar_shape", [(28,), (28, 28), (1, 28, 28), (28, 1), (2, 1, 28, 28), (28, 1, 28, 28, 1)])
def test_gaussian_nll_refuses_logvars_that_would_broadcast_the_wrong_way(logvar_shape):
    x = torch.rand(28, 1, 28, 28)
    with pytest.raises(ValueError, match=r"one per image \[28, 1, 1, 1\] \(e\.g\. `logvar\.view\(-1, 1, 1, 1\)`\)"):
        gaussian_nll(x, x, torch.zeros(logvar_shape))


def test_empty_batches_give_empty_results_and_0_dim_inputs_a_clear_message():
    assert gaussian_nll(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4), 0.0).shape == (0,)
    assert kl_diag_normal(torch.zeros(0, 3), torch.zeros(0, 3)).shape == (0,)
    with pytest.raises(ValueError, match=r"x is a 0-dim tensor.*x\.unsqueeze\(0\)"):
        gaussian_nll(torch.tensor(0.5), torch.tensor(0.5), 0.0)
    with pytest.raises(ValueError, match=r"z_loc is a 0-dim tensor.*\[B, D\]"):
        kl_diag_normal(torch.tensor(0.0), torch.tensor(0.0))


def test_kl_diag_normals_shape_message_speaks_of_latents_not_pixels():
    with pytest.raises(ValueError) as error:
        kl_diag_normal(torch.zeros(4, 8), torch.zeros(4, 16))
    message = str(error.value)
    assert "pixel" not in message and "latent dimension" in message and "chunk(2, dim=1)" in message
