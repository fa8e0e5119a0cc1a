"""pytest settings for the whole repository, the notebooks run by nbval included.

nbval waits at most 5 s for each output message once a cell has finished (`IPyNbCell.output_timeout`, hard-coded,
not an option: nbval issues #136 and #231). On a busy 2-core machine a cell that trained for minutes can take
longer than that to flush its output, and the cell then fails with "Timeout of 5 seconds exceeded waiting for
output" although it ran correctly (seen once here, in notebook 03, while another training job shared the CPU).
The wait is per message and ends as soon as the message arrives, so a longer limit costs nothing when all is well.
"""

import os
import shutil
import tempfile

NBVAL_OUTPUT_TIMEOUT_S = 60


def pytest_configure(config):
    """Every test, and every notebook kernel nbval starts (it inherits this environment), caches into a
    temporary folder: a test run never reads weights a learner's earlier run left in data/cache/, and
    never writes into the working tree. COURSE_CACHE_DIR set by the caller is kept."""
    if "COURSE_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="course-test-cache-")
        os.environ["COURSE_CACHE_DIR"] = folder
        config._course_tmp_cache = folder


def pytest_unconfigure(config):
    folder = getattr(config, "_course_tmp_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ == "IPyNbCell" and hasattr(item, "output_timeout"):
            item.output_timeout = max(item.output_timeout, NBVAL_OUTPUT_TIMEOUT_S)
