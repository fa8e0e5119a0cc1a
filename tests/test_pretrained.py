"""Shipped weights: written by make pretrain's path, verified by SHA-256, loaded with weights_only=True, refused
with a clear message when damaged or made for another model, and the tracked files themselves verified."""
import pickle

import pytest
import torch

from course_utils import cache, pretrained, train
from course_utils.losses import bernoulli_nll, neg_elbo
from course_utils.models import MLPVAE


def other_loss(model, x):
    x_logits, z_loc, z_logvar = model(x)
    return {"loss": bernoulli_nll(x_logits, x).mean()}


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(256, 1, 28, 28, generator=g) > 0.7).float()


@pytest.fixture(autouse=True)
def _folders(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COURSE_WEIGHTS_DIR", str(tmp_path / "weights"))
    for var in ("COURSE_EXPORT_WEIGHTS", "COURSE_RETRAIN", "COURSE_PRETRAIN_RUN"):
        monkeypatch.delenv(var, raising=False)
    train.QUICK_CHECKS.clear()


def tiny(hidden=16):
    torch.manual_seed(0)
    return MLPVAE(z_dim=2, hidden=(hidden,))


def pretrain(x, monkeypatch, name="m", epochs=3):
    """What make pretrain does for one training: export mode, then SHA256SUMS."""
    folder = cache.weights_dir()
    monkeypatch.setenv("COURSE_EXPORT_WEIGHTS", str(folder))
    monkeypatch.setenv("COURSE_PRETRAIN_RUN", "run-1")
    model = tiny()
    history = train.fit(model, neg_elbo, x, test_data=x[:64], epochs=epochs, batch_size=32, progress=False,
                        cache=name)
    monkeypatch.delenv("COURSE_EXPORT_WEIGHTS")
    monkeypatch.delenv("COURSE_PRETRAIN_RUN")
    pretrained.write_sums(folder)
    return model, history, folder / f"{name}.pt"


def test_pretrain_writes_a_verified_file_that_fit_loads_in_full_mode(x, monkeypatch, capsys):
    model, history, path = pretrain(x, monkeypatch)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["trained"]["epochs"] == 3 and blob["trained"]["n_train"] == 256 and blob["trained"]["dtype"]
    assert pretrained.read_sums(path.parent)[path.name] == pretrained.sha256(path)
    monkeypatch.setenv("COURSE_QUICK", "0")
    fresh = tiny()
    loaded = train.fit(fresh, neg_elbo, x, test_data=x[:64], epochs=3, batch_size=32, progress=False, cache="m")
    out = capsys.readouterr().out
    assert "Shipped 'm': 3 epochs, 256 images" in out and "COURSE_RETRAIN=1" in out, out
    assert all(len(line) <= 100 for line in out.splitlines() if line.startswith("Shipped")), out
    assert loaded["loaded_from_cache"] and loaded["train_loss"] == history["train_loss"]
    assert loaded["quick_check"] is None and not train.QUICK_CHECKS  # full mode trains nothing
    for k, v in model.state_dict().items():  # compact storage changes a weight by at most one int8 step
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=float(v.abs().max()) / 127)


def test_quick_mode_trains_the_path_then_shows_the_shipped_model(x, monkeypatch, capsys):
    _, history, _ = pretrain(x, monkeypatch, epochs=4)
    monkeypatch.setenv("COURSE_QUICK", "1")
    loaded = train.fit(tiny(), neg_elbo, x[:128], test_data=x[:64], epochs=1, batch_size=32, progress=False,
                       cache="m")
    check = loaded["quick_check"]
    assert check["epochs"] == 1 and check["n_train"] == 128 and check["after"] < check["before"]
    assert loaded["train_loss"] == history["train_loss"]  # what is shown is the shipped training
    assert train.check_trainings_learned() == 1
    assert "Quick check 'm': trained here 1 ep. on 128" in capsys.readouterr().out


def test_a_training_that_does_not_learn_fails_the_check(x, monkeypatch):
    pretrain(x, monkeypatch)
    monkeypatch.setenv("COURSE_QUICK", "1")
    frozen = tiny()
    train.fit(frozen, neg_elbo, x, test_data=x[:64], epochs=1, batch_size=32, lr=0.0, progress=False, cache="m")
    with pytest.raises(AssertionError, match="did not lower"):
        train.check_trainings_learned()


