"""The repository's conftest.py gives nbval's notebook cells a longer wait for their output (see its docstring),
and adds one figure check after each notebook's last cell."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_notebook_cells_wait_longer_for_their_output():
    seen = []

    class Recorder:
        def pytest_collection_finish(self, session):
            seen.extend((type(item).__name__, getattr(item, "output_timeout", None)) for item in session.items)

    code = pytest.main(["--collect-only", "-q", "--nbval-lax", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                        str(ROOT / "notebooks" / "01_elbo.ipynb")], plugins=[Recorder()])
    assert code == 0
    cells = [(name, timeout) for name, timeout in seen if name == "IPyNbCell"]
    assert cells and all(timeout == 60 for _, timeout in cells), seen
    assert [name for name, _ in seen][len(cells):] == ["FigureCheck"], "the figure check runs after the last cell"
