"""Notebook 02's large model with notebook 07's training recipe, run for a set number of epochs on any device.

Why: notebook 07's target (at most 84.0 nats, k = 5000, after at most 30 s of training on one GPU) mixes two
questions: how many epochs the recipe needs to reach 84 nats, and how many epochs a GPU runs in 30 s. The
first does not depend on the device, so it can be answered on a CPU, slowly; the notebook then only has to be
timed on a GPU. This script answers the first: it trains the course's model (`models.ConvVAE` with
`speedrun.MODEL`, notebook 02's `BIG`) with `speedrun.train_within_budget`, the loop notebook 07 runs, for
`--epochs` epochs, the learning-rate schedule driven by steps, and scores the importance-weighted
log-likelihood on an evenly spaced subset of the fixed test binarization (every (10000 / n)-th digit, so not the
easy first digits); by default k = 1000 on 1,000 digits, about 5 minutes on a 2-core CPU.

    python benchmarks/recipe_02.py --epochs 30                       # the GPU recipe: batch 512, peak lr 3e-3
    python benchmarks/recipe_02.py --epochs 60 --k 5000 --n-eval 10000   # the target's scoring (slow on a CPU)
    python benchmarks/recipe_02.py --epochs 2 --batch 128 --lr 2e-3  # notebook 02's CPU full-mode sizes
    python benchmarks/recipe_02.py --budget-s 30 --epochs 100        # as notebook 07 on a GPU: the clock stops it
    python benchmarks/recipe_02.py --budget-s 30 --epochs 100 --no-graph   # the same with the plain step
    python benchmarks/recipe_02.py --epochs 30 --hidden 512          # a narrower model (also --channels)

Prints one JSON line (device, recipe, steps, training seconds, test -ELBO, IW NLL with its standard error, and
the IW NLL for all 10,000 digits estimated from the scored ones with every digit's ELBO as control variate).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from course_utils import data, models, runtime, speedrun
from course_utils.losses import bernoulli_nll, iw_log_likelihood, kl_diag_normal, nll_from_subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import device_name  # noqa: E402  (benchmarks/timing.py)

TEST_BINARIZATION_SEED = 0  # notebook 02's fixed test binarization
N_Z = 16  # draws of z averaged into each scored digit's ELBO (notebook 02, section 5)


@torch.no_grad()
def neg_elbo_per_image(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One-sample negative ELBO of each binary image in x [N, 1, 28, 28]: [N] nats (notebook 02, section 3)."""
    def one_batch(xb: torch.Tensor) -> torch.Tensor:
        x_logits, z_loc, z_logvar = model(xb)
        return bernoulli_nll(x_logits, xb) + kl_diag_normal(z_loc, z_logvar)
    return data.map_batches(one_batch, x)


