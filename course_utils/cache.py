"""Where the course keeps what it generates, and how it writes and reads it safely.

Paths live here and nowhere else: ``PROJECT_ROOT``, ``DATA_DIR`` (``COURSE_DATA_DIR`` overrides it) and
``weights_dir()`` (the shipped weights, ``data/weights/``) and
``cache_dir()``, which is ``data/cache/`` unless ``COURSE_CACHE_DIR`` names another folder (the tests use a
temporary one). This module imports nothing else from the course, so every other module may import it.

The cache only ever saves time. A folder that cannot be created or written, or a cached file that is
truncated, empty or unreadable, gives one warning that names the file, and the course goes on without it:
it trains or renders again instead of failing.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("COURSE_DATA_DIR", PROJECT_ROOT / "data"))

_warned: set[str] = set()


class CacheWarning(UserWarning):
    """The cache could not be used; the course went on without it."""


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, CacheWarning, stacklevel=3)


def cache_root() -> Path:
    """The cache folder: ``$COURSE_CACHE_DIR`` if set, else ``<DATA_DIR>/cache`` (git-ignored)."""
    env = os.environ.get("COURSE_CACHE_DIR")
    return Path(env) if env else DATA_DIR / "cache"


def sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (the MNIST files and the shipped weights are checked by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_dir() -> Path:
    """The shipped weights: ``<DATA_DIR>/weights`` (tracked by git), or ``$COURSE_WEIGHTS_DIR`` if set."""
    env = os.environ.get("COURSE_WEIGHTS_DIR")
    return Path(env) if env else DATA_DIR / "weights"


def cache_dir(*parts: str) -> Path:
    """``<cache root>/<parts>``, created if possible. If it cannot be created, warn once and return it anyway:
    reads then find nothing and writes are skipped (see ``atomic_save``)."""
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _warn_once(f"mkdir:{path}", f"cannot create the cache folder {path} ({err.strerror or err}); the course "
                   "goes on without caching. Make it writable, or set COURSE_CACHE_DIR to a writable folder.")
    return path


def atomic_save(obj, path: Path) -> bool:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place, so a reader never sees
    half a file. Returns False (after one warning naming the file) when the folder cannot be written."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.partial{os.getpid()}")
    try:
        with open(partial, "wb") as f:  # opened here, so a folder that is missing or read-only is an OSError
            torch.save(obj, f)          # (torch.save given a path raises a RuntimeError for it)
        os.replace(partial, path)
        return True
    except OSError as err:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
        _warn_once(f"save:{path.parent}", f"cannot write {path} ({err.strerror or err}); the result is kept in "
                   "memory but not cached. Make the folder writable, or set COURSE_CACHE_DIR to a writable folder.")
        return False


def load_cached(path: Path, required: tuple[str, ...] = ()) -> dict | None:
    """The dict saved at ``path`` (``weights_only=True``: no code is unpickled), or None when there is none.

    A file that is empty, truncated, unreadable or lacks one of the ``required`` keys gives a warning that
    names it and returns None, so the caller computes the result again and overwrites the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # empty, truncated, wrong format: all mean "compute it again"
        warnings.warn(f"ignoring the damaged cache file {path} ({type(err).__name__}); computing it again and "
                      "overwriting it.", CacheWarning, stacklevel=2)
        return None
    missing = [k for k in required if not isinstance(blob, dict) or k not in blob]
    if missing:
        warnings.warn(f"ignoring the cache file {path}: it lacks {missing}; computing it again and overwriting it.",
                      CacheWarning, stacklevel=2)
        return None
    return blob
