"""The Pyro model/guide and the hand-written negative ELBO compute the same objective (notebook 04).

Agreement is checked at identical parameters and identical noise (one seed before each loss), in
float64 so that the tolerance is tight; every test of agreement has a twin showing that a wrong
loss (a flipped sign, a dropped KL, a wrong prior) is caught by that same tolerance.
"""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from course_utils.losses import bernoulli_nll, gaussian_nll, iw_log_likelihood, kl_diag_normal, log_normal_diag, neg_elbo
from course_utils.models import ConvVAE, MLPVAE
from course_utils.pyro_vae import PyroVAE, bernoulli_likelihood, nll_from

ESTIMATORS = [(TraceMeanField_ELBO, True), (Trace_ELBO, False)]  # (Pyro ELBO, hand-written analytic_kl)
TOL = dict(rtol=1e-10, atol=1e-8)


def _nets():
    return {
        "mlp": lambda: MLPVAE(z_dim=6, hidden=(32,)),
        "conv": lambda: ConvVAE(z_dim=5, channels=(4, 8), hidden=16),
    }


def _trained_like(net: nn.Module) -> nn.Module:
    """Scale the last encoder layer so that q is far from the prior: a KL of tens of nats, like a trained VAE."""
    last = [m for m in net.encoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(8.0)
        last.bias.normal_(0.0, 2.0)
    return net.double()


def _binary(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3, dtype=torch.float64), generator=g)


def _pyro_loss(vae: PyroVAE, elbo, x, *context, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return elbo.differentiable_loss(vae.model, vae.guide, x, *context)


def _hand_loss(loss_fn, net, x, *context, seed: int = 1, **kwargs) -> torch.Tensor:
    torch.manual_seed(seed)
    return loss_fn(net, x, *context, **kwargs)["loss"]


@pytest.fixture(autouse=True)
def _fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.mark.parametrize("net_name", ["mlp", "conv"])
@pytest.mark.parametrize("elbo_cls, analytic_kl", ESTIMATORS)
@pytest.mark.parametrize("batch", [1, 7])
def test_pyro_loss_equals_hand_written_neg_elbo_at_identical_noise(net_name, elbo_cls, analytic_kl, batch):
    torch.manual_seed(0)
    net = _trained_like(_nets()[net_name]())
    x = _binary(batch)
    hand = _hand_loss(neg_elbo, net, x, analytic_kl=analytic_kl)
    pyro_loss = _pyro_loss(PyroVAE(net), elbo_cls(), x)
    torch.testing.assert_close(pyro_loss, hand, **TOL)
    # and the test is not trivially true: the KL is large, so dropping it would show
    torch.manual_seed(1)
    assert neg_elbo(net, x, analytic_kl=analytic_kl)["kl"] > 5.0


def _flipped_kl(net, x, analytic_kl=True):
    out = neg_elbo(net, x, analytic_kl=analytic_kl)
    return {"loss": out["recon"] - out["kl"]}


def _dropped_kl(net, x, analytic_kl=True):
    return {"loss": neg_elbo(net, x, analytic_kl=analytic_kl)["recon"]}


def _flipped_recon(net, x, analytic_kl=True):
    out = neg_elbo(net, x, analytic_kl=analytic_kl)
    return {"loss": -out["recon"] + out["kl"]}


def _sum_not_mean(net, x, analytic_kl=True):
    return {"loss": neg_elbo(net, x, analytic_kl=analytic_kl)["loss"] * x.shape[0]}


@pytest.mark.parametrize("altered", [_flipped_kl, _dropped_kl, _flipped_recon, _sum_not_mean])
@pytest.mark.parametrize("elbo_cls, analytic_kl", ESTIMATORS)
def test_an_altered_hand_written_loss_no_longer_agrees(altered, elbo_cls, analytic_kl):
    torch.manual_seed(0)
    net = _trained_like(_nets()["mlp"]())
    x = _binary(8)
    pyro_loss = _pyro_loss(PyroVAE(net), elbo_cls(), x)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(pyro_loss, _hand_loss(altered, net, x, analytic_kl=analytic_kl), **TOL)


class _WidePrior(PyroVAE):
    def model(self, x, *context):
        pyro.module(self.name, self.net)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=1.0 / x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 2.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net.decode(z)).to_event(3), obs=x)


class _NoScale(PyroVAE):
    def _scale(self, x):
        return 1.0


@pytest.mark.parametrize("wrong", [
    _WidePrior,
    _NoScale,
    lambda net: PyroVAE(net, likelihood=lambda x_logits: dist.Bernoulli(logits=-x_logits)),
])
@pytest.mark.parametrize("elbo_cls, analytic_kl", ESTIMATORS)
def test_an_altered_pyro_model_no_longer_agrees(wrong, elbo_cls, analytic_kl):
    torch.manual_seed(0)
    net = _trained_like(_nets()["mlp"]())
    x = _binary(8)
    hand = _hand_loss(neg_elbo, net, x, analytic_kl=analytic_kl)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(_pyro_loss(wrong(net), elbo_cls(), x), hand, **TOL)


