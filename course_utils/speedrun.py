"""The speed-run of notebook 07: notebook 02's large VAE trained against a wall clock on one GPU.

Notebook 02 trains its large model with ``course_utils.train.fit``; notebook 07 (optional, after the series)
trains the same model, with the same objective, for at most ``time_budget_s`` seconds, with the GPU speed
techniques that a 30-s budget needs:

- ``train_within_budget``: Adam under a wall-clock budget, the learning-rate schedule driven by the fraction
  of the budget (or of the epochs) used, the data on the device (07, section 1);
- ``cuda_graphed``: the whole training step recorded once as a CUDA graph and replayed, one launch instead of
  one per kernel; ``restored`` undoes the warm-up steps that recording needs, ``set_lr`` changes a learning
  rate that lives on the device (07, section 2).

Only notebook 07 and ``benchmarks/`` import this module; the teaching notebooks use ``train.fit``.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import train
from .data import batches
from .losses import kl_diag_normal
from .models import ConvConfig

# The layers of notebook 02's large model (``BIG = VAEConfig(z_dim=32, ...)``) as ``models.ConvVAE`` builds
# them, at the widths the 30-second GPU run uses: wider than 02's shipped CPU-trained model, which a GPU trains
# in the time. tests/test_recipe_02.py checks the latent size and that no width is narrower than 02's.
MODEL = ConvConfig(z_dim=32, channels=(64, 128), hidden=1024)


def train_neg_elbo(model: nn.Module, x_gray: torch.Tensor) -> dict[str, torch.Tensor]:
    """(Notebook 07, section 1.) Notebook 02's objective on a fresh binarization of gray images ``[B, 1, 28, 28]``.

    The same numbers as ``losses.neg_elbo(model, data.binarize(x_gray))`` at the same seed (a test asserts
    it), written without their data-range checks: each would read a value back from the GPU at every step,
    which a recorded CUDA graph cannot do.
    """
    x = (torch.rand_like(x_gray) < x_gray).to(x_gray.dtype)  # a fresh coin flip per pixel, on the device
    z_loc, z_logvar = model.encode(x)  # [B, D] each
    z = z_loc + torch.exp(0.5 * z_logvar) * torch.randn_like(z_loc)  # reparameterized, [B, D]
    recon = F.binary_cross_entropy_with_logits(model.decode(z), x, reduction="none").sum(dim=(1, 2, 3))  # [B]
    kl = kl_diag_normal(z_loc, z_logvar)  # [B]
    return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean(), "z_loc": z_loc, "z_logvar": z_logvar}


@dataclass
class TrainConfig:
    time_budget_s: float = 30.0  # stop after this many seconds of training (wall clock, any device) ...
    max_epochs: int = 100        # ... or after this many passes over the training set, whichever comes first
    batch_size: int = 512        # images per step
    peak_lr: float = 3e-3        # Adam's learning rate between the warm-up and the decay
    warmup: float = 0.03         # fraction of the run during which the learning rate rises linearly from 0
    decay: float = 0.5           # final fraction of the run during which it falls linearly to 0
    seed: int = 0                # seeds the batch order and the binarization (the caller seeds the initialization)


def learning_rate(progress: float, cfg: TrainConfig) -> float:
    """(Notebook 07, section 1.) Warm up, hold peak_lr, decay to 0 at progress = 1 (the fraction of the run
    done: of the time budget or of the epochs, whichever is further)."""
    if progress < cfg.warmup:
        return cfg.peak_lr * progress / cfg.warmup
    return cfg.peak_lr * min(1.0, (1.0 - progress) / cfg.decay)


def train_within_budget(model: nn.Module, loss_fn: Callable[[nn.Module, torch.Tensor], dict], x_train: torch.Tensor,
                        cfg: TrainConfig, *, x_monitor: torch.Tensor | None = None, cache: str | None = None,
                        cuda_graph: bool = True, progress: bool = True) -> dict:
    """(Notebook 07, section 1.) Train with Adam under cfg's budget; return the history (per-epoch lists, as fit's).

    x_train: gray images on the device (loss_fn binarizes each batch). x_monitor: binary test images scored
    after each epoch, outside the budget. cache: a name under which weights and history are saved, so that a
    rerun loads them (course_utils.train's checkpoint files). cuda_graph: on a GPU, record the step once and
    replay it (``cuda_graphed``); elsewhere it has no effect. On a GPU, Adam is fused (a few kernels update all
    the weights) and, for a recorded step, capturable. The history adds ``train_seconds`` (the time on the
    clock), ``steps``, ``stopped``, ``cuda_graph`` and, as ``fit(record_steps=True)``, ``step_loss``: the loss of
    every step of the logged epochs.
    """
    graphed = x_train.device.type == "cuda" and cuda_graph
    key = {**asdict(cfg), "n_train": len(x_train), "device": x_train.device.type, "loss_fn": loss_fn.__qualname__,
           **({"cuda_graph": True} if graphed else {})}
    path = train.checkpoint_path(cache, model, key) if cache else None
    if path is not None and path.exists():
        history = train.load_checkpoint(path, model)
        print(f"Loaded '{cache}' from the cache: {history['epoch'][-1]:.1f} epochs in {history['train_seconds']:.1f} s.")
        return history
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, fused=x_train.device.type == "cuda", capturable=graphed)

    def update(x_gray: torch.Tensor) -> torch.Tensor:
        """One step: forward, backward, Adam. Returns (loss, recon, kl), still on the device."""
        out = loss_fn(model, x_gray)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        return torch.stack([out["loss"], out["recon"], out["kl"]]).detach()

    steps_per_epoch = len(x_train) // cfg.batch_size
    total_steps = cfg.max_epochs * steps_per_epoch
    history: dict = {"epoch": [], "seconds": [], "lr": [], "train_loss": [], "train_recon": [], "train_kl": []}
    step, train_seconds, stop, stopped = 0, 0.0, False, "completed"
    if graphed:  # recording takes a few warm-up steps (then undone) and about a second: on the clock
        start = time.perf_counter()
        plain = update
        update = cuda_graphed(update, x_train[:cfg.batch_size], model, optimizer)
        graphed = update is not plain  # False where recording failed and the plain step trains instead
        torch.cuda.synchronize(x_train.device)
        train_seconds = time.perf_counter() - start
    bar = _epoch_bar(cfg.max_epochs, progress)
    try:
        while not stop:
            # ---- one epoch of forward / backward / update, on the clock ----
            model.train()
            start, epoch_steps = time.perf_counter(), 0
            sums = torch.zeros(3, device=x_train.device)  # loss, recon, kl summed over steps, kept on the device
            step_losses = []  # this epoch's (loss, recon, kl) of every step, on the device
            for (x_gray,) in batches(x_train, batch_size=cfg.batch_size, drop_last=True):
                elapsed = train_seconds + time.perf_counter() - start
                # the clock drives the schedule from the first update on: before it, both measures are 0, and a
                # few microseconds read off the clock would set the first step's rate, and so the whole run
                progress_done = max(step / total_steps, elapsed / cfg.time_budget_s if step else 0.0)
                if progress_done >= 1.0:
                    stop = True
                    break
                lr = learning_rate(progress_done, cfg)
                set_lr(optimizer, lr)  # in place on the device when the step is a recorded graph
                step_losses.append(update(x_gray))
                sums += step_losses[-1]
                step, epoch_steps = step + 1, epoch_steps + 1
            means = (sums / max(epoch_steps, 1)).tolist()  # waits for the device: the clock includes all its work
            train_seconds += time.perf_counter() - start
            # ---- logging, off the clock ----
            if epoch_steps == 0:
                break
            if not all(map(math.isfinite, means)):
                raise FloatingPointError(f"the loss became {means[0]} at step {step}: lower peak_lr.")
            history["epoch"].append(step / steps_per_epoch)
            history["seconds"].append(train_seconds - sum(history["seconds"]))
            history["lr"].append(lr)
            history.setdefault("step_loss", []).extend(torch.stack(step_losses)[:, 0].tolist())
            for name, value in zip(("loss", "recon", "kl"), means):
                history[f"train_{name}"].append(value)
            if x_monitor is not None:
                scores = train.evaluate(model, loss_fn, x_monitor)
                for name in ("loss", "recon", "kl", "active_units"):
                    history.setdefault(f"test_{name}", []).append(scores[name])
            if bar is not None:
                bar.update(1), bar.set_postfix(loss=f"{means[0]:.2f}", seconds=f"{train_seconds:.1f}")
            stop = stop or step >= total_steps
    except KeyboardInterrupt:  # Ctrl-C or the stop button: keep what was learned, as course_utils.train.fit does
        stopped = "interrupted"
        print(f"Training interrupted after {len(history['epoch'])} full epochs; the model keeps what it learned. "
              "Run the cell again to train from scratch (nothing was cached).")
    finally:
        if bar is not None:
            bar.close()
    history.update(train_seconds=train_seconds, steps=step, stopped=stopped, cuda_graph=graphed)
    if path is not None and stopped == "completed":
        train.save_checkpoint(path, model, history)
    return history


def _epoch_bar(max_epochs: int, enabled: bool):
    """One progress bar over the epochs of a training (the clock may stop it before max_epochs)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=max_epochs, desc="epochs", leave=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """(Notebook 07, section 2.) Set every parameter group's learning rate to ``lr``: in place where it is a tensor (a CUDA graph
    recorded the tensor's address and reads the rate from there at each replay), else by assignment."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # a device-side fill: no host sync
        else:
            group["lr"] = lr


@contextlib.contextmanager
def restored(model: nn.Module, optimizer: torch.optim.Optimizer):
    """(Notebook 07, section 2.) Train freely inside the block; on leaving it, the model's weights and buffers and the optimizer's state
    are what they were on entering, restored *in place* (the same tensors, so a CUDA graph recorded inside
    the block still points at them). Optimizer state first created inside the block is zeroed, which for
    Adam (moments and step count) and SGD with momentum is the same as a fresh optimizer's."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = {id(p): {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
              for p, state in optimizer.state.items()}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(weights[k])
            for p, state in optimizer.state.items():
                old = before.get(id(p), {})
                for k, v in state.items():
                    if isinstance(v, torch.Tensor):
                        v.copy_(old[k]) if k in old else v.zero_()
                    elif k in old:
                        state[k] = old[k]