def model_config(args: argparse.Namespace) -> models.ConvConfig:
    """``speedrun.MODEL`` (notebook 02's large model) with --channels and --hidden where given."""
    sizes = {"channels": tuple(args.channels)} if args.channels else {}
    if args.hidden:
        sizes["hidden"] = args.hidden
    return dataclasses.replace(speedrun.MODEL, **sizes)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also read by the tests, which parse benchmarks/gpu_check.sh's calls with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training set (default 30)")
    parser.add_argument("--budget-s", type=float, default=math.inf, help="wall-clock limit on training (default none)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--decay", type=float, default=None,
                        help="final fraction of the run with a falling learning rate (default: TrainConfig's)")
    parser.add_argument("--channels", type=int, nargs=2, metavar=("C1", "C2"), default=None,
                        help="channels of the two convolutions (default: speedrun.MODEL's)")
    parser.add_argument("--hidden", type=int, default=None,
                        help="width of the fully connected layers (default: speedrun.MODEL's)")
    parser.add_argument("--n-train", type=int, default=60_000)
    parser.add_argument("--no-graph", action="store_true",
                        help="on a GPU, train with the plain step instead of the recorded CUDA graph")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the initialization, batch order and binarization (the test set's stays fixed)")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per test digit (default 1000)")
    parser.add_argument("--n-eval", type=int, default=1000,
                        help="test digits scored, evenly spaced over the 10,000 (default 1000)")
    parser.add_argument("--max-decode", type=int, default=10_000, help="images decoded at once (memory)")
    return parser


@contextlib.contextmanager
def full_float32():
    """Inside the block, float32 matrix products and convolutions without TF32 (on a GPU; a CPU has none)."""
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.n_eval <= 10_000:
        parser.error("--n-eval must be between 1 and 10000")

    device = runtime.get_device()
    if device.type == "cuda":  # as notebook 07's set-up cell: TF32 in the products, cuDNN's autotuner
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")

    x_train, _ = data.mnist_tensors("train", device, limit=args.n_train)
    x_test_gray, _ = data.mnist_tensors("test", "cpu")
    generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    x_test = data.binarize(x_test_gray, generator=generator).to(device)  # notebook 02's fixed binarization
    eval_index = torch.linspace(0, len(x_test) - 1, args.n_eval, device=device).round().long()
    x_eval = x_test[eval_index]

    schedule = {} if args.decay is None else {"decay": args.decay}
    cfg = speedrun.TrainConfig(time_budget_s=args.budget_s, max_epochs=args.epochs, batch_size=args.batch,
                               peak_lr=args.lr, seed=args.seed, **schedule)
    model_cfg = model_config(args)
    runtime.seed_everything(args.seed)
    model = models.ConvVAE(model_cfg).to(device)
    history = speedrun.train_within_budget(model, speedrun.train_neg_elbo, x_train, cfg, x_monitor=x_test[:2000],
                                           cuda_graph=not args.no_graph, progress=False)
    model.eval()
    start = time.perf_counter()
    log_px = iw_log_likelihood(model, x_eval, k=args.k, max_decode=args.max_decode,
                               generator=torch.Generator(device).manual_seed(2))
    eval_seconds = time.perf_counter() - start
    log_px_fp32 = None
    if device.type == "cuda":  # TF32 is on for every product, scoring included:
        with full_float32():  # score again in full float32 with the same draws, to see what that moves
            log_px_fp32 = iw_log_likelihood(model, x_eval, k=args.k, max_decode=args.max_decode,
                                            generator=torch.Generator(device).manual_seed(2))
    # Every digit's ELBO corrects the IW estimate for which digits were scored (a control variate, as notebook
    # 02 does with the same N_Z draws of z for the scored digits)
    neg_elbo_by_digit = neg_elbo_per_image(model, x_test)  # [10000], one draw of z each
    test_neg_elbo = neg_elbo_by_digit.mean().item()
    neg_elbo_eval = neg_elbo_by_digit[eval_index]  # [n_eval]
    nll_all, nll_all_se = -log_px.mean().item(), (log_px.std().item() / math.sqrt(args.n_eval) if args.n_eval > 1
                                                 else None)  # every digit scored: nothing to correct
    if args.n_eval < len(x_test):
        draws = torch.stack([neg_elbo_per_image(model, x_eval) for _ in range(N_Z)])  # [N_Z, n_eval]
        neg_elbo_eval = draws.mean(0)  # the scored digits' ELBO, as the correction uses it
        nll_all, nll_all_se = nll_from_subset(log_px, draws, test_neg_elbo, len(x_test))
    result = {
        "device": device_name(device), "cuda_graph": history["cuda_graph"],
        "epochs": round(history["epoch"][-1], 2), "steps": history["steps"],
        "seed": args.seed, "batch": args.batch, "peak_lr": args.lr, "warmup": cfg.warmup, "decay": cfg.decay,
        "n_train": len(x_train),
        "channels": list(model_cfg.channels), "hidden": model_cfg.hidden, "z_dim": model_cfg.z_dim,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(history["train_seconds"], 1),
        "train_neg_elbo_by_epoch": [round(v, 2) for v in history["train_loss"]],
        "monitor_neg_elbo_by_epoch": [round(v, 2) for v in history["test_loss"]],
        "test_neg_elbo": round(test_neg_elbo, 2),
        "k": args.k, "n_eval": args.n_eval, "iw_nll": round(-log_px.mean().item(), 2),
        "iw_se": round(log_px.std().item() / math.sqrt(args.n_eval), 2) if args.n_eval > 1 else None,
        "neg_elbo_eval": round(neg_elbo_eval.mean().item(), 2),
        "iw_nll_all_cv": round(nll_all, 2),
        "iw_nll_all_cv_se": None if nll_all_se is None else round(nll_all_se, 2),
        "eval_seconds": round(eval_seconds, 1),
        # GPU only: the same digits, draws and model, scored with TF32 off (paired: the difference is precision's)
        "iw_nll_fp32": None if log_px_fp32 is None else round(-log_px_fp32.mean().item(), 3),
        "iw_nll_tf32_minus_fp32": None if log_px_fp32 is None else round((log_px_fp32 - log_px).mean().item(), 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
