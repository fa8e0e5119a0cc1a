"""Shipped weights: the trained models behind the notebooks' figures and claims.

``data/weights/<name>.pt`` holds one training of the course, ``fit(..., cache=name)`` in a notebook, as
``make pretrain`` ran it: the notebook's own code and full-mode configuration, on the device that ran it.
``data/weights/SHA256SUMS`` lists every file with its SHA-256. ``fit`` looks here first:

- a file for ``name`` is verified against ``SHA256SUMS``, loaded with ``torch.load(weights_only=True)`` and
  checked against the model and loss of the call; ``fit`` says in one line what was trained, for how long, on
  what, and returns the training's history instead of training;
- in quick mode it also trains the model of the call at quick-mode size first, so every training path is
  shown to learn (``train.check_trainings_learned()`` asserts it), then loads the shipped weights;
- ``COURSE_RETRAIN=1`` ignores the shipped weights: every training runs as written (and is cached locally);
- a corrupt file, or one made for another model or loss, is an error that names the file and the fix.

``make pretrain`` sets ``COURSE_EXPORT_WEIGHTS`` to this folder: each training then runs and is written here,
as compactly as leaves the loss on held-out data unchanged (within 0.1%, or within the loss's own Monte Carlo
noise where that is larger): int8 matrices with one scale per row and float16 for the rest; where that moves the loss, float16 for the
matrices that do and int8 for the others; float32 if even float16 moves it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path

import torch
from torch import nn

from .cache import PROJECT_ROOT, atomic_save, sha256, weights_dir
from .runtime import env_flag

FORMAT = 1
SUMS = "SHA256SUMS"
ENV_RETRAIN = "COURSE_RETRAIN"
ENV_EXPORT = "COURSE_EXPORT_WEIGHTS"   # make pretrain: the folder each training is written into
ENV_RUN = "COURSE_PRETRAIN_RUN"        # make pretrain: one id per run, so later notebooks reuse what it wrote
STORAGE_TOLERANCE = 1e-3                  # relative change of the held-out loss that compact storage may cause

class PretrainedWeightsError(RuntimeError):
    """A shipped weights file is missing from SHA256SUMS, corrupt, or made for another model or loss."""


def retrain_requested() -> bool:
    """True when ``COURSE_RETRAIN=1``: train everything as written, ignoring the shipped weights."""
    return env_flag(ENV_RETRAIN, "to train every model yourself instead of loading the shipped weights")


def export_folder() -> Path | None:
    """Where ``make pretrain`` writes what it trains (``COURSE_EXPORT_WEIGHTS``), or None."""
    value = os.environ.get(ENV_EXPORT, "").strip()
    return Path(value) if value else None


def file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) + ".pt"


def read_sums(folder: Path) -> dict[str, str]:
    """``file name -> SHA-256`` from ``folder/SHA256SUMS`` (``sha256sum`` format); empty if there is none."""
    path = Path(folder) / SUMS
    if not path.exists():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, _, fname = line.strip().partition(" ")
            sums[fname.strip().lstrip("*")] = digest
    return sums


def write_sums(folder: Path) -> Path:
    """Rewrite ``folder/SHA256SUMS`` for every ``*.pt`` in it, sorted by name."""
    folder = Path(folder)
    lines = [f"{sha256(p)}  {p.name}" for p in sorted(folder.glob("*.pt"))]
    (folder / SUMS).write_text("\n".join(lines) + ("\n" if lines else ""))
    return folder / SUMS


def key(model: nn.Module, loss_fn) -> str:
    """What shipped weights must match: the model's parameter shapes, the source of its classes and of the loss
    function. Sizes of data, epochs and learning rates are not part of it: they describe how the weights were
    trained (``trained`` in the file), and differ between quick and full mode."""
    from .train import model_signature, source_of  # train imports this module: imported here, when called

    blob = json.dumps({"model": model_signature(model), "loss_fn": source_of(loss_fn)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ships(name: str) -> bool:
    """Whether ``make pretrain`` writes the training ``name``: all but exercises (their names say "exercise"),
    which the learner trains, in every mode."""
    return "exercise" not in name


def find(name: str) -> Path | None:
    """The shipped file ``fit(cache=name)`` should load, or None to train.

    With ``COURSE_EXPORT_WEIGHTS`` set (make pretrain), only a file written by the same pretrain run is reused
    (a model two notebooks share, such as the classifier, trains once); with ``COURSE_RETRAIN=1``, none."""
    export = export_folder()
    if export is not None:
        path = export / file_name(name)
        if path.exists() and os.environ.get(ENV_RUN):
            try:
                run = torch.load(path, map_location="cpu", weights_only=True).get("trained", {}).get("run")
            except Exception:
                return None
            return path if run == os.environ[ENV_RUN] else None
        return None
    if retrain_requested():
        return None
    path = weights_dir() / file_name(name)
    return path if path.exists() else None


def _fix(path: Path) -> str:
    return (f"Restore it with `git checkout -- {_shown(path)}`, regenerate the shipped weights with `make pretrain`, "
            f"or train this model yourself by setting {ENV_RETRAIN}=1 before starting Jupyter.")


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def load(path: Path, name: str, model: nn.Module, loss_fn) -> dict:
    """Verify ``path`` against SHA256SUMS, load it (``weights_only=True``) into ``model`` and return its
    {"history", "trained"}; a PretrainedWeightsError naming the file and the fix if anything is wrong."""
    path = Path(path)
    if export_folder() is None:  # files written by this very pretrain run are listed at its end
        expected = read_sums(path.parent).get(path.name)
        if expected is None:
            raise PretrainedWeightsError(f"{_shown(path)} is not listed in {_shown(path.parent / SUMS)}, so it cannot "
                                         f"be verified. {_fix(path)}")
        if sha256(path) != expected:
            raise PretrainedWeightsError(f"{_shown(path)} does not match its SHA-256 in {_shown(path.parent / SUMS)}: "
                                         f"the file is damaged or was changed. {_fix(path)}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"{_shown(path)} cannot be read ({type(err).__name__}: {err}). {_fix(path)}") from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not {"model", "history", "trained"} <= blob.keys():
        raise PretrainedWeightsError(f"{_shown(path)} is not a course weights file (format {FORMAT}). {_fix(path)}")
    own = model.state_dict()
    saved = _expand(blob["model"], blob.get("scales") or {})
    if blob.get("key") != key(model, loss_fn) or saved.keys() != own.keys() or any(
            saved[k].shape != own[k].shape for k in own):
        raise PretrainedWeightsError(
            f"{_shown(path)} was trained for another version of '{name}': the model or the loss function in this "
            f"notebook differs from the one `make pretrain` trained. Run `make pretrain` to regenerate the shipped "
            f"weights, or set {ENV_RETRAIN}=1 to train this model yourself.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in saved.items()})
    return blob


def describe(name: str, trained: dict) -> str:
    """One line: what was trained, for how long, on what, and how to train it yourself instead."""
    epochs = trained.get("epochs", 0)
    return (f"Shipped '{name}': {epochs} epoch{'s' * (epochs != 1)}, {trained.get('n_train', 0):,} images, "
            f"{trained.get('seconds', 0):.0f} s, {trained.get('device', '?')} ({ENV_RETRAIN}=1 retrains)")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def short_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{os.cpu_count()}-core CPU"
    return device.type


def _quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` as int8 with one float32 scale per output row (symmetric): ``t ~ q * scale[:, None, ...]``."""
    rows = t.detach().float().reshape(t.shape[0], -1)
    scale = (rows.abs().amax(dim=1) / 127).clamp_min(1e-12)
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def _dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.reshape(-1, *([1] * (q.dim() - 1)))


