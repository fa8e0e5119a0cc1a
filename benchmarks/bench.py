"""Throughput benchmark: the course's device-resident batches vs the tutorial DataLoader pipeline,
and the time per step of the Pyro VAE vs the hand-written one (issue 10, BENCHMARKS.md).

    python benchmarks/bench.py                         # best device, 300 timed steps per row (make bench)
    python benchmarks/bench.py --device cpu --quick --json bench.json

Part 1 trains notebook 02's large model (``NOTEBOOK_02_MODEL``: z = 32, channels 64 and 128, 1,024 hidden
units; Bernoulli negative ELBO, dynamic binarization, Adam) for a fixed number of steps, at notebook 02's
batch size on a GPU (512; 128 elsewhere), fed two ways, side by side in one run:

- **course batches**: all of MNIST lives on the device as floats; ``course_utils.data.batches``
  slices shuffled mini-batches there and ``binarize`` draws the binary images there;
- **DataLoader**: what a learner copies from a tutorial: a dataset that turns each uint8 image into
  a PIL image and through ``transforms.ToTensor()`` (exactly what ``torchvision.datasets.MNIST``
  does per item), ``torch.utils.data.DataLoader(shuffle=True, pin_memory=<on cuda>)``, then the
  batch is copied to the device and binarized there. Binarizing on the device (not per image in
  the workers) keeps the two pipelines' arithmetic identical, so the ratio measures only the input
  pipeline, and favours the DataLoader. One row per worker count: 0 (PyTorch's quickstart tutorial),
  1 (what pytorch/examples' VAE uses on CUDA) and 4 (a tuned loader); the headline ratio is against the
  fastest of them.

Same model, same initial weights, same batch size, same step; warm-up steps are excluded and the
device is synchronized before the clock starts and after the last step. On a GPU the step is the one
notebook 02 takes there: fused Adam, recorded once as a CUDA graph and replayed (``--no-graph`` for the
plain step); elsewhere the plain step.

Part 2 times one optimization step of ``MLPVAE`` as Pyro SVI and as hand-written PyTorch on the
same batches (notebook 04's comparison), through ``benchmarks/pyro_steps.py``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from course_utils.data import batches, binarize, load_mnist, to_float
from course_utils.losses import neg_elbo
from course_utils.models import ConvConfig, ConvVAE, MLPVAE
from course_utils.runtime import get_device, is_quick
from course_utils.speedrun import cuda_graphed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyro_steps  # noqa: E402  (benchmarks/pyro_steps.py; it imports Pyro)
from timing import device_name, time_steps  # noqa: E402  (benchmarks/timing.py)

# Notebook 02's `BIG = VAEConfig(z_dim=32, channels=(64, 128), hidden=1024)`, written with the course's ConvVAE
# (the same layers; tests/test_recipe_02.py checks that the two have the same weights' shapes).
NOTEBOOK_02_MODEL = ConvConfig(z_dim=32, channels=(64, 128), hidden=1024)

Step = Callable[[torch.Tensor], object]


# ----------------------------------------------------------------------------------------
# Part 1: the two input pipelines
# ----------------------------------------------------------------------------------------
class ToTensorMNIST(torch.utils.data.Dataset):
    """MNIST the tutorial way: each item is a uint8 array made a PIL image, then ``transforms.ToTensor()``.

    ``torchvision.datasets.MNIST.__getitem__`` does the same per item (``Image.fromarray(img, mode="L")``
    and the transform); this class skips only its raw-folder layout, so it reads the course's shipped files.
    images: uint8 ``[N, 28, 28]``; labels: int64 ``[N]``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"ToTensorMNIST wants uint8 images [N, H, W], got {images.dtype} {images.shape}.")
        self.images, self.labels = images, labels
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        image = Image.fromarray(self.images[i], mode="L")
        return self.transform(image), int(self.labels[i])  # [1, 28, 28] floats in [0, 1]


