"""MMD: unbiased, symmetric, equal to a direct double loop, and detecting a shift."""
import math

import pytest
import torch

from course_utils.losses import WAE_SCALES, mmd


def mmd_double_loop(x, y, kernel, scales=WAE_SCALES, prior_var=1.0):
    """An independent, slow implementation written straight from the definition."""
    c_base = 2.0 * x.shape[1] * prior_var

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        total = 0.0
        for s in scales:
            c = c_base * s
            total += c / (c + d2) if kernel == "imq" else math.exp(-d2 / c)
        return total

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("n,m,d", [(5, 5, 2), (6, 9, 3), (12, 4, 8)])
def test_mmd_equals_double_loop(kernel, n, m, d):
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randn(m, d, dtype=torch.float64) + 0.5
    assert mmd(x, y, kernel=kernel).item() == pytest.approx(mmd_double_loop(x, y, kernel), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_is_symmetric(kernel):
    x, y = torch.randn(30, 4), torch.randn(20, 4) * 2
    torch.testing.assert_close(mmd(x, y, kernel=kernel), mmd(y, x, kernel=kernel))


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_unbiased_near_zero_for_one_distribution(kernel):
    # averaged over many pairs of samples of N(0, I), the unbiased estimate centres on 0,
    # and single estimates are sometimes negative; a biased (diagonal-including) one would not be
    vals = torch.stack([mmd(torch.randn(32, 8, dtype=torch.float64), torch.randn(32, 8, dtype=torch.float64),
                            kernel=kernel) for _ in range(300)])
    assert abs(vals.mean().item()) < 3 * vals.std().item() / 300 ** 0.5 + 1e-4
    assert (vals < 0).any()


def test_mmd_clearly_positive_for_shifted_distributions():
    x = torch.randn(200, 8)
    same, shifted = mmd(x, torch.randn(200, 8)), mmd(x, torch.randn(200, 8) + 1.0)
    assert shifted > 0.05
    assert shifted > 20 * abs(same)


def test_mmd_kernel_constant_depends_on_dimension_and_prior():
    x, y = torch.randn(20, 4), torch.randn(20, 4) + 0.3
    assert mmd(x, y, prior_var=1.0) != pytest.approx(mmd(x, y, prior_var=4.0).item())


def test_mmd_rejects_bad_input():
    with pytest.raises(ValueError):
        mmd(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError):
        mmd(torch.randn(1, 2), torch.randn(5, 2))
    with pytest.raises(ValueError):
        mmd(torch.randn(5, 2), torch.randn(5, 2), kernel="laplace")
