"""The colour scenes: deterministic, in range, every solid present, known scenes where the answer is analytic."""
import math

import pytest
import torch

from course_utils import data, scenes

ONE_LEVEL = 1.0 / 255  # images are rounded to 8-bit levels


def one_scene(shape="sphere", hue=0.0, scale=0.5, yaw=0.0, x_position=0.0):
    """The factors of one hand-made scene."""
    hue_t = torch.tensor([hue])
    return {"shape_id": torch.tensor([scenes.SHAPES.index(shape)]), "hue": hue_t, "color": scenes._hue_to_rgb(hue_t),
            "scale": torch.tensor([scale]), "yaw": torch.tensor([yaw]), "x_position": torch.tensor([x_position])}


def pixel(image, point, size=64):
    """The RGB value [3] of the pixel in which the world point [3] appears."""
    row, col = scenes._project(point, size).floor().long().tolist()
    return image[:, row, col]


def solid_mask(image):
    """Pixels of a red solid (hue 0), [H, W]: red exceeds green there, and nowhere on the gray floor and wall."""
    return image[0] - image[1] > 0.15


@pytest.fixture(scope="module")
def small_set():
    return scenes.color_scenes(200, size=32, seed=3, cache=False)


def test_shapes_range_and_levels(small_set):
    images, factors = small_set
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images * 255, (images * 255).round(), atol=1e-4, rtol=0)
    for key in ("shape_id", "hue", "scale", "yaw", "x_position"):
        assert factors[key].shape == (200,), key
    assert factors["color"].shape == (200, 3)
    assert ((factors["yaw"] >= 0) & (factors["yaw"] < math.pi / 2)).all()


def test_every_shape_present_and_balanced(small_set):
    counts = torch.bincount(small_set.factors["shape_id"], minlength=len(scenes.SHAPES))
    assert counts.tolist() == [50, 50, 50, 50]


def test_deterministic_for_a_seed():
    a = scenes.color_scenes(40, size=32, seed=7, cache=False)
    b = scenes.color_scenes(40, size=32, seed=7, cache=False)
    c = scenes.color_scenes(40, size=32, seed=8, cache=False)
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(a.factors[k], b.factors[k]) for k in a.factors)
    assert not torch.equal(a.images, c.images)


def test_chunking_does_not_change_the_images():
    a = scenes.color_scenes(30, size=32, seed=1, cache=False, chunk=7)
    b = scenes.color_scenes(30, size=32, seed=1, cache=False, chunk=256)
    assert torch.equal(a.images, b.images)


def test_hue_to_rgb_primaries():
    rgb = scenes._hue_to_rgb(torch.tensor([0.0, 1 / 3, 2 / 3]))
    high, low = scenes.BRIGHTNESS, scenes.BRIGHTNESS * (1 - scenes.SATURATION)
    expected = torch.tensor([[high, low, low], [low, high, low], [low, low, high]])
    torch.testing.assert_close(rgb, expected, atol=1e-6, rtol=0)


def test_wall_and_floor_colours_at_known_pixels():
    # a small solid on the right: the top-left pixel shows the lit wall, the bottom-left the lit floor
    image = scenes.render(one_scene(scale=0.3, x_position=0.5))[0]
    light = scenes._light_direction()
    shade_wall = scenes.AMBIENT + (1 - scenes.AMBIENT) * light[2]  # the wall faces +z
    shade_floor = scenes.AMBIENT + (1 - scenes.AMBIENT) * light[1]  # the floor faces +y
    torch.testing.assert_close(image[:, 0, 0], torch.tensor(scenes.WALL_COLOR) * shade_wall)
    torch.testing.assert_close(image[:, -1, 0], torch.tensor(scenes.FLOOR_COLOR) * shade_floor)
    # and far from the solid the scene is the empty one
    torch.testing.assert_close(image[:, :, :20], scenes._empty_scene()[:, :, :20])


@pytest.mark.parametrize("hue", [0.0, 0.25, 0.6])
def test_solid_colour_appears_at_its_centre(hue):
    factors = one_scene("sphere", hue=hue, scale=0.5)
    image = scenes.render(factors)[0]
    colour = factors["color"][0]
    centre = scenes._solid_centres(factors)[0]
    seen = pixel(image, centre)
    # Lambert shading scales all three channels by one factor between AMBIENT and 1
    shade = seen / colour
    assert shade.max() - shade.min() < 1e-5
    assert scenes.AMBIENT <= shade.mean() <= 1
    # where the sphere's normal points at the light, the shade is (almost) 1: the full colour
    light = scenes._light_direction()
    brightest = pixel(image, centre + 0.5 * light)
    torch.testing.assert_close(brightest, colour, atol=0.02, rtol=0)


