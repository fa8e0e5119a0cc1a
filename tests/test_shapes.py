"""The procedural depth-image set: determinism, range, shapes, analytic views, cache, errors."""
import math

import pytest
import torch

from course_utils import data, shapes
from course_utils.cache import CacheWarning
from course_utils.shapes import SHAPES, depth_shapes, render, rotation_about

SIZE = 48


def _one(name: str, rotation: torch.Tensor, scale: float, size: int = SIZE) -> torch.Tensor:
    """Render a single solid; returns the image [size, size]."""
    shape_id = torch.tensor([SHAPES.index(name)])
    return render(shape_id, rotation.reshape(1, 3, 3).float(), torch.tensor([scale]), size=size)[0, 0]


def _radius(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = shapes._pixel_grid(size)
    return x, y, torch.sqrt(x * x + y * y)


def _compare(image, expected, inside, outside, atol=1e-4):
    """Inside: depth values match; outside: background; both sets must be non-trivial."""
    assert inside.sum() > 20 and outside.sum() > 20
    err = (image[inside] - expected[inside]).abs().max().item()
    assert err < atol, f"largest depth error inside the silhouette: {err:.2e}"
    assert (image[outside] == 0).all(), "pixels outside the silhouette must be background (0)"


@pytest.mark.parametrize("scale", [0.55, 0.8, 0.95])
def test_sphere_matches_closed_form(scale):
    # any rotation: a sphere of radius s at the origin has z = sqrt(s^2 - r^2)
    rotation = shapes._quaternion_to_matrix(torch.tensor([[0.3, -0.5, 0.7, 0.2]]))[0]
    image = _one("sphere", rotation, scale)
    _, _, r = _radius()
    expected = (1.0 + torch.sqrt((scale ** 2 - r ** 2).clamp_min(0))) / 2
    pixel = 2.0 / SIZE
    _compare(image, expected, inside=r < scale - pixel, outside=r > scale + pixel)
    assert image.max() == pytest.approx((1 + scale) / 2, abs=0.02)  # the nearest point is bright


def test_cube_face_on_is_flat():
    image = _one("cube", torch.eye(3), 0.9)
    x, y, _ = _radius()
    half = 0.9 * shapes.CUBE_HALF
    pixel = 2.0 / SIZE
    box = torch.maximum(x.abs(), y.abs())
    expected = torch.full_like(image, (1.0 + half) / 2)
    _compare(image, expected, inside=box < half - pixel, outside=box > half + pixel)


def test_cylinder_side_on_matches_closed_form():
    scale = 0.9
    image = _one("cylinder", torch.eye(3), scale)  # axis = image's vertical
    x, y, _ = _radius()
    r, h = scale * shapes.CYLINDER_RADIUS, scale * shapes.CYLINDER_HALF_HEIGHT
    pixel = 2.0 / SIZE
    expected = (1.0 + torch.sqrt((r ** 2 - x ** 2).clamp_min(0))) / 2
    inside = (x.abs() < r - pixel) & (y.abs() < h - pixel)
    outside = (x.abs() > r + pixel) | (y.abs() > h + pixel)
    _compare(image, expected, inside, outside)


@pytest.mark.parametrize("apex_first", [True, False])
def test_cone_along_its_axis(apex_first):
    scale = 0.9
    # rotating by +pi/2 about x sends the cone's axis (its y, apex side) to +z, towards the camera
    image = _one("cone", rotation_about("x", math.pi / 2 if apex_first else -math.pi / 2), scale)
    _, _, rho = _radius()
    r, h = scale * shapes.CONE_RADIUS, scale * shapes.CONE_HALF_HEIGHT
    pixel = 2.0 / SIZE
    if apex_first:  # the lateral surface: z falls linearly from the apex (z = h) to the rim (z = -h)
        z = h - 2 * h * rho / r
    else:  # the flat base, a disc at z = h
        z = torch.full_like(rho, h)
    _compare(image, (1.0 + z) / 2, inside=rho < r - pixel, outside=rho > r + pixel)


def test_torus_along_its_axis_matches_closed_form():
    # sphere-traced torus, seen along its axis: z = sqrt(r^2 - (rho - R)^2) on the ring
    scale = 0.9
    image = _one("torus", rotation_about("x", math.pi / 2), scale)
    _, _, rho = _radius()
    big, small = scale * shapes.TORUS_MAJOR, scale * shapes.TORUS_MINOR
    pixel = 2.0 / SIZE
    expected = (1.0 + torch.sqrt((small ** 2 - (rho - big) ** 2).clamp_min(0))) / 2
    ring = (rho - big).abs()
    _compare(image, expected, inside=ring < small - pixel, outside=ring > small + pixel, atol=2e-3)
    assert (image[rho < big - small - pixel] == 0).all(), "the hole of the torus must be background"


def test_deterministic_and_seed_dependent():
    a = depth_shapes(40, size=16, seed=3, cache=False)
    b = depth_shapes(40, size=16, seed=3, cache=False)
    c = depth_shapes(40, size=16, seed=4, cache=False)
    assert torch.equal(a.images, b.images)
    for key in a.factors:
        assert torch.equal(a.factors[key], b.factors[key]), key
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.factors["scale"], c.factors["scale"])


