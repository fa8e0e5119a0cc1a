"""exercises: the checks say right for right answers and not yet, with the difference, for wrong ones."""
import torch

from course_utils.exercises import check_function, check_value
from course_utils.losses import kl_diag_normal


def _cases():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)) for _ in range(3)]


def test_a_correct_function_passes(capsys):
    def kl(z_loc, z_logvar):
        return 0.5 * (z_loc ** 2 + z_logvar.exp() - 1 - z_logvar).sum(-1)
    assert check_function("KL", kl, kl_diag_normal, _cases())
    assert "[right]" in capsys.readouterr().out


def test_a_wrong_function_fails_and_says_where(capsys):
    def kl(z_loc, z_logvar):  # forgot the 1/2
        return (z_loc ** 2 + z_logvar.exp() - 1 - z_logvar).sum(-1)
    assert not check_function("KL", kl, kl_diag_normal, _cases(), hint="the factor 1/2")
    out = capsys.readouterr().out
    assert "[not yet]" in out and "case 1 of 3" in out and "the factor 1/2" in out


def test_wrong_shape_stub_and_exception_are_reported_not_raised(capsys):
    assert not check_function("KL", lambda m, v: (m ** 2).sum(), kl_diag_normal, _cases())
    assert "shape ()" in capsys.readouterr().out
    assert not check_function("KL", lambda m, v: None, kl_diag_normal, _cases())
    assert "not done yet" in capsys.readouterr().out

    def broken(m, v):
        raise NotImplementedError
    assert not check_function("KL", broken, kl_diag_normal, _cases())
    assert "not done yet" in capsys.readouterr().out
    assert not check_function("KL", lambda m, v: m @ v, kl_diag_normal, _cases())
    assert "raised RuntimeError" in capsys.readouterr().out


def test_check_value_compares_numbers_and_tuples(capsys):
    assert check_value("mean", torch.tensor(2.0), 2.0)
    assert not check_value("mean", 2.5, 2.0)
    assert "got 2.5, expected 2" in capsys.readouterr().out
    assert check_value("pair", (1.0, torch.ones(2)), (1.0, [1.0, 1.0]))
    assert not check_value("pair", (1.0,), (1.0, 2.0))
