"""One training loop for the whole course: ``fit``.

    history = fit(model, loss_fn, x_train, test_data=x_test, epochs=EPOCHS, cache="02-vae-z32")

``loss_fn(model, *batch)`` returns a dict of tensors:
- ``"loss"``: the scalar to minimize (mean over the batch), e.g. recon + beta * kl;
- any other 0-dim tensor (``"recon"``, ``"kl"``...): logged per epoch as a metric;
- optionally ``"z_loc"`` and ``"z_logvar"`` ``[B, D]``: q(z|x)'s parameters, from which
  ``fit`` logs mean mu, mean sigma, per-dimension KL and active units (no second pass).

The loop reads top to bottom: forward/backward/update, a guard against NaN/inf,
per-epoch evaluation and logging. Ctrl-C stops it and keeps what was learned.
A ``cache`` name makes a re-run load the saved weights and history instead of training.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .cache import cache_dir
from .data import batches
from .diagnostics import LatentStats

LossFn = Callable[..., dict]


class NonFiniteLossError(RuntimeError):
    pass


def _as_tuple(data) -> tuple[torch.Tensor, ...]:
    if data is None:
        return ()
    return tuple(data) if isinstance(data, (tuple, list)) else (data,)


def _config_key(model: nn.Module, config: dict) -> str:
    shapes = {name: list(p.shape) for name, p in model.state_dict().items()}
    blob = json.dumps({"model": type(model).__name__, "shapes": shapes, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(name: str, model: nn.Module, config: dict) -> Path:
    """``data/cache/checkpoints/<name>-<hash of model shapes and config>.pt``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return cache_dir("checkpoints") / f"{safe}-{_config_key(model, config)}.pt"


def save_checkpoint(path: Path, model: nn.Module, history: dict) -> None:
    """Write {"model": state_dict, "history": history} atomically (temp file, then rename)."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "history": history}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load weights into ``model`` (weights_only=True: no arbitrary code is unpickled); return the history."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"])
    return blob["history"]


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False)


class _EpochMeter:
    """Batch-size-weighted sums of loss_fn's scalar metrics and q(z|x) statistics, kept on the device."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.latent = LatentStats()
        self.n = 0

    def update(self, out: dict, batch_size: int) -> None:
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.dim() == 0:
                self.sums[k] = self.sums.get(k, 0.0) + v.detach() * batch_size
        if "z_loc" in out and "z_logvar" in out:
            self.latent.update(out["z_loc"], out["z_logvar"])
        self.n += batch_size

    def running(self, key: str = "loss") -> float:
        return (self.sums[key] / self.n).item()

    def result(self) -> dict[str, object]:
        result: dict[str, object] = {k: (v / self.n).item() for k, v in self.sums.items()}
        result.update(self.latent.summary())
        return result


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, data, batch_size: int = 1000) -> dict[str, object]:
    """Mean of each metric of ``loss_fn`` over ``data`` (eval mode, no gradients), plus latent stats."""
    was_training = model.training
    model.eval()
    meter = _EpochMeter()
    for batch in batches(*_as_tuple(data), batch_size=batch_size, shuffle=False):
        meter.update(loss_fn(model, *batch), batch[0].shape[0])
    model.train(was_training)
    return meter.result()


