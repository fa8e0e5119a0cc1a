"""Data: MNIST from the files shipped in data/, binarization, GPU-resident batches,
and the course's procedurally generated image sets.

MNIST is read from the four gzip IDX files in ``data/mnist/`` and checked against
``data/mnist/SHA256SUMS`` on every load, so a corrupt or truncated file fails loudly
instead of training on garbage. Paths are resolved from this file, not from the
current directory (a notebook's kernel runs in ``notebooks/``).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .cache import DATA_DIR, PROJECT_ROOT, cache_dir, sha256  # noqa: F401  (paths live in cache.py)
# The procedural image sets live in their own modules (which import nothing from this one); their
# generators are named here too, where the course design lists its data sets.
from .scenes import color_scenes  # noqa: F401
from .shapes import depth_shapes  # noqa: F401

MNIST_DIR = DATA_DIR / "mnist"

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DataFileError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message says what to do."""


def _expected_sums(mnist_dir: Path) -> dict[str, str]:
    sums_file = mnist_dir / "SHA256SUMS"
    if not sums_file.exists():
        raise DataFileError(
            f"{sums_file} is missing, so the MNIST files cannot be verified. "
            "Restore it with `git checkout -- data/mnist/SHA256SUMS`."
        )
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


def verify_mnist(mnist_dir: Path | None = None) -> dict[str, str]:
    """Check every shipped MNIST file against SHA256SUMS; return {file: sha256}.

    Raises DataFileError naming the file, the expected and the found checksum, and the fix.
    """
    mnist_dir = Path(mnist_dir or MNIST_DIR)
    found = {}
    for name, expected in _expected_sums(mnist_dir).items():
        path = mnist_dir / name
        if not path.exists():
            raise DataFileError(f"{path} is missing. Restore it with `git checkout -- data/mnist/`.")
        digest = sha256(path)
        if digest != expected:
            raise DataFileError(
                f"{path} is corrupt or truncated ({path.stat().st_size} bytes): "
                f"expected SHA-256 {expected}, found {digest}. "
                "Restore the shipped file with `git checkout -- data/mnist/` "
                "(or delete data/mnist/*.gz to let torchvision download MNIST again)."
            )
        found[name] = digest
    return found


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise DataFileError(f"{path}: not an IDX file of the expected kind (magic {magic}, expected {expected_magic}).")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataFileError(f"{path}: truncated ({data.size} values, header says {shape}).")
    return data.reshape(shape)


