"""Latent diagnostics against values computed by hand on small tensors."""
import math

import matplotlib.pyplot as plt
import pytest
import torch

from course_utils import data, diagnostics, runtime, train
from course_utils.losses import kl_diag_normal, neg_elbo
from course_utils.models import MLPVAE


def two_dim_posteriors():
    """4 data points, 2 dimensions: dim 0 informative (mu = -3, -1, 1, 3; sigma = 0.1), dim 1 collapsed (mu 0, sigma 1)."""
    z_loc = torch.tensor([[-3.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    z_logvar = torch.tensor([[math.log(0.01), 0.0]] * 4)
    return z_loc, z_logvar


def test_collapsed_dimension_is_inactive_and_informative_one_is_active():
    z_loc, z_logvar = two_dim_posteriors()
    assert diagnostics.active_units(z_loc).tolist() == [True, False]
    # the threshold is on Var_x(mu) (population variance): 0.02 is active, 0.005 is not
    a, b = math.sqrt(0.02), math.sqrt(0.005)
    assert diagnostics.active_units(torch.tensor([[-a, -b], [a, b]])).tolist() == [True, False]


def test_kl_per_dim_by_hand():
    z_loc, z_logvar = two_dim_posteriors()
    kl_d = diagnostics.kl_per_dim(z_loc, z_logvar)
    # dim 0: mean over x of 1/2 (0.01 + mu^2 - 1 - log 0.01), mean of mu^2 = (9 + 1 + 1 + 9) / 4 = 5
    expected_0 = 0.5 * (0.01 + 5.0 - 1.0 - math.log(0.01))
    assert kl_d[0].item() == pytest.approx(expected_0, rel=1e-6)
    assert kl_d[1].item() == 0.0  # q(z_1|x) = p(z_1) for every x: no information
    # the sum over dimensions is the ELBO's KL term averaged over the data
    assert kl_d.sum().item() == pytest.approx(kl_diag_normal(z_loc, z_logvar).mean().item(), rel=1e-6)


def test_mean_mu_sigma_by_hand():
    z_loc, z_logvar = two_dim_posteriors()
    mean_mu, mean_sigma = diagnostics.mean_mu_sigma(z_loc, z_logvar)
    assert mean_mu == pytest.approx(0.0, abs=1e-7)
    assert mean_sigma == pytest.approx((0.1 + 1.0) / 2, rel=1e-6)  # half the dimensions at 0.1, half at 1


def test_aggregate_moments_by_the_law_of_total_variance():
    # two data points in one dimension: q(z|x1) = N(1, 1), q(z|x2) = N(3, 4)
    z_loc = torch.tensor([[1.0], [3.0]])
    z_logvar = torch.log(torch.tensor([[1.0], [4.0]]))
    mean, var = diagnostics.aggregate_moments(z_loc, z_logvar)
    assert mean.item() == pytest.approx(2.0)
    assert var.item() == pytest.approx(1.0 + 2.5)  # Var(mu) = 1, E[sigma^2] = (1 + 4) / 2
    # and a Monte Carlo draw from the mixture agrees
    gen = torch.Generator().manual_seed(0)
    pick = torch.randint(0, 2, (400_000,), generator=gen)
    z = z_loc[pick, 0] + torch.exp(0.5 * z_logvar[pick, 0]) * torch.randn(400_000, generator=gen)
    assert z.mean().item() == pytest.approx(2.0, abs=0.02)
    assert z.var().item() == pytest.approx(3.5, rel=0.01)


def test_collapsed_posterior_matches_the_prior_exactly():
    z_loc, z_logvar = torch.zeros(50, 3), torch.zeros(50, 3)
    mean, var = diagnostics.aggregate_moments(z_loc, z_logvar)
    assert torch.equal(mean, torch.zeros(3)) and torch.allclose(var, torch.ones(3))
    assert diagnostics.aggregate_gaussian_kl(z_loc, z_logvar) == pytest.approx(0.0, abs=1e-12)
    assert diagnostics.active_units(z_loc).sum().item() == 0


def test_aggregate_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    z_loc = torch.randn(300, 4, generator=gen) @ torch.randn(4, 4, generator=gen) * 0.5 + 0.3
    z_logvar = torch.randn(300, 4, generator=gen) * 0.3 - 1.0
    mu = z_loc.double()
    cov = torch.cov(mu.T, correction=0) + torch.diag(torch.exp(z_logvar.double()).mean(0))
    q = torch.distributions.MultivariateNormal(mu.mean(0), covariance_matrix=cov)
    p = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    expected = torch.distributions.kl_divergence(q, p).item()
    assert diagnostics.aggregate_gaussian_kl(z_loc, z_logvar) == pytest.approx(expected, rel=1e-9)


def test_aggregate_gaussian_kl_is_a_lower_bound_on_the_mixture_kl():
    # q(z) = 1/2 N(-2, 0.5^2) + 1/2 N(2, 0.5^2): KL(q || N(0, 1)) by quadrature on a fine grid
    z_loc = torch.tensor([[-2.0], [2.0]], dtype=torch.float64)
    z_logvar = torch.full((2, 1), math.log(0.25), dtype=torch.float64)
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    comp = torch.distributions.Normal(z_loc[:, 0, None], 0.5)
    q = comp.log_prob(grid).exp().mean(0)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(grid)
    mixture_kl = torch.trapezoid(q * (torch.log(q.clamp_min(1e-300)) - log_p), grid).item()
    gaussian_kl = diagnostics.aggregate_gaussian_kl(z_loc, z_logvar)
    # moment-matched Gaussian: N(0, 4.25), KL = 1/2 (4.25 - 1 - log 4.25)
    assert gaussian_kl == pytest.approx(0.5 * (4.25 - 1 - math.log(4.25)), rel=1e-9)
    assert gaussian_kl < mixture_kl


@pytest.mark.parametrize("sizes", [(7,), (3, 4), (1, 5, 2, 9)])
def test_latent_stats_over_batches_equals_the_whole_set_functions(sizes):
    gen = torch.Generator().manual_seed(len(sizes))
    n, d = sum(sizes), 6
    scale = torch.tensor([2.0, 1.0, 0.5, 0.3, 0.01, 0.0])  # from informative to collapsed
    z_loc = torch.randn(n, d, generator=gen) * scale + 0.2
    z_logvar = torch.randn(n, d, generator=gen) * 0.5 - 1.0
    stats = diagnostics.LatentStats()
    for chunk_loc, chunk_logvar in zip(z_loc.split(list(sizes)), z_logvar.split(list(sizes))):
        stats.update(chunk_loc, chunk_logvar)
    s = stats.summary()
    mean_mu, mean_sigma = diagnostics.mean_mu_sigma(z_loc, z_logvar)
    agg_mean, agg_var = diagnostics.aggregate_moments(z_loc, z_logvar)
    kl_d = diagnostics.kl_per_dim(z_loc, z_logvar)
    assert s["mean_mu"] == pytest.approx(mean_mu, abs=1e-6)
    assert s["mean_sigma"] == pytest.approx(mean_sigma, rel=1e-6)
    assert s["kl"] == pytest.approx(kl_d.sum().item(), rel=1e-5)
    assert s["kl_d"] == pytest.approx(kl_d.tolist(), rel=1e-5, abs=1e-7)
    assert s["mu_mean_d"] == pytest.approx(agg_mean.tolist(), abs=1e-6)
    assert s["agg_var_d"] == pytest.approx(agg_var.tolist(), rel=1e-5)
    assert s["mu_var_d"] == pytest.approx(z_loc.var(0, unbiased=False).tolist(), rel=1e-5, abs=1e-9)
    assert s["active_units"] == int(diagnostics.active_units(z_loc).sum())
    assert s["active_units"] == 4  # Var(mu) near 4, 1, 0.25, 0.09 are above 0.01; near 1e-4 and 0 are not
    assert diagnostics.LatentStats().summary() == {}


def test_bad_shapes_get_a_clear_error():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        diagnostics.active_units(torch.zeros(5))
    with pytest.raises(ValueError, match="same shape"):
        diagnostics.kl_per_dim(torch.zeros(5, 2), torch.zeros(5, 3))


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    x, _ = data.mnist_tensors("train", limit=384)
    x = data.binarize(x, generator=torch.Generator().manual_seed(0))

    torch.manual_seed(0)
    return MLPVAE(z_dim=6, hidden=(64,)), neg_elbo, x


def test_fit_history_matches_a_second_pass_with_the_functions(tiny_run, capsys):
    model, neg_elbo, x = tiny_run
    x_train, x_test = x[:256], x[256:]
    dashboard = diagnostics.LiveDashboard(every=2)
    history = train.fit(model, neg_elbo, x_train, test_data=x_test, epochs=3, batch_size=64, progress=False,
                        on_epoch_end=dashboard)
    assert dashboard.updates == 1  # epochs 2 only
    dashboard(dict(history, loaded_from_cache=True))  # fit's call for a cached run: drawn though 3 % 2 != 0
    assert dashboard.updates == 2
    assert "epoch 2:" in capsys.readouterr().out  # outside IPython it prints a line per update
    z_loc, z_logvar = diagnostics.encode_dataset(model, x_test, batch_size=50)
    assert z_loc.shape == (128, 6) and model.training is True  # the mode is restored
    assert history["test_kl_d"][-1] == pytest.approx(diagnostics.kl_per_dim(z_loc, z_logvar).tolist(), rel=1e-4)
    assert history["test_active_units"][-1] == int(diagnostics.active_units(z_loc).sum())
    assert history["test_mean_sigma"][-1] == pytest.approx(diagnostics.mean_mu_sigma(z_loc, z_logvar)[1], rel=1e-5)
    fig = diagnostics.draw_dashboard(history, title="tiny")
    assert len(fig.axes) == len(diagnostics.DASHBOARD_PANELS)
    assert fig.axes[-1].patches  # the per-dimension KL bars were drawn
    train_line, test_line = fig.axes[0].lines[:2]  # the loss panel: train solid, test dashed, per epoch
    assert list(train_line.get_xdata()) == history["epoch"] and list(train_line.get_ydata()) == history["train_loss"]
    assert list(test_line.get_ydata()) == history["test_loss"] and test_line.get_linestyle() == "--"
    plt.close(fig)


def test_live_dashboard_rejects_a_bad_period():
    with pytest.raises(ValueError, match="every"):
        diagnostics.LiveDashboard(every=0)


def test_log_aggregate_density_matches_torch_distributions_mixture():
    gen = torch.Generator().manual_seed(3)
    z_loc, z_logvar = torch.randn(7, 3, generator=gen), torch.randn(7, 3, generator=gen) * 0.5
    z = torch.randn(11, 3, generator=gen) * 2
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(7)),
        torch.distributions.Independent(torch.distributions.Normal(z_loc, torch.exp(0.5 * z_logvar)), 1))
    got = diagnostics._log_aggregate_density(z, z_loc, z_logvar, chunk=4)  # several chunks
    assert torch.allclose(got, mixture.log_prob(z).double(), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        diagnostics._log_aggregate_density(torch.zeros(2, 4), z_loc, z_logvar)


def test_aggregate_kl_of_one_gaussian_is_the_closed_form():
    # N = 1: q(z) = N(mu, diag s^2) and KL(q || N(0, I)) = 1/2 sum (s^2 + mu^2 - 1 - log s^2)
    z_loc, z_logvar = torch.tensor([[1.0, -0.5]]), torch.log(torch.tensor([[0.25, 2.0]]))
    exact = diagnostics.kl_per_dim(z_loc, z_logvar).sum().item()
    estimate = diagnostics.aggregate_kl(z_loc, z_logvar, n_samples=100_000, generator=torch.Generator().manual_seed(0))
    assert estimate == pytest.approx(exact, abs=0.02)


def test_aggregate_kl_is_zero_for_a_collapsed_posterior_and_obeys_elbo_surgery():
    gen = torch.Generator().manual_seed(0)
    assert diagnostics.aggregate_kl(torch.zeros(20, 4), torch.zeros(20, 4), generator=gen) == pytest.approx(0, abs=1e-9)
    # N well-separated, narrow posteriors: I(x; z) = E KL - KL(q(z) || p(z)) reaches its ceiling log N
    n = 8
    z_loc = torch.linspace(-3, 3, n).unsqueeze(1)                          # [8, 1], spacing 0.86
    z_logvar = torch.full((n, 1), math.log(0.01 ** 2))                     # sigma = 0.01
    expected_kl = diagnostics.kl_per_dim(z_loc, z_logvar).sum().item()
    agg = diagnostics.aggregate_kl(z_loc, z_logvar, n_samples=20_000, generator=gen)
    assert expected_kl - agg == pytest.approx(math.log(n), abs=0.02)
    assert agg > diagnostics.aggregate_gaussian_kl(z_loc, z_logvar)        # the Gaussian bound is below


def test_a_device_without_float64_gets_float32_sums_and_cpu_float64_for_the_one_off_functions(monkeypatch):
    """Apple GPUs (mps) have no float64. Pretend this CPU is one: the running sums fall back to float32 on
    the device (no host sync per step), and the one-off functions move to the CPU for float64; both give
    the float64 path's numbers. A `.double()` on an mps tensor would raise there instead."""
    gen = torch.Generator().manual_seed(3)
    z_loc = torch.randn(500, 4, generator=gen) * torch.tensor([2.0, 1.0, 0.3, 0.0]) + 0.3
    z_logvar = torch.randn(500, 4, generator=gen) * 0.5 - 1.0
    z = torch.randn(50, 4, generator=gen)

    def run():
        stats = diagnostics.LatentStats()
        for loc, logvar in zip(z_loc.split(64), z_logvar.split(64)):
            stats.update(loc, logvar)
        return (stats.summary(), stats.sums["mu"].dtype, diagnostics.aggregate_gaussian_kl(z_loc, z_logvar),
                diagnostics._log_aggregate_density(z, z_loc, z_logvar))

    wide, wide_dtype, wide_kl, wide_density = run()
    assert wide_dtype == torch.float64
    monkeypatch.setattr(runtime, "has_float64", lambda device: False)
    assert runtime.as_float64(z_loc).dtype == torch.float64 and runtime.as_float64(z_loc).device.type == "cpu"
    narrow, narrow_dtype, narrow_kl, narrow_density = run()
    assert narrow_dtype == torch.float32
    for key in ("mean_mu", "mean_sigma", "kl"):
        assert narrow[key] == pytest.approx(wide[key], rel=1e-5, abs=1e-6)
    assert narrow["agg_var_d"] == pytest.approx(wide["agg_var_d"], rel=1e-5)
    assert narrow["active_units"] == wide["active_units"] == 3
    assert narrow_kl == pytest.approx(wide_kl, rel=1e-12)
    assert torch.allclose(narrow_density, wide_density)


def test_no_bare_double_in_course_utils():
    """Every float64 conversion in the package goes through a path that works on an Apple GPU."""
    import pathlib
    import re
    package = pathlib.Path(diagnostics.__file__).parent
    offenders = [f"{path.name}:{number}: {line.strip()}"
                 for path in sorted(package.glob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\.double\(\)", line) and not re.search(r"(cpu\(\)|else t\.cpu\(\)\))\.double\(\)", line)]
    assert offenders == [], "use runtime.as_float64 (or .cpu().double()): " + "; ".join(offenders)
