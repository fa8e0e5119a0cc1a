"""benchmarks/recipe_02.py runs notebook 02's own model and training loop, read from the notebook."""
import math
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_run_trains_the_notebooks_model_and_scores_it(recipe, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    result = recipe.main(["--epochs", "2", "--n-train", "1024", "--batch", "256", "--k", "20", "--n-eval", "16",
                          "--channels", "16", "32", "--hidden", "128", "--decay", "0.9", "--seed", "3"])
    assert result["steps"] == 2 * (1024 // 256) and result["epochs"] == 2.0
    assert len(result["monitor_neg_elbo_by_epoch"]) == 2 and len(result["train_neg_elbo_by_epoch"]) == 2
    assert result["channels"] == [16, 32] and result["hidden"] == 128 and result["z_dim"] == 32
    namespace = recipe.notebook_namespace()
    assert result["decay"] == 0.9 and result["warmup"] == namespace["TrainConfig"]().warmup and result["seed"] == 3
    smaller = namespace["VAE"](namespace["VAEConfig"](channels=(16, 32), hidden=128))
    assert result["parameters"] == sum(p.numel() for p in smaller.parameters())
    untrained = 784 * math.log(2)  # about what a fresh decoder pays per image
    # eight steps at the recipe's warm-up learning rate already move the model off the starting line
    assert result["test_neg_elbo"] < untrained - 50, result
    assert 0 < result["iw_nll"] < result["test_neg_elbo"] + 3 * result["iw_se"], result
    # the control-variate estimate for all digits: the ELBO of all digits minus the mean IW gain on the scored ones
    gain = result["neg_elbo_eval"] - result["iw_nll"]
    assert gain > 0 and abs(result["iw_nll_all_cv"] - (result["test_neg_elbo"] - gain)) < 0.02, result
    assert 0 < result["iw_nll_all_cv_se"], result
    assert result["iw_nll_fp32"] is None  # the full-float32 rescoring runs on a GPU only (a CPU has no TF32)
    assert result["cuda_graph"] is False  # on the CPU, the plain step: recording a CUDA graph needs CUDA


def test_full_float32_turns_tf32_off_and_restores_the_settings(recipe):
    import torch
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high")  # as notebook 02's set-up cell does on a GPU
    try:
        with pytest.raises(ZeroDivisionError):
            with recipe.full_float32():
                assert torch.get_float32_matmul_precision() == "highest"
                assert torch.backends.cudnn.allow_tf32 is False
                1 / 0
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 == before[1]
    finally:
        torch.set_float32_matmul_precision(before[0])


def test_a_run_limited_by_epochs_does_not_depend_on_the_clock(recipe, monkeypatch):
    # on a CPU the epoch limit stops training long before the clock: two runs must then give the same weights
    # however fast the machine is (the first step's learning rate used to be read off the clock)
    import itertools
    import torch
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    namespace = recipe.notebook_namespace()
    x = torch.rand(256, 1, 28, 28)
    weights = []
    for seconds_per_read in (1e-6, 0.01):  # a fast machine and a slow one
        ticks = itertools.count()
        monkeypatch.setattr(namespace["time"], "perf_counter", lambda: next(ticks) * seconds_per_read)
        torch.manual_seed(0)
        model = namespace["VAE"](namespace["VAEConfig"](channels=(8, 16), hidden=32))
        cfg = namespace["TrainConfig"](time_budget_s=300, max_epochs=2, batch_size=64)
        namespace["train_within_budget"](model, namespace["train_neg_elbo"], x, cfg)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_an_interrupted_training_keeps_what_it_learned(recipe, monkeypatch, capsys):
    # Ctrl-C (or Jupyter's stop button) in the middle of notebook 02's loop: the weights stay trained, the full
    # epochs stay in the history, and nothing is written to the cache as if the run had completed
    import torch
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    namespace = recipe.notebook_namespace()
    model = namespace["VAE"](namespace["VAEConfig"](channels=(8, 16), hidden=32))
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def interrupted_on_the_sixth_step(model, x_gray):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return namespace["train_neg_elbo"](model, x_gray)

    saved = []
    monkeypatch.setattr(namespace["train"], "save_checkpoint", lambda *args: saved.append(args))
    cfg = namespace["TrainConfig"](max_epochs=3, batch_size=64)
    history = namespace["train_within_budget"](model, interrupted_on_the_sixth_step, torch.rand(256, 1, 28, 28), cfg,
                                               cache="test-interrupt")
    assert history["stopped"] == "interrupted" and history["steps"] == 5 and history["epoch"] == [1.0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it learned, and kept it
    assert not saved and "keeps what it learned" in capsys.readouterr().out


def test_the_notebooks_definitions_are_all_found(recipe):
    namespace = recipe.notebook_namespace()
    for name in ("VAE", "VAEConfig", "neg_elbo", "neg_elbo_per_image", "train_neg_elbo", "TrainConfig",
                 "train_within_budget"):
        assert name in namespace, name
    assert namespace["TEST_BINARIZATION_SEED"] == 0


def test_the_recipe_trains_the_notebooks_large_model(recipe):
    # the script builds VAEConfig() with its defaults: they must be the notebook's z = 32 model, BIG
    sources = [c.source for c in nbformat.read(recipe.NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    lines = [m.group(1) for src in sources for m in [re.search(r"^BIG = (VAEConfig\(.*\))$", src, flags=re.M)] if m]
    assert len(lines) == 1, lines
    namespace = recipe.notebook_namespace()
    assert eval(lines[0], namespace) == namespace["VAEConfig"](), lines[0]


def test_a_renamed_cell_is_reported_clearly(recipe, tmp_path):
    nb = nbformat.read(recipe.NOTEBOOK, as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace("class TrainConfig", "class TrainingConfig")
    changed = tmp_path / "02.ipynb"
    nbformat.write(nb, changed)
    with pytest.raises(RuntimeError, match="class TrainConfig.*update DEFINITIONS"):
        recipe.notebook_namespace(changed)


def test_the_device_scripts_recipe_calls_parse(recipe):
    # benchmarks/gpu_check.sh runs the recipe on a GPU, where a typo would waste scarce device time
    import shlex
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    score = re.search(r'^\s*score="([^"]*)"', text, flags=re.M).group(1)
    lines = [line.split("benchmarks/recipe_02.py", 1)[1].replace("$score", score) for line in text.splitlines()
             if "benchmarks/recipe_02.py" in line and not line.lstrip().startswith("#")]
    assert len(lines) >= 3, lines
    calls = [recipe.build_parser().parse_args(shlex.split(line)) for line in lines]
    for call in calls:  # the notebook's budget on the clock, and the target's scoring
        assert (call.budget_s, call.k, call.n_eval) == (30, 5000, 10_000), call
    headline = calls[0]  # the notebook's own recipe
    assert (headline.batch, headline.lr, headline.hidden, headline.channels) == (512, 3e-3, None, None), headline


def test_the_throughput_benchmark_trains_the_same_model(recipe):
    # course_utils.bench times "notebook 02's model" with the course's ConvVAE: the same layers, so the same
    # weights' shapes (the notebook's two heads, to_loc and to_logvar, are one layer of twice the width there)
    import torch
    from course_utils import bench
    from course_utils.models import ConvVAE
    namespace = recipe.notebook_namespace()
    notebook = namespace["VAE"](namespace["VAEConfig"]())
    course = ConvVAE(bench.NOTEBOOK_02_MODEL)
    assert sum(p.numel() for p in notebook.parameters()) == sum(p.numel() for p in course.parameters())
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters() if p.dim() > 1)
    heads = [s for s in shapes(notebook) if s[0] == 32]  # to_loc, to_logvar: [32, hidden] each
    assert len(heads) == 2
    merged = sorted([s for s in shapes(notebook) if s[0] != 32] + [(64, heads[0][1])])
    assert merged == shapes(course), (shapes(notebook), shapes(course))
    z = torch.zeros(2, 32)
    assert notebook.decode(z).shape == course.decode(z).shape == (2, 1, 28, 28)
