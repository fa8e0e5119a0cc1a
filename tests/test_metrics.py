"""The Frechet distance against an independent computation; the classifier learns MNIST."""
import numpy as np
import pytest
import torch

from course_utils import data, metrics


def frechet_numpy(a, b):
    """Independent: the matrix square root of C_a C_b from a general (non-symmetric) eigendecomposition."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    evals, evecs = np.linalg.eig(ca @ cb)
    sqrt_prod = (evecs * np.sqrt(evals.astype(complex))) @ np.linalg.inv(evecs)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(sqrt_prod).real)


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.5, 1.0), (0.0, 2.0), (1.0, 0.5)])
def test_frechet_distance_matches_numpy(shift, scale):
    a = torch.randn(500, 6) @ torch.randn(6, 6)
    b = (torch.randn(400, 6) @ torch.randn(6, 6)) * scale + shift
    assert metrics.frechet_distance_from_features(a, b) == pytest.approx(frechet_numpy(a, b), rel=1e-6, abs=1e-8)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    # for N(m1, s1^2 I) and N(m2, s2^2 I) in F dimensions: F (m1 - m2)^2 + F (s1 - s2)^2
    a = torch.randn(200_000, 3, dtype=torch.float64) * 1.0
    b = torch.randn(200_000, 3, dtype=torch.float64) * 2.0 + 0.5
    assert metrics.frechet_distance_from_features(a, b) == pytest.approx(3 * 0.25 + 3 * 1.0, rel=0.02)


def test_frechet_distance_is_zero_for_identical_sets_and_symmetric():
    a, b = torch.randn(300, 5), torch.randn(300, 5) + 0.3
    assert metrics.frechet_distance_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance_from_features(a, b) == pytest.approx(metrics.frechet_distance_from_features(b, a))


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError):
        metrics.frechet_distance_from_features(torch.randn(10, 3), torch.randn(10, 4))


def test_classifier_learns_and_separates_real_from_noise(tmp_path, monkeypatch):
    # trained here, into this test's own cache: never weights an earlier run left behind
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(metrics, "_CLASSIFIERS", {})
    clf = metrics.mnist_classifier("cpu")
    assert len(list((tmp_path / "checkpoints").glob("mnist-classifier-*.pt"))) == 1  # saved for the next call
    assert clf.test_accuracy > 0.9
    x, _ = data.mnist_tensors("test", limit=1000)

    def frechet(a, b):
        return metrics.frechet_distance_from_features(metrics.classifier_features(a, clf),
                                                      metrics.classifier_features(b, clf))
    real_vs_real = frechet(x[:500], x[500:])
    real_vs_noise = frechet(x[:500], torch.rand(500, 1, 28, 28))
    assert real_vs_noise > 10 * real_vs_real
    assert metrics.classifier_confidence(x[:200], clf).mean() > 0.9
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        clf.features(torch.rand(4, 28, 28))
