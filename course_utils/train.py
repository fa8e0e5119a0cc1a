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
import functools
import hashlib
import inspect
import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import pretrained
from .cache import CacheWarning, atomic_save, cache_dir, load_cached
from .data import batches
from .diagnostics import LatentStats
from .runtime import is_quick

LossFn = Callable[..., dict]


class NonFiniteLossError(RuntimeError):
    pass


def _as_tuple(data, name: str = "train_data") -> tuple[torch.Tensor, ...]:
    """``data`` as a tuple of batch-first tensors that share their first dimension (checked, with advice)."""
    if data is None:
        return ()
    tensors = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    if not tensors:
        raise ValueError(f"{name} is empty: pass a tensor [N, ...] or a tuple of them, e.g. (x, y).")
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} holds a {type(t).__name__}: pass tensors (torch.as_tensor(...) converts one).")
        if t.dim() == 0:
            raise ValueError(f"{name} holds a 0-dim tensor: fit needs batch-first tensors [N, ...], one row per "
                             "example (for a single example, t.unsqueeze(0)).")
    sizes = [t.shape[0] for t in tensors]
    if len(set(sizes)) > 1:
        raise ValueError(f"{name}: the tensors need the same first dimension (one row per example), got {sizes}.")
    if sizes[0] == 0:
        raise ValueError(f"{name} holds no examples (first dimension 0): check the slice or filter that made it.")
    return tensors


# ----------------------------------------------------------------------------------------------------------
# The cache key: what the saved weights depend on
# ----------------------------------------------------------------------------------------------------------
def _stable(value) -> object:
    """A JSON-able stand-in for ``value`` that is the same in every run (no memory addresses)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.Tensor):
        return data_fingerprint(value)
    if callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    return type(value).__qualname__


def source_of(obj) -> str:
    """The source text that defines ``obj``, for the cache key: a function's body (through ``functools.wraps``
    and ``functools.partial``, with its defaults and the plain values it closes over), a callable object's
    class, or a class. A function defined in a notebook cell is found too (IPython keeps each cell's text);
    a class defined in a cell, whose file Python cannot find, is read method by method. Where no source is
    found at all, the qualified name stands in."""
    if isinstance(obj, functools.partial):
        return source_of(obj.func) + json.dumps(_stable([obj.args, obj.keywords]))
    if inspect.isclass(obj):
        try:
            return inspect.getsource(obj)
        except (OSError, TypeError):
            members = [source_of(v) for _, v in sorted(vars(obj).items()) if inspect.isfunction(v)]
            return obj.__qualname__ + "\n" + "\n".join(members)
    function = inspect.unwrap(obj) if callable(obj) else obj
    if inspect.ismethod(function):
        function = function.__func__
    if not inspect.isfunction(function):
        return source_of(type(obj)) if callable(obj) else repr(_stable(obj))
    try:
        text = inspect.getsource(function)
    except (OSError, TypeError):
        text = function.__qualname__
    cells = [c.cell_contents for c in (function.__closure__ or ()) if _has_contents(c)]
    extra = [function.__defaults__, function.__kwdefaults__, [v for v in cells if _is_setting(v)]]
    return text + json.dumps(_stable(extra))


def _has_contents(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return False
    return True


def _is_setting(value) -> bool:
    """A value a loss factory closes over as a setting (beta=4.0, "sum", a small tensor), not as state
    that grows as training runs (a list the loss appends to) or a model."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, tuple):
        return all(_is_setting(v) for v in value)
    return isinstance(value, torch.Tensor) and value.numel() <= 16


def data_fingerprint(t: torch.Tensor, samples: int = 1 << 16) -> str:
    """Shape, dtype and a hash of up to ``samples`` values taken at even strides: cheap, and the same in every
    run for the same data (two different data sets of one shape almost surely differ in it)."""
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // samples)
    sample = flat[::step][:samples]
    sample = sample.cpu().double() if sample.is_floating_point() else sample.cpu().long()  # float64 on the CPU
    digest = hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16]
    return f"{list(t.shape)}:{t.dtype}:{digest}"