def course_batches(x: torch.Tensor, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless binary batches ``[B, 1, 28, 28]`` from float images ``x`` that already live on the device."""
    generator = torch.Generator(x.device).manual_seed(seed)
    for _epoch in itertools.count():
        for (x_gray,) in batches(x, batch_size=batch_size, shuffle=True, generator=generator, drop_last=True):
            yield binarize(x_gray)  # on a GPU binarize reads nothing back: no host sync per step


def loader_batches(dataset: torch.utils.data.Dataset, batch_size: int, device: torch.device,
                   num_workers: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless binary batches from a shuffling DataLoader, copied to ``device`` and binarized there.

    A new epoch starts a new pass of the loader, as in a training loop; the workers persist.
    """
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=num_workers, pin_memory=pin,
                                         persistent_workers=num_workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    for _epoch in itertools.count():
        for x_gray, _labels in loader:
            yield binarize(x_gray.to(device, non_blocking=pin))  # ToTensor's range is [0, 1]


def conv_vae_step(model: ConvVAE, lr: float = 1e-3, *, graph_example: torch.Tensor | None = None) -> Step:
    """One Adam step on the mean Bernoulli negative ELBO of a batch of binary images (notebook 02's loss);
    the step returns the loss, still on the device.

    On a GPU, Adam is fused, as in notebook 02; with ``graph_example`` (a CUDA batch of the shape every batch
    will have) the step is recorded once as a CUDA graph and replayed, as notebook 02 trains on a GPU
    (``course_utils.train.cuda_graphed``).
    """
    on_gpu = next(model.parameters()).device.type == "cuda"
    graphed = graph_example is not None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=on_gpu, capturable=graphed)

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = neg_elbo(model, x)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return cuda_graphed(step, graph_example, model, optimizer, fallback=False) if graphed else step


def throughput_rows(images: torch.Tensor, labels: torch.Tensor, device: torch.device, *, batch_size: int,
                    steps: int, warmup: int, num_workers: Sequence[int], seed: int = 0,
                    graph: bool = False) -> list[dict]:
    """Images per second of the conv VAE fed by course batches and by a DataLoader per ``num_workers``.

    images: uint8 ``[N, 1, 28, 28]`` on the CPU (``load_mnist``), labels ``[N]``. Every row starts from
    the same initial weights and takes the same step: with ``graph`` (CUDA only), notebook 02's recorded one.
    Rows: ``{"pipeline", "num_workers", "seconds", "ms_per_step", "images_per_s"}``.
    """
    if graph and device.type != "cuda":
        raise ValueError(f"a recorded CUDA graph step needs a CUDA device, not {device}: pass graph=False.")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"throughput_rows wants uint8 images [N, 1, H, W] from load_mnist, got {images.dtype} "
                         f"{tuple(images.shape)}.")
    if images.shape[0] < batch_size:
        raise ValueError(f"{images.shape[0]} images are fewer than one batch of {batch_size}.")
    x_device = to_float(images.to(device))  # [N, 1, 28, 28] floats in [0, 1], on the device
    dataset = ToTensorMNIST(images[:, 0].numpy(), labels.numpy())  # [N, 1, 28, 28] -> [N, 28, 28]
    sources = [("course batches (data and binarization on the device)", None,
                lambda: course_batches(x_device, batch_size, seed))]
    for workers in num_workers:
        pin = " + pin_memory" if device.type == "cuda" else ""
        sources.append((f"DataLoader + ToTensor, num_workers={workers}{pin}", workers,
                        lambda w=workers: loader_batches(dataset, batch_size, device, w, seed)))
    rows = []
    for pipeline, workers, make_source in sources:
        torch.manual_seed(seed)
        model = ConvVAE(NOTEBOOK_02_MODEL).to(device)
        # recording needs one batch of the right shape: taken from the device before any loader thread starts
        example = binarize(x_device[:batch_size]) if graph else None
        step = conv_vae_step(model, graph_example=example)
        source = make_source()
        try:
            seconds = time_steps(step, source, device, steps=steps, warmup=warmup)
        finally:
            source.close()  # shuts the DataLoader's workers down
        rows.append({"pipeline": pipeline, "num_workers": workers, "seconds": seconds,
                     "ms_per_step": 1000.0 * seconds / steps, "images_per_s": steps * batch_size / seconds})
    return rows


