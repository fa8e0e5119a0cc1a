"""Every loss against a reference: torch.distributions or an exact closed form."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from course_utils.losses import bernoulli_nll, gaussian_nll, iw_log_likelihood, kl_diag_normal, log_normal_diag

SHAPES = [(1, 1), (7, 3), (16, 32), (4, 1, 28, 28)]


@pytest.mark.parametrize("shape", SHAPES)
def test_kl_diag_normal_matches_torch_distributions(shape):
    z_loc, z_logvar = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    q = Independent(Normal(z_loc, torch.exp(0.5 * z_logvar)), len(shape) - 1)
    p = Independent(Normal(torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)), len(shape) - 1)
    ours = kl_diag_normal(z_loc, z_logvar)
    assert ours.shape == (shape[0],)
    torch.testing.assert_close(ours, kl_divergence(q, p))


def test_kl_between_two_diagonal_gaussians():
    q_loc, q_logvar, p_loc, p_logvar = (torch.randn(5, 4, dtype=torch.float64) for _ in range(4))
    q = Independent(Normal(q_loc, torch.exp(0.5 * q_logvar)), 1)
    p = Independent(Normal(p_loc, torch.exp(0.5 * p_logvar)), 1)
    torch.testing.assert_close(kl_diag_normal(q_loc, q_logvar, p_loc, p_logvar), kl_divergence(q, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_python_number_parameters_equal_tensor_parameters(dtype):
    # floats take a path with no tensor made from them (no host-to-device copy per step); it must agree
    z_loc, z_logvar, x, x_loc = (torch.randn(6, 5, dtype=dtype) for _ in range(4))
    for loc, logvar in [(0.0, 0.0), (0.7, -1.3), (0, 2)]:
        as_tensor = torch.tensor(float(loc), dtype=dtype), torch.tensor(float(logvar), dtype=dtype)
        for fn, args in [(kl_diag_normal, (z_loc, z_logvar)), (log_normal_diag, (z_loc,))]:
            ours = fn(*args, loc, logvar)
            assert ours.dtype == dtype
            torch.testing.assert_close(ours, fn(*args, *as_tensor))
        torch.testing.assert_close(gaussian_nll(x_loc, x, logvar), gaussian_nll(x_loc, x, as_tensor[1]))
        assert gaussian_nll(x_loc, x, logvar).dtype == dtype


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert torch.all(kl_diag_normal(torch.zeros(3, 5), torch.zeros(3, 5)) == 0)
    assert torch.all(kl_diag_normal(torch.randn(3, 5), torch.randn(3, 5)) > 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_bernoulli_nll_matches_torch_distributions(shape):
    logits = 3 * torch.randn(shape, dtype=torch.float64)
    x = torch.bernoulli(torch.full(shape, 0.3, dtype=torch.float64))
    ref = -Independent(Bernoulli(logits=logits), len(shape) - 1).log_prob(x)
    torch.testing.assert_close(bernoulli_nll(logits, x), ref)


def test_bernoulli_nll_is_finite_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4]])
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    nll = bernoulli_nll(logits, x)
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll, torch.tensor([2e4]))  # two confident mistakes cost 1e4 nats each


def test_bernoulli_nll_accepts_gray_values_in_unit_interval():
    # the cross-entropy with a soft target: sum of -x log p - (1 - x) log(1 - p)
    logits, x = torch.randn(2, 6, dtype=torch.float64), torch.rand(2, 6, dtype=torch.float64)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(bernoulli_nll(logits, x), -(x * p.log() + (1 - x) * (1 - p).log()).sum(1))


@pytest.mark.parametrize("bad", [torch.tensor([[0.0, 255.0]]), torch.tensor([[-0.1, 0.5]])])
def test_bernoulli_nll_rejects_data_outside_the_support(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bernoulli_nll(torch.zeros_like(bad), bad)


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="view_as"):
        bernoulli_nll(torch.zeros(4, 784), torch.zeros(4, 1, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        gaussian_nll(torch.zeros(4, 10), torch.zeros(4, 11), 0.0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("logvar_kind", ["float", "scalar_tensor", "per_pixel"])
def test_gaussian_nll_matches_torch_distributions(shape, logvar_kind):
    x_loc, x = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    if logvar_kind == "float":
        logvar = math.log(0.01)
    elif logvar_kind == "scalar_tensor":
        logvar = torch.tensor(-1.3, dtype=torch.float64)
    else:
        logvar = torch.randn(shape, dtype=torch.float64)
    scale = torch.exp(0.5 * torch.as_tensor(logvar, dtype=torch.float64)).expand(shape)
    ref = -Independent(Normal(x_loc, scale), len(shape) - 1).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x_loc, x, logvar), ref)


def test_gaussian_nll_keeps_its_constant():
    # at x = x_loc with unit variance each pixel costs exactly log(2 pi) / 2
    nll = gaussian_nll(torch.zeros(1, 10), torch.zeros(1, 10), 0.0)
    torch.testing.assert_close(nll, torch.tensor([5 * math.log(2 * math.pi)]))


def test_log_normal_diag_matches_normal():
    z, loc, logvar = torch.randn(3, 4, 5), torch.randn(4, 5), torch.randn(4, 5)
    ref = Normal(loc, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_diag(z, loc, logvar), ref)


class LinearGaussian(torch.nn.Module):
    """z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D): log p(x) = log N(x | b, W W^T + s^2 I) exactly.

    encode() returns the exact posterior when ``exact_posterior`` is set, otherwise a
    deliberately imperfect one (so the importance weights have work to do).
    """

    def __init__(self, d=2, D=5, s=0.5, exact_posterior=False):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = torch.randn(D, d, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.s2 = s ** 2
        self.exact = exact_posterior
        # posterior: Sigma = (I + W^T W / s^2)^-1, mu = Sigma W^T (x - b) / s^2
        self.post_cov = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / self.s2)

    def encode(self, x):
        loc = (x - self.b) @ self.W @ self.post_cov.T / self.s2  # [B, d]
        logvar = torch.log(torch.diagonal(self.post_cov)).expand_as(loc)
        if not self.exact:
            loc, logvar = loc + 0.3, logvar + 0.5
        return loc, logvar

    def decode(self, z):
        return z @ self.W.T + self.b

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.s2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)


def _lg_likelihood(model):
    return lambda x_loc, x: gaussian_nll(x_loc, x, math.log(model.s2))


def test_iw_log_likelihood_matches_the_exact_value():
    model = LinearGaussian()
    x = model.decode(torch.randn(20, 2, dtype=torch.float64)) + 0.5 * torch.randn(20, 5, dtype=torch.float64)
    exact = model.exact_log_px(x)
    est = iw_log_likelihood(model, x, k=1000, nll=_lg_likelihood(model), batch_size=7, max_decode=700)
    assert est.shape == (20,)
    assert (est - exact).abs().mean() < 0.05, (est - exact)
    # a lower bound in expectation (Jensen): over repeated estimates of every example, the
    # average excess over the exact value is not positive beyond Monte Carlo noise (3 standard errors)
    errors = torch.stack([iw_log_likelihood(model, x, k=1000, nll=_lg_likelihood(model)) - exact
                          for _ in range(8)]).flatten()
    assert errors.mean() < 3 * errors.std() / errors.numel() ** 0.5, errors.mean()


def test_iw_log_likelihood_is_exact_with_the_true_posterior_even_at_k1():
    x = torch.randn(6, 5, dtype=torch.float64)
    # q = the exact posterior (d=1: a diagonal q can hold it): every importance weight equals p(x), so one is enough
    model1 = LinearGaussian(d=1, exact_posterior=True)
    est = iw_log_likelihood(model1, x, k=1, nll=_lg_likelihood(model1))
    torch.testing.assert_close(est, model1.exact_log_px(x))
    # the same model with an imperfect q: one sample's weight is noisy, off log p(x) by nats
    imperfect = LinearGaussian(d=1)
    off = iw_log_likelihood(imperfect, x, k=1, nll=_lg_likelihood(imperfect)) - imperfect.exact_log_px(x)
    assert off.abs().mean() > 0.1, off


def test_iw_bound_tightens_with_k():
    model = LinearGaussian()
    x = torch.randn(50, 5, dtype=torch.float64)
    lik = _lg_likelihood(model)
    elbo = iw_log_likelihood(model, x, k=1, nll=lik).mean()
    iw50 = iw_log_likelihood(model, x, k=50, nll=lik).mean()
    assert elbo < iw50 < model.exact_log_px(x).mean() + 0.02


def test_bernoulli_nll_checks_the_range_on_the_cpu_only():
    # on the CPU a learner's unscaled images get the clear error; on another device (here "meta", which holds no
    # values, as a GPU's values are out of the CPU's reach) nothing is read back, so no step waits for the device
    bad = torch.full((2, 1, 4, 4), 255.0)
    with pytest.raises(ValueError, match=r"\[0, 1\].*to_float"):
        bernoulli_nll(torch.zeros_like(bad), bad)
    assert bernoulli_nll(torch.zeros_like(bad, device="meta"), bad.to("meta")).shape == (2,)


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "10"])
def test_iw_log_likelihood_wants_a_whole_number_of_samples(k):
    model = LinearGaussian()
    with pytest.raises(ValueError, match="k is the number of importance samples"):
        iw_log_likelihood(model, torch.randn(2, 5, dtype=torch.float64), k=k, nll=_lg_likelihood(model))


def test_iw_log_likelihood_takes_the_nll_by_its_name():
    model = LinearGaussian()
    x = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(TypeError):  # the old keyword is gone: a Gaussian model silently scored as Bernoulli is worse
        iw_log_likelihood(model, x, k=2, likelihood=_lg_likelihood(model))
    with pytest.raises(TypeError, match="nll must be a function"):
        iw_log_likelihood(model, x, k=2, nll=0.5)


def test_nll_from_subset_is_the_control_variate_formula_and_its_two_part_error():
    from course_utils.losses import nll_from_subset
    gen = torch.Generator().manual_seed(0)
    n, s, n_all = 50, 8, 1000
    log_px = -90 - 10 * torch.rand(n, generator=gen)  # [n]
    draws = -log_px + 4 + torch.randn(s, n, generator=gen)  # [S, n]: the ELBO lies ~4 nats above -log p(x)
    estimate, se = nll_from_subset(log_px, draws, neg_elbo_all=97.0, n_all=n_all)
    gain = draws.mean(0) + log_px
    assert estimate == pytest.approx(97.0 - gain.mean().item())
    assert se == pytest.approx(math.sqrt(gain.var().item() / n + draws.var(0).mean().item() / n_all))
    # with no scatter in the gain, only the one draw behind each of the n_all ELBOs is left
    same_gain = torch.stack([-log_px + 4 + d for d in (-1.0, 1.0)])  # [2, n]: each digit's draws at -1 and +1
    assert nll_from_subset(log_px, same_gain, 97.0, n_all)[1] == pytest.approx(math.sqrt(2 / n_all))
    with pytest.raises(ValueError, match=r"\[S >= 2, n\]"):
        nll_from_subset(log_px, draws[:1], 97.0, n_all)
    with pytest.raises(ValueError, match="smaller than"):
        nll_from_subset(log_px, draws, 97.0, n_all=10)


def test_neg_elbo_is_recon_plus_beta_kl_at_the_same_noise():
    from course_utils.losses import neg_elbo
    from course_utils.models import MLPVAE
    torch.manual_seed(0)
    net = MLPVAE()
    x = (torch.rand(6, 1, 28, 28) > 0.5).float()
    torch.manual_seed(1)
    out = neg_elbo(net, x, beta=3.0)
    torch.manual_seed(1)
    z_loc, z_logvar = net.encode(x)
    z = z_loc + torch.exp(0.5 * z_logvar) * torch.randn_like(z_loc)
    recon = bernoulli_nll(net.decode(z), x).mean()
    kl = kl_diag_normal(z_loc, z_logvar).mean()
    torch.testing.assert_close(out["recon"], recon)
    torch.testing.assert_close(out["kl"], kl)
    torch.testing.assert_close(out["loss"], recon + 3.0 * kl)
