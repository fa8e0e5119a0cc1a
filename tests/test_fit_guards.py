"""fit's guards: weights kept only when finite, a cache key that follows the code and the data, a damaged or
unwritable cache that costs a retraining and nothing else, one progress display per training, and messages
that say what to do."""
import linecache
import sys
import warnings

import pytest
import torch
from torch import nn

from course_utils import cache, train
from course_utils.losses import bernoulli_nll, kl_diag_normal
from course_utils.models import MLPVAE


def neg_elbo(model, x):
    x_logits, z_loc, z_logvar = model(x)
    recon, kl = bernoulli_nll(x_logits, x), kl_diag_normal(z_loc, z_logvar)
    return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean()}


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(96, 1, 28, 28, generator=g) > 0.5).float()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))


def tiny():
    torch.manual_seed(0)
    return MLPVAE(z_dim=2, hidden=(16,))


def checkpoints(name):
    return sorted((cache.cache_root() / "checkpoints").glob(f"{name}-*.pt"))


# ---------------------------------------------------------------------------------------------- NaN guard
def test_a_finite_loss_with_a_non_finite_gradient_is_caught_and_never_kept(x, capsys):
    calls = {"n": 0}

    def poisoned(model, x):
        calls["n"] += 1
        out = neg_elbo(model, x)
        if calls["n"] == 6:  # a check step: the loss stays finite, its gradient is NaN (d sqrt(u)/du at 0)
            w = next(model.parameters())
            out["loss"] = out["loss"] + torch.sqrt(w.sum() * 0.0)
        return out

    model = tiny()
    history = train.fit(model, poisoned, x, epochs=3, batch_size=8, check_every=2, progress=False)
    assert history["stopped"] == "non-finite"
    out = capsys.readouterr().out
    assert "non-finite gradient" in out and "(epoch 1, step 4) are restored" in out, out
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- cache key
def cell(source: str, number: int) -> dict:
    """Run ``source`` as IPython runs a notebook cell: compiled under a name whose text linecache keeps."""
    filename = f"<ipython-input-{number}-0123456789ab>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {"__name__": "__main__", "torch": torch, "nn": nn, "neg_elbo": neg_elbo}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


LOSS_V1 = """
def my_loss(model, x):
    return neg_elbo(model, x)
"""
LOSS_V2 = """
def my_loss(model, x):
    out = neg_elbo(model, x)
    out["loss"] = out["recon"] + 4.0 * out["kl"]  # the learner's edit: beta = 4
    return out
"""


def test_editing_a_loss_function_in_a_notebook_cell_changes_the_key(x):
    first = train.fit(tiny(), cell(LOSS_V1, 1)["my_loss"], x, epochs=1, batch_size=32, progress=False, cache="k")
    assert not first["loaded_from_cache"]
    edited = train.fit(tiny(), cell(LOSS_V2, 2)["my_loss"], x, epochs=1, batch_size=32, progress=False, cache="k")
    assert not edited["loaded_from_cache"], "an edited loss must train again, not load the old weights"
    back = train.fit(tiny(), cell(LOSS_V1, 3)["my_loss"], x, epochs=1, batch_size=32, progress=False, cache="k")
    assert back["loaded_from_cache"], "the same source in another cell is the same run"
    assert len(checkpoints("k")) == 2


MODEL_V1 = """
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(784, 4), nn.Linear(2, 784)

    def forward(self, x):
        z_loc, z_logvar = self.enc(x.flatten(1)).chunk(2, dim=1)
        return self.dec(z_loc).view_as(x), z_loc, z_logvar
"""


def test_editing_a_model_class_in_a_notebook_cell_changes_the_key(x):
    def run(source, number):
        torch.manual_seed(0)
        model = cell(source, number)["Tiny"]()
        return train.fit(model, neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="m")

    assert not run(MODEL_V1, 11)["loaded_from_cache"]
    assert run(MODEL_V1, 12)["loaded_from_cache"]
    edited = MODEL_V1.replace("self.dec(z_loc)", "self.dec(torch.tanh(z_loc))")
    assert not run(edited, 13)["loaded_from_cache"]


def test_other_data_of_the_same_shape_is_another_key(x):
    assert not train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="d")["loaded_from_cache"]
    assert train.fit(tiny(), neg_elbo, x.clone(), epochs=1, batch_size=32, progress=False,
                     cache="d")["loaded_from_cache"]
    flipped = 1 - x
    assert not train.fit(tiny(), neg_elbo, flipped, epochs=1, batch_size=32, progress=False,
                         cache="d")["loaded_from_cache"]


def test_the_key_is_the_same_in_another_process(tmp_path):
    import subprocess
    code = ("import torch, functools\n"
            "from course_utils import train\nfrom course_utils.models import MLPVAE\n"
            "from course_utils.losses import neg_elbo\n"
            "torch.manual_seed(0)\nx = (torch.rand(64, 1, 28, 28) > 0.5).float()\n"
            "loss = functools.partial(neg_elbo, beta=2.0)\n"
            "print(train._config_key(MLPVAE(z_dim=2, hidden=(16,)), {'loss_fn': train.source_of(loss), "
            "'data': train.data_fingerprint(x), 'opt': [{'betas': (0.9, 0.999), 'lr': torch.tensor(1e-3)}]}))\n")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=tmp_path, env={**__import__("os").environ}).stdout.strip() for _ in range(2)}
    assert len(keys) == 1 and len(keys.pop()) == 16