def _quantizable(state: dict) -> list[str]:
    """The matrices and kernels of at least 1024 values: where int8 saves space."""
    return [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2 and v.numel() >= 1024]


def _compact(state: dict, how: str | set) -> tuple[dict, dict]:
    """The state dict stored as ``how``: "float32", "float16", "int8" (every quantizable tensor as int8 with
    per-row scales, the other floats float16), or a set of names (those as int8, the other floats float16).
    Returns (tensors, scales)."""
    int8 = set(_quantizable(state)) if how == "int8" else (how if isinstance(how, set) else set())
    tensors, scales = {}, {}
    for k, v in state.items():
        v = v.detach().cpu()
        if not v.is_floating_point() or how == "float32":
            tensors[k] = v
        elif k in int8:
            tensors[k], scales[k] = _quantize(v)
        else:
            tensors[k] = v.half()
    return tensors, scales


def _expand(tensors: dict, scales: dict) -> dict:
    return {k: (_dequantize(v, scales[k]) if k in scales else v) for k, v in tensors.items()}


def _smallest_faithful(model: nn.Module, loss_fn, probe: tuple[torch.Tensor, ...] | None):
    """The most compact storage whose change of the loss on ``probe`` is within what no figure or check can
    see: 0.1% of the loss, or the loss's own Monte Carlo noise (two evaluations with different random draws
    differ by it), whichever is larger. Every quantizable tensor in int8 if that passes; else float16 for all
    but the tensors that can be int8 together (least sensitive first); float32 if even float16 fails.
    Returns (how, label, change relative to the loss)."""
    from .train import evaluate

    if not probe:
        return "float32", "float32", float("nan")
    devices = [probe[0].device] if probe[0].device.type == "cuda" else []
    state = model.state_dict()

    def loss_of(how) -> float:
        stored = copy.deepcopy(model)
        stored.load_state_dict({k: v.to(state[k].dtype) for k, v in _expand(*_compact(state, how)).items()})
        torch.manual_seed(0)
        return evaluate(stored, loss_fn, probe)["loss"]

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        reference = evaluate(model, loss_fn, probe)["loss"]
        torch.manual_seed(1)
        noise = abs(evaluate(model, loss_fn, probe)["loss"] - reference)
        scale = max(abs(reference), 1e-12)
        tolerance = max(STORAGE_TOLERANCE * scale, noise)
        change = {"int8": abs(loss_of("int8") - reference)}
        if change["int8"] <= tolerance:
            return "int8", "int8", change["int8"] / scale
        change["float16"] = abs(loss_of("float16") - reference)
        if change["float16"] > tolerance:
            return "float32", "float32", float("nan")
        alone = {k: abs(loss_of({k}) - reference) for k in _quantizable(state)}
        chosen, kept = set(), change["float16"]
        for k in sorted(alone, key=alone.get):
            difference = abs(loss_of(chosen | {k}) - reference)
            if difference <= tolerance:
                chosen, kept = chosen | {k}, difference
        label = f"int8 ({len(chosen)} of {len(alone)} matrices) + float16" if chosen else "float16"
        return chosen or "float16", label, kept / scale


