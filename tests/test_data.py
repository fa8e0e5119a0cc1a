"""MNIST loading, checksums and the clear errors; binarization; GPU-resident batches."""
import shutil

import pytest
import torch

from course_utils import data

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_load_mnist_shapes_and_dtypes(split, n):
    images, labels = data.load_mnist(split)
    assert images.shape == (n, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert int(images.max()) == 255 and int(images.min()) == 0


def test_known_label_counts():
    _, labels = data.load_mnist("train")
    assert torch.bincount(labels).tolist() == TRAIN_COUNTS
    _, test_labels = data.load_mnist("test")
    assert torch.bincount(test_labels).sum() == 10000


def test_load_mnist_rejects_unknown_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load_mnist("validation")


@pytest.fixture
def mnist_copy(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    shutil.copytree(data.MNIST_DIR, folder)
    monkeypatch.setattr(data, "MNIST_DIR", folder)
    return folder


def test_corrupt_file_gives_a_clear_error(mnist_copy):
    target = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[100] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(data.DataFileError) as err:
        data.load_mnist("test")
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b" in message  # expected
    assert data.sha256(target) in message  # found
    assert "git checkout" in message  # what to do


def test_truncated_file_gives_a_clear_error(mnist_copy):
    target = mnist_copy / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(data.DataFileError, match="corrupt or truncated"):
        data.load_mnist("train")


def test_missing_checksum_file_is_reported(mnist_copy):
    (mnist_copy / "SHA256SUMS").unlink()
    with pytest.raises(data.DataFileError, match="SHA256SUMS"):
        data.load_mnist("test")


def test_binarize_is_bernoulli_of_the_gray_value():
    x = torch.full((200, 1, 28, 28), 0.3)
    xb = data.binarize(x)
    assert set(xb.unique().tolist()) <= {0.0, 1.0}
    assert abs(xb.mean().item() - 0.3) < 0.01
    assert torch.equal(data.binarize(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert torch.equal(data.binarize(torch.ones(3, 4)), torch.ones(3, 4))


def test_binarize_with_a_seeded_generator_is_fixed_and_without_is_fresh():
    x = torch.rand(10, 1, 28, 28)
    a = data.binarize(x, generator=torch.Generator().manual_seed(5))
    b = data.binarize(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(data.binarize(x), data.binarize(x))


def test_binarize_rejects_uint8_and_out_of_range():
    with pytest.raises(TypeError, match="to_float"):
        data.binarize(torch.zeros(2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\].*to_float"):
        data.binarize(torch.full((2, 2), 255.0))
    # off the CPU (here "meta", which holds no values) nothing is read back: no step waits for a GPU
    assert data.binarize(torch.full((2, 2), 255.0, device="meta")).shape == (2, 2)


def test_to_float_scales_uint8_and_refuses_what_is_float_already():
    assert torch.equal(data.to_float(torch.tensor([0, 51, 255], dtype=torch.uint8)), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(TypeError, match="uint8"):  # dividing floats by 255 again would darken every image
        data.to_float(torch.tensor([0.0, 0.5]))


def test_batches_cover_every_example_once_and_keep_pairs():
    x = torch.arange(103).float()
    y = torch.arange(103) * 10
    seen = []
    for xb, yb in data.batches(x, y, batch_size=10):
        assert len(xb) <= 10
        assert torch.equal(yb, xb.long() * 10)  # pairs stay together
        seen.append(xb)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == x.tolist()
    assert not torch.equal(seen, x)  # shuffled


def test_batches_drop_last_unshuffled_and_seeded():
    x = torch.arange(25)
    assert [len(b) for (b,) in data.batches(x, batch_size=10, drop_last=True)] == [10, 10]
    assert torch.equal(torch.cat([b for (b,) in data.batches(x, batch_size=7, shuffle=False)]), x)
    runs = [torch.cat([b for (b,) in data.batches(x, batch_size=4, generator=torch.Generator().manual_seed(3))])
            for _ in range(2)]
    assert torch.equal(*runs)


def test_batches_reject_mismatched_tensors():
    with pytest.raises(ValueError, match="same first dimension"):
        next(data.batches(torch.zeros(5), torch.zeros(6), batch_size=2))


def test_mnist_tensors_are_floats_in_unit_interval():
    x, y = data.mnist_tensors("test", limit=100)
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and y.shape == (100,)


def test_map_batches_equals_one_pass_and_splits_tuples():
    x = torch.randn(2503, 7)
    weight = torch.randn(7, 3, requires_grad=True)
    out = data.map_batches(lambda b: b @ weight, x, batch_size=1000)
    assert out.shape == (2503, 3) and not out.requires_grad
    torch.testing.assert_close(out, (x @ weight).detach())
    first, second = data.map_batches(lambda b: (b[:, :2], b.sum(1)), x, batch_size=300)
    assert torch.equal(first, x[:, :2]) and torch.allclose(second, x.sum(1))
    with pytest.raises(ValueError, match="positive"):
        data.map_batches(lambda b: b, x, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        data.map_batches(lambda b: b, x[:0])