@pytest.mark.parametrize("elbo_cls, analytic_kl", ESTIMATORS)
def test_gradients_agree_too(elbo_cls, analytic_kl):
    torch.manual_seed(0)
    net = _trained_like(_nets()["mlp"]())
    x = _binary(5)
    _hand_loss(neg_elbo, net, x, analytic_kl=analytic_kl).backward()
    hand_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    _pyro_loss(PyroVAE(net), elbo_cls(), x).backward()
    for p, g in zip(net.parameters(), hand_grads):
        torch.testing.assert_close(p.grad, g, **TOL)


def test_mean_over_batch_false_gives_pyros_batch_sum():
    torch.manual_seed(0)
    net = _trained_like(_nets()["mlp"]())
    x = _binary(6)
    summed = _pyro_loss(PyroVAE(net, mean_over_batch=False), TraceMeanField_ELBO(), x)
    torch.testing.assert_close(summed, 6 * _hand_loss(neg_elbo, net, x), **TOL)


def test_replayed_traces_give_the_monte_carlo_elbo_term_by_term():
    """poutine.replay runs the model at the guide's z: log p(x|z) + log p(z) - log q(z|x) by hand."""
    torch.manual_seed(0)
    net = _trained_like(_nets()["mlp"]())
    vae = PyroVAE(net, mean_over_batch=False)
    x = _binary(4)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    z_loc, z_logvar = net.encode(x)
    torch.testing.assert_close(model_trace.nodes["x"]["fn"].log_prob(x), -bernoulli_nll(net.decode(z), x), **TOL)
    torch.testing.assert_close(model_trace.nodes["z"]["fn"].log_prob(z), log_normal_diag(z, 0.0, 0.0), **TOL)
    torch.testing.assert_close(guide_trace.nodes["z"]["fn"].log_prob(z), log_normal_diag(z, z_loc, z_logvar), **TOL)
    elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    hand = (-bernoulli_nll(net.decode(z), x) + log_normal_diag(z, 0.0, 0.0) - log_normal_diag(z, z_loc, z_logvar)).sum()
    torch.testing.assert_close(elbo, hand, **TOL)


def test_mean_field_kl_is_the_closed_form_kl():
    torch.manual_seed(0)
    net = _trained_like(_nets()["mlp"]())
    x = _binary(4)
    guide_trace = poutine.trace(PyroVAE(net).guide).get_trace(x)
    q = guide_trace.nodes["z"]["fn"]
    prior = dist.Normal(torch.zeros_like(q.mean), 1.0).to_event(1)
    z_loc, z_logvar = net.encode(x)
    torch.testing.assert_close(torch.distributions.kl_divergence(q, prior), kl_diag_normal(z_loc, z_logvar), **TOL)


class _TinyConditional(nn.Module):
    def __init__(self, z_dim=3, n_classes=4):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Linear(784 + n_classes, 2 * z_dim)
        self.decoder = nn.Linear(z_dim + n_classes, 784)

    def encode(self, x, y):
        return self.encoder(torch.cat([x.flatten(1), y], 1)).chunk(2, -1)  # [B, 784 + K] -> 2 x [B, D]

    def decode(self, z, y):
        return self.decoder(torch.cat([z, y], 1)).view(-1, 1, 28, 28)  # [B, 784] -> [B, 1, 28, 28]


@pytest.mark.parametrize("elbo_cls, analytic_kl", ESTIMATORS)
def test_context_reaches_encoder_and_decoder(elbo_cls, analytic_kl):
    torch.manual_seed(0)
    net = _TinyConditional().double()
    x = _binary(5)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0]), 4).double()
    hand = _hand_loss(neg_elbo, net, x, y, analytic_kl=analytic_kl)
    torch.testing.assert_close(_pyro_loss(PyroVAE(net), elbo_cls(), x, y), hand, **TOL)
    other = _hand_loss(neg_elbo, net, x, y.roll(1, dims=1), analytic_kl=analytic_kl)
    assert not torch.allclose(other, hand)


def test_nll_from_matches_the_course_losses_and_feeds_iw_log_likelihood():
    x_logits = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    x = _binary(3)
    torch.testing.assert_close(nll_from(bernoulli_likelihood)(x_logits, x), bernoulli_nll(x_logits, x))
    normal = nll_from(lambda x_loc: dist.Normal(x_loc, 0.1))
    torch.testing.assert_close(normal(x_logits, x), gaussian_nll(x_logits, x, torch.log(torch.tensor(0.01)).item()))
    torch.manual_seed(0)
    net = MLPVAE(z_dim=4, hidden=(16,)).double()
    g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
    torch.testing.assert_close(iw_log_likelihood(net, x, k=20, nll=nll_from(bernoulli_likelihood), generator=g1),
                               iw_log_likelihood(net, x, k=20, generator=g2))


