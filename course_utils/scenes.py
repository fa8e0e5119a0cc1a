"""Colour scenes: a solid on a floor before a wall, 64x64 RGB, with known factors.

    images, factors = color_scenes(10_000, size=64, seed=0)

Each image shows one solid (sphere, cube, cylinder, cone) standing on a gray floor in front of
a blue-gray wall, lit by one distant light, with a cast shadow. The factors of variation are
known: the solid's shape, its colour (a hue; saturation and brightness are fixed), its size, its
orientation (a turn about the vertical axis; only the cube shows it, the other solids are round
about that axis) and its position along the floor (left-right). Notebook 06 trains a
Wasserstein autoencoder on it, the course's stand-in for the small colour-image set of the
source article.

The scene (world units, y up, x to the right, z towards the camera):
- the floor is the plane y = 0, the wall the plane z = -WALL_DISTANCE;
- the solid stands on the floor at (x_position, ., 0): its lowest point touches y = 0;
- a pinhole camera at CAMERA_POSITION looks at CAMERA_TARGET with a vertical field of view of
  CAMERA_FOV_DEG; pixel row 0 is the top of the image;
- shading is Lambert's law with one directional light: colour * (AMBIENT + (1 - AMBIENT) *
  max(0, n . l) * lit), where n is the surface normal, l the unit direction towards the light
  and lit is 0 where the solid blocks the light (the shadow on the floor and the wall). The
  solids are convex, so a solid shades itself exactly where n . l < 0.

How it is rendered: one ray per pixel, for all images of a chunk at once (torch, on any
device). The floor and the wall are the same in every image, so they are intersected once.
Each camera ray, and each shadow ray from a floor or wall point towards the light, is moved
into the solid's own frame (undo the position, the turn and the size); there every solid is
the intersection of a quadric and a slab (sphere, cylinder, cone) or of three slabs (cube), so
the interval of the ray inside it is found in closed form. The normal at the hit point comes
from whichever face the point lies on.

Images are rounded to multiples of 1/255 (what an 8-bit image holds), so that a cached set
(stored as uint8 under data/cache/color_scenes/) is bit-identical to a freshly rendered one.
Random factors are drawn with a CPU generator and only then moved to the device, so a seed gives
the same factors everywhere.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from .procedural import (EPS, balanced_ids, cache_path, cached, check_int, check_names, check_range, span_cone,
                         span_cube, span_cylinder, span_sphere, uniform)

SHAPES = ("sphere", "cube", "cylinder", "cone")

# The solids in their own frame (y = the vertical axis), each about one unit in radius.
CUBE_HALF = 0.8
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.85, 0.9
CONE_RADIUS, CONE_HALF_HEIGHT = 1.0, 1.0      # apex at y = +h, base of radius r at y = -h
BOTTOM = {"sphere": 1.0, "cube": CUBE_HALF, "cylinder": CYLINDER_HALF_HEIGHT, "cone": CONE_HALF_HEIGHT}

# The scene.
WALL_DISTANCE = 1.6                          # the wall is the plane z = -WALL_DISTANCE
FLOOR_COLOR = (0.80, 0.76, 0.68)             # warm light gray
WALL_COLOR = (0.70, 0.78, 0.90)              # pale blue-gray
CAMERA_POSITION = (0.0, 1.5, 4.2)
CAMERA_TARGET = (0.0, 0.45, 0.0)
CAMERA_FOV_DEG = 30.0                        # vertical (= horizontal: the images are square)
LIGHT_DIRECTION = (-0.55, 1.0, 0.75)         # towards the light (normalized when used): up, left, front
AMBIENT = 0.3                                # light that reaches every surface, shadowed or not
SATURATION, BRIGHTNESS = 0.8, 0.95           # of the solid's colour (HSV); the hue is the factor

DEFAULT_SCALE_RANGE = (0.3, 0.55)            # the solid's size (its radius, about), world units
DEFAULT_X_RANGE = (-0.55, 0.55)              # where it stands, left to right
CACHE_VERSION = 1                            # bump when the rendering changes, so that old caches are not reused


class ColorScenes(NamedTuple):
    """What ``color_scenes`` returns; unpacks as ``images, factors = ...``. Shape names: ``SHAPES``."""
    images: torch.Tensor               # float32 [n, 3, size, size] in [0, 1] (multiples of 1/255)
    factors: dict[str, torch.Tensor]   # per image: see color_scenes


# ----------------------------------------------------------------------------------------
# Factors
# ----------------------------------------------------------------------------------------
def _hue_to_rgb(hue: torch.Tensor, saturation: float = SATURATION, value: float = BRIGHTNESS) -> torch.Tensor:
    """HSV -> RGB for hues ``[n]`` in [0, 1) (0 = red, 1/3 = green, 2/3 = blue); returns ``[n, 3]``."""
    n = torch.tensor([5.0, 3.0, 1.0], device=hue.device)  # r, g, b
    k = (n + 6.0 * hue.unsqueeze(-1)) % 6.0  # [n, 3]
    return value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _random_factors(n: int, seed: int = 0, shapes: Sequence[str] = SHAPES,
                   scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
                   x_range: tuple[float, float] = DEFAULT_X_RANGE) -> dict[str, torch.Tensor]:
    """Draw the factors of ``n`` scenes on the CPU (deterministic for a seed).

    Shapes are balanced (each chosen solid n // len(shapes) times or once more, in random order);
    hue, size, turn and position are uniform in their ranges; the turn is in [0, pi/2), the
    cube's period (a cube turned by pi/2 looks the same).
    """
    generator = torch.Generator().manual_seed(seed)
    shape_id = balanced_ids(n, shapes, SHAPES, generator)
    hue = torch.rand(n, generator=generator)
    scale = uniform(n, scale_range, generator)
    yaw = (math.pi / 2) * torch.rand(n, generator=generator)
    x_position = uniform(n, x_range, generator)
    return {"shape_id": shape_id, "hue": hue, "color": _hue_to_rgb(hue), "scale": scale, "yaw": yaw,
            "x_position": x_position}


# ----------------------------------------------------------------------------------------
# Camera and background
# ----------------------------------------------------------------------------------------
def _vec(values: Sequence[float], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _light_direction(device: torch.device | str | None = None) -> torch.Tensor:
    """The unit vector towards the light, ``[3]``."""
    light = _vec(LIGHT_DIRECTION, device)
    return light / light.norm()


def _camera_axes(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit vectors (right, up, forward) of the camera, each ``[3]``."""
    forward = _vec(CAMERA_TARGET, device) - _vec(CAMERA_POSITION, device)
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, _vec((0.0, 1.0, 0.0), device))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    return right, up, forward


