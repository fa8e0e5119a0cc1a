"""Depth images of simple 3-D solids: a gray, continuous image set with known factors.

    images, factors, names = depth_shapes(10_000, size=32, seed=0)

Each image shows one solid (sphere, cube, cylinder, cone, torus) under a random rotation
(uniform over all 3-D rotations) and a random scale, seen by an orthographic camera that
looks down the -z axis. A pixel holds the depth of the first surface hit along its ray,
mapped to [0, 1] so that near is bright: value = (1 + z) / 2 for a hit at height z in the
scene volume [-1, 1]^3; rays that hit nothing give 0. Notebook 03 trains Gaussian VAEs on it.

How it is rendered: every ray of every image is intersected with its solid at once (torch,
in chunks of images). The ray is moved into the solid's own frame (undo the rotation and
the scale); there the sphere, the cylinder and the cone are quadrics intersected with slabs
(closed form), the cube is three slabs, and the torus, whose intersection is a quartic, is
found by sphere tracing its exact signed distance function.

Random factors are drawn with a CPU generator and only then moved to the device, so a seed
gives the same factors everywhere and images that agree to float rounding on CPU and GPU.
Generated sets are cached in ``data/cache/depth_shapes/``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from .procedural import (balanced_ids, cache_path, cached, check_int, check_names, check_range, span_cone,
                         span_cube, span_cylinder, span_sphere, uniform)

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")

# Solids in their own frame (symmetry axis = y), each inside the unit ball, so that any rotation
# with scale <= 1 keeps them inside the image and inside the depth range.
CUBE_HALF = 1.0 / math.sqrt(3.0)               # corners on the unit sphere
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.6, 0.75
CONE_RADIUS, CONE_HALF_HEIGHT = 0.7, 0.7       # apex at y = +h, base of radius r at y = -h
TORUS_MAJOR, TORUS_MINOR = 0.68, 0.3           # ring radius, tube radius

CAMERA_Z = 2.0          # rays start at z = 2 (outside the unit ball) and travel along -z
TORUS_STEPS = 96        # sphere-tracing steps for the torus
TORUS_TOLERANCE = 5e-4  # a ray hits the torus when its distance is below this (object units)
CACHE_VERSION = 1       # bump when the rendering changes, so that old caches are not reused


class DepthShapes(NamedTuple):
    """What ``depth_shapes`` returns; unpacks as ``images, factors, names = ...``."""
    images: torch.Tensor            # float32 [n, 1, size, size] in [0, 1]; background 0, near = bright
    factors: dict[str, torch.Tensor]  # per image: see depth_shapes
    names: tuple[str, ...]          # names[shape_id] is the solid's name


# ----------------------------------------------------------------------------------------
# Random factors
# ----------------------------------------------------------------------------------------
def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[n, 4]`` (w, x, y, z) -> rotation matrices ``[n, 3, 3]``."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))  # [n, 9] -> [n, 3, 3]


def rotation_about(axis: str, angle: torch.Tensor | float) -> torch.Tensor:
    """Rotation matrices ``[n, 3, 3]`` (or ``[3, 3]`` for a float angle) about the x, y or z axis."""
    if axis not in ("x", "y", "z"):
        raise ValueError(f"rotation_about(axis={axis!r}): use 'x', 'y' or 'z'.")
    angle = torch.as_tensor(angle, dtype=torch.float32)
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    if axis == "x":
        rows = [one, zero, zero, zero, c, -s, zero, s, c]
    elif axis == "y":
        rows = [c, zero, s, zero, one, zero, -s, zero, c]
    else:
        rows = [c, -s, zero, s, c, zero, zero, zero, one]
    return torch.stack(rows, dim=-1).reshape(angle.shape + (3, 3))


def axis_angles(rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a solid's symmetry axis (its own y axis) points after ``rotation`` ``[n, 3, 3]``.

    Returns (tilt, azimuth), each ``[n]`` in radians: tilt in [0, pi] is the angle between the
    axis and the direction towards the camera (+z): 0 = seen along the axis (a cone apex-first),
    pi/2 = seen side-on; azimuth in (-pi, pi] is the direction of the axis in the image plane,
    measured from the image's x axis (right) towards its y axis (up).
    """
    axis = rotation[..., :, 1]  # image of the y axis, [n, 3]
    tilt = torch.acos(axis[..., 2].clamp(-1.0, 1.0))
    azimuth = torch.atan2(axis[..., 1], axis[..., 0])
    return tilt, azimuth