def test_the_latent_size_comes_from_the_network_and_a_clear_error_otherwise():
    assert PyroVAE(MLPVAE(z_dim=7, hidden=(8,))).z_dim == 7
    assert PyroVAE(ConvVAE(z_dim=9, channels=(4,), hidden=8)).z_dim == 9
    assert PyroVAE(_TinyConditional(z_dim=3), z_dim=3).z_dim == 3
    without = _TinyConditional()
    del without.z_dim
    with pytest.raises(TypeError, match="z_dim"):
        PyroVAE(without)
    with pytest.raises(TypeError, match="encode"):
        PyroVAE(nn.Linear(3, 3))


def test_svi_trains_the_wrapped_network_itself():
    torch.manual_seed(0)
    net = MLPVAE(z_dim=4, hidden=(32,))
    x = _binary(64).float()
    before = [p.detach().clone() for p in net.parameters()]
    vae = PyroVAE(net)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=TraceMeanField_ELBO())
    losses = [svi.step(x) for _ in range(30)]
    assert losses[-1] < losses[0] - 50, losses
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_a_stale_param_store_trains_nothing_and_piles_up_the_new_networks_gradients():
    """Why notebook 04 calls pyro.clear_param_store(): same name, new network, nothing learned.

    pyro.module (update_module_params=False) returns the old network's tensors, which SVI steps, but the
    loss is computed with the new network's parameters: the old tensors receive no gradient and stay as
    they are, and the new network's .grad becomes the sum of every step's gradient, applied by no one.
    """
    torch.manual_seed(0)
    x = _binary(16)
    old = PyroVAE(MLPVAE(z_dim=4, hidden=(8,)).double(), name="vae")
    SVI(old.model, old.guide, pyro.optim.Adam({"lr": 1e-2}), loss=Trace_ELBO()).step(x)
    stored = {name: t.detach().clone() for name, t in pyro.get_param_store().items()}
    new_net = MLPVAE(z_dim=4, hidden=(8,)).double()
    before = [p.detach().clone() for p in new_net.parameters()]
    new = PyroVAE(new_net, name="vae")
    svi = SVI(new.model, new.guide, pyro.optim.Adam({"lr": 1e-2}), loss=Trace_ELBO())
    seeds = (10, 11, 12)
    for seed in seeds:
        torch.manual_seed(seed)
        svi.step(x)
    assert all(torch.equal(stored[name], t.detach()) for name, t in pyro.get_param_store().items())
    assert all(torch.equal(b, p) for b, p in zip(before, new_net.parameters()))
    # the new network's .grad is the sum of the three steps' gradients (Trace_ELBO = the Monte Carlo KL form)
    summed = [torch.zeros_like(p) for p in new_net.parameters()]
    for seed in seeds:
        torch.manual_seed(seed)
        grads = torch.autograd.grad(neg_elbo(new_net, x, analytic_kl=False)["loss"], list(new_net.parameters()))
        summed = [s + g for s, g in zip(summed, grads)]
    for p, expected in zip(new_net.parameters(), summed):
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)
    # after clearing the store the network trains; its first step is a clean one only if its gradients were zeroed
    after = {}
    for zeroed in (True, False):
        net = MLPVAE(z_dim=4, hidden=(8,)).double()
        net.load_state_dict(new_net.state_dict())
        for p, stale in zip(net.parameters(), new_net.parameters()):
            p.grad = None if zeroed else stale.grad.clone()
        pyro.clear_param_store()
        vae = PyroVAE(net, name="vae")
        torch.manual_seed(13)
        SVI(vae.model, vae.guide, pyro.optim.SGD({"lr": 1e-2}), loss=Trace_ELBO()).step(x)
        after[zeroed] = [p.detach().clone() for p in net.parameters()]
    assert all(not torch.equal(b, p) for b, p in zip(before, after[True]))
    torch.manual_seed(13)
    clean = torch.autograd.grad(neg_elbo(new_net, x, analytic_kl=False)["loss"], list(new_net.parameters()))
    for b, p, g in zip(before, after[True], clean):
        torch.testing.assert_close(p, b - 1e-2 * g, rtol=1e-9, atol=1e-12)  # one plain SGD step on this batch
    for b, p, g, stale in zip(before, after[False], clean, new_net.parameters()):
        torch.testing.assert_close(p, b - 1e-2 * (g + stale.grad), rtol=1e-9, atol=1e-12)  # the stale sum leaks in