def _camera_rays(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Unit directions of the rays through the pixel centres, ``[size * size, 3]`` (row-major, row 0 on top)."""
    right, up, forward = _camera_axes(device)
    half = math.tan(math.radians(CAMERA_FOV_DEG) / 2)
    centres = ((torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size * 2.0 - 1.0) * half
    v, u = torch.meshgrid(-centres, centres, indexing="ij")  # [size, size]; v > 0 in the top rows
    rays = forward + u.reshape(-1, 1) * right + v.reshape(-1, 1) * up  # [P, 3]
    return rays / rays.norm(dim=-1, keepdim=True)


def _project(points: torch.Tensor, size: int) -> torch.Tensor:
    """(row, column) pixel coordinates ``[..., 2]`` (floats; integer part = the pixel) of world points ``[..., 3]``."""
    right, up, forward = _camera_axes(points.device)
    rel = points - _vec(CAMERA_POSITION, points.device)
    depth = rel @ forward
    half = math.tan(math.radians(CAMERA_FOV_DEG) / 2)
    u, v = (rel @ right) / depth / half, (rel @ up) / depth / half  # in [-1, 1] inside the image
    return torch.stack([(1.0 - v) / 2.0 * size, (u + 1.0) / 2.0 * size], dim=-1)


def _background(size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each camera ray meets the floor or the wall: points ``[P, 3]``, distance ``[P]``,
    albedo ``[P, 3]`` and the Lambert factor max(0, n . l) ``[P]``."""
    rays = _camera_rays(size, device)
    origin = _vec(CAMERA_POSITION, device)
    inf = torch.full_like(rays[:, 0], math.inf)
    t_floor = torch.where(rays[:, 1] < 0, -origin[1] / rays[:, 1].clamp(max=-EPS), inf)
    t_wall = torch.where(rays[:, 2] < 0, (-WALL_DISTANCE - origin[2]) / rays[:, 2].clamp(max=-EPS), inf)
    on_floor = t_floor <= t_wall
    if not torch.isfinite(torch.minimum(t_floor, t_wall)).all():
        raise RuntimeError("a camera ray misses both the floor and the wall: check the camera constants.")
    t = torch.minimum(t_floor, t_wall)
    points = origin + t.unsqueeze(-1) * rays
    light = _light_direction(device)
    albedo = torch.where(on_floor.unsqueeze(-1), _vec(FLOOR_COLOR, device), _vec(WALL_COLOR, device))
    lambert = torch.where(on_floor, light[1], light[2]).clamp_min(0.0)  # floor normal +y, wall normal +z
    return points, t, albedo, lambert


def _empty_scene(size: int = 64, device: torch.device | str | None = None) -> torch.Tensor:
    """The floor and the wall without a solid, ``[3, size, size]`` (not rounded to 1/255)."""
    _, _, albedo, lambert = _background(size, device)
    shade = AMBIENT + (1.0 - AMBIENT) * lambert  # [P]
    return (albedo * shade.unsqueeze(-1)).T.reshape(3, size, size)  # [P, 3] -> [3, size, size]


# ----------------------------------------------------------------------------------------
# Rays and solids, in the solid's own frame (course_utils.procedural). o: origins [m, P, 3] or [m, 1, 3];
# d: directions [m, P, 3] or [m, 1, 3]. Each returns the interval (t_in, t_out) of the ray inside the
# solid, each [m, P]; empty when t_in > t_out.
# ----------------------------------------------------------------------------------------
def _normal(name: str, p: torch.Tensor) -> torch.Tensor:
    """Outward unit normal ``[..., 3]`` at points ``p`` ``[..., 3]`` on a solid's surface (own frame).

    A point lies on the face whose defining inequality it (nearly) makes an equality; the face with
    the largest ratio (1 on the face, below 1 inside) is taken.
    """
    x, y, z = p.unbind(-1)
    zero = torch.zeros_like(x)
    if name == "sphere":
        n = p
    elif name == "cube":
        axis = p.abs().argmax(-1, keepdim=True)
        n = torch.zeros_like(p).scatter(-1, axis, p.gather(-1, axis).sign())
    elif name == "cylinder":
        radial = torch.sqrt(x * x + z * z) / CYLINDER_RADIUS
        on_cap = y.abs() / CYLINDER_HALF_HEIGHT > radial
        n = torch.where(on_cap.unsqueeze(-1), torch.stack([zero, y.sign(), zero], -1), torch.stack([x, zero, z], -1))
    elif name == "cone":
        h, k2 = CONE_HALF_HEIGHT, (CONE_RADIUS / (2 * CONE_HALF_HEIGHT)) ** 2
        slant = torch.sqrt(x * x + z * z) / (math.sqrt(k2) * (h - y)).clamp_min(EPS)
        on_base = -y / h > slant
        side = torch.stack([x, k2 * (h - y), z], -1)  # gradient of x^2 + z^2 - k^2 (h - y)^2, halved
        n = torch.where(on_base.unsqueeze(-1), torch.stack([zero, -torch.ones_like(y), zero], -1), side)
    else:
        raise ValueError(f"unknown solid {name!r}; use one of {SHAPES}.")
    return n / n.norm(dim=-1, keepdim=True).clamp_min(EPS)


_SPANS = {
    "sphere": span_sphere,
    "cube": lambda o, d: span_cube(o, d, CUBE_HALF),
    "cylinder": lambda o, d: span_cylinder(o, d, CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT),
    "cone": lambda o, d: span_cone(o, d, CONE_RADIUS, CONE_HALF_HEIGHT),
}


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------
def _to_object(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo a turn by yaw about y (cos, sin broadcast against v[..., 0]): world -> object frame."""
    x, y, z = v.unbind(-1)
    x_new, z_new = cos * x - sin * z, sin * x + cos * z
    return torch.stack([x_new, y.expand_as(x_new), z_new], dim=-1)


def _to_world(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    x_new, z_new = cos * x + sin * z, -sin * x + cos * z
    return torch.stack([x_new, y.expand_as(x_new), z_new], dim=-1)


def _solid_centres(factors: dict[str, torch.Tensor]) -> torch.Tensor:
    """World position of each solid's centre ``[n, 3]`` (its lowest point touches the floor)."""
    bottom = torch.tensor([BOTTOM[s] for s in SHAPES], device=factors["scale"].device)
    x = factors["x_position"]
    return torch.stack([x, factors["scale"] * bottom[factors["shape_id"]], torch.zeros_like(x)], dim=-1)


def render(factors: dict[str, torch.Tensor], size: int = 64, chunk: int = 256) -> torch.Tensor:
    """Images ``[n, 3, size, size]`` in [0, 1] (not rounded) of scenes with the given factors (on their device).

    factors: ``shape_id`` [n] (index into SHAPES), ``color`` [n, 3] in [0, 1], ``scale``, ``yaw`` and
    ``x_position`` [n]. A world point p of the solid is ``centre + scale * turn(yaw) @ p_own``.
    """
    n = factors["shape_id"].shape[0]
    for key in ("scale", "yaw", "x_position"):
        if factors[key].shape != (n,):
            raise ValueError(f"render: factors['{key}'] must have shape [{n}], got {tuple(factors[key].shape)}.")
    if factors["color"].shape != (n, 3):
        raise ValueError(f"render: factors['color'] must have shape [{n}, 3], got {tuple(factors['color'].shape)}.")
    device = factors["scale"].device
    rays = _camera_rays(size, device)  # [P, 3]
    origin = _vec(CAMERA_POSITION, device)
    light = _light_direction(device)
    bg_points, bg_t, bg_albedo, bg_lambert = _background(size, device)
    centres = _solid_centres(factors)
    images = torch.empty(n, size * size, 3, device=device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        ids, s = factors["shape_id"][start:stop], factors["scale"][start:stop].float()
        cos, sin = torch.cos(factors["yaw"][start:stop]), torch.sin(factors["yaw"][start:stop])
        cos_p, sin_p, s_p = cos[:, None], sin[:, None], s[:, None, None]  # broadcast over pixels
        m = stop - start
        # camera rays and shadow rays (from the floor/wall point towards the light), in each solid's frame
        cam_o = _to_object((origin - centres[start:stop]).unsqueeze(1), cos_p, sin_p) / s_p  # [m, 1, 3]
        cam_d = _to_object(rays.unsqueeze(0), cos_p, sin_p)  # [m, P, 3]
        sh_o = _to_object(bg_points.unsqueeze(0) - centres[start:stop, None], cos_p, sin_p) / s_p  # [m, P, 3]
        sh_d = _to_object(light.expand(m, 1, 3), cos_p, sin_p)  # [m, 1, 3]
        t_hit = torch.full((m, size * size), math.inf, device=device)
        normal = torch.zeros(m, size * size, 3, device=device)
        shadow = torch.zeros(m, size * size, dtype=torch.bool, device=device)
        for k, name in enumerate(SHAPES):
            rows = (ids == k).nonzero(as_tuple=True)[0]
            if not rows.numel():
                continue
            t_in, t_out = _SPANS[name](cam_o[rows], cam_d[rows])
            hit = (t_in <= t_out) & (t_in > 0)
            t_obj = torch.where(hit, t_in, torch.full_like(t_in, math.inf))
            p_obj = cam_o[rows] + t_obj.nan_to_num(posinf=0.0).unsqueeze(-1) * cam_d[rows]
            t_hit[rows] = t_obj * s[rows, None]  # rays have unit length in both frames: t scales with the size
            normal[rows] = _to_world(_normal(name, p_obj), cos_p[rows], sin_p[rows])
            s_in, s_out = _SPANS[name](sh_o[rows], sh_d[rows])
            shadow[rows] = (s_in <= s_out) & (s_out > 1e-4)
        # shading: Lambert with one light; the background is darkened where the solid blocks the light
        solid = t_hit < bg_t  # [m, P]
        solid_shade = AMBIENT + (1.0 - AMBIENT) * (normal @ light).clamp_min(0.0)  # [m, P]
        bg_shade = AMBIENT + (1.0 - AMBIENT) * bg_lambert * (~shadow).float()  # [m, P]
        colour = factors["color"][start:stop, None].float()  # [m, 1, 3]
        images[start:stop] = torch.where(solid.unsqueeze(-1), colour * solid_shade.unsqueeze(-1),
                                         bg_albedo * bg_shade.unsqueeze(-1))
    return images.permute(0, 2, 1).reshape(n, 3, size, size).clamp(0.0, 1.0)  # [n, P, 3] -> [n, 3, size, size]


# ----------------------------------------------------------------------------------------
# The data set
# ----------------------------------------------------------------------------------------
def _check_arguments(n, size, seed, shapes, scale_range, x_range, chunk) -> None:
    for name, value, least in (("n", n, 1), ("size", size, 8), ("chunk", chunk, 1)):
        check_int("color_scenes", name, value, least)
    check_int("color_scenes", "seed", seed)
    check_names("color_scenes", shapes, SHAPES)
    check_range("color_scenes", "scale_range", scale_range, 0.1, 0.6, "larger solids leave the picture")
    check_range("color_scenes", "x_range", x_range, -0.6, 0.6, "further out the solid leaves the picture")


def color_scenes(n: int, size: int = 64, seed: int = 0, device: torch.device | str | None = None,
                 cache: bool = True, *, shapes: Sequence[str] = SHAPES,
                 scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
                 x_range: tuple[float, float] = DEFAULT_X_RANGE, chunk: int = 256) -> ColorScenes:
    """``n`` colour scenes and their factors (deterministic for ``seed``).

    Returns ``ColorScenes(images, factors)``:
    - images: float32 ``[n, 3, size, size]`` in [0, 1], multiples of 1/255, on ``device``;
    - factors (on ``device``): ``shape_id`` [n] int64 (index into ``SHAPES``), ``hue`` [n] in [0, 1),
      ``color`` [n, 3] (its RGB), ``scale`` [n] (size, world units), ``yaw`` [n] (turn about the
      vertical, radians in [0, pi/2); visible on the cube only), ``x_position`` [n] (left-right).
    ``shapes`` restricts the solids drawn (ids still index SHAPES). Rendering runs on ``device``
    in chunks of ``chunk`` images. With ``cache=True`` the set is saved under
    data/cache/color_scenes/ and loaded on the next call with the same arguments.
    """
    _check_arguments(n, size, seed, shapes, scale_range, x_range, chunk)
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = {"v": CACHE_VERSION, "n": n, "size": size, "seed": seed, "shapes": list(shapes),
           "scale_range": [float(v) for v in scale_range], "x_range": [float(v) for v in x_range]}

    def make() -> dict:
        factors = _random_factors(n, seed, shapes, scale_range, x_range)
        images = render({k: v.to(device) for k, v in factors.items()}, size=size, chunk=chunk)
        return {"images": (images * 255.0).round().to(torch.uint8).cpu(), "factors": factors}

    blob = cached(cache_path("color_scenes", "scenes", key) if cache else None, make)
    images = blob["images"].to(device).float().div_(255.0)
    return ColorScenes(images=images, factors={k: v.to(device) for k, v in blob["factors"].items()})