# ----------------------------------------------------------------------------------------
# Part 2: Pyro vs hand-written (notebook 04)
# ----------------------------------------------------------------------------------------
def _wanted(variant, include_jit: bool, few: bool) -> bool:
    """Which of ``pyro_steps.VARIANTS`` to time: JIT ones only on request; ``few`` keeps the plain
    hand-written step and SVI with each ELBO at Pyro's defaults."""
    jit = variant.elbo is not None and variant.elbo.__name__.startswith("Jit")
    if few:
        return not jit and (not variant.sync if variant.elbo is None else variant.svi and variant.validate)
    return include_jit or not jit


def pyro_rows(x: torch.Tensor, *, batch_size: int, steps: int, warmup: int, include_jit: bool = False,
              few: bool = False, seed: int = 0) -> list[dict]:
    """Milliseconds per step of ``MLPVAE(z_dim=20)`` trained hand-written and with Pyro on the same batches.

    x: binary images ``[N, 1, 28, 28]`` on the device, N >= batch_size. ``few`` times only the
    hand-written step and SVI with Trace_ELBO and TraceMeanField_ELBO. Returns rows
    ``{"variant", "ms_per_step", "ratio"}`` (``pyro_steps.step_time_table``) with
    ratio = ms / the hand-written ms.
    """
    def make_net() -> MLPVAE:
        return MLPVAE(z_dim=20, hidden=(400,)).to(x.device)

    variants = [v for v in pyro_steps.VARIANTS if _wanted(v, include_jit, few)]
    rows = pyro_steps.step_time_table(make_net, x, batch_sizes=(batch_size,), variants=variants, steps=steps,
                                    warmup=warmup, seed=seed)
    return [{"variant": r["variant"], "ms_per_step": r["ms_per_step"], "ratio": r["ratio"]} for r in rows]


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------
def run(*, device: torch.device, steps: int, warmup: int, batch_size: int, num_workers: Sequence[int],
        pyro_batch_size: int, limit: int | None, include_jit: bool, few_variants: bool = False,
        seed: int = 0, graph: bool | None = None) -> dict:
    """Both parts of the benchmark; returns the report as a dict (what ``--json`` writes).

    graph: part 1's step recorded as a CUDA graph, as notebook 02 trains (default: on a CUDA device)."""
    graph = device.type == "cuda" if graph is None else graph
    images, labels = load_mnist("train")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    throughput = throughput_rows(images, labels, device, batch_size=batch_size, steps=steps, warmup=warmup,
                                 num_workers=num_workers, seed=seed, graph=graph)
    course, loaders = throughput[0], throughput[1:]
    best_loader = max(loaders, key=lambda r: r["images_per_s"]) if loaders else None
    n_pyro = min(len(images), 4 * pyro_batch_size)
    x_pyro = binarize(to_float(images[:n_pyro].to(device)), generator=torch.Generator(device).manual_seed(seed))
    pyro_table = pyro_rows(x_pyro, batch_size=pyro_batch_size, steps=steps, warmup=warmup,
                                   include_jit=include_jit, few=few_variants, seed=seed)
    by_name = {r["variant"]: r for r in pyro_table}
    headline = by_name.get("SVI + TraceMeanField_ELBO") or pyro_table[-1]
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "date": dt.date.today().isoformat(),
        "steps": steps,
        "warmup": warmup,
        "batch_size": batch_size,
        "step": "recorded CUDA graph, as notebook 02 on a GPU" if graph else "plain (eager)",
        "model": f"ConvVAE(z_dim={NOTEBOOK_02_MODEL.z_dim}, channels={NOTEBOOK_02_MODEL.channels}, "
                 f"hidden={NOTEBOOK_02_MODEL.hidden})",
        "images": len(images),
        "throughput": throughput,
        "ratio_vs_best_loader": course["images_per_s"] / best_loader["images_per_s"] if best_loader else None,
        "best_loader": best_loader["pipeline"] if best_loader else None,
        "pyro": {"batch_size": pyro_batch_size, "rows": pyro_table,
                 "headline_variant": headline["variant"], "ratio": headline["ratio"]},
    }


