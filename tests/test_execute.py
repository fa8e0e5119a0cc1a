"""`make execute`'s runner: it must work where nbconvert is absent (a bare GPU machine) and report Checks output."""
import sys

import nbformat

from course_utils.execute import checks_output, execute_notebook


def _notebook(*sources: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    return nb


def test_checks_output_finds_the_checks_cell_not_the_last_printing_cell():
    nb = _notebook("", "", "")
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="training...\n")]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="NLL 83.9\nAll checks passed.\n")]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="exercise solution\n")]
    assert checks_output(nb) == "NLL 83.9\nAll checks passed."
    assert checks_output(_notebook("")) == "(no Checks output found)"


def test_execute_without_nbconvert_writes_the_notebook_and_no_html(tmp_path, monkeypatch):
    src = tmp_path / "nb.ipynb"
    nbformat.write(_notebook("print('All checks passed.')"), src)
    monkeypatch.setitem(sys.modules, "nbconvert", None)  # `import nbconvert` now raises ImportError
    seconds, error = execute_notebook(src, tmp_path / "out", quick=True)
    assert error is None and seconds > 0
    assert checks_output(nbformat.read(tmp_path / "out" / "nb.ipynb", as_version=4)) == "All checks passed."
    assert not (tmp_path / "out" / "nb.html").exists()


def test_the_kernels_own_log_stays_out_of_the_table_and_the_notebooks_warnings_stay_in(tmp_path, capfd):
    # ipykernel >= 7 logs a warning about unencrypted sockets to the terminal, between a notebook's name and
    # its time in `make execute`'s table; a warning raised by the notebook's code must still reach its output
    src = tmp_path / "warns.ipynb"
    nbformat.write(_notebook("import warnings; warnings.warn('sigma is clamped')"), src)
    _, error = execute_notebook(src, tmp_path / "out", quick=True)
    assert error is None
    assert "WARNING" not in capfd.readouterr().err
    outputs = nbformat.read(tmp_path / "out" / "warns.ipynb", as_version=4).cells[0].outputs
    assert any("sigma is clamped" in o.get("text", "") for o in outputs)


def test_a_failing_notebook_reports_its_error(tmp_path, capsys):
    src = tmp_path / "bad.ipynb"
    nbformat.write(_notebook("raise ValueError('wrong shape: pass (N, 1, 28, 28)')"), src)
    _, error = execute_notebook(src, tmp_path / "out", quick=True)
    assert error is not None and "wrong shape" in error
    assert "ValueError" in capsys.readouterr().out
    assert (tmp_path / "out" / "bad.html").exists()  # nbconvert is installed here: the page is written


def test_a_stuck_cell_fails_its_notebook_after_the_cell_timeout(tmp_path):
    src = tmp_path / "slow.ipynb"
    nbformat.write(_notebook("x = 1", "import time; time.sleep(30)"), src)
    seconds, error = execute_notebook(src, tmp_path / "out", quick=True, timeout=2)
    assert error is not None and "CellTimeoutError" in error and seconds < 25


def test_run_cells_times_each_cell_and_reports_a_stall(tmp_path):
    # benchmarks/run_cells.py: a notebook's cells as a plain script (no Jupyter), each cell timed; a stuck cell
    # prints where it is stuck and stops the run
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run_cells.py"
    src = tmp_path / "nb.ipynb"
    nbformat.write(_notebook("x = 20", "print(x + 22)"), src)
    done = subprocess.run([sys.executable, str(script), str(src)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout and "[cell  0]" in done.stdout and "[cell  1]" in done.stdout
    assert "nb.ipynb: 2 cells" in done.stdout
    nbformat.write(_notebook("import time", "def wait():\n    time.sleep(30)\nwait()"), src)
    stuck = subprocess.run([sys.executable, str(script), str(src), "--stall-s", "1"], capture_output=True,
                           text=True, timeout=60)
    assert stuck.returncode != 0 and "[cell  0]" in stuck.stdout and "[cell  1]" not in stuck.stdout
    assert "in wait" in stuck.stderr, stuck.stderr  # the stuck function is named
