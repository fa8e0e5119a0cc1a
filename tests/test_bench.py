"""benchmarks/: the throughput benchmark run tiny on the CPU, the step timers, and the Pyro JIT workaround.

Few and fast: the benchmarks measure the course; these tests check that they measure what their labels say.
"""
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from course_utils.data import load_mnist, to_float
from course_utils.losses import neg_elbo
from course_utils.models import ConvConfig, ConvVAE, MLPVAE
from course_utils.pyro_vae import PyroVAE

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    """benchmarks/<name>.py imported as a module (the folder holds scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench, pyro_steps, timing = _script("bench"), _script("pyro_steps"), _script("timing")


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _binary(batch: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _off_the_cpu(reads: dict) -> dict:
    """The reads of a step that would also happen on a GPU: the data's range check (course_utils/data.py) runs
    on the CPU only, where reading a value costs nothing (tests/test_data.py shows it skipped elsewhere)."""
    return {where: n for where, n in reads.items() if where[1].split(":")[0] != "data.py"}


def test_quick_run_reports_both_parts(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--device", "cpu", "--quick", "--steps", "2", "--warmup", "1", "--batch-size", "16",
                       "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["command"].endswith(str(out)) and "--quick" in report["command"]
    assert (report["device"], report["steps"], report["batch_size"], report["torch"]) == ("cpu", 2, 16,
                                                                                          torch.__version__)
    pipelines = [row["pipeline"] for row in report["throughput"]]
    assert pipelines[0].startswith("course batches") and pipelines[1].startswith("DataLoader + ToTensor, num_workers=0")
    assert all(_positive_finite(row["images_per_s"]) for row in report["throughput"])
    assert report["step"] == "plain (eager)"  # a recorded CUDA graph only on a GPU

    pyro_part = report["pyro"]
    names = [r["variant"] for r in pyro_part["rows"]]
    assert pyro_part["batch_size"] == 16 and len(names) == 3
    assert not names[0].startswith("SVI") and pyro_part["rows"][0]["ratio"] == 1.0  # hand-written: the reference
    assert {"SVI + Trace_ELBO", "SVI + TraceMeanField_ELBO"} <= set(names)

    printed = capsys.readouterr().out
    assert "| pipeline | images/s | ms/step |" in printed and "| variant | ms/step | x hand-written |" in printed
    assert report["device_name"] in printed and report["date"] in printed
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--steps", "0"])


def test_tutorial_dataset_gives_the_same_images_as_the_course():
    images, labels = load_mnist("test")
    images, labels = images[:8], labels[:8]
    dataset = bench.ToTensorMNIST(images[:, 0].numpy(), labels.numpy())
    x0, y0 = dataset[3]
    assert x0.shape == (1, 28, 28) and y0 == int(labels[3])
    assert torch.equal(x0, to_float(images[3]))
    with pytest.raises(ValueError, match="uint8"):
        bench.ToTensorMNIST(images[:, 0].float().numpy(), labels.numpy())


def test_both_sources_yield_full_binary_batches_across_epochs():
    images, labels = load_mnist("test")
    images, labels = images[:40], labels[:40]
    dataset = bench.ToTensorMNIST(images[:, 0].numpy(), labels.numpy())
    sources = [bench.course_batches(to_float(images), batch_size=16),
               bench.loader_batches(dataset, 16, torch.device("cpu"), num_workers=1)]
    for source in sources:
        try:
            drawn = [next(source) for _ in range(5)]  # 2 full batches per epoch: crosses two epoch ends
        finally:
            source.close()
        for x in drawn:
            assert x.shape == (16, 1, 28, 28)
            assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert not torch.equal(drawn[0], drawn[2])  # a new epoch reshuffles and redraws the binarization


def test_the_step_is_the_courses_neg_elbo_and_a_graph_is_refused_off_cuda(device_reads):
    torch.manual_seed(0)
    model = ConvVAE(ConvConfig(z_dim=4, channels=(4, 8), hidden=16))
    x = (torch.rand(8, 1, 28, 28) < 0.5).float()
    torch.manual_seed(1)
    expected = neg_elbo(model, x)["loss"].detach()
    step = bench.conv_vae_step(model)
    torch.manual_seed(1)
    torch.testing.assert_close(step(x), expected)  # the loss of the step is the course's, before the update
    assert _off_the_cpu(device_reads(step, x)) == {}  # nothing read back per step: on a GPU it could be recorded
    with pytest.raises(ValueError, match="CUDA device"):
        bench.throughput_rows(torch.zeros(16, 1, 28, 28, dtype=torch.uint8), torch.zeros(16, dtype=torch.long),
                              torch.device("cpu"), batch_size=8, steps=1, warmup=0, num_workers=[], graph=True)


def test_time_steps_runs_warmup_untimed_then_the_timed_steps():
    calls = []

    def step(item):  # the warm-up items take 1 s each, the timed ones 0.05 s
        calls.append(item)
        time.sleep(1.0 if item < 2 else 0.05)

    seconds = timing.time_steps(step, iter(range(10)), "cpu", steps=3, warmup=2)
    assert calls == [0, 1, 2, 3, 4]
    assert 0.15 <= seconds < 2.0  # the three timed steps at least; the warm-up's 2 s not counted
    with pytest.raises(ValueError, match="steps >= 1"):
        timing.time_steps(calls.append, iter(range(10)), "cpu", steps=0)
    with pytest.raises(StopIteration):  # a source shorter than warmup + steps is not silently timed short
        timing.time_steps(calls.append, iter(range(2)), "cpu", steps=3)
    assert "cores" in timing.device_name("cpu")


def test_step_time_table_rows_and_markdown():
    x = _binary(16)
    variants = (pyro_steps.VARIANTS[0], pyro_steps.Variant("SVI + TraceMeanField_ELBO", TraceMeanField_ELBO))
    rows = pyro_steps.step_time_table(lambda: MLPVAE(z_dim=4, hidden=(16,)), x, batch_sizes=(8, 16),
                                      variants=variants, steps=2, rounds=2, warmup=1)
    assert [(r["variant"], r["batch_size"]) for r in rows] == [(v.name, b) for b in (8, 16) for v in variants]
    for ref, other in (rows[0:2], rows[2:4]):  # each ratio is against the hand-written row of its batch size
        assert ref["ratio"] == 1.0 and other["ratio"] == pytest.approx(other["ms_per_step"] / ref["ms_per_step"])
    table = pyro_steps.format_table(rows, "cpu")
    assert "| SVI + TraceMeanField_ELBO |" in table and "batch 16" in table
    with pytest.raises(ValueError, match="largest batch"):
        pyro_steps.step_time_table(lambda: MLPVAE(z_dim=4, hidden=(16,)), x, batch_sizes=(32,), variants=variants)
    with pytest.raises(ValueError, match=r"in \[0, 1\].*binarize"):  # checked once, untimed
        pyro_steps.step_time_table(lambda: MLPVAE(z_dim=4, hidden=(16,)), 2 * x, batch_sizes=(8,),
                                   variants=variants)


def test_every_step_variant_trains_and_a_no_sync_row_reads_nothing_back(device_reads):
    # the table's labels are claims about host syncs, which cost most on a GPU: count them here
    x = _binary(32)
    reads = {}
    for i, variant in enumerate(pyro_steps.VARIANTS):
        torch.manual_seed(0)
        net = MLPVAE(z_dim=4, hidden=(32,))
        step = pyro_steps.make_step(variant, net, lr=1e-2, name=f"v{i}")
        torch.manual_seed(1)
        start = neg_elbo(net, x)["loss"].item()
        jit = variant.elbo is not None and variant.elbo.__name__.startswith("Jit")
        for _ in range(3 if jit else 25):  # JIT: past its tracing (its estimate is tested below)
            step(x)
        torch.manual_seed(1)
        assert jit or neg_elbo(net, x)["loss"].item() < start - 50, variant.name
        reads[variant.name] = _off_the_cpu(device_reads(step, x))
    for name, found in reads.items():
        if "no sync" in name or name == "hand-written (torch Adam)":
            assert not found, (name, found)
    assert sum(reads["hand-written + float(loss) each step"].values()) == 1
    assert sum(reads["SVI + TraceMeanField_ELBO, validation off"].values()) == 1  # svi.step's float
    assert sum(reads["SVI + TraceMeanField_ELBO"].values()) > sum(
        reads["SVI + TraceMeanField_ELBO, validation off"].values())  # validation's checks read too


def test_jit_mean_field_once_compiles_once_and_estimates_the_same_elbo():
    # JitTraceMeanFieldOnce_ELBO reaches into Pyro's private _differentiable_loss: this test fails first when
    # a Pyro release moves it (pyproject bounds pyro-ppl for this reason)
    torch.manual_seed(0)
    net = MLPVAE(z_dim=4, hidden=(16,))
    vae = PyroVAE(net)
    model, guide = vae.model, vae.guide  # the same objects every call: the compiled loss is cached by their id
    x = _binary(8)
    elbo = pyro_steps.JitTraceMeanFieldOnce_ELBO(ignore_jit_warnings=True)
    elbo.differentiable_loss(model, guide, x)  # compiles
    python_calls = []
    hook = net.decoder.register_forward_hook(lambda *args: python_calls.append(1))
    with torch.no_grad():
        jit_values = torch.stack([elbo.differentiable_loss(model, guide, x) for _ in range(200)])
    hook.remove()
    assert python_calls == [], "the compiled loss ran the Python model again"
    assert len(elbo._differentiable_loss.compiled) == 1
    with torch.no_grad():
        eager_values = torch.stack([TraceMeanField_ELBO().differentiable_loss(model, guide, x) for _ in range(200)])
    standard_error = ((jit_values.var() + eager_values.var()) / 200).sqrt()
    assert abs(jit_values.mean() - eager_values.mean()) < 4 * standard_error + 1e-3