def _download_with_torchvision(split: str) -> Path:
    """Fallback when the shipped files are missing: torchvision's download into data/cache/."""
    try:
        from torchvision.datasets import MNIST
    except ImportError as e:  # pragma: no cover
        raise DataFileError("MNIST files are missing from data/mnist/ and torchvision is not installed.") from e
    root = cache_dir("torchvision")
    try:
        MNIST(root=str(root), train=(split == "train"), download=True)
    except Exception as e:
        raise DataFileError(
            f"The MNIST files are missing from {MNIST_DIR} and the torchvision download failed ({e}). "
            "Restore the shipped files with `git checkout -- data/mnist/`."
        ) from e
    return root / "MNIST" / "raw"


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as ``(images uint8 [N, 1, 28, 28], labels int64 [N])``.

    split is "train" (60,000) or "test" (10,000). The shipped files are verified by
    SHA-256 first; only when they are missing does torchvision download them.
    """
    if split not in _MNIST_FILES:
        raise ValueError(f"load_mnist(split={split!r}): split must be 'train' or 'test'.")
    image_name, label_name = _MNIST_FILES[split]
    if (MNIST_DIR / image_name).exists() or (MNIST_DIR / label_name).exists():
        verify_mnist(MNIST_DIR)
        folder = MNIST_DIR
        image_path, label_path = folder / image_name, folder / label_name
    else:
        folder = _download_with_torchvision(split)
        image_path, label_path = folder / image_name[:-3], folder / label_name[:-3]
        if not image_path.exists():  # torchvision keeps either the .gz or the unpacked file
            image_path, label_path = folder / image_name, folder / label_name
    images = _read_idx(image_path, 2051)  # [N, 28, 28]
    labels = _read_idx(label_path, 2049)  # [N]
    if len(images) != len(labels):
        raise DataFileError(f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels.")
    return (torch.from_numpy(images.copy()).unsqueeze(1),  # [N, 28, 28] -> [N, 1, 28, 28]
            torch.from_numpy(labels.astype(np.int64)))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0..255 -> float32 in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images in 0..255 (what load_mnist returns), got dtype {images.dtype}; "
                        "images that are floats already need no conversion (check they lie in [0, 1]).")
    return images.float().div_(255.0)


def _check_unit_interval(x: torch.Tensor, what: str) -> None:
    """Raise a ValueError that says what to do when ``x`` leaves [0, 1], where checking is free: on the CPU.

    On a GPU the check would read a value back from the device and make the CPU wait for it at every step,
    so it is skipped there: data that enter through ``to_float`` / ``mnist_tensors`` (uint8 / 255) or the
    generated sets (``depth_shapes``, ``color_scenes``) lie in [0, 1] by construction.
    """
    if x.device.type != "cpu" or not x.numel():
        return
    lo, hi = torch.aminmax(x)
    if lo < 0 or hi > 1:
        raise ValueError(f"{what} must lie in [0, 1], got values in [{lo.item():.4g}, {hi.item():.4g}]. Scale uint8 "
                         "images with course_utils.data.to_float, or binarize them with course_utils.data.binarize.")


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel becomes 1 with probability equal to its gray value.

    x: floats in [0, 1], any shape (checked on the CPU; see ``_check_unit_interval``). A fresh call draws a
    fresh binary image (used for training); pass a seeded ``generator`` to fix one binarization (used for the
    test set).
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"binarize expects floats in [0, 1], got dtype {x.dtype}; convert with course_utils.data.to_float.")
    _check_unit_interval(x, "binarize: x (gray values read as probabilities)")
    noise = torch.rand(x.shape, generator=generator, device=x.device if generator is None else generator.device)
    return (noise.to(x.device) < x).to(x.dtype)


def batches(*tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
            generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """Mini-batches of tensors that already live on the compute device.

    One random permutation per call, then plain slicing: no DataLoader, no per-item
    Python work, no host-to-device copies. All tensors must share their first dimension.
    Yields tuples (even for a single tensor: ``for (x,) in batches(x_train, batch_size=128)``).
    """
    if not tensors:
        raise ValueError("batches() needs at least one tensor.")
    n = tensors[0].shape[0]
    for t in tensors:
        if t.shape[0] != n:
            raise ValueError(f"batches(): all tensors need the same first dimension, got {[t.shape[0] for t in tensors]}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    device = tensors[0].device
    if shuffle:
        gen_device = generator.device if generator is not None else device
        order = torch.randperm(n, generator=generator, device=gen_device).to(device)
    else:
        order = torch.arange(n, device=device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield tuple(t[idx] for t in tensors)


@torch.no_grad()
def map_batches(fn, x: torch.Tensor, batch_size: int = 1000):
    """``fn`` applied to ``x`` in slices of ``batch_size`` along the first dimension, outputs concatenated.

    For evaluation over a whole data set without running out of memory: no gradients are kept.
    ``fn`` returns a tensor ``[b, ...]`` (the result is ``[N, ...]``) or a tuple of them (a tuple of
    concatenations), e.g. ``z_loc, z_logvar = map_batches(model.encode, x_test)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if x.shape[0] == 0:
        raise ValueError("map_batches() got an empty tensor: there is nothing to apply fn to.")
    outs = [fn(x[start:start + batch_size]) for start in range(0, x.shape[0], batch_size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def mnist_tensors(split: str = "train", device: torch.device | str = "cpu", limit: int | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as float images in [0, 1] ``[N, 1, 28, 28]`` and labels ``[N]`` on ``device``.

    ``limit`` keeps the first N examples (quick mode uses a small subset).
    """
    images, labels = load_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_float(images.to(device)), labels.to(device)