# ------------------------------------------------------------------------------------- damaged / unwritable
@pytest.mark.parametrize("damage", ["empty", "truncated", "wrong keys", "other weights"])
def test_a_damaged_checkpoint_is_reported_by_name_then_retrained_and_overwritten(x, damage):
    train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="bad")
    [path] = checkpoints("bad")
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "wrong keys":
        torch.save({"weights": {}, "log": {}}, path)
    else:
        torch.save({"model": {"w": torch.zeros(3)}, "history": {}}, path)
    with pytest.warns(cache.CacheWarning, match=str(path.name)):
        again = train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="bad")
    assert not again["loaded_from_cache"] and again["stopped"] == "completed"
    assert train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="bad")["loaded_from_cache"]


def test_a_cache_that_cannot_be_created_costs_a_warning_not_the_training(x, tmp_path, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be: not writable, even as root")
    monkeypatch.setenv("COURSE_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(cache.CacheWarning, match="file.txt"):
        history = train.fit(tiny(), neg_elbo, x, epochs=2, batch_size=32, progress=False, cache="ro")
    assert history["stopped"] == "completed" and history["epoch"] == [1, 2]


def test_a_cache_that_refuses_writes_costs_a_warning_not_the_training(x, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "save", refuse)
    with pytest.warns(cache.CacheWarning, match="cannot write"):
        history = train.fit(tiny(), neg_elbo, x, epochs=2, batch_size=32, progress=False, cache="denied")
    assert history["stopped"] == "completed" and len(history["train_loss"]) == 2
    assert not checkpoints("denied") and not list((cache.cache_root() / "checkpoints").glob("*partial*"))


# ---------------------------------------------------------------------------------------------- progress
def test_one_progress_bar_per_training_in_a_terminal(x, monkeypatch):
    import tqdm.auto
    made = []

    class Bar:
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            self.n, self.closed = 0, False

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    train.fit(tiny(), neg_elbo, x, epochs=4, batch_size=8, check_every=2)
    assert len(made) == 1 and made[0]["total"] == 4 and made[0]["leave"] is False


def test_one_progress_line_per_training_in_jupyter_ending_in_its_result(x, monkeypatch):
    import IPython.display
    shown = []

    class Handle:
        def update(self, obj, raw=False):
            shown[-1].append(obj["text/plain"])

    def display(obj, raw=False, display_id=None):
        assert raw and display_id is True
        shown.append([obj["text/plain"]])
        return Handle()

    monkeypatch.setattr(train, "_in_jupyter", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    history = train.fit(tiny(), neg_elbo, x, epochs=3, batch_size=8, check_every=2)
    assert len(shown) == 1, "one display per training, updated in place"
    final = shown[0][-1]
    assert final.startswith("trained 3/3 epochs in ") and f"{history['train_loss'][-1]:.3f}" in final
    assert "%" not in "".join(shown[0]) and all(len(line) <= 100 for line in shown[0])


# ---------------------------------------------------------------------------------------------- messages
def test_mistakes_in_fits_arguments_get_messages_that_say_what_to_do(x):
    with pytest.raises(ValueError, match=r"fit\(batch_size=0\).*at least 1"):
        train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="holds no examples"):
        train.fit(tiny(), neg_elbo, x[:0], epochs=1)
    with pytest.raises(ValueError, match="0-dim tensor.*unsqueeze"):
        train.fit(tiny(), neg_elbo, torch.tensor(1.0), epochs=1)
    with pytest.raises(ValueError, match="same first dimension"):
        train.fit(tiny(), neg_elbo, (x, torch.zeros(5)), epochs=1)
    with pytest.raises(ValueError, match="test_data holds no examples"):
        train.fit(tiny(), neg_elbo, x, test_data=x[:0], epochs=1)


def test_a_loss_fn_returning_a_tensor_is_told_to_return_a_dict(x):
    def bare(model, x):
        return neg_elbo(model, x)["loss"]

    with pytest.raises(TypeError, match=r"bare returned a tensor; fit needs a dict .*'loss'"):
        train.fit(tiny(), bare, x, epochs=1, progress=False)

    def per_example(model, x):
        x_logits, z_loc, z_logvar = model(x)
        return {"loss": bernoulli_nll(x_logits, x) + kl_diag_normal(z_loc, z_logvar)}

    with pytest.raises(ValueError, match=r"must be a 0-dim tensor.*\.mean\(\)"):
        train.fit(tiny(), per_example, x, epochs=1, progress=False)
    with pytest.raises(TypeError, match="without a loss entry"):
        train.evaluate(tiny(), lambda m, x: {"recon": neg_elbo(m, x)["recon"]}, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the good path warns about nothing
        train.fit(tiny(), neg_elbo, x, epochs=1, progress=False)
