"""pytest settings for the whole repository, the notebooks run by nbval included.

nbval waits at most 5 s for each output message once a cell has finished (`IPyNbCell.output_timeout`, hard-coded,
not an option: nbval issues #136 and #231). On a busy 2-core machine a cell that trained for minutes can take
longer than that to flush its output, and the cell then fails with "Timeout of 5 seconds exceeded waiting for
output" although it ran correctly (seen once here, in notebook 03, while another training job shared the CPU).
The wait is per message and ends as soon as the message arrives, so a longer limit costs nothing when all is well.
"""

NBVAL_OUTPUT_TIMEOUT_S = 60


def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ == "IPyNbCell" and hasattr(item, "output_timeout"):
            item.output_timeout = max(item.output_timeout, NBVAL_OUTPUT_TIMEOUT_S)