def fit(model: nn.Module, loss_fn: LossFn, train_data, *, epochs: int, batch_size: int = 128,
        lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None,
        lr_schedule: Callable[[torch.optim.Optimizer], object] | None = None,
        test_data=None, cache: str | None = None, config: dict | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        on_epoch_end: Callable[[dict], None] | None = None,
        check_every: int = 50, record_steps: bool = False, progress: bool = True,
        seed: int | None = None) -> dict:
    """Train ``model`` for ``epochs`` passes over ``train_data`` and return the history.

    train_data / test_data: a tensor or a tuple of tensors on the model's device
    (``loss_fn(model, *batch)`` receives one batch of each). The history is a dict of
    per-epoch lists: ``epoch``, ``seconds``, ``train_<metric>``, ``test_<metric>``, and for
    models that return z_loc/z_logvar ``train_mean_mu``, ``train_mean_sigma``, ``..._kl_d``...
    ``history["stopped"]`` is ``"completed"``, ``"interrupted"`` (Ctrl-C) or ``"non-finite"``.
    ``record_steps=True`` adds ``history["step_loss"]``: the loss of every training step of every
    completed epoch, kept on the device and copied once per epoch (for curves finer than epochs).

    Safety: the loss is checked for NaN/inf every ``check_every`` steps and at the end of each
    epoch (a check costs one host sync); on a bad value training stops with a message and the
    weights of the last good check are restored. With ``cache="name"`` the weights and history
    are saved to data/cache/checkpoints (key: the name, the model's shapes and this call's
    settings plus ``config``) and a later call with the same key loads them instead of training;
    ``on_epoch_end`` is then called once, with the loaded history.
    The loss function and the learning-rate schedule enter the key by their names only (``__qualname__``):
    closures made by one factory share a name, and every lambda is ``<lambda>``, so put what tells them
    apart into ``config`` (e.g. ``config={"sigma2": s}``).
    """
    def name(fn) -> str:
        return getattr(fn, "__qualname__", type(fn).__name__)

    run_config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "train_shapes": [list(t.shape) for t in _as_tuple(train_data)], "loss_fn": name(loss_fn),
                  "optimizer": "Adam" if optimizer is None else [
                      type(optimizer).__name__,
                      [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]],
                  **({"lr_schedule": name(lr_schedule)} if lr_schedule else {}),
                  **({"record_steps": True} if record_steps else {}),
                  **(config or {})}
    path = checkpoint_path(cache, model, run_config) if cache else None
    if path is not None and path.exists():
        history = load_checkpoint(path, model)
        print(f"Loaded cached run '{cache}' from {path.name} ({len(history.get('epoch', []))} epochs, "
              f"trained in {sum(history.get('seconds', [0])):.1f} s). Delete data/cache/ to retrain.")
        history["loaded_from_cache"] = True
        if on_epoch_end is not None:  # no epoch runs: show the loaded run once (e.g. a live dashboard draws it)
            on_epoch_end(history)
        return history

    if seed is not None:
        torch.manual_seed(seed)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = lr_schedule(optimizer) if lr_schedule else None
    train_data = _as_tuple(train_data)
    n_train = train_data[0].shape[0]
    steps_per_epoch = -(-n_train // batch_size)
    history: dict = {"epoch": [], "seconds": [], "stopped": "completed", "loaded_from_cache": False}
    good_state = copy.deepcopy(model.state_dict())
    step_losses: list[torch.Tensor] = []  # this epoch's step losses, on the device (record_steps)

    def log(prefix: str, metrics: dict) -> None:
        for k, v in metrics.items():
            history.setdefault(f"{prefix}_{k}", []).append(v)

    epoch_bar = _progress(range(1, epochs + 1), epochs, "epochs", progress and epochs > 1)
    try:
        for epoch in epoch_bar:
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            model.train()
            start = time.perf_counter()
            meter = _EpochMeter()
            step_bar = _progress(batches(*train_data, batch_size=batch_size), steps_per_epoch,
                                 f"epoch {epoch}/{epochs}", progress)
            for step, batch in enumerate(step_bar, 1):
                # forward / backward / update
                out = loss_fn(model, *batch)
                loss = out["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                meter.update(out, batch[0].shape[0])  # stays on the device: no host sync per step
                if record_steps:
                    step_losses.append(loss.detach())
                # NaN/inf guard (one host sync every check_every steps)
                if step % check_every == 0 or step == steps_per_epoch:
                    running = meter.running("loss")
                    if not torch.isfinite(loss).item() or not torch.isfinite(torch.tensor(running)):
                        raise NonFiniteLossError(f"epoch {epoch}, step {step}: loss is {loss.item()}")
                    good_state = copy.deepcopy(model.state_dict())
                    if progress and hasattr(step_bar, "set_postfix"):
                        step_bar.set_postfix(loss=f"{running:.3f}")
            if scheduler is not None:
                scheduler.step()
            # per-epoch logging (one sync per metric)
            log("train", meter.result())
            if record_steps:
                history.setdefault("step_loss", []).extend(torch.stack(step_losses).tolist())
                step_losses.clear()
            if test_data is not None:
                log("test", evaluate(model, loss_fn, test_data))
            history["epoch"].append(epoch)
            history["seconds"].append(time.perf_counter() - start)
            if on_epoch_end is not None:
                on_epoch_end(history)
    except NonFiniteLossError as e:
        model.load_state_dict(good_state)
        history["stopped"] = "non-finite"
        print(f"Training stopped: the loss became NaN or infinite ({e}). The weights of the last good check "
              "are restored. Lower the learning rate, check the data range, or clamp the log-variance.")
    except KeyboardInterrupt:
        history["stopped"] = "interrupted"
        print(f"Training interrupted after {len(history['epoch'])} full epochs; the model keeps what it learned. "
              "Run the cell again to train from scratch (nothing was cached).")
    if path is not None and history["stopped"] == "completed":
        save_checkpoint(path, model, history)
    return history

