"""The figure check that runs after each notebook (../conftest.py): a cell that draws must show a PNG, and no
PNG may be a blank canvas. Checked here on made-up cells, so a check that never fires is caught."""
import base64
import importlib.util
import io
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt

_spec = importlib.util.spec_from_file_location("root_conftest", Path(__file__).resolve().parent.parent / "conftest.py")
root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(root)


def png(blank: bool) -> str:
    fig, ax = plt.subplots(figsize=(2, 2))
    if not blank:
        ax.plot([0, 1], [0, 1])
    else:
        ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def cell(source, outputs, num=1):
    return SimpleNamespace(cell=SimpleNamespace(source=source), test_outputs=outputs, cell_num=num)


def test_cells_that_draw_are_recognised():
    assert root.draws_a_figure("fig, ax = plt.subplots()\nax.plot([1])")
    assert root.draws_a_figure("fig = loss_curves(history, 'title')")
    assert root.draws_a_figure("plots.image_grid(x[:16])")
    assert not root.draws_a_figure("def show(x):\n    fig, ax = plt.subplots()\n    return fig")
    assert not root.draws_a_figure("print(1 + 1)")
    assert not root.draws_a_figure("%timeit x")


def test_a_missing_or_blank_figure_is_reported_and_a_real_one_passes():
    drawn = {"output_type": "display_data", "data": {"image/png": png(blank=False)}}
    blank = {"output_type": "display_data", "data": {"image/png": png(blank=True)}}
    assert root.figure_problems([cell("fig, ax = plt.subplots()", [drawn])]) == []
    assert "shows none" in root.figure_problems([cell("fig, ax = plt.subplots()", [])])[0]
    assert "blank figure" in root.figure_problems([cell("fig, ax = plt.subplots()", [blank])])[0]
