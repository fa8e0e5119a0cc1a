"""fit: lowers the loss, survives NaN and Ctrl-C, reloads from its cache, is reproducible."""
import functools

import pytest
import torch

from course_utils import cache, data, train
from course_utils.losses import bernoulli_nll, kl_diag_normal
from course_utils.models import ConvVAE, MLPVAE


def neg_elbo(model, x):
    x_logits, z_loc, z_logvar = model(x)
    recon, kl = bernoulli_nll(x_logits, x), kl_diag_normal(z_loc, z_logvar)
    return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean(), "z_loc": z_loc, "z_logvar": z_logvar}


@pytest.fixture(scope="module")
def mnist_small():
    x, _ = data.mnist_tensors("train", limit=512)
    return data.binarize(x, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))


def test_fit_lowers_the_loss_and_logs_latent_stats(mnist_small):
    torch.manual_seed(0)
    model = MLPVAE(z_dim=8, hidden=(128,))
    before = train.evaluate(model, neg_elbo, mnist_small)["loss"]
    history = train.fit(model, neg_elbo, mnist_small, test_data=mnist_small[:128], epochs=3, batch_size=64,
                        progress=False)
    assert history["stopped"] == "completed" and history["epoch"] == [1, 2, 3]
    assert history["test_loss"][-1] < before - 100
    for key in ("train_recon", "train_kl", "train_mean_mu", "train_mean_sigma", "test_mean_sigma", "test_active_units"):
        assert len(history[key]) == 3, key
    assert len(history["train_kl_d"][0]) == 8
    assert 0 < history["train_mean_sigma"][-1] < 1.5


def test_fit_stops_on_nan_and_keeps_the_last_good_weights(mnist_small, capsys):
    torch.manual_seed(0)
    model = MLPVAE(z_dim=4, hidden=(32,))
    calls = {"n": 0}

    def poisoned(model, x):
        calls["n"] += 1
        out = neg_elbo(model, x)
        if calls["n"] >= 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    history = train.fit(model, poisoned, mnist_small, epochs=2, batch_size=64, check_every=2, progress=False)
    assert history["stopped"] == "non-finite"
    assert "NaN or infinite" in capsys.readouterr().out
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(train.evaluate(model, neg_elbo, mnist_small)["loss"] * torch.ones(()))


def test_fit_keeps_what_it_learned_on_keyboard_interrupt(mnist_small):
    torch.manual_seed(0)
    model = MLPVAE(z_dim=4, hidden=(32,))
    before = train.evaluate(model, neg_elbo, mnist_small)["loss"]

    def interrupt_at_epoch_3(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    history = train.fit(model, neg_elbo, mnist_small, epochs=5, batch_size=64, lr=3e-3, progress=False,
                        on_epoch_start=interrupt_at_epoch_3, cache="interrupted")
    assert history["stopped"] == "interrupted" and history["epoch"] == [1, 2]
    assert train.evaluate(model, neg_elbo, mnist_small)["loss"] < before - 50
    assert not list((cache.cache_root() / "checkpoints").glob("interrupted-*"))  # not cached


def test_fit_reloads_from_its_cache(mnist_small):
    torch.manual_seed(0)
    model = ConvVAE(z_dim=4, channels=(8, 16), hidden=32)
    history = train.fit(model, neg_elbo, mnist_small, epochs=1, batch_size=128, progress=False, cache="tiny")
    files = list((cache.cache_root() / "checkpoints").glob("tiny-*.pt"))
    assert len(files) == 1 and not list(files[0].parent.glob("*.tmp*"))

    fresh = ConvVAE(z_dim=4, channels=(8, 16), hidden=32)
    calls = []

    @functools.wraps(neg_elbo)  # the same loss (same name), counting its calls
    def counting_neg_elbo(m, x):
        calls.append(1)
        return neg_elbo(m, x)

    shown = []
    again = train.fit(fresh, counting_neg_elbo, mnist_small, epochs=1, batch_size=128, progress=False, cache="tiny",
                      on_epoch_end=shown.append)
    assert not calls, "a cached run must not train again"
    assert shown == [again], "on_epoch_end sees a loaded run once, with its history"
    assert again["loaded_from_cache"] and again["train_loss"] == history["train_loss"]
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    # another setting is another key: trains again
    other = train.fit(ConvVAE(z_dim=4, channels=(8, 16), hidden=32), neg_elbo, mnist_small, epochs=1,
                      batch_size=64, progress=False, cache="tiny")
    assert not other["loaded_from_cache"]
    # so is other training data
    more = train.fit(ConvVAE(z_dim=4, channels=(8, 16), hidden=32), neg_elbo, mnist_small[:256], epochs=1,
                     batch_size=128, progress=False, cache="tiny")
    assert not more["loaded_from_cache"]
    # and so is a learning-rate schedule
    def halving(optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    scheduled = train.fit(ConvVAE(z_dim=4, channels=(8, 16), hidden=32), neg_elbo, mnist_small, epochs=1,
                          batch_size=128, lr_schedule=halving, progress=False, cache="tiny")
    assert not scheduled["loaded_from_cache"]
    assert len(list(files[0].parent.glob("tiny-*.pt"))) == 4


def test_record_steps_keeps_every_step_loss_and_is_cached_under_its_own_key(mnist_small):
    torch.manual_seed(0)
    model = MLPVAE(z_dim=4, hidden=(32,))
    seen = []

    def watched(m, x):
        out = neg_elbo(m, x)
        if m.training:
            seen.append(out["loss"].item())
        return out

    history = train.fit(model, watched, mnist_small, epochs=2, batch_size=100, record_steps=True, progress=False,
                        cache="steps")
    assert len(history["step_loss"]) == 2 * 6  # 512 images, batch 100: 6 steps an epoch
    assert history["step_loss"] == pytest.approx(seen)
    assert "step_loss" not in train.fit(MLPVAE(z_dim=4, hidden=(32,)), watched, mnist_small, epochs=2,
                                        batch_size=100, progress=False, cache="steps")  # another key: retrained
    again = train.fit(MLPVAE(z_dim=4, hidden=(32,)), watched, mnist_small, epochs=2, batch_size=100,
                      record_steps=True, progress=False, cache="steps")
    assert again["loaded_from_cache"] and again["step_loss"] == history["step_loss"]


def test_seeded_runs_are_reproducible_on_cpu(mnist_small):
    def run():
        torch.manual_seed(7)
        model = MLPVAE(z_dim=4, hidden=(32,))
        return train.fit(model, neg_elbo, mnist_small, epochs=1, batch_size=64, progress=False, seed=7)["train_loss"]
    assert run() == run()


def test_models_reject_wrong_shapes():
    with pytest.raises(ValueError, match="unsqueeze"):
        ConvVAE(z_dim=2).encode(torch.zeros(4, 28, 28))
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        MLPVAE(z_dim=2).encode(torch.zeros(4, 784))
