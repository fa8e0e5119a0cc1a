"""`make execute`'s runner: it must work where nbconvert is absent (a bare GPU machine) and report Checks output."""
import sys

import nbformat
import pytest

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


def test_a_stuck_cell_fails_its_notebook_after_the_cell_timeout_in_one_line(tmp_path, capfd):
    src = tmp_path / "slow.ipynb"
    nbformat.write(_notebook("x = 1", "\nimport time; time.sleep(600)\nx = 2"), src)
    seconds, error = execute_notebook(src, tmp_path / "out", quick=True, timeout=2)
    assert error == "cell 1 (`import time; time.sleep(600)`) ran longer than 2 s (--cell-timeout): stuck or too slow"
    assert seconds < 300  # interrupted, not waited out: holds on however loaded a machine
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err and "ZMQError" not in captured.out + captured.err


def test_a_reply_whose_wakeup_was_lost_is_still_read():
    # nbclient waits for a cell's reply with one endless poll of the shell socket; when an Output widget's
    # update is sent on that socket meanwhile, the poll can miss the reply's arrival and never wake
    # (jupyter/nbclient#312: the pre-run of 01 stalled after its ELBO sliders). The runner asks in slices.
    import asyncio
    from queue import Empty

    from course_utils import execute

    asked, inbox = [], []

    async def get_msg(timeout=None):  # a socket whose reply is there from the second poll on
        asked.append(timeout)
        if timeout is None:
            raise AssertionError("an endless poll: a lost wake-up would hang here for ever")
        if len(asked) < 2:
            inbox.append({"msg_type": "execute_reply"})
            raise Empty
        return inbox.pop()

    sliced = execute._sliced(get_msg)
    assert asyncio.run(sliced(None)) == {"msg_type": "execute_reply"}
    assert asked == [execute.SHELL_POLL_S] * 2

    async def silent(timeout=None):
        raise Empty

    with pytest.raises(Empty):  # a cell timeout still ends the wait
        asyncio.run(execute._sliced(silent)(0.01))


def test_cells_that_draw_into_output_widgets_run_to_the_end(tmp_path):
    # the shape of 01's ELBO-slider cell, many times over: before the fix, about one run in two stalled
    cell = ("import ipywidgets as widgets\nfrom IPython.display import display\nout = widgets.Output()\n"
            "for _ in range(3):\n    with out:\n        out.clear_output(wait=True)\n"
            "        display({'text/plain': 'x' * 1000}, raw=True)\n"
            "display(widgets.VBox([widgets.FloatSlider(), out]))")
    src = tmp_path / "widgets.ipynb"
    nbformat.write(_notebook(*[cell] * 30, "print('All checks passed.')"), src)
    _, error = execute_notebook(src, tmp_path / "out", quick=True, timeout=120)
    assert error is None


def test_only_an_unknown_notebook_is_an_error_that_lists_the_notebooks(capsys):
    from course_utils import execute
    assert execute.main(["--only", "99", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "'99'" in err and "00_setup" in err and "01_elbo" in err


def test_notebooks_are_found_in_reading_order(tmp_path):
    from course_utils.execute import notebooks_in
    names = ["07_speedrun", "03b_gaussian_appendix", "00_setup", "03_gaussian_vae", "04_pyro_vs_pytorch"]
    for name in names + ["scratch", "Untitled"]:
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert [p.stem for p in notebooks_in(tmp_path)] == ["00_setup", "03_gaussian_vae", "03b_gaussian_appendix",
                                                         "04_pyro_vs_pytorch", "07_speedrun"]


def test_course_quick_in_the_environment_means_quick_mode(tmp_path, monkeypatch, capsys):
    from course_utils import execute
    ran = []
    monkeypatch.setattr(execute, "execute_notebook", lambda nb, out, quick, timeout: ran.append(quick) or (0.1, None))
    monkeypatch.setattr(execute, "checks_output", lambda nb: "All checks passed.")
    monkeypatch.setattr("nbformat.read", lambda *a, **k: None)
    monkeypatch.setenv("COURSE_QUICK", "1")
    assert execute.main(["--only", "00", "--out", str(tmp_path)]) == 0
    assert ran == [True] and "quick mode (COURSE_QUICK is set)" in capsys.readouterr().out
    monkeypatch.setenv("COURSE_QUICK", "2")
    assert execute.main(["--only", "00", "--out", str(tmp_path)]) == 2
    assert "COURSE_QUICK" in capsys.readouterr().err


def test_make_execute_has_a_cell_timeout():
    import shutil
    import subprocess
    from pathlib import Path
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-n", "-s", "execute"], cwd=root, capture_output=True, text=True, check=True).stdout
    line = [line for line in out.splitlines() if "course_utils.execute" in line][-1]
    assert "--cell-timeout" in line


def test_the_html_page_needs_no_network_and_shows_widget_figures(tmp_path):
    # offline, a page loading MathJax and the widget manager from the internet shows raw $q$ and empty widgets;
    # tests/test_browser.py opens such a page in Chromium with the network blocked
    import re
    pytest.importorskip("jupyter_server_mathjax")
    widget = ("%matplotlib inline\nimport ipywidgets as widgets, matplotlib.pyplot as plt\n"
              "from IPython.display import display\nout = widgets.Output()\nwith out:\n"
              "    fig = plt.figure(figsize=(2, 2)); plt.plot([0, 1]); display(fig); plt.close(fig)\n"
              "display(widgets.VBox([widgets.FloatSlider(), out]))")
    src = tmp_path / "page.ipynb"
    nb = _notebook(widget)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("The prior $\\mathcal N(0, I)$."))
    nbformat.write(nb, src)
    _, error = execute_notebook(src, tmp_path / "out", quick=True, timeout=120)
    assert error is None
    html = (tmp_path / "out" / "page.html").read_text()
    assert re.findall(r'<script[^>]+src="https?://', html) == []
    assert (tmp_path / "out" / "mathjax" / "MathJax.js").exists()
    assert "data:image/png" in html and "widget-view+json" not in html
    executed = nbformat.read(tmp_path / "out" / "page.ipynb", as_version=4)  # the notebook keeps its widgets
    assert "widgets" in executed.metadata