def _random_factors(n: int, seed: int = 0, shapes: Sequence[str] = SHAPES,
                   scale_range: tuple[float, float] = (0.55, 0.95)) -> dict[str, torch.Tensor]:
    """Draw the factors of ``n`` images on the CPU (deterministic for a seed).

    Shapes are balanced: each of the chosen solids appears n // len(shapes) or one more times,
    in random order. Rotations are uniform over SO(3) (a normalized 4-D Gaussian is a uniform
    unit quaternion). Scales are uniform in ``scale_range``.
    """
    generator = torch.Generator().manual_seed(seed)
    shape_id = balanced_ids(n, shapes, SHAPES, generator)
    quaternion = torch.randn(n, 4, generator=generator)
    quaternion = quaternion / quaternion.norm(dim=1, keepdim=True)
    quaternion = quaternion * torch.where(quaternion[:, :1] < 0, -1.0, 1.0)  # q and -q: one rotation; keep w >= 0
    scale = uniform(n, scale_range, generator)
    rotation = _quaternion_to_matrix(quaternion)
    tilt, azimuth = axis_angles(rotation)
    return {"shape_id": shape_id, "quaternion": quaternion, "rotation": rotation, "scale": scale,
            "tilt": tilt, "azimuth": azimuth}


# ----------------------------------------------------------------------------------------
# Ray-solid intersections in the solid's frame (course_utils.procedural has the quadrics and slabs).
# o: ray origins [R, 3]; d: unit directions [R, 3]. Each returns the ray parameter t of the first hit
# [R], +inf where the ray misses.
# ----------------------------------------------------------------------------------------
def _torus_distance(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Exact signed distance to the torus (ring in the xz-plane, around the y axis)."""
    ring = torch.sqrt(x * x + z * z) - TORUS_MAJOR
    return torch.sqrt(ring * ring + y * y) - TORUS_MINOR


def _hit_torus(o: torch.Tensor, d: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Sphere tracing: stepping by the distance to the surface never crosses it.

    Starts where the ray enters the torus's bounding sphere; every ``block`` steps the rays
    that have converged (hit) or left the bounding sphere (miss) are dropped from the work.
    """
    bound = TORUS_MAJOR + TORUS_MINOR
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - bound ** 2)
    t_hit = torch.full_like(b, math.inf)
    idx = (disc > 0).nonzero(as_tuple=True)[0]  # rays that meet the bounding sphere
    root = torch.sqrt(disc[idx])
    t, t_exit = (-b[idx] - root).clamp_min(0.0), -b[idx] + root
    (ox, oy, oz), (dx, dy, dz) = o[idx].unbind(-1), d[idx].unbind(-1)
    for _ in range(0, TORUS_STEPS, block):
        for _ in range(block):
            t = t + _torus_distance(ox + t * dx, oy + t * dy, oz + t * dz)
        dist = _torus_distance(ox + t * dx, oy + t * dy, oz + t * dz)
        hit = (dist.abs() < TORUS_TOLERANCE) & (t <= t_exit)
        t_hit[idx[hit]] = t[hit]
        keep = ~hit & (t <= t_exit)
        idx, t, t_exit = idx[keep], t[keep], t_exit[keep]
        ox, oy, oz, dx, dy, dz = ox[keep], oy[keep], oz[keep], dx[keep], dy[keep], dz[keep]
        if idx.numel() == 0:
            break
    return t_hit