def export(name: str, model: nn.Module, loss_fn, history: dict, *, n_train: int,
           probe: tuple[torch.Tensor, ...] | None) -> Path:
    """Write the trained ``model`` and its ``history`` to the export folder (make pretrain)."""
    folder = export_folder()
    folder.mkdir(parents=True, exist_ok=True)
    device = next(iter(model.parameters())).device
    how, label, change = _smallest_faithful(model, loss_fn, probe)
    state, scales = _compact(model.state_dict(), how)
    trained = {"epochs": len(history.get("epoch", [])), "n_train": int(n_train),
               "seconds": round(float(sum(history.get("seconds", []))), 1), "device": short_device(device),
               "device_detail": _device_detail(device), "dtype": label,
               "loss_change": change, "date": _dt.date.today().isoformat(), "commit": _git_commit(),
               "command": os.environ.get("COURSE_PRETRAIN_COMMAND", "make pretrain"),
               "notebook": os.environ.get("COURSE_PRETRAIN_NOTEBOOK", ""), "run": os.environ.get(ENV_RUN, "")}
    history = {k: v for k, v in history.items() if k not in ("loaded_from_cache", "pretrained", "quick_check")}
    path = folder / file_name(name)
    atomic_save({"format": FORMAT, "name": name, "key": key(model, loss_fn), "model": state, "scales": scales,
                 "history": history,
                 "trained": trained}, path)
    print(f"pretrain: wrote {_shown(path)} ({trained['dtype']}, {path.stat().st_size / 1e6:.2f} MB)")
    return path


def _device_detail(device: torch.device) -> str:
    from .runtime import device_label

    return f"{device_label(device)}, torch {torch.__version__}"