def test_range_dtype_and_gray_values():
    images, factors, names = depth_shapes(200, size=32, seed=0, cache=False)
    assert images.shape == (200, 1, 32, 32) and images.dtype == torch.float32
    assert images.min() == 0 and images.max() <= 1
    foreground = images[images > 0]
    assert 0.1 < foreground.numel() / images.numel() < 0.6
    assert foreground.unique().numel() > 1000, "depth images must be gray and continuous, not a few levels"
    # every solid lies within the ball of radius 0.95, so a hit has z >= -0.95 and a value >= 0.025
    assert foreground.min() >= 0.025, "hits must stay distinguishable from the background value 0"
    assert names == SHAPES
    n = 200
    assert factors["shape_id"].dtype == torch.int64 and factors["shape_id"].shape == (n,)
    assert factors["rotation"].shape == (n, 3, 3) and factors["quaternion"].shape == (n, 4)
    assert factors["scale"].shape == factors["tilt"].shape == factors["azimuth"].shape == (n,)
    rot = factors["rotation"]
    eye = torch.eye(3).expand(n, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(n), atol=1e-5)
    assert (factors["scale"] >= 0.55).all() and (factors["scale"] <= 0.95).all()
    assert (factors["tilt"] >= 0).all() and (factors["tilt"] <= math.pi).all()


def test_every_shape_present_and_balanced():
    _, factors, names = depth_shapes(103, size=8, seed=1, cache=False)
    counts = torch.bincount(factors["shape_id"], minlength=len(names))
    assert counts.min() >= 103 // len(names) and counts.max() <= 103 // len(names) + 1
    _, factors, _ = depth_shapes(30, size=8, seed=1, cache=False, shapes=("cube", "torus"))
    assert set(factors["shape_id"].tolist()) == {SHAPES.index("cube"), SHAPES.index("torus")}


def test_shapes_look_different():
    # the silhouette area, averaged over random poses, separates the solids (sphere largest, cone smallest)
    images, factors, _ = depth_shapes(500, size=24, seed=0, cache=False)
    area = (images > 0).float().mean(dim=(1, 2, 3))
    mean_area = torch.stack([area[factors["shape_id"] == k].mean() for k in range(len(SHAPES))])
    assert mean_area.argmax() == SHAPES.index("sphere") and mean_area.argmin() == SHAPES.index("cone")


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    first = data.depth_shapes(20, size=16, seed=5)
    files = list((tmp_path / "cache" / "depth_shapes").glob("*.pt"))
    assert len(files) == 1

    def no_render(*args, **kwargs):
        raise AssertionError("the cached set should have been loaded, not rendered again")

    monkeypatch.setattr(shapes, "render", no_render)
    second = data.depth_shapes(20, size=16, seed=5)
    assert torch.equal(first.images, second.images)
    assert all(torch.equal(first.factors[k], second.factors[k]) for k in first.factors)
    with pytest.raises(AssertionError, match="cached"):
        data.depth_shapes(20, size=16, seed=6)  # another seed is another file


def test_corrupt_cache_is_rendered_again(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    first = depth_shapes(10, size=8, seed=0)
    path = next((tmp_path / "cache" / "depth_shapes").glob("*.pt"))
    path.write_bytes(b"truncated")
    with pytest.warns(CacheWarning, match="damaged cache file"):  # one warning that names the file, then render
        again = depth_shapes(10, size=8, seed=0)
    assert torch.equal(first.images, again.images)


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "n must be an int >= 1"),
    ({"n": 2.5}, "n must be an int >= 1"),
    ({"n": 4, "size": 2}, "size must be an int"),
    ({"n": 4, "seed": "a"}, "seed must be an int"),
    ({"n": 4, "shapes": ("sphere", "pyramid")}, "distinct names"),
    ({"n": 4, "shapes": "sphere"}, "sequence of names"),
    ({"n": 4, "scale_range": (0.5, 1.5)}, "scale_range"),
])
def test_bad_arguments_say_what_to_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        depth_shapes(cache=False, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu():
    cpu = depth_shapes(300, size=32, seed=2, cache=False)
    gpu = depth_shapes(300, size=32, seed=2, cache=False, device="cuda")
    assert gpu.images.device.type == "cuda"
    assert torch.equal(cpu.factors["shape_id"], gpu.factors["shape_id"].cpu())
    diff = (cpu.images - gpu.images.cpu()).abs()
    assert (diff > 1e-3).float().mean() < 1e-3  # float rounding may flip a few silhouette pixels


def test_axis_angles_read_back_the_rotation():
    tilt = torch.linspace(0.05, math.pi - 0.05, 7)
    # about x by pi/2 - tilt puts the axis at (0, sin tilt, cos tilt): up in the image, tilted away from the camera
    found_tilt, found_azimuth = shapes.axis_angles(rotation_about("x", math.pi / 2 - tilt))
    torch.testing.assert_close(found_tilt, tilt, atol=1e-5, rtol=0)
    torch.testing.assert_close(found_azimuth, torch.full_like(tilt, math.pi / 2), atol=1e-5, rtol=0)
    # a further turn about the camera axis (z) turns the azimuth and leaves the tilt
    turned = rotation_about("z", torch.full_like(tilt, -math.pi / 2)) @ rotation_about("x", math.pi / 2 - tilt)
    found_tilt, found_azimuth = shapes.axis_angles(turned)
    torch.testing.assert_close(found_tilt, tilt, atol=1e-5, rtol=0)
    torch.testing.assert_close(found_azimuth, torch.zeros_like(tilt), atol=1e-5, rtol=0)
