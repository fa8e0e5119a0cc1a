"""Exercises that answer back: checks a learner's own code against the course's reference.

Each check prints one line, ``right`` or ``not yet`` with what differs and a hint, and returns True or False.
It never raises for the learner's mistakes, so a notebook with an unfinished exercise still runs to the end;
a solution cell asserts the check's result, so the tests prove every solution passes its own check.

An exercise stub that is not done yet returns ``None`` (or raises ``NotImplementedError``); the check then says
so instead of reporting an error.
"""
from __future__ import annotations

import textwrap
from typing import Callable, Iterable, Sequence

import torch

__all__ = ["check_value", "check_function"]


def _say(name: str, ok: bool, detail: str = "", hint: str = "") -> bool:
    """Print the verdict in lines of at most 100 characters; return it."""
    if ok:
        line = f"[right]   {name}" + (f": {detail}" if detail else "")
    else:
        line = f"[not yet] {name}: {detail}" + (f"\n          hint: {hint}" if hint else "")
    print("\n".join(textwrap.fill(part, 100, subsequent_indent=" " * 10) for part in line.split("\n")))
    return ok


def _compare(answer, expected, rtol: float, atol: float) -> str | None:
    """None when ``answer`` matches ``expected``; else a short description of the difference."""
    if answer is None or answer is Ellipsis:
        return "not done yet (your code returns None)"
    if isinstance(expected, tuple):  # several values (a list is one tensor's values)
        if not isinstance(answer, (tuple, list)) or len(answer) != len(expected):
            return f"expected {len(expected)} values, got {type(answer).__name__}"
        for i, (a, e) in enumerate(zip(answer, expected)):
            problem = _compare(a, e, rtol, atol)
            if problem:
                return f"value {i}: {problem}"
        return None
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    try:
        answer_t = torch.as_tensor(answer.detach() if isinstance(answer, torch.Tensor) else answer,
                                   dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return f"expected a number or tensor, got {type(answer).__name__}"
    if answer_t.shape != expected_t.shape:
        return f"shape {tuple(answer_t.shape)}, expected {tuple(expected_t.shape)}"
    if not torch.allclose(answer_t, expected_t, rtol=rtol, atol=atol, equal_nan=False):
        worst = (answer_t - expected_t).abs().max().item()
        if answer_t.numel() == 1:
            return f"got {answer_t.item():.6g}, expected {expected_t.item():.6g}"
        return f"values differ from the reference by up to {worst:.3g}"
    return None


def check_value(name: str, answer, expected, *, hint: str = "", rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Compare a number, tensor or tuple of them with the expected one; print the verdict, return it."""
    problem = _compare(answer, expected, rtol, atol)
    return _say(name, problem is None, problem or "", hint)


def check_function(name: str, fn: Callable, reference: Callable, cases: Iterable[Sequence], *, hint: str = "",
                   rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Call ``fn(*case)`` and ``reference(*case)`` for every case; the first difference is reported.

    The check passes when every case matches in shape and value (within ``rtol``/``atol``)."""
    cases = list(cases)
    for i, case in enumerate(cases):
        try:
            answer = fn(*case)
        except NotImplementedError:
            return _say(name, False, "not done yet (your code raises NotImplementedError)", hint)
        except Exception as err:  # the learner's bug: report it, do not stop the notebook
            return _say(name, False, f"case {i + 1} raised {type(err).__name__}: {err}", hint)
        problem = _compare(answer, reference(*case), rtol, atol)
        if problem:
            return _say(name, False, f"case {i + 1} of {len(cases)}: {problem}", hint)
    return _say(name, True, f"matches the reference on {len(cases)} cases")