def verify_all(folder: Path | None = None) -> list[dict]:
    """Check every shipped file against SHA256SUMS (every listed file present, every file listed, every digest
    right) and return ``manifest``'s rows; a PretrainedWeightsError naming the first file that fails."""
    folder = Path(folder) if folder else weights_dir()
    sums = read_sums(folder)
    files = {p.name for p in folder.glob("*.pt")}
    for name in sorted(set(sums) | files):
        path = folder / name
        if name not in files:
            raise PretrainedWeightsError(f"{_shown(path)} is listed in {_shown(folder / SUMS)} but missing. {_fix(path)}")
        if name not in sums:
            raise PretrainedWeightsError(f"{_shown(path)} is not listed in {_shown(folder / SUMS)}. {_fix(path)}")
        if sha256(path) != sums[name]:
            raise PretrainedWeightsError(f"{_shown(path)} does not match its SHA-256 in {_shown(folder / SUMS)}: the "
                                         f"file is damaged or was changed. {_fix(path)}")
    return manifest(folder)


def manifest(folder: Path | None = None) -> list[dict]:
    """One row per shipped file: name, size, dtype and how it was trained (for README and BENCHMARKS)."""
    folder = Path(folder) if folder else weights_dir()
    rows = []
    for path in sorted(folder.glob("*.pt")):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        rows.append({"file": path.name, "bytes": path.stat().st_size, **blob["trained"]})
    return rows


TRAINING_NOTEBOOKS = ("02_", "03_", "03b", "04_", "05_", "06_")  # the notebooks whose trainings ship


def train_notebooks(prefixes: list[str], folder: Path, cell_timeout: int) -> int:
    """Run each notebook in full mode with every training exported to ``folder`` (make pretrain)."""
    import sys
    import time
    import uuid

    env = dict(os.environ, COURSE_QUICK="0", **{ENV_EXPORT: str(folder.resolve())})
    env.setdefault(ENV_RUN, uuid.uuid4().hex)  # one id for the run: a model two notebooks share trains once
    env.setdefault("COURSE_CACHE_DIR", str(PROJECT_ROOT / "build" / "pretrain-cache"))
    env.pop(ENV_RETRAIN, None)
    failed = []
    for prefix in prefixes:
        start = time.perf_counter()
        env.update(COURSE_PRETRAIN_NOTEBOOK=prefix.rstrip("_"),
                   COURSE_PRETRAIN_COMMAND=f"make pretrain NB={prefix}" if len(prefixes) == 1 else "make pretrain")
        code = subprocess.run([sys.executable, "-m", "course_utils.execute", "--only", prefix, "--out",
                               str(PROJECT_ROOT / "build" / "pretrain"), "--cell-timeout", str(cell_timeout)],
                              env=env, cwd=PROJECT_ROOT).returncode
        print(f"pretrain: notebook {prefix} {'done' if code == 0 else f'FAILED (exit {code})'} in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(prefix)
        write_sums(folder)  # after each notebook: what is done can be used at once
    print(f"wrote {folder / SUMS}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.pretrained``: train (``--train``), rewrite SHA256SUMS, list the shipped weights."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="*", metavar="NB", default=None,
                        help=f"run these notebooks (default: {' '.join(TRAINING_NOTEBOOKS)}) in full mode and write "
                             "their trainings into the weights folder")
    parser.add_argument("--sums", action="store_true", help="rewrite SHA256SUMS for the *.pt files first")
    parser.add_argument("--folder", default=None, help="weights folder (default: data/weights)")
    parser.add_argument("--cell-timeout", type=int, default=7200, metavar="S")
    args = parser.parse_args(argv)
    folder = Path(args.folder) if args.folder else weights_dir()
    if args.train is not None:
        code = train_notebooks(args.train or list(TRAINING_NOTEBOOKS), folder, args.cell_timeout)
        if code:
            return code
    elif args.sums:
        print(f"wrote {write_sums(folder)}")
    total = 0
    for row in manifest(folder):
        total += row["bytes"]
        print(f"{row['file']:<36} {row['bytes'] / 1e6:6.2f} MB {row['dtype']:<8} {row['epochs']:>3} epochs "
              f"{row['n_train']:>6} ex. {row['seconds']:>7.1f} s  {row['device']}  {row['notebook']}")
    print(f"total {total / 1e6:.2f} MB in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
