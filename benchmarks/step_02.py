"""Where notebook 02's training step spends its time: variants of one step, side by side, and a profile.

    python benchmarks/step_02.py [--batch 512] [--steps 200] [--warmup 20] [--variants notebook,graph,...]
                                 [--profile] [--json FILE]

Notebook 02's large model (``models.ConvVAE(speedrun.MODEL)``, as ``recipe_02.py`` builds it) takes training
steps on the device's own MNIST batches, one variant at a time, each from the same initial weights:

- ``notebook``: notebook 07's plain step (``speedrun.train_neg_elbo``, fused Adam; on a GPU with TF32 and
  cuDNN's autotuner switched on, as 07's set-up cell does), as ``train_within_budget(..., cuda_graph=False)``;
- ``channels_last``: the same with the model and the batches in channels-last memory layout;
- ``bf16``: the forward pass under ``torch.autocast`` in bfloat16 (the loss is still summed in float32);
- ``graph`` (CUDA only): the whole step (binarization, forward, backward, Adam) recorded once as a CUDA
  graph and replayed, which removes the per-kernel launch cost from Python: ``course_utils.speedrun.cuda_graphed``,
  which notebook 07's loop itself uses on a GPU (``notebook`` is its plain step, ``cuda_graph=False``);
- ``graph_bf16``, ``graph_channels_last``: ``graph`` combined with one of the two above (what is left to gain
  once the launches are gone);
- ``compile``: ``torch.compile(model)``; its first call's compile time is reported apart;
- ``batch2x``: the notebook's step at twice the batch size (fewer, larger steps per epoch).

Each row: milliseconds per step (after ``--warmup`` untimed steps; the device is synchronized around the
clock), images per second, epochs that 30 s of steps would cover, the ratio to ``notebook``, and the mean
loss of the last 20 timed steps (to see that the variant trains alike). The learning rate is held at the
notebook's peak: the schedule costs nothing per step. ``--profile`` also profiles 20 of the notebook's
steps: on a GPU it reports how much of a step's wall time the GPU spends running kernels (a low share
means the step waits on Python and kernel launches) and the kernels that take longest.

On a GPU this is the measurement that says which lever the 30-s target of notebook 07 needs. On a CPU it
runs too (for the tests), without the ``graph`` variants.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

from course_utils import data, models, runtime, speedrun

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_02 import model_config  # noqa: E402  (benchmarks/ is a folder of scripts)
from timing import device_name, synchronize, time_steps  # noqa: E402

VARIANTS = ("notebook", "channels_last", "bf16", "graph", "graph_bf16", "graph_channels_last", "compile", "batch2x")
TRAIN_SECONDS = 30.0  # notebook 07's budget on a GPU


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    parser.add_argument("--variants", default="notebook,channels_last,bf16,graph,graph_bf16,graph_channels_last,batch2x",
                        help=f"comma-separated, from {','.join(VARIANTS)} (compile is off by default: it "
                             "takes a while)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden units (default: the notebook's)")
    parser.add_argument("--channels", type=int, nargs=2, default=None, metavar=("C1", "C2"))
    parser.add_argument("--n-train", type=int, default=60_000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--profile", action="store_true", help="also profile 20 of the notebook's steps")
    parser.add_argument("--json", default=None, help="write the rows here as JSON")
    return parser


def batch_source(x: torch.Tensor, batch_size: int, seed: int = 0):
    """Endless gray batches, slices of a fresh permutation each epoch, on x's device (as the notebook's loop)."""
    generator = torch.Generator(x.device).manual_seed(seed)
    for _epoch in itertools.count():
        for (x_gray,) in data.batches(x, batch_size=batch_size, drop_last=True, generator=generator):
            yield x_gray


def make_step(variant: str, model: torch.nn.Module, lr: float, example: torch.Tensor):
    """A function step(x_gray) -> loss tensor (still on the device) for one variant; the model is trained in place.

    A variant's name says what it changes: ``channels_last``, ``bf16``, ``compile``, and ``graph`` first
    (``graph_bf16``: the bf16 step, recorded)."""
    device, loss_fn = example.device, speedrun.train_neg_elbo
    on_gpu = device.type == "cuda"
    graph, bf16 = variant.startswith("graph"), "bf16" in variant
    if graph and not on_gpu:
        raise RuntimeError("a CUDA graph needs a CUDA device")
    layout = torch.channels_last if "channels_last" in variant else torch.contiguous_format
    if layout is torch.channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if variant == "compile" else model
    # fused: as notebook 07 on a GPU; capturable: a recorded step (07's own, course_utils.speedrun's)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=on_gpu, capturable=graph)

    def update(x_gray: torch.Tensor) -> torch.Tensor:
        x_gray = x_gray.contiguous(memory_format=layout)
        # autocast's cache of cast weights must be off inside a recording (PyTorch's CUDA-graph notes)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graph):
            loss = loss_fn(net, x_gray)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
        return loss.detach()
    if not graph:
        return update
    replay = speedrun.cuda_graphed(update, example, model, optimizer, fallback=False)

    def step(x_gray: torch.Tensor) -> torch.Tensor:
        speedrun.set_lr(optimizer, lr)  # as 07's loop does every step (a device-side fill here)
        return replay(x_gray)
    return step


def time_variant(variant: str, x_train: torch.Tensor, args, initial_state: dict) -> dict:
    batch = 2 * args.batch if variant == "batch2x" else args.batch
    model = models.ConvVAE(model_config(args)).to(x_train.device)
    model.load_state_dict(initial_state)
    source = batch_source(x_train, batch)
    start = time.perf_counter()
    step = make_step(variant, model, args.lr, next(source))
    losses = [step(next(source)) for _ in range(max(args.warmup, 1))]  # the first call compiles, if it does
    synchronize(x_train.device)
    setup_seconds = time.perf_counter() - start
    losses = []
    seconds = time_steps(lambda x: losses.append(step(x)), source, x_train.device, steps=args.steps)
    ms = 1000 * seconds / args.steps
    steps_per_epoch = len(x_train) // batch
    return {"variant": variant, "batch": batch, "ms_per_step": round(ms, 3),
            "images_per_s": round(batch * args.steps / seconds), "setup_s": round(setup_seconds, 1),
            "epochs_in_30s": round(TRAIN_SECONDS / (ms / 1000) / steps_per_epoch, 1),
            "loss_last_20": round(torch.stack(losses[-20:]).float().mean().item(), 2)}


def profile_notebook_step(x_train: torch.Tensor, args, initial_state: dict) -> dict:
    """Profile 20 notebook steps: wall time per step, GPU kernel time per step, the longest kernels."""
    from torch.profiler import ProfilerActivity, profile
    device = x_train.device
    model = models.ConvVAE(model_config(args)).to(device)
    model.load_state_dict(initial_state)
    source = batch_source(x_train, args.batch, seed=1)
    step = make_step("notebook", model, args.lr, next(source))
    for _ in range(5):
        step(next(source))
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    n = 20
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(n):
            step(next(source))
        synchronize(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()

    def device_us(e) -> float:  # the attribute's name changed across torch versions
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))

    kernel_us = sum(device_us(e) for e in events)
    top = sorted(events, key=device_us if device.type == "cuda" else (lambda e: e.self_cpu_time_total),
                 reverse=True)[:12]
    result = {"wall_ms_per_step": round(1000 * wall / n, 3),
              "gpu_kernel_ms_per_step": round(kernel_us / 1000 / n, 3) if device.type == "cuda" else None,
              "top": [{"name": e.key[:80], "calls_per_step": round(e.count / n, 1),
                       "ms_per_step": round((device_us(e) if device.type == "cuda" else e.self_cpu_time_total)
                                            / 1000 / n, 3)} for e in top]}
    if result["gpu_kernel_ms_per_step"] is not None:
        result["gpu_busy_share"] = round(result["gpu_kernel_ms_per_step"] / result["wall_ms_per_step"], 3)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    device = runtime.get_device()
    if device.type == "cuda":  # as notebook 07's set-up cell: TF32 in the products, cuDNN's autotuner
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    recorded = [v for v in variants if v.startswith("graph")]
    if device.type != "cuda" and recorded:
        variants = [v for v in variants if v not in recorded]
        print(f"({', '.join(recorded)} skipped: a CUDA graph needs a CUDA device)")
    x_train, _ = data.mnist_tensors("train", device, limit=args.n_train)
    runtime.seed_everything(0)
    initial_state = {k: v.clone() for k, v in models.ConvVAE(model_config(args)).state_dict().items()}
    print(f"notebook 02's model, batch {args.batch}, {args.steps} timed steps after {args.warmup}, on "
          f"{device_name(device)}, torch {torch.__version__}", flush=True)
    rows = []
    for variant in variants:
        try:
            row = time_variant(variant, x_train, args, initial_state)
        except Exception as e:  # one variant failing (an old torch, no CUDA graphs) must not lose the others
            row = {"variant": variant, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    reference = next((r["ms_per_step"] for r in rows if r["variant"] == "notebook" and "error" not in r), math.nan)
    print("\n| variant | batch | ms/step | images/s | epochs in 30 s | x notebook | loss, last 20 steps | set-up s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | | failed: {r['error']} | | | | | |")
            continue
        r["ratio"] = round(r["ms_per_step"] / reference, 3) if reference == reference else None
        print(f"| {r['variant']} | {r['batch']} | {r['ms_per_step']:.2f} | {r['images_per_s']} | "
              f"{r['epochs_in_30s']} | {r['ratio']} | {r['loss_last_20']} | {r['setup_s']} |")
    result = {"device": device_name(device), "torch": torch.__version__, "batch": args.batch,
              "steps": args.steps, "rows": rows}
    if args.profile:
        result["profile"] = profile_notebook_step(x_train, args, initial_state)
        print("\nprofile of the notebook's step:", json.dumps(result["profile"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