def test_retrain_ignores_the_shipped_weights(x, monkeypatch):
    pretrain(x, monkeypatch)
    monkeypatch.setenv("COURSE_RETRAIN", "1")
    history = train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="m")
    assert not history["loaded_from_cache"] and len(history["epoch"]) == 1
    monkeypatch.setenv("COURSE_RETRAIN", "maybe")
    with pytest.raises(ValueError, match="COURSE_RETRAIN=1"):
        train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="m")


def test_a_damaged_file_is_an_error_that_names_it_and_the_fix(x, monkeypatch):
    _, _, path = pretrain(x, monkeypatch)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedWeightsError) as err:
        train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="m")
    message = str(err.value)
    assert "m.pt" in message and "SHA-256" in message and "git checkout" in message and "COURSE_RETRAIN=1" in message


def test_a_file_missing_from_the_sums_is_refused(x, monkeypatch):
    _, _, path = pretrain(x, monkeypatch)
    (path.parent / "SHA256SUMS").write_text("")
    with pytest.raises(pretrained.PretrainedWeightsError, match="not listed"):
        train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="m")


def test_weights_for_another_model_or_loss_are_refused(x, monkeypatch):
    pretrain(x, monkeypatch)
    with pytest.raises(pretrained.PretrainedWeightsError, match="another version of 'm'.*make pretrain"):
        train.fit(tiny(hidden=24), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="m")
    with pytest.raises(pretrained.PretrainedWeightsError, match="another version of 'm'"):
        train.fit(tiny(), other_loss, x, epochs=1, batch_size=32, progress=False, cache="m")


def test_a_file_that_would_run_code_is_never_unpickled(x, monkeypatch, tmp_path):
    _, _, path = pretrain(x, monkeypatch)

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    path.write_bytes(pickle.dumps({"format": 1, "model": Boom()}))
    pretrained.write_sums(path.parent)
    with pytest.raises(pretrained.PretrainedWeightsError, match="cannot be read"):
        train.fit(tiny(), neg_elbo, x, epochs=1, batch_size=32, progress=False, cache="m")


def test_the_shipped_weights_verify_and_fit_the_size_limit():
    folder = cache.PROJECT_ROOT / "data" / "weights"
    files = sorted(folder.glob("*.pt"))
    if not files:
        pytest.skip("no shipped weights in data/weights (make pretrain writes them)")
    sums = pretrained.read_sums(folder)
    assert sorted(sums) == [p.name for p in files], "SHA256SUMS must list exactly the shipped files"
    for path in files:
        assert pretrained.sha256(path) == sums[path.name], f"{path.name} does not match SHA256SUMS"
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert blob["format"] == pretrained.FORMAT and blob["trained"]["epochs"] >= 1, path.name
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 40_000_000, "at most 40 MB in all"


def test_verify_all_names_a_damaged_or_unlisted_file(x, monkeypatch):
    _, _, path = pretrain(x, monkeypatch)
    rows = pretrained.verify_all()
    assert [r["file"] for r in rows] == ["m.pt"] and rows[0]["bytes"] == path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(pretrained.PretrainedWeightsError, match="m.pt does not match"):
        pretrained.verify_all()
    (path.parent / "extra.pt").write_bytes(b"x")
    with pytest.raises(pretrained.PretrainedWeightsError, match="extra.pt is not listed"):
        pretrained.verify_all()


def test_a_sensitive_matrix_stays_float16_while_the_others_go_int8():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    sensitive = model[0].weight.detach().clone()
    q, scale = pretrained._quantize(sensitive)
    int8_error = ((pretrained._dequantize(q, scale) - sensitive) ** 2).sum()
    weight = 1e-2 / int8_error  # int8 of this matrix moves the loss by 1% (ten times the tolerance); float16 by far less

    def loss_fn(m, x):
        return {"loss": 1.0 + weight * ((m[0].weight - sensitive) ** 2).sum() + 0.0 * m(x).sum()}

    how, label, change = pretrained._smallest_faithful(model, loss_fn, (torch.randn(32, 64),))
    assert how == {"1.weight"} and label == "int8 (1 of 2 matrices) + float16", (how, label)
    assert change <= pretrained.STORAGE_TOLERANCE
    tensors, scales = pretrained._compact(model.state_dict(), how)
    assert tensors["1.weight"].dtype == torch.int8 and tensors["0.weight"].dtype == torch.float16