def cuda_graphed(step: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, model: nn.Module,
                 optimizer: torch.optim.Optimizer, *, warmup: int = 3, ahead: int = 3,
                 fallback: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """(Notebook 07, section 2.) Record ``step(x) -> tensor`` (forward, backward, optimizer update) once as a CUDA graph; return
    ``replay(x)``, which copies x into the recorded input, replays the whole step as one launch, and returns
    a copy of the step's output.

    Why: a small network on a GPU spends most of a step waiting for Python to launch its kernels one by one.
    A replay runs the same kernels with none of that cost. What changes: only that the random numbers drawn
    inside the step (torch's default CUDA generator, fresh at every replay) are not the ones an eager step
    would draw.

    Requirements, checked here: a CUDA ``example`` batch with the shape every later batch has; an optimizer
    built with ``capturable=True`` (its learning rate becomes a device tensor: change it with ``set_lr``).
    Recording runs ``warmup`` steps on a side stream first (as PyTorch's CUDA-graph notes ask); the weights
    and optimizer state are then restored (``restored``), so the returned step starts from the model as it
    was. ``ahead`` bounds how many replays may be queued on the GPU, so that a wall clock read on the host
    stays within a few steps of the GPU's work. If recording fails and ``fallback`` is true, a warning says
    why and the plain ``step`` is returned, its weights and optimizer state restored; if the failure left
    CUDA's random-number generator unusable (older torch), a RuntimeError says to restart without the graph.
    """
    if example.device.type != "cuda":
        raise RuntimeError(f"cuda_graphed needs a CUDA device, got a batch on {example.device}: "
                           "on this device call the step directly.")
    if not all(group.get("capturable") for group in optimizer.param_groups):
        raise ValueError("cuda_graphed: build the optimizer with capturable=True (e.g. torch.optim.Adam(..., "
                         "capturable=True)), so that its update can be recorded.")
    if warmup < 1 or ahead < 1:
        raise ValueError(f"cuda_graphed needs warmup >= 1 and ahead >= 1, got warmup={warmup}, ahead={ahead}.")
    for group in optimizer.param_groups:  # a float rate would be baked into the recording: make it a tensor
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=example.device)
    static_x = example.detach().clone()
    graph = torch.cuda.CUDAGraph()
    try:
        with restored(model, optimizer):
            side = torch.cuda.Stream(device=example.device)
            side.wait_stream(torch.cuda.current_stream(example.device))
            with torch.cuda.stream(side), warnings.catch_warnings():
                # warm-up: lazy initializations and cuDNN's autotuning happen here (torch.optim warns that a
                # capturable optimizer is stepping uncaptured: here that is the point)
                warnings.filterwarnings("ignore", message=".*capturable=True can impair performance")
                for _ in range(warmup):
                    step(static_x)
            torch.cuda.current_stream(example.device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)  # the recorded backward then writes gradients, not adds to them
            # thread_local: CUDA work of other threads (a DataLoader's pinning thread) does not abort the recording
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = step(static_x)
    except Exception as e:  # noqa: BLE001 -- any failure to record: say so, train without the graph
        if not fallback:
            raise
        try:  # a failed recording can leave torch's CUDA random-number generator unusable (older versions)
            torch.rand(1, device=example.device)
        except RuntimeError as broken:
            raise RuntimeError(f"cuda_graphed: recording the step failed ({type(e).__name__}: {str(e)[:200]}), "
                               "and CUDA cannot go on in this process. Restart the kernel and train with the "
                               "plain step (cuda_graph=False in notebook 07).") from broken
        warnings.warn(f"cuda_graphed: recording the step failed ({type(e).__name__}: {str(e).strip()[:200]}); "
                      "training with the plain step instead, from the same starting point.", stacklevel=2)
        return step
    if not isinstance(static_out, torch.Tensor):
        raise TypeError(f"cuda_graphed: the step must return one tensor, got {type(static_out).__name__}.")
    events = [torch.cuda.Event() for _ in range(ahead)]  # reused in turn: event i marks replay n, n + ahead, ...
    replays = 0

    def replay(x: torch.Tensor) -> torch.Tensor:
        nonlocal replays
        if x.shape != static_x.shape:
            raise ValueError(f"a recorded step takes batches of shape {tuple(static_x.shape)}, got "
                             f"{tuple(x.shape)}: use drop_last=True so that every batch is full.")
        event = events[replays % ahead]
        if replays >= ahead:
            event.synchronize()  # wait for the replay `ahead` steps back, not for the last one
        static_x.copy_(x)
        graph.replay()
        out = static_out.clone()  # the next replay overwrites static_out
        event.record()
        replays += 1
        return out

    return replay
