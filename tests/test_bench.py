"""The throughput benchmark, run tiny on the CPU: its report's structure, and its pieces."""
import json
import math

import pytest
import torch

from course_utils import bench
from course_utils.data import load_mnist, to_float


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_reports_both_parts(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["--device", "cpu", "--quick", "--steps", "2", "--warmup", "1", "--batch-size", "16",
                       "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    for key in ("device", "device_name", "torch", "date", "command", "steps", "batch_size", "throughput",
                "ratio_vs_best_loader", "pyro"):
        assert key in report, key
    assert report["command"].endswith(str(out)) and "--quick" in report["command"]
    assert (report["device"], report["steps"], report["batch_size"], report["torch"]) == ("cpu", 2, 16,
                                                                                          torch.__version__)
    pipelines = [row["pipeline"] for row in report["throughput"]]
    assert pipelines[0].startswith("course batches") and pipelines[1].startswith("DataLoader + ToTensor, num_workers=0")
    for row in report["throughput"]:
        assert _positive_finite(row["images_per_s"]) and _positive_finite(row["ms_per_step"])
        assert row["images_per_s"] == pytest.approx(2 * 16 / row["seconds"])
    assert _positive_finite(report["ratio_vs_best_loader"])
    assert report["step"] == "plain (eager)"  # a recorded CUDA graph only on a GPU

    pyro = report["pyro"]
    assert pyro["batch_size"] == 16 and len(pyro["rows"]) == 3
    assert pyro["rows"][0]["ratio"] == pytest.approx(1.0)  # the hand-written step is the reference
    assert all(_positive_finite(r["ms_per_step"]) and _positive_finite(r["ratio"]) for r in pyro["rows"])
    assert {"SVI + Trace_ELBO", "SVI + TraceMeanField_ELBO"} <= {r["variant"] for r in pyro["rows"]}
    assert _positive_finite(pyro["ratio"])

    printed = capsys.readouterr().out
    assert "| pipeline | images/s | ms/step |" in printed and "| variant | ms/step | x hand-written |" in printed
    assert report["device_name"] in printed and report["date"] in printed


def test_pyro_rows_time_the_hand_written_step_and_svi():
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.3))
    rows = bench.pyro_rows(x, batch_size=8, steps=1, warmup=1, few=True)
    names = [r["variant"] for r in rows]
    assert len(names) == 3 and not names[0].startswith("SVI") and all(n.startswith("SVI") for n in names[1:])
    assert rows[0]["ratio"] == 1.0 and all(_positive_finite(r["ms_per_step"]) for r in rows)


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


def test_time_steps_and_arguments_are_checked():
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.time_steps(lambda x: None, iter([]), torch.device("cpu"), steps=0, warmup=0)
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--steps", "0"])


def test_the_step_is_notebook_02s_and_a_graph_is_refused_off_cuda(device_reads):
    model = bench.ConvVAE(bench.ConvConfig(z_dim=4, channels=(4, 8), hidden=16))
    step = bench.conv_vae_step(model)
    x = (torch.rand(8, 1, 28, 28) < 0.5).float()
    first = step(x)
    assert first.dim() == 0 and torch.isfinite(first)
    assert device_reads(step, x) == {}  # nothing read back per step: on a GPU it could be recorded
    with pytest.raises(ValueError, match="CUDA device"):
        bench.throughput_rows(torch.zeros(16, 1, 28, 28, dtype=torch.uint8), torch.zeros(16, dtype=torch.long),
                              torch.device("cpu"), batch_size=8, steps=1, warmup=0, num_workers=[], graph=True)


def test_neither_source_reads_back_from_the_device_per_batch(monkeypatch):
    # binarize's range check (x.min() < 0 ...) is a host sync per call on a GPU: inside the timed loop it would
    # stall both pipelines, the course's most, and bias the very ratio the benchmark reports
    from course_utils import data
    checks = []

    def spy(x, generator=None, check=True):
        checks.append(check)
        return data.binarize(x, generator, check)

    monkeypatch.setattr(bench, "binarize", spy)
    images, labels = load_mnist("test")
    dataset = bench.ToTensorMNIST(images[:32, 0].numpy(), labels[:32].numpy())
    for source in (bench.course_batches(to_float(images[:32]), batch_size=16),
                   bench.loader_batches(dataset, 16, torch.device("cpu"), num_workers=0)):
        try:
            next(source), next(source)
        finally:
            source.close()
    assert checks == [False] * 4, checks
