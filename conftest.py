"""pytest settings for the whole repository, the notebooks run by nbval included.

nbval waits at most 5 s for each output message once a cell has finished (`IPyNbCell.output_timeout`, hard-coded,
not an option: nbval issues #136 and #231). On a busy 2-core machine a cell that trained for minutes can take
longer than that to flush its output, and the cell then fails with "Timeout of 5 seconds exceeded waiting for
output" although it ran correctly (seen once here, in notebook 03, while another training job shared the CPU).
The wait is per message and ends as soon as the message arrives, so a longer limit costs nothing when all is well.
"""

import ast
import base64
import io
import os
import shutil
import tempfile

import pytest

NBVAL_OUTPUT_TIMEOUT_S = 60
INLINE = "module://matplotlib_inline.backend_inline"


def pytest_configure(config):
    """Every test, and every notebook kernel nbval starts (it inherits this environment), caches into a
    temporary folder: a test run never reads weights a learner's earlier run left in data/cache/, and
    never writes into the working tree. COURSE_CACHE_DIR set by the caller is kept."""
    # The notebooks' kernels draw with the inline backend, as JupyterLab does: their figures are rendered as
    # PNG outputs, which the figure checks below read. (This pytest process itself draws with Agg: tests/conftest.)
    os.environ["MPLBACKEND"] = INLINE
    if "COURSE_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="course-test-cache-")
        os.environ["COURSE_CACHE_DIR"] = folder
        config._course_tmp_cache = folder


def pytest_unconfigure(config):
    folder = getattr(config, "_course_tmp_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """A longer output wait for nbval's cells, and after each notebook's last cell one more test item: the
    figures the learner sees (see FigureCheck)."""
    cells_of = {}
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            if hasattr(item, "output_timeout"):
                item.output_timeout = max(item.output_timeout, NBVAL_OUTPUT_TIMEOUT_S)
            cells_of.setdefault(item.parent, []).append(item)
    for notebook, cells in cells_of.items():
        check = FigureCheck.from_parent(notebook, name="figures", cells=cells)
        items.insert(items.index(cells[-1]) + 1, check)


# --------------------------------------------------------------------------------------------------------------
# Figures: what the learner sees, checked
# --------------------------------------------------------------------------------------------------------------
FIGURE_CALLS = {"subplots", "figure", "imshow", "image_grid", "manifold_grid", "history_panel", "subplot_mosaic"}


def draws_a_figure(source: str) -> bool:
    """Whether a code cell makes a figure at its top level (not inside a function it only defines): it calls
    plt.subplots/plt.figure/imshow or a course_utils.plots helper, or assigns a name starting with "fig"."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics
        return False
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, (ast.FunctionDef, ast.Lambda)):
                break
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
                if name in FIGURE_CALLS or owner == "plots":
                    return True
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                if any(isinstance(n, ast.Name) and n.id.startswith("fig") for n in names):
                    return True
    return False


def figure_problems(cells) -> list[str]:
    """For nbval's executed cells: each cell that draws shows a PNG, and no PNG is a blank canvas."""
    import numpy as np
    from matplotlib import image

    problems = []
    for item in cells:
        source = item.cell.source
        outputs = item.test_outputs or []
        pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
        first = source.strip().splitlines()[0][:70] if source.strip() else ""
        if draws_a_figure(source) and not pngs:
            problems.append(f"cell {item.cell_num} draws a figure but shows none: {first}")
        for png in pngs:
            pixels = image.imread(io.BytesIO(base64.b64decode(png)), format="png")
            if float(np.asarray(pixels)[..., :3].std()) < 1e-3:
                problems.append(f"cell {item.cell_num} shows a blank figure: {first}")
    return problems


class FigureCheck(pytest.Item):
    """Runs after a notebook's cells: every cell that draws a figure rendered one (inline backend, as in
    JupyterLab), none of them blank, and the notebook showed at least one figure if it draws any."""

    def __init__(self, *, cells, **kwargs):
        super().__init__(**kwargs)
        self.cells = cells

    def runtest(self):
        if not all(cell.test_outputs is not None for cell in self.cells):
            pytest.skip("not every cell of this notebook ran")
        problems = figure_problems(self.cells)
        assert not problems, "\n".join(problems)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::figures"