def test_shadow_falls_where_a_blocked_light_ray_meets_the_floor():
    # the light ray through a point inside the sphere, just below its top, is blocked by the sphere;
    # it meets the floor behind the sphere, where the camera sees it
    factors = one_scene("sphere", scale=0.4, x_position=-0.3)
    image = scenes.render(factors)[0]
    centre, light = scenes._solid_centres(factors)[0], scenes._light_direction()
    inside = centre + torch.tensor([0.0, 0.8 * 0.4, 0.0])
    on_floor = inside - inside[1] / light[1] * light  # y = 0
    torch.testing.assert_close(pixel(image, on_floor), torch.tensor(scenes.FLOOR_COLOR) * scenes.AMBIENT)
    # the same floor point without the solid is lit
    lit = pixel(scenes._empty_scene(), on_floor)
    assert (lit > pixel(image, on_floor) + 0.1).all()


def test_each_solid_has_its_own_silhouette():
    masks = [solid_mask(scenes.render(one_scene(shape))[0]) for shape in scenes.SHAPES]
    for i in range(len(masks)):
        assert masks[i].sum() > 100, scenes.SHAPES[i]
        for j in range(i):
            assert (masks[i] ^ masks[j]).sum() > 20, (scenes.SHAPES[i], scenes.SHAPES[j])


def test_size_position_and_orientation_act_as_stated():
    area = [solid_mask(scenes.render(one_scene("cylinder", scale=s))[0]).sum() for s in (0.3, 0.4, 0.5)]
    assert area[0] < area[1] < area[2]
    columns = torch.arange(64.0)
    centroid = []
    for x in (-0.4, 0.0, 0.4):
        mask = solid_mask(scenes.render(one_scene("sphere", scale=0.3, x_position=x))[0]).float()
        centroid.append((mask.sum(0) * columns).sum() / mask.sum())
    assert centroid[0] < 32 - 5 < 32 + 5 < centroid[2] and abs(centroid[1] - 32) < 3
    # a turn changes the cube, but not the sphere, which is round about the vertical
    assert not torch.equal(scenes.render(one_scene("cube", yaw=0.0)), scenes.render(one_scene("cube", yaw=0.6)))
    torch.testing.assert_close(scenes.render(one_scene("sphere", yaw=0.0)), scenes.render(one_scene("sphere", yaw=0.6)),
                               atol=1e-3, rtol=0)  # float rounding of the turned rays


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    first = scenes.color_scenes(24, size=16, seed=2)
    files = list((tmp_path / "cache" / "color_scenes").glob("*.pt"))
    assert len(files) == 1
    second = scenes.color_scenes(24, size=16, seed=2)
    fresh = scenes.color_scenes(24, size=16, seed=2, cache=False)
    assert torch.equal(first.images, second.images) and torch.equal(first.images, fresh.images)
    assert all(torch.equal(first.factors[k], second.factors[k]) for k in first.factors)
    # other arguments, another file
    scenes.color_scenes(24, size=16, seed=2, shapes=("cube",))
    assert len(list((tmp_path / "cache" / "color_scenes").glob("*.pt"))) == 2


def test_data_wrapper_and_shape_restriction():
    images, factors = data.color_scenes(12, size=16, seed=0, cache=False, shapes=("cone", "cube"))
    assert images.shape == (12, 3, 16, 16)
    assert set(factors["shape_id"].tolist()) == {scenes.SHAPES.index("cone"), scenes.SHAPES.index("cube")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu():
    cpu = scenes.color_scenes(64, size=32, seed=5, cache=False)
    gpu = scenes.color_scenes(64, size=32, seed=5, cache=False, device="cuda")
    assert gpu.images.device.type == "cuda"
    # rounding to 8-bit levels may flip a few pixels by one level (float differences between devices)
    assert (gpu.images.cpu() - cpu.images).abs().max() <= ONE_LEVEL + 1e-6
    assert ((gpu.images.cpu() - cpu.images).abs() > 1e-6).float().mean() < 1e-3


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "n must be an int"),
    ({"n": 2.5}, "n must be an int"),
    ({"size": 4}, "size must be an int >= 8"),
    ({"seed": "a"}, "seed must be an int"),
    ({"shapes": "cube"}, "shapes=\\('cube',\\)"),
    ({"shapes": ("cube", "pyramid")}, "distinct names"),
    ({"scale_range": (0.5, 0.9)}, "scale_range"),
    ({"x_range": (-1.0, 0.0)}, "x_range"),
])
def test_bad_arguments_are_explained(kwargs, match):
    arguments = {"n": 4, "size": 16, "cache": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        scenes.color_scenes(**arguments)