def model_signature(model: nn.Module) -> dict:
    """The model's class, the shapes of its weights and the source of its own classes (not torch's)."""
    shapes = {name: list(p.shape) for name, p in model.state_dict().items()}
    classes = sorted({type(m) for m in model.modules() if not type(m).__module__.startswith("torch.")},
                     key=lambda c: f"{c.__module__}.{c.__qualname__}")
    return {"model": type(model).__name__, "shapes": shapes, "model_source": [source_of(c) for c in classes]}


def _config_key(model: nn.Module, config: dict) -> str:
    blob = json.dumps({**model_signature(model), "config": _stable(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(name: str, model: nn.Module, config: dict) -> Path:
    """``<cache>/checkpoints/<name>-<hash of the model's shapes and classes' source, and config>.pt``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return cache_dir("checkpoints") / f"{safe}-{_config_key(model, config)}.pt"


def save_checkpoint(path: Path, model: nn.Module, history: dict) -> bool:
    """Write {"model": state_dict, "history": history} atomically (temp file, then rename). Where the folder
    cannot be written, warn once and return False: the model and history stay in memory."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_save({"model": state, "history": history}, path)


def load_cached_run(path: Path, model: nn.Module) -> dict | None:
    """Load the weights saved at ``path`` into ``model`` and return the history; None where there is no file,
    or (after a warning that names it) where the file is damaged or holds weights of another shape."""
    blob = load_cached(path, required=("model", "history"))
    if blob is None:
        return None
    saved, own = blob["model"], model.state_dict()
    fits = (isinstance(saved, dict) and isinstance(blob["history"], dict) and saved.keys() == own.keys()
            and all(isinstance(saved[k], torch.Tensor) and saved[k].shape == own[k].shape for k in own))
    if not fits:
        warnings.warn(f"ignoring the cached checkpoint {path}: its weights do not fit this model; training again "
                      "and overwriting it.", CacheWarning, stacklevel=2)
        return None
    model.load_state_dict(saved)
    return blob["history"]


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Like ``load_cached_run``, for a file that must be there: a missing or damaged one is an error naming it."""
    history = load_cached_run(path, model)
    if history is None:
        raise RuntimeError(f"no usable checkpoint at {path}: delete it and train again.")
    return history


# ----------------------------------------------------------------------------------------------------------
# Progress: one line per training
# ----------------------------------------------------------------------------------------------------------
def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class _Progress:
    """One progress display per training: epochs done, the step within the epoch, the running loss.

    In Jupyter it is one text output updated in place (not a widget: a saved or exported notebook shows its
    last state, never a stale "0%" bar); in a terminal, one tqdm bar over epochs that clears itself at the end.
    Redraws come at most every ``every_s`` seconds, besides the first and the last.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, enabled: bool, every_s: float = 0.5):
        self.epochs, self.steps, self.every_s = epochs, steps_per_epoch, every_s
        self.start = self.last = time.perf_counter()
        self.handle = self.bar = None
        if not enabled:
            return
        if _in_jupyter():
            from IPython.display import display
            self.handle = display({"text/plain": self._line(0, 0, None)}, raw=True, display_id=True)
        else:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=epochs, desc="epochs", unit="epoch", leave=False)

    def _line(self, epoch: int, step: int, loss: float | None) -> str:
        done = (epoch - 1 + step / self.steps) / self.epochs if epoch else 0.0
        bar = "#" * round(20 * done) + "." * (20 - round(20 * done))
        shown = "-" if loss is None else f"{loss:.3f}"
        return (f"training [{bar}] epoch {max(epoch, 1)}/{self.epochs}, step {step}/{self.steps}, "
                f"loss {shown}, {time.perf_counter() - self.start:.0f} s")

    def update(self, epoch: int, step: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        if self.handle is not None:
            self.handle.update({"text/plain": self._line(epoch, step, loss)}, raw=True)
        elif self.bar is not None:
            self.bar.n = epoch - 1 + (step == self.steps)
            self.bar.set_postfix(loss=f"{loss:.3f}")

    def close(self, epochs_done: int, loss: float | None, stopped: str) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.handle is not None:
            how = "trained" if stopped == "completed" and epochs_done == self.epochs else (
                "interrupted after" if stopped == "interrupted" else "stopped after")
            shown = "" if loss is None else f", last epoch's loss {loss:.3f}"
            self.handle.update({"text/plain": f"{how} {epochs_done}/{self.epochs} epochs in "
                                              f"{time.perf_counter() - self.start:.1f} s{shown}"}, raw=True)


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
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


def _checked(out, loss_fn) -> dict:
    """``loss_fn``'s output, if it has the form fit needs; else a TypeError that says how to write it."""
    name = getattr(loss_fn, "__qualname__", type(loss_fn).__name__)
    if isinstance(out, torch.Tensor):
        raise TypeError(f"{name} returned a tensor; fit needs a dict with the scalar to minimize under 'loss', "
                        "e.g. `return {\"loss\": loss.mean(), \"recon\": recon.mean(), \"kl\": kl.mean()}`.")
    if not isinstance(out, dict) or "loss" not in out:
        raise TypeError(f"{name} returned {type(out).__name__}"
                        f"{' without a loss entry' if isinstance(out, dict) else ''}; fit needs a dict with the "
                        "scalar to minimize under 'loss', e.g. `return {\"loss\": loss.mean()}`.")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{name}: out['loss'] must be a 0-dim tensor (the batch mean), got {shape}; "
                         "reduce it, e.g. `(recon + kl).mean()`.")
    return out


def _all_finite(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer of ``model`` is finite (one host sync)."""
    checks = [torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()]
    return bool(torch.stack(checks).all().item()) if checks else True


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, data, batch_size: int = 1000) -> dict[str, object]:
    """Mean of each metric of ``loss_fn`` over ``data`` (eval mode, no gradients), plus latent stats."""
    data = _as_tuple(data, "data")
    was_training = model.training
    model.eval()
    meter = _EpochMeter()
    for batch in batches(*data, batch_size=batch_size, shuffle=False):
        meter.update(_checked(loss_fn(model, *batch), loss_fn), batch[0].shape[0])
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
    ``progress=True`` shows one progress line for the whole training (epochs and the running loss).

    Safety: every ``check_every`` steps and at the end of each epoch (a check costs one host sync) the running
    loss and the updated weights are checked for NaN/inf; only weights that pass are kept as "last good". On a
    bad value training stops with a message and the last good weights are restored. With ``cache="name"``
    the weights and history are saved to the cache's checkpoints folder, and a later call with the same key
    loads them instead of training; ``on_epoch_end`` is then called once, with the loaded history. The key
    holds the name, the model's shapes and the source of its classes, the source of ``loss_fn`` and
    ``lr_schedule`` (edit either, in a file or a notebook cell, and the next run trains again), a fingerprint
    of the data, this call's settings and ``config``. Functions that ``loss_fn`` calls do not enter the
    key: after editing one, pass something in ``config`` (or delete the cache). A damaged cached file is
    reported and overwritten; a cache that cannot be written is reported once, and the history is returned.

    Shipped weights (``course_utils.pretrained``): where ``data/weights/<cache>.pt`` exists, it is verified and
    loaded instead of training, and one line says what was trained, for how long, on what. In quick mode the
    model is first trained here at the size of this call, to show that this training path learns (recorded
    for ``check_trainings_learned``). ``COURSE_RETRAIN=1`` trains instead; ``make pretrain`` writes the files.
    """
    args = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, lr_schedule=lr_schedule,
                test_data=test_data, cache=cache, config=config, on_epoch_start=on_epoch_start,
                on_epoch_end=on_epoch_end, check_every=check_every, record_steps=record_steps, progress=progress,
                seed=seed)
    shipped = pretrained.find(cache) if cache else None
    if shipped is None:
        history = _fit(model, loss_fn, train_data, **args)
        if (cache and pretrained.export_folder() is not None and pretrained.ships(cache)
                and history["stopped"] == "completed"):
            pretrained.export(cache, model, loss_fn, history, n_train=_as_tuple(train_data)[0].shape[0],
                              probe=_probe(train_data, test_data))
        return history
    quick = _quick_check(model, loss_fn, train_data, args) if is_quick() and epochs > 0 else None
    blob = pretrained.load(shipped, cache, model, loss_fn)
    history = dict(blob["history"], loaded_from_cache=True, pretrained=blob["trained"], quick_check=quick)
    print(pretrained.describe(cache, blob["trained"]))
    if on_epoch_end is not None:  # no epoch runs: show the loaded run once (e.g. a live dashboard draws it)
        on_epoch_end(history)
    return history


# ----------------------------------------------------------------------------------------------------------
# Quick mode with shipped weights: every training path still trains here, briefly, and must learn
# ----------------------------------------------------------------------------------------------------------
QUICK_CHECKS: list[dict] = []


def _probe(train_data, test_data, n: int = 1000) -> tuple[torch.Tensor, ...]:
    """Up to ``n`` held-out examples (the training data's first ones where there is no test data)."""
    data = _as_tuple(test_data, "test_data") or _as_tuple(train_data)
    return tuple(t[:n] for t in data)


def _probe_loss(model: nn.Module, loss_fn: LossFn, probe: tuple[torch.Tensor, ...]) -> float:
    devices = [probe[0].device] if probe[0].device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the notebook's random stream is left as it was
        torch.manual_seed(0)
        return evaluate(model, loss_fn, probe)["loss"]


def _quick_check(model: nn.Module, loss_fn: LossFn, train_data, args: dict) -> dict:
    """Train ``model`` as the call asks (quick-mode sizes) and record its held-out loss before and after."""
    probe = _probe(train_data, args["test_data"])
    before = _probe_loss(model, loss_fn, probe)
    history = _fit(model, loss_fn, train_data, **{**args, "on_epoch_end": None})
    after = _probe_loss(model, loss_fn, probe)
    check = {"name": args["cache"], "epochs": len(history["epoch"]), "n_train": _as_tuple(train_data)[0].shape[0],
             "seconds": sum(history["seconds"]), "before": before, "after": after, "stopped": history["stopped"]}
    QUICK_CHECKS.append(check)
    print(f"Quick check '{check['name']}': trained here {check['epochs']} ep. on {check['n_train']:,}, "
          f"held-out loss {before:.4g} -> {after:.4g}")
    return check


def check_trainings_learned() -> int:
    """Assert that every quick check of this kernel lowered its held-out loss; return how many ran.

    Each notebook's Checks cell calls it: in quick mode with shipped weights, it is what shows that each
    training path of the notebook still learns."""
    failed = [c for c in QUICK_CHECKS if not (math.isfinite(c["after"]) and c["after"] < c["before"])]
    assert not failed, f"these trainings did not lower their held-out loss: {failed}"
    return len(QUICK_CHECKS)


def _fit(model: nn.Module, loss_fn: LossFn, train_data, *, epochs: int, batch_size: int, lr: float, optimizer,
         lr_schedule, test_data, cache: str | None, config: dict | None, on_epoch_start, on_epoch_end,
         check_every: int, record_steps: bool, progress: bool, seed: int | None) -> dict:
    """fit's training: the local cache, then the loop."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit(batch_size={batch_size!r}): the number of examples per step, a whole number "
                         "of at least 1 (e.g. 128).")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit(epochs={epochs!r}): the number of passes over the data, a whole number >= 0.")
    if check_every < 1:
        raise ValueError(f"fit(check_every={check_every!r}): steps between NaN checks, at least 1 (e.g. 50).")
    train_data = _as_tuple(train_data, "train_data")
    test_tuple = _as_tuple(test_data, "test_data")
    run_config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "train_data": [data_fingerprint(t) for t in train_data],
                  "test_data": [data_fingerprint(t) for t in test_tuple],
                  "loss_fn": source_of(loss_fn),
                  "optimizer": "Adam" if optimizer is None else [
                      type(optimizer).__name__,
                      [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]],
                  **({"lr_schedule": source_of(lr_schedule)} if lr_schedule else {}),
                  **({"record_steps": True} if record_steps else {}),
                  **(config or {})}
    path = checkpoint_path(cache, model, run_config) if cache else None
    loaded = load_cached_run(path, model) if path is not None else None
    if loaded is not None:
        history = loaded
        print(f"Loaded '{cache}' from the cache: {len(history.get('epoch', []))} epochs, trained in "
              f"{sum(history.get('seconds', [0])):.0f} s.")
        history["loaded_from_cache"] = True
        if on_epoch_end is not None:  # no epoch runs: show the loaded run once (e.g. a live dashboard draws it)
            on_epoch_end(history)
        return history

    if seed is not None:
        torch.manual_seed(seed)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = lr_schedule(optimizer) if lr_schedule else None
    n_train = train_data[0].shape[0]
    steps_per_epoch = -(-n_train // batch_size)
    history: dict = {"epoch": [], "seconds": [], "stopped": "completed", "loaded_from_cache": False}
    good_state, good_at = copy.deepcopy(model.state_dict()), "the starting weights"
    step_losses: list[torch.Tensor] = []  # this epoch's step losses, on the device (record_steps)

    def log(prefix: str, metrics: dict) -> None:
        for k, v in metrics.items():
            history.setdefault(f"{prefix}_{k}", []).append(v)

    bar = _Progress(epochs, steps_per_epoch, progress and epochs > 0)
    try:
        for epoch in range(1, epochs + 1):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            model.train()
            start = time.perf_counter()
            meter = _EpochMeter()
            for step, batch in enumerate(batches(*train_data, batch_size=batch_size), 1):
                # forward / backward / update
                out = loss_fn(model, *batch)
                if epoch == 1 and step == 1:
                    _checked(out, loss_fn)
                loss = out["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                meter.update(out, batch[0].shape[0])  # stays on the device: no host sync per step
                if record_steps:
                    step_losses.append(loss.detach())
                # NaN/inf guard (one host sync every check_every steps): the losses since the last check, and
                # the weights this update made (a finite loss can still bring a non-finite gradient)
                if step % check_every == 0 or step == steps_per_epoch:
                    running = meter.running("loss")
                    if not math.isfinite(running):
                        raise NonFiniteLossError(f"the loss became NaN or infinite ({running}) by epoch {epoch}, "
                                                 f"step {step}")
                    if not _all_finite(model):
                        raise NonFiniteLossError(f"the loss was finite, but by epoch {epoch}, step {step} an update "
                                                 "made weights NaN or infinite (a non-finite gradient)")
                    good_state, good_at = copy.deepcopy(model.state_dict()), f"epoch {epoch}, step {step}"
                    bar.update(epoch, step, running)
            if scheduler is not None:
                scheduler.step()
            # per-epoch logging (one sync per metric)
            log("train", meter.result())
            if record_steps:
                history.setdefault("step_loss", []).extend(torch.stack(step_losses).tolist())
                step_losses.clear()
            if test_tuple:
                log("test", evaluate(model, loss_fn, test_tuple))
            history["epoch"].append(epoch)
            history["seconds"].append(time.perf_counter() - start)
            if on_epoch_end is not None:
                on_epoch_end(history)
    except NonFiniteLossError as e:
        model.load_state_dict(good_state)
        history["stopped"] = "non-finite"
        print(f"Training stopped: {e}. The weights of the last check that passed ({good_at}) are restored. "
              "Lower the learning rate, check the data range, or clamp the log-variance.")
    except KeyboardInterrupt:
        history["stopped"] = "interrupted"
        print(f"Training interrupted after {len(history['epoch'])} full epochs; the model keeps what it learned. "
              "Run the cell again to train from scratch (nothing was cached).")
    finally:
        losses = history.get("train_loss") or [None]
        bar.close(len(history["epoch"]), losses[-1], history["stopped"])
    if path is not None and history["stopped"] == "completed":
        save_checkpoint(path, model, history)
    return history

