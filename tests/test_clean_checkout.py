"""A clean checkout stays clean: with `make lab`'s git filter and JupyterLab's post-save hook, notebooks run and
saved with their outputs leave `git status` empty, so a learner's `git pull` never meets "local changes would be
overwritten"; a notebook the learner edited stays modified.

The filter's commands are read from `make -n lab` (nothing starts) and run in a temporary git repository that
holds the course's committed notebooks and a tiny notebook executed in a real kernel; each save is followed by
the hook, as JupyterLab calls it (`make lab` names it: checked below)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_utils.lab import keep_git_clean

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make"),
    pytest.mark.skipif(importlib.util.find_spec("nbstripout") is None,
                       reason="nbstripout is not installed (make lab installs it into .venv)"),
]


def filter_setup() -> str:
    """The shell block of `make lab` that sets up the git filter (the `if git rev-parse ... fi` lines)."""
    out = subprocess.run(["make", "-n", "-s", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("if git rev-parse"))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith("fi"))
    return "\n".join(lines[start:end + 1])


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def clone(tmp_path):
    """A git repository holding two committed notebooks (as a fresh clone has them) and a tiny one, with the
    filter set up. (Two: every git call that looks at a notebook runs the filter, a Python process.)"""
    repo = tmp_path / "course"
    (repo / "notebooks").mkdir(parents=True)
    for path in sorted((ROOT / "notebooks").glob("0[01]_*.ipynb")):
        shutil.copy(path, repo / "notebooks" / path.name)
    tiny = nbformat.v4.new_notebook()
    tiny.cells = [nbformat.v4.new_code_cell("print(6 * 7)"), nbformat.v4.new_code_cell("import math\nmath.pi")]
    tiny.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}}
    nbformat.write(tiny, repo / "notebooks" / "tiny.ipynb")
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "course")
    subprocess.run(["bash", "-c", filter_setup()], cwd=repo, check=True)
    return repo


def test_the_filter_changes_no_tracked_file_and_leaves_committed_notebooks_clean(clone):
    assert git(clone, "status", "--porcelain") == ""
    assert "filter=nbstripout" in (clone / ".git" / "info" / "attributes").read_text()
    assert not (clone / ".gitattributes").exists()
    # every committed notebook passes the filter unchanged (one process for all, with the clone's settings)
    clean = git(clone, "config", "filter.nbstripout.clean")
    assert clean.strip().endswith("-m nbstripout --keep-id")
    notebooks = [str(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    done = subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id", "--verify", *notebooks], cwd=clone,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"committed notebooks the filter would change: {done.stdout}{done.stderr}"


def test_a_notebook_run_in_a_kernel_and_saved_with_its_outputs_leaves_git_status_clean(clone):
    from nbclient import NotebookClient
    path = clone / "notebooks" / "tiny.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}  # as JupyterLab saves
    nbformat.write(nb, path)
    assert keep_git_clean({"type": "notebook"}, str(path))
    assert "42" in path.read_text()  # the learner's file keeps its outputs
    assert git(clone, "status", "--porcelain") == ""
    assert git(clone, "diff", "--cached") == ""


def test_course_notebooks_saved_with_outputs_leave_git_status_clean(clone):
    for path in sorted((clone / "notebooks").glob("0[01]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), 1):
            cell.execution_count = count
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="epoch 1: loss 123.4\n")]
            cell.metadata["scrolled"] = True
        nb.metadata["language_info"].update(version="3.11.7", mimetype="text/x-python", file_extension=".py",
                                             codemirror_mode={"name": "ipython", "version": 3},
                                             nbconvert_exporter="python", pygments_lexer="ipython3")
        nbformat.write(nb, path)
        keep_git_clean({"type": "notebook"}, str(path))
    assert git(clone, "status", "--porcelain") == ""


def save_with_outputs(path: Path, edit: str = "") -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="trained\n")]
    code[0].execution_count = 1
    code[-1].source += edit
    nbformat.write(nb, path)
    keep_git_clean({"type": "notebook"}, str(path))


def test_git_pull_updates_a_notebook_that_was_run_and_keeps_one_that_was_edited(clone, tmp_path):
    learner = tmp_path / "learner"
    git(tmp_path, "clone", "-q", str(clone), str(learner))
    subprocess.run(["bash", "-c", filter_setup()], cwd=learner, check=True)
    save_with_outputs(learner / "notebooks" / "tiny.ipynb")
    save_with_outputs(learner / "notebooks" / "00_setup.ipynb", edit="\n# my answer")
    assert git(learner, "status", "--porcelain") == " M notebooks/00_setup.ipynb\n"
    nb = nbformat.read(clone / "notebooks" / "tiny.ipynb", as_version=4)  # upstream improves the run notebook
    nb.cells[0].source = "print(6 * 7)  # the answer"
    nbformat.write(nb, clone / "notebooks" / "tiny.ipynb")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-am", "better")
    git(learner, "pull", "-q")
    assert "# the answer" in (learner / "notebooks" / "tiny.ipynb").read_text()
    assert "# my answer" in (learner / "notebooks" / "00_setup.ipynb").read_text()


def test_make_lab_starts_jupyterlab_with_the_hook(lab_args):
    assert "--FileContentsManager.post_save_hook=course_utils.lab.keep_git_clean" in lab_args
