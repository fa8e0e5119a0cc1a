"""The cache only saves time: a folder that cannot be written costs one warning, never the result."""
import pytest
import torch

from course_utils import cache


def test_atomic_save_under_a_file_warns_and_returns_false(tmp_path):
    blocker = tmp_path / "file.txt"  # a folder that cannot exist, even for root (who ignores permissions)
    blocker.write_text("x")
    with pytest.warns(cache.CacheWarning, match="cannot write .*file.txt"):
        assert cache.atomic_save({"a": torch.zeros(2)}, blocker / "sub" / "blob.pt") is False


def test_atomic_save_then_load_cached_round_trip(tmp_path):
    path = tmp_path / "blob.pt"
    assert cache.atomic_save({"a": torch.arange(3)}, path)
    assert torch.equal(cache.load_cached(path, required=("a",))["a"], torch.arange(3))
    assert not list(tmp_path.glob("*partial*"))
