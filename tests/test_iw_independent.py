"""An independent importance-weighted estimator agrees with course_utils.losses.iw_log_likelihood.

The estimator here is written differently on purpose: torch.distributions objects for q(z|x), p(z) and
p(x|z), and a plain loop that handles one image at a time. Both are applied to the same small model (trained
for a few seconds, so that q(z|x) is far from the prior and the weights vary) and the same fixed binarization
of test digits; their mean estimates of log p(x) must agree within 0.5 nats. A deliberately wrong variant
(log q evaluated at the mean of q instead of at the sampled z) must miss by more than that, which shows the
tolerance is tight enough to catch the mistake it is meant to catch.

Reference: Burda, Grosse & Salakhutdinov 2015, "Importance Weighted Autoencoders", eq. (8).
"""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from course_utils import data
from course_utils.losses import bernoulli_nll, iw_log_likelihood, kl_diag_normal, neg_elbo
from course_utils.models import ConvConfig, ConvVAE

K = 500          # importance samples per image
N_IMAGES = 50    # fixed-binarized test digits
Z_DIM = 8


@pytest.fixture(scope="module")
def model_and_digits():
    """A small conv VAE trained for three short epochs on 2,000 dynamically binarized digits."""
    torch.manual_seed(0)
    x_train, _ = data.mnist_tensors("train", limit=2000)
    x_test, _ = data.mnist_tensors("test", limit=N_IMAGES)
    x_test = data.binarize(x_test, generator=torch.Generator().manual_seed(0))
    model = ConvVAE(ConvConfig(z_dim=Z_DIM, channels=(16, 32), hidden=128))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for (x_gray,) in data.batches(x_train, batch_size=100, generator=torch.Generator().manual_seed(1)):
            loss = neg_elbo(model, torch.bernoulli(x_gray))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), x_test


@torch.no_grad()
def iw_one_image_at_a_time(model, x, k, log_q_at_mean=False):
    """log p(x) ~= log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) for each image of x [N, 1, 28, 28]: [N]."""
    prior = Independent(Normal(torch.zeros(Z_DIM), torch.ones(Z_DIM)), 1)
    estimates = []
    for image in x:  # [1, 28, 28]
        z_loc, z_logvar = model.encode(image.unsqueeze(0))  # [1, D] each
        posterior = Independent(Normal(z_loc[0], torch.exp(0.5 * z_logvar[0])), 1)
        z = posterior.sample((k,))  # [k, D]
        decoder = Independent(Bernoulli(logits=model.decode(z)), 3)  # batch [k], event [1, 28, 28]
        log_px_given_z = decoder.log_prob(image.expand(k, *image.shape))  # [k]
        where = z_loc[0].expand(k, Z_DIM) if log_q_at_mean else z
        log_weights = log_px_given_z + prior.log_prob(z) - posterior.log_prob(where)  # [k]
        estimates.append(torch.logsumexp(log_weights, dim=0) - math.log(k))
    return torch.stack(estimates)


@pytest.fixture(scope="module")
def estimates(model_and_digits):
    """Both estimators on the same model and digits, with independent random draws."""
    model, x = model_and_digits
    torch.manual_seed(2)
    ours = iw_one_image_at_a_time(model, x, K)
    theirs = iw_log_likelihood(model, x, k=K, generator=torch.Generator().manual_seed(3))
    return ours, theirs


def test_independent_estimate_agrees_within_half_a_nat(estimates):
    ours, theirs = estimates
    assert ours.shape == theirs.shape == (N_IMAGES,)
    # a trained model: far from the untrained 784 log 2 = 543 nats, so the weights carry information
    assert -theirs.mean() < 250, theirs.mean()
    assert abs(ours.mean().item() - theirs.mean().item()) < 0.5, (ours.mean().item(), theirs.mean().item())
    # per image they differ only by Monte Carlo noise, small beside the spread between images
    correlation = torch.corrcoef(torch.stack([ours, theirs]))[0, 1]
    assert correlation > 0.99, correlation


def test_importance_weighting_tightens_the_elbo(model_and_digits, estimates):
    model, x = model_and_digits
    torch.manual_seed(4)
    with torch.no_grad():
        elbo = torch.stack([-(bernoulli_nll(x_logits, x) + kl_diag_normal(z_loc, z_logvar))
                            for x_logits, z_loc, z_logvar in (model(x) for _ in range(20))]).mean(0)  # [N]
    _, log_px = estimates
    assert log_px.mean() > elbo.mean() + 0.5, (log_px.mean().item(), elbo.mean().item())


def test_the_tolerance_catches_log_q_at_the_mean(model_and_digits, estimates):
    model, x = model_and_digits
    right, _ = estimates
    torch.manual_seed(6)
    wrong = iw_one_image_at_a_time(model, x, K, log_q_at_mean=True)
    # log q is largest at the mean, so every weight shrinks: by about D/2 = 4 nats on average
    assert right.mean() - wrong.mean() > 1.0, (right.mean().item(), wrong.mean().item())
