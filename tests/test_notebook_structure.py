"""The learner's path, checked on the committed notebooks: they teach, the benchmarks measure.

Teaching notebooks carry no engineering notes and no code cell over 40 lines; their maths is LaTeX; every
exercise solution is collapsed and asserts its own check; the plain training loop holds no GPU speed code.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*.ipynb"))
TEACHING = [nb for nb in NOTEBOOKS if "speedrun" not in nb.name]
ENGINEERING = re.compile(r"not yet measured|H100|A100|TFLOP/s|kernel launch|benchmarks/|\bsessions?\b", re.I)
ASCII_MATHS = re.compile(r"sigma0\^2|sum_\{|\bN\(0, ?I\)|\bKL\(q|log p\(x")


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _prose(cell: dict) -> str:
    """A markdown cell's text without its maths and code spans."""
    text = re.sub(r"```.*?```", "", _source(cell), flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", "", text, flags=re.S)
    text = re.sub(r"\$[^$]*\$", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def test_the_series_is_in_reading_order_with_its_optional_parts():
    names = [nb.stem for nb in NOTEBOOKS]
    assert names[0] == "00_setup" and names[-1] == "07_speedrun"
    assert names.index("03_gaussian_vae") + 1 == names.index("03b_gaussian_appendix")


@pytest.mark.parametrize("nb", TEACHING, ids=lambda p: p.stem)
def test_teaching_notebooks_carry_no_engineering_notes(nb):
    found = {m.group(0) for cell in _cells(nb) for m in ENGINEERING.finditer(_source(cell))}
    assert not found, f"{nb.name}: engineering notes belong in BENCHMARKS.md: {sorted(found)}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_code_cell_is_longer_than_40_lines(nb):
    long = [i for i, c in enumerate(_cells(nb)) if c["cell_type"] == "code" and len(_source(c).splitlines()) > 40]
    assert not long, f"{nb.name}: code cells over 40 lines: {long}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_maths_in_markdown_is_latex(nb):
    found = [m.group(0) for c in _cells(nb) if c["cell_type"] == "markdown" for m in ASCII_MATHS.finditer(_prose(c))]
    assert not found, f"{nb.name}: write these in LaTeX: {found}"


@pytest.mark.parametrize("nb", TEACHING, ids=lambda p: p.stem)
def test_exercises_answer_back_and_their_solutions_are_collapsed(nb):
    cells = _cells(nb)
    solutions = [c for c in cells if c["cell_type"] == "code" and _source(c).lstrip().startswith("# Solution")]
    assert solutions, f"{nb.name} has no exercise solution"
    for cell in solutions:
        assert cell.get("metadata", {}).get("jupyter", {}).get("source_hidden") is True, _source(cell)[:80]
        assert re.search(r"assert [^\n]*check_\w+\(", _source(cell)), _source(cell)[:80]


def test_the_gaussian_notebook_shows_the_mean_reduction_pitfall():
    text = "\n".join(_source(c) for c in _cells(ROOT / "notebooks" / "03_gaussian_vae.ipynb"))
    assert "F.mse_loss" in text and "reduction" in text
    assert re.search(r"binary_cross_entropy", text)


def test_the_teaching_loop_holds_no_gpu_speed_code():
    train = (ROOT / "course_utils" / "train.py").read_text()
    for name in ("cuda_graphed", "CUDAGraph", "set_lr", "capturable", "fused"):
        assert name not in train, name


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md"])
def test_documents_speak_of_the_course_not_of_its_making(doc):
    text = (ROOT / doc).read_text()
    assert not re.search(r"\bsessions?\b", text, re.I)
