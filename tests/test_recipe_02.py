"""benchmarks/recipe_02.py trains the course's model with notebook 07's loop (course_utils.speedrun)."""
import itertools
import math
import re
from pathlib import Path

import nbformat
import pytest
import torch

from course_utils import models, speedrun

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_run_trains_the_course_model_and_scores_it(recipe, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    result = recipe.main(["--epochs", "2", "--n-train", "2048", "--batch", "256", "--k", "20", "--n-eval", "16",
                          "--channels", "16", "32", "--hidden", "128", "--decay", "0.9", "--seed", "3"])
    assert result["steps"] == 2 * (2048 // 256) and result["epochs"] == 2.0
    assert len(result["monitor_neg_elbo_by_epoch"]) == 2 and len(result["train_neg_elbo_by_epoch"]) == 2
    assert result["channels"] == [16, 32] and result["hidden"] == 128 and result["z_dim"] == 32
    assert result["decay"] == 0.9 and result["warmup"] == speedrun.TrainConfig().warmup and result["seed"] == 3
    smaller = models.ConvVAE(models.ConvConfig(channels=(16, 32), hidden=128))
    assert result["parameters"] == sum(p.numel() for p in smaller.parameters())
    untrained = 784 * math.log(2)  # about what a fresh decoder pays per image
    # sixteen steps of the recipe already move the model off the starting line
    assert result["test_neg_elbo"] < untrained - 50, result
    assert 0 < result["iw_nll"] < result["test_neg_elbo"] + 3 * result["iw_se"], result
    # the control-variate estimate for all digits: the ELBO of all digits minus the mean IW gain on the scored ones
    gain = result["neg_elbo_eval"] - result["iw_nll"]
    assert gain > 0 and abs(result["iw_nll_all_cv"] - (result["test_neg_elbo"] - gain)) < 0.02, result
    assert 0 < result["iw_nll_all_cv_se"], result
    assert result["iw_nll_fp32"] is None  # the full-float32 rescoring runs on a GPU only (a CPU has no TF32)
    assert result["cuda_graph"] is False  # on the CPU, the plain step: recording a CUDA graph needs CUDA


def test_full_float32_turns_tf32_off_and_restores_the_settings(recipe):
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high")  # as the recipe does on a GPU
    try:
        with pytest.raises(ZeroDivisionError):
            with recipe.full_float32():
                assert torch.get_float32_matmul_precision() == "highest"
                assert torch.backends.cudnn.allow_tf32 is False
                1 / 0
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 == before[1]
    finally:
        torch.set_float32_matmul_precision(before[0])


def _small_model():
    torch.manual_seed(0)
    return models.ConvVAE(models.ConvConfig(channels=(8, 16), hidden=32))


def test_a_run_limited_by_epochs_does_not_depend_on_the_clock(monkeypatch):
    # on a CPU the epoch limit stops training long before the clock: two runs must then give the same weights
    # however fast the machine is (the first step's learning rate used to be read off the clock)
    x = torch.rand(256, 1, 28, 28)
    weights = []
    for seconds_per_read in (1e-6, 0.01):  # a fast machine and a slow one
        ticks = itertools.count()
        monkeypatch.setattr(speedrun.time, "perf_counter", lambda: next(ticks) * seconds_per_read)
        model = _small_model()
        cfg = speedrun.TrainConfig(time_budget_s=300, max_epochs=2, batch_size=64)
        history = speedrun.train_within_budget(model, speedrun.train_neg_elbo, x, cfg, progress=False)
        assert history["steps"] == 8 and len(history["step_loss"]) == 8 and history["epoch"] == [1.0, 2.0]
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_the_clock_stops_training_and_drives_the_schedule(monkeypatch):
    # a clock that advances 1 s per read and a 10-s budget: training stops before the epoch limit, and the
    # learning rate of the last logged epoch has fallen (the schedule follows the clock, not the epochs)
    ticks = itertools.count()
    monkeypatch.setattr(speedrun.time, "perf_counter", lambda: float(next(ticks)))
    cfg = speedrun.TrainConfig(time_budget_s=10.0, max_epochs=50, batch_size=64)
    history = speedrun.train_within_budget(_small_model(), speedrun.train_neg_elbo, torch.rand(256, 1, 28, 28), cfg,
                                           progress=False)
    assert history["stopped"] == "completed" and 1 <= history["steps"] < 50 * 4
    assert history["lr"][-1] < cfg.peak_lr


def test_an_interrupted_training_keeps_what_it_learned(monkeypatch, capsys):
    # Ctrl-C (or Jupyter's stop button) in the middle of notebook 07's loop: the weights stay trained, the full
    # epochs stay in the history, and nothing is written to the cache as if the run had completed
    model = _small_model()
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def interrupted_on_the_sixth_step(model, x_gray):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return speedrun.train_neg_elbo(model, x_gray)

    saved = []
    monkeypatch.setattr(speedrun.train, "save_checkpoint", lambda *args: saved.append(args))
    cfg = speedrun.TrainConfig(max_epochs=3, batch_size=64)
    history = speedrun.train_within_budget(model, interrupted_on_the_sixth_step, torch.rand(256, 1, 28, 28), cfg,
                                           cache="test-interrupt", progress=False)
    assert history["stopped"] == "interrupted" and history["steps"] == 5 and history["epoch"] == [1.0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it learned, and kept it
    assert not saved and "keeps what it learned" in capsys.readouterr().out


def test_the_speedrun_trains_notebook_02s_large_model_at_gpu_widths():
    # 07 and the benchmarks build speedrun.MODEL: 02's `BIG = VAEConfig(...)` with the same latent size, at
    # widths no narrower than 02's (02 ships a model a 2-core CPU can train; the GPU run trains a wider one)
    path = ROOT / "notebooks" / "02_bernoulli_vae.ipynb"
    sources = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    found = [m.group(1) for src in sources for m in [re.search(r"^BIG = VAEConfig\((.*)\)$", src, flags=re.M)] if m]
    assert len(found) == 1, found
    sizes = eval(f"dict({found[0]})")
    assert speedrun.MODEL.z_dim == sizes["z_dim"], (sizes, speedrun.MODEL)
    assert len(speedrun.MODEL.channels) == len(sizes["channels"]), (sizes, speedrun.MODEL)
    assert all(a >= b for a, b in zip(speedrun.MODEL.channels, sizes["channels"])), (sizes, speedrun.MODEL)
    assert speedrun.MODEL.hidden >= sizes["hidden"], (sizes, speedrun.MODEL)


def test_the_device_scripts_recipe_calls_parse(recipe):
    # benchmarks/gpu_check.sh runs the recipe on a GPU, where a typo would waste scarce device time
    import shlex
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    score = re.search(r'^\s*score="([^"]*)"', text, flags=re.M).group(1)
    lines = [line.split("benchmarks/recipe_02.py", 1)[1].replace("$score", score) for line in text.splitlines()
             if "benchmarks/recipe_02.py" in line and not line.lstrip().startswith("#")]
    assert len(lines) >= 3, lines
    calls = [recipe.build_parser().parse_args(shlex.split(line)) for line in lines]
    for call in calls:  # 07's budget on the clock, and the target's scoring
        assert (call.budget_s, call.k, call.n_eval) == (30, 5000, 10_000), call
    headline = calls[0]  # 07's own recipe
    assert (headline.batch, headline.lr, headline.hidden, headline.channels) == (512, 3e-3, None, None), headline
