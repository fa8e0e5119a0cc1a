"""What the course's two generated image sets share: ``shapes`` (depth images of solids, notebook 03) and
``scenes`` (colour scenes, notebook 06).

- Rays through solids in closed form. A solid is given in its own frame (symmetry axis = y); a ray is an
  origin ``o`` and a unit direction ``d`` (``[..., 3]``, broadcasting against each other). Each ``span_*``
  returns the interval ``(t_in, t_out)`` of the ray parameter where the ray is inside the solid, each
  ``[...]``; the interval is empty where ``t_in > t_out``. Every solid here is the intersection of a quadric
  and a slab (sphere, cylinder, cone) or of three slabs (cube).
- The balanced draw of the solid of each image, and uniform draws of a factor in a range.
- The checks of the generators' arguments, with errors that say what is allowed.
- The cache file of a generated set: its name holds a digest of every argument, and it is read and written
  with ``course_utils.cache`` (a damaged file is generated again).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import torch

from .cache import atomic_save, cache_dir, load_cached

EPS = 1e-7  # below this a direction component or quadric coefficient counts as 0

Interval = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------
# Rays and solids
# ----------------------------------------------------------------------------------------
def slab(o: torch.Tensor, d: torch.Tensor, half: float) -> Interval:
    """Interval of t where |o + t d| <= half (elementwise). A ray parallel to the slab (d ~ 0) is inside it
    for every t or for none, depending on where it starts."""
    parallel = d.abs() < EPS
    d = torch.where(parallel, torch.ones_like(d), d)
    t_low, t_high = (-half - o) / d, (half - o) / d
    inf = torch.full_like(t_low, math.inf)
    inside = o.abs() <= half
    return (torch.where(parallel, torch.where(inside, -inf, inf), torch.minimum(t_low, t_high)),
            torch.where(parallel, torch.where(inside, inf, -inf), torch.maximum(t_low, t_high)))


def quadric(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
            lower_nappe_dy: torch.Tensor | None = None) -> Interval:
    """Interval of t where a t^2 + 2 b t + c <= 0.

    For a > 0 it lies between the roots. For a < 0 (only a cone, for a ray steeper than its side)
    the set is two half-lines, one in each nappe of the double cone; ``lower_nappe_dy`` (the
    ray's vertical direction) picks the one below the apex: the first if the ray goes up.
    """
    a = torch.where(a.abs() < EPS, EPS, a)  # a ray along the cone's side: treated as a tiny positive a
    disc = b * b - a * c
    root = torch.sqrt(disc.clamp_min(0.0))
    r1, r2 = (-b - root) / a, (-b + root) / a
    lo, hi = torch.minimum(r1, r2), torch.maximum(r1, r2)
    inf = torch.full_like(lo, math.inf)
    between_lo = torch.where(disc >= 0, lo, inf)
    between_hi = torch.where(disc >= 0, hi, -inf)
    if lower_nappe_dy is None:
        return between_lo, between_hi
    going_up = (lower_nappe_dy > 0).expand_as(lo)
    outside_lo = torch.where(going_up, -inf, hi)
    outside_hi = torch.where(going_up, lo, inf)
    return torch.where(a > 0, between_lo, outside_lo), torch.where(a > 0, between_hi, outside_hi)


def intersect(*intervals: Interval) -> Interval:
    """The intersection of intervals ``(t_in, t_out)`` of the same shape."""
    t_in = torch.stack([i[0] for i in intervals]).amax(0)
    t_out = torch.stack([i[1] for i in intervals]).amin(0)
    return t_in, t_out


def span_sphere(o: torch.Tensor, d: torch.Tensor) -> Interval:
    """The unit sphere."""
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - 1.0
    return quadric((d * d).sum(-1).expand_as(b), b, c)


def span_cube(o: torch.Tensor, d: torch.Tensor, half: float) -> Interval:
    """The axis-aligned cube |x|, |y|, |z| <= half."""
    t_in, t_out = slab(o, d, half)  # [..., 3] each
    return t_in.amax(-1), t_out.amin(-1)


def span_cylinder(o: torch.Tensor, d: torch.Tensor, radius: float, half_height: float) -> Interval:
    """x^2 + z^2 <= radius^2 with |y| <= half_height."""
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    side = quadric((dx * dx + dz * dz).expand_as(ox + dx), ox * dx + oz * dz, ox * ox + oz * oz - radius ** 2)
    return intersect(side, slab(oy, dy, half_height))


def span_cone(o: torch.Tensor, d: torch.Tensor, radius: float, half_height: float) -> Interval:
    """Apex at y = +h, base of the given radius at y = -h: x^2 + z^2 <= k^2 (h - y)^2 with -h <= y <= h,
    k = radius / (2h)."""
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    h, k2 = half_height, (radius / (2 * half_height)) ** 2
    a = (dx * dx + dz * dz - k2 * dy * dy).expand_as(ox + dx)
    b = ox * dx + oz * dz + k2 * dy * (h - oy)
    c = ox * ox + oz * oz - k2 * (h - oy) ** 2
    return intersect(quadric(a, b, c, lower_nappe_dy=dy), slab(oy, dy, h))


# ----------------------------------------------------------------------------------------
# Factors
# ----------------------------------------------------------------------------------------
def balanced_ids(n: int, chosen: Sequence[str], names: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """``[n]`` int64 indices into ``names``: each of the ``chosen`` names n // len(chosen) times or once more,
    in random order."""
    ids = torch.tensor([names.index(s) for s in chosen], dtype=torch.int64)
    return ids[torch.arange(n) % len(ids)][torch.randperm(n, generator=generator)]


def uniform(n: int, value_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """``[n]`` draws uniform in ``value_range`` = (low, high)."""
    lo, hi = value_range
    return lo + (hi - lo) * torch.rand(n, generator=generator)


# ----------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------
def check_int(who: str, name: str, value, least: int | None = None, what: str = "") -> None:
    """``value`` is an int (not a bool), at least ``least`` if given."""
    if isinstance(value, bool) or not isinstance(value, int) or (least is not None and value < least):
        bound = f" >= {least}" if least is not None else ""
        raise ValueError(f"{who}: {name} must be an int{bound}{what}, got {value!r}.")


def check_names(who: str, chosen, names: Sequence[str]) -> None:
    """``chosen`` is a non-empty sequence of distinct names from ``names``."""
    if isinstance(chosen, str) or not chosen:
        raise ValueError(f"{who}: shapes must be a non-empty sequence of names from {tuple(names)}, got {chosen!r} "
                         f"(for one solid write shapes=({chosen!r},)).")
    if any(s not in names for s in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"{who}: shapes must be distinct names from {tuple(names)}, got {tuple(chosen)}.")


def check_range(who: str, name: str, value, low: float, high: float, why: str, *, open_low: bool = False) -> None:
    """``value`` is a pair (lo, hi) with low <= lo <= hi <= high (low < lo with ``open_low``)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: {name} must be a pair (low, high), got {value!r}.") from None
    if not ((low < lo) if open_low else (low <= lo)) or not lo <= hi <= high:
        raise ValueError(f"{who}: {name} must satisfy {low} {'<' if open_low else '<='} low <= high <= {high} "
                         f"({why}), got {value!r}.")


# ----------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------
def cache_path(folder: str, stem: str, key: dict) -> Path:
    """``<cache>/<folder>/<stem>-n<n>-s<size>-seed<seed>-<digest>.pt``; the digest covers every entry of
    ``key`` (which holds n, size, seed, and ``v``, the generator's version)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir(folder) / f"{stem}-n{key['n']}-s{key['size']}-seed{key['seed']}-{digest}.pt"


def cached(path: Path | None, make: Callable[[], dict]) -> dict:
    """The set ``{"images", "factors"}`` saved at ``path``, or ``make()``'s, saved there for the next call
    (``path=None``: no cache)."""
    blob = load_cached(path, required=("images", "factors")) if path is not None else None
    if blob is None:
        blob = make()
        if path is not None:
            atomic_save(blob, path)
    return blob
