"""benchmarks/recipe_02.py runs notebook 02's own model and training loop, read from the notebook."""
import importlib.util
import math
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("recipe_02", ROOT / "benchmarks" / "recipe_02.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_trains_the_notebooks_model_and_scores_it(recipe, monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    result = recipe.main(["--epochs", "2", "--n-train", "1024", "--batch", "256", "--k", "20", "--n-eval", "16",
                          "--channels", "16", "32", "--hidden", "128", "--decay", "0.9"])
    assert result["steps"] == 2 * (1024 // 256) and result["epochs"] == 2.0
    assert len(result["monitor_neg_elbo_by_epoch"]) == 2 and len(result["train_neg_elbo_by_epoch"]) == 2
    assert result["channels"] == [16, 32] and result["hidden"] == 128 and result["z_dim"] == 32
    namespace = recipe.notebook_namespace()
    assert result["decay"] == 0.9 and result["warmup"] == namespace["TrainConfig"]().warmup
    smaller = namespace["VAE"](namespace["VAEConfig"](channels=(16, 32), hidden=128))
    assert result["parameters"] == sum(p.numel() for p in smaller.parameters())
    untrained = 784 * math.log(2)  # about what a fresh decoder pays per image
    # eight steps at the recipe's warm-up learning rate already move the model off the starting line
    assert result["test_neg_elbo"] < untrained - 50, result
    assert 0 < result["iw_nll"] < result["test_neg_elbo"] + 3 * result["iw_se"], result


def test_the_notebooks_definitions_are_all_found(recipe):
    namespace = recipe.notebook_namespace()
    for name in ("VAE", "VAEConfig", "neg_elbo", "train_neg_elbo", "TrainConfig", "train_within_budget"):
        assert name in namespace, name
    assert namespace["TEST_BINARIZATION_SEED"] == 0


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
    lines = [line for line in (ROOT / "benchmarks" / "gpu_check.sh").read_text().splitlines()
             if "benchmarks/recipe_02.py" in line and not line.lstrip().startswith("#")]
    assert len(lines) >= 3, lines
    for line in lines:
        args = recipe.build_parser().parse_args(shlex.split(line.split("benchmarks/recipe_02.py", 1)[1]))
        assert args.budget_s == 30, line  # the notebook's budget, on the clock, not a number of epochs
    headline = recipe.build_parser().parse_args(shlex.split(lines[0].split("recipe_02.py", 1)[1]))
    assert (headline.k, headline.n_eval, headline.batch, headline.lr) == (5000, 10_000, 512, 3e-3)