def format_report(report: dict) -> str:
    """The report as markdown: a header line, the throughput table, the Pyro table."""
    lines = [
        f"## Throughput: notebook 02's {report['model']}, Bernoulli negative ELBO, dynamic binarization, Adam",
        "",
        f"device: {report['device']} ({report['device_name']}) | torch {report['torch']} | {report['date']} | "
        f"{report['steps']} timed steps after {report['warmup']} warm-up | batch size {report['batch_size']} | "
        f"{report['images']} training images | step: {report['step']}",
        "",
        "| pipeline | images/s | ms/step | speed-up of course batches |",
        "|---|---:|---:|---:|",
    ]
    course_rate = report["throughput"][0]["images_per_s"]
    for row in report["throughput"]:
        lines.append(f"| {row['pipeline']} | {row['images_per_s']:,.0f} | {row['ms_per_step']:.2f} | "
                     f"{course_rate / row['images_per_s']:.2f}x |")
    if report["ratio_vs_best_loader"] is not None:
        lines += ["", f"Speed-up of course batches over the fastest DataLoader ({report['best_loader']}): "
                      f"**{report['ratio_vs_best_loader']:.1f}x**"]
    pyro = report["pyro"]
    lines += [
        "",
        f"## Time per step: MLPVAE(z_dim=20) as Pyro SVI vs hand-written, batch size {pyro['batch_size']}",
        "",
        "| variant | ms/step | x hand-written |",
        "|---|---:|---:|",
    ]
    for row in pyro["rows"]:
        lines.append(f"| {row['variant']} | {row['ms_per_step']:.2f} | {row['ratio']:.2f}x |")
    lines += ["", f"Pyro vs hand-written ({pyro['headline_variant']}): **{pyro['ratio']:.2f}x** the time per step"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description="Images/s of the conv VAE fed by course batches vs a DataLoader, and Pyro vs hand-written.")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 300, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 30, quick 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 512 on a GPU, else 128; quick 32)")
    parser.add_argument("--num-workers", type=int, nargs="+", default=None,
                        help="DataLoader worker counts, one row each (default: 0, 1 and min(4, CPU cores); quick: 0)")
    parser.add_argument("--pyro-batch-size", type=int, default=None, help="default: --batch-size")
    parser.add_argument("--jit", action="store_true", help="also time Pyro's JIT ELBOs (slow to compile)")
    parser.add_argument("--no-graph", action="store_true",
                        help="on a GPU, part 1 takes the plain step instead of notebook 02's recorded CUDA graph")
    parser.add_argument("--quick", action="store_true", default=is_quick(),
                        help="a tiny smoke run: 1024 images, 3 Pyro variants (also set by COURSE_QUICK=1)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)

    steps = args.steps if args.steps is not None else (3 if args.quick else 300)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 30)
    device = get_device(args.device)
    notebook_batch = 512 if device.type == "cuda" else 128  # notebook 02's full-mode batch on this device class
    batch_size = args.batch_size if args.batch_size is not None else (32 if args.quick else notebook_batch)
    # 0: PyTorch's quickstart tutorial; 1: pytorch/examples' VAE on CUDA; 4 (or fewer on small machines): tuned
    default_workers = [0] if args.quick else sorted({0, 1, min(4, os.cpu_count() or 1)})
    num_workers = args.num_workers if args.num_workers is not None else default_workers
    if steps < 1 or batch_size < 1 or warmup < 0 or any(w < 0 for w in num_workers) or (args.pyro_batch_size or 1) < 1:
        parser.error("--steps and --batch-size must be positive; --warmup and --num-workers not negative.")
    report = run(device=device, steps=steps, warmup=warmup, batch_size=batch_size,
                 num_workers=num_workers, pyro_batch_size=args.pyro_batch_size or batch_size,
                 limit=1024 if args.quick else None, include_jit=args.jit, few_variants=args.quick,
                 graph=False if args.no_graph else None)  # None: recorded where the device is CUDA
    report["command"] = " ".join(["python benchmarks/bench.py", *(sys.argv[1:] if argv is None else argv)])
    print(format_report(report))
    print(f"\ncommand: {report['command']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(math.isfinite(r["images_per_s"]) for r in report["throughput"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