def _first_hit(span: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Where a ray enters a solid, +inf where it misses (the rays start outside every solid)."""
    t_in, t_out = span
    return torch.where(t_in <= t_out, t_in, torch.full_like(t_in, math.inf))


_HITS = {
    "sphere": lambda o, d: _first_hit(span_sphere(o, d)),
    "cube": lambda o, d: _first_hit(span_cube(o, d, CUBE_HALF)),
    "cylinder": lambda o, d: _first_hit(span_cylinder(o, d, CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT)),
    "cone": lambda o, d: _first_hit(span_cone(o, d, CONE_RADIUS, CONE_HALF_HEIGHT)),
    "torus": _hit_torus,
}


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------
def _pixel_grid(size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres (x, y) in [-1, 1], each ``[size, size]``; row 0 is the top (y = +1 side)."""
    centres = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size * 2.0 - 1.0
    y, x = torch.meshgrid(-centres, centres, indexing="ij")
    return x, y


def render(shape_id: torch.Tensor, rotation: torch.Tensor, scale: torch.Tensor, size: int = 32,
           chunk: int = 1024) -> torch.Tensor:
    """Depth images ``[n, 1, size, size]`` of solids with the given factors (on their device).

    shape_id ``[n]`` (int, index into SHAPES), rotation ``[n, 3, 3]`` (object -> camera frame),
    scale ``[n]`` in (0, 1]. The camera-frame point of an object point p is ``scale * rotation @ p``.
    """
    n = shape_id.shape[0]
    if rotation.shape != (n, 3, 3) or scale.shape != (n,):
        raise ValueError(f"render: expected shape_id [n], rotation [n, 3, 3], scale [n]; got {tuple(shape_id.shape)}, "
                         f"{tuple(rotation.shape)}, {tuple(scale.shape)}.")
    device = rotation.device
    x, y = _pixel_grid(size, device)
    x, y = x.reshape(-1), y.reshape(-1)  # [P], P = size * size
    origins = torch.stack([x, y, torch.full_like(x, CAMERA_Z)], dim=-1)  # [P, 3]; every ray travels along -z
    inside_disc = x * x + y * y  # [P]; only rays through a solid's bounding disc (radius s) can hit it
    images = torch.zeros(n, size * size, device=device)
    for k, name in enumerate(SHAPES):
        rows_k = (shape_id == k).nonzero(as_tuple=True)[0]
        for start in range(0, rows_k.numel(), chunk):
            rows = rows_k[start:start + chunk]
            rot, s = rotation[rows].float(), scale[rows].float()
            m = rows.numel()
            # into the object's frame: p_obj = R^T p / s, i.e. p_obj = p @ R / s for row vectors
            o_obj = (origins @ rot.permute(1, 0, 2).reshape(3, m * 3)).reshape(-1, m, 3)  # [P, m, 3]
            o_obj = (o_obj / s[:, None]).transpose(0, 1).reshape(m * size * size, 3)  # [m * P, 3]
            d_obj = -rot[:, 2, :]  # the camera's direction (0, 0, -1) in each object's frame, [m, 3]
            rays = (inside_disc[None, :] < (s * s)[:, None]).reshape(-1).nonzero(as_tuple=True)[0]  # [R]
            img = rays // (size * size)
            t = _HITS[name](o_obj[rays], d_obj[img]) * s[img]  # |d| = 1, so distances scale with s
            depth = ((1.0 + CAMERA_Z - t) / 2.0).clamp(0.0, 1.0)  # hit height z = CAMERA_Z - t; near (z=1) -> 1
            block = torch.zeros(m * size * size, device=device)
            block[rays] = torch.where(torch.isfinite(t), depth, torch.zeros_like(depth))
            images[rows] = block.reshape(m, size * size)
    return images.reshape(n, 1, size, size)  # [n, P] -> [n, 1, size, size]


# ----------------------------------------------------------------------------------------
# The data set
# ----------------------------------------------------------------------------------------
def _check_arguments(n, size, seed, shapes, scale_range) -> None:
    check_int("depth_shapes", "n", n, 1, " (the number of images)")
    check_int("depth_shapes", "size", size, 4, " (pixels per side)")
    check_int("depth_shapes", "seed", seed)
    check_names("depth_shapes", shapes, SHAPES)
    check_range("depth_shapes", "scale_range", scale_range, 0.0, 1.0, "a solid of scale 1 just fits the image",
                open_low=True)


def depth_shapes(n: int, size: int = 32, seed: int = 0, device: torch.device | str | None = None,
                 cache: bool = True, *, shapes: Sequence[str] = SHAPES,
                 scale_range: tuple[float, float] = (0.55, 0.95), chunk: int = 1024) -> DepthShapes:
    """``n`` depth images of random solids and their factors (deterministic for ``seed``).

    Returns ``DepthShapes(images, factors, names)``:
    - images: float32 ``[n, 1, size, size]`` in [0, 1] (background 0, near surfaces bright), on ``device``;
    - factors (all ``[n]`` unless stated, on ``device``): ``shape_id`` int64 (index into names),
      ``quaternion`` ``[n, 4]`` and ``rotation`` ``[n, 3, 3]`` (object -> camera frame), ``scale``,
      ``tilt`` and ``azimuth`` (radians; where the symmetry axis points, see ``axis_angles``);
    - names: the solids' names, ``SHAPES``.
    ``shapes`` restricts the solids drawn (ids still index ``SHAPES``). With ``cache=True`` the set is
    saved under data/cache/depth_shapes/ and loaded on the next call with the same arguments.
    """
    _check_arguments(n, size, seed, shapes, scale_range)
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = {"v": CACHE_VERSION, "n": n, "size": size, "seed": seed, "shapes": list(shapes),
           "scale_range": [float(v) for v in scale_range]}

    def make() -> dict:
        factors = _random_factors(n, seed, shapes, scale_range)
        images = render(factors["shape_id"].to(device), factors["rotation"].to(device), factors["scale"].to(device),
                        size=size, chunk=chunk)
        return {"images": images.cpu(), "factors": factors}

    blob = cached(cache_path("depth_shapes", "depth", key) if cache else None, make)
    return DepthShapes(images=blob["images"].to(device),
                       factors={k: v.to(device) for k, v in blob["factors"].items()},
                       names=SHAPES)
