"""Run every notebook headless and keep the executed copies: ``make execute``.

    python -m course_utils.execute [--out build] [--quick] [--only 02,03] [--cell-timeout 1800]

Each notebook is executed in a fresh kernel with its folder as working directory;
the executed notebook and an HTML page go to ``--out`` (the page only where nbconvert
is installed: it is a development dependency, absent on a bare GPU machine); each
notebook's Checks output, or one line naming the cell that failed or got stuck, is
printed as it finishes, and a table of wall times per notebook, and the total, with the
device at the end. Exits non-zero if any notebook failed (the others still run).
``COURSE_QUICK=1`` in the environment means ``--quick``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from queue import Empty

from .cache import PROJECT_ROOT
from .runtime import device_label, get_device, is_quick

NOTEBOOK_GLOB = "[0-9][0-9]*.ipynb"  # 00_setup ... 03_gaussian_vae, 03b_gaussian_appendix, ... 07_speedrun
DEFAULT_CELL_TIMEOUT_S = 1800  # the longest full-mode cell on a loaded 2-core CPU takes minutes, not half an hour
SHELL_POLL_S = 1.0  # how long one wait for the kernel's reply lasts before the socket is asked again
TIMED_OUT = "CellTimedOut"  # the error name a cell interrupted at its timeout is reported under


def notebooks_in(folder: Path) -> list[Path]:
    """The course's notebooks in reading order (their names sort that way: 03 < 03b < 04)."""
    return sorted(folder.glob(NOTEBOOK_GLOB))


def checks_output(nb, max_lines: int = 8) -> str:
    """The end of what the notebook's Checks cell printed (the code cell whose output says "checks passed")."""
    for cell in reversed(nb.cells):
        if cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        if "checks passed" in text.lower():
            return "\n".join(text.strip().splitlines()[-max_lines:])
    return "(no Checks output found)"


def _sliced(get_msg):
    """``get_msg(timeout)`` of the kernel client's shell channel, waiting in slices of ``SHELL_POLL_S``.

    Why: nbclient waits for a cell's reply with one poll of the shell socket (without end when there is no cell
    timeout), while its stand-in for an ipywidgets ``Output`` widget sends the widget's new content on that same
    socket as the cell displays into it (notebook 01's ELBO sliders). A zmq socket signals readiness on an
    edge; the send can consume the edge of a reply that arrived meanwhile, and the poll then never wakes:
    kernel and client both idle, forever (jupyter/nbclient#312). Each new slice asks the socket afresh,
    so a reply is read within a second however it arrived. The deadline of a cell timeout is kept.
    """
    async def sliced(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SHELL_POLL_S if deadline is None else max(0.0, min(SHELL_POLL_S, deadline - time.monotonic()))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
    return sliced


def _make_client(nb, path: Path, timeout: int | None):
    """An nbclient ``NotebookClient`` that cannot miss a cell's reply (see ``_sliced``), remembers which cell
    it is running, and starts its kernel with CurveZMQ keys where jupyter_client can provision them (the
    kernel then has no reason to warn that it runs over TCP without encryption)."""
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient
    from traitlets.config import Config

    class CourseClient(NotebookClient):
        current: tuple[int, str] | None = None

        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            kc.shell_channel.get_msg = _sliced(kc.shell_channel.get_msg)
            return kc

        start_new_kernel_client = run_sync(async_start_new_kernel_client)  # the blocking twin, as nbclient's

    def remember(cell, cell_index, **_):
        first = next((line for line in cell.source.splitlines() if line.strip()), "")
        client.current = (cell_index, first.strip())

    config = Config()
    config.KernelManager.transport_encryption = "auto"  # jupyter_client >= 8.7; older ones ignore it
    # A stuck cell is interrupted (so the kernel ends the cell and shuts down cleanly, with no socket errors
    # of its own) and reported as TIMED_OUT; nbclient's log lines would only repeat what `_one_line` says.
    quiet = logging.getLogger("course_utils.execute.nbclient")
    quiet.setLevel(logging.CRITICAL)
    client = CourseClient(nb, timeout=timeout, kernel_name="python3", config=config, on_cell_execute=remember,
                          interrupt_on_timeout=True, log=quiet,
                          error_on_timeout={"ename": TIMED_OUT, "evalue": f"longer than {timeout} s", "traceback": []},
                          resources={"metadata": {"path": str(path.parent)}})
    return client


def _one_line(error: Exception, where: tuple[int, str] | None, timeout: int | None) -> str:
    """A failure as one line: the cell (index and first line) and what went wrong."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    cell = f"cell {where[0]} (`{where[1][:60]}`)" if where else "before the first cell"
    if isinstance(error, CellTimeoutError) or getattr(error, "ename", None) == TIMED_OUT:
        return f"{cell} ran longer than {timeout} s (--cell-timeout): stuck or too slow"
    if isinstance(error, CellExecutionError):
        evalue = (getattr(error, "evalue", "") or "").strip().splitlines()
        return f"{cell} raised {getattr(error, 'ename', 'an error')}: {evalue[0][:200] if evalue else ''}"
    if isinstance(error, DeadKernelError):
        return f"the kernel died in {cell} (out of memory?)"
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{cell}: {type(error).__name__}: {lines[-1][:200] if lines else ''}"


def execute_notebook(path: Path, out_dir: Path, quick: bool, timeout: int | None = None) -> tuple[float, str | None]:
    """Execute ``path`` in a fresh kernel, write the executed copy (and its HTML page) to ``out_dir``.

    Returns (seconds, None) or (seconds, one line naming the failed or stuck cell and the error)."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    env_backup = os.environ.get("COURSE_QUICK")
    os.environ["COURSE_QUICK"] = "1" if quick else "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    error = None
    start = time.perf_counter()
    client = _make_client(nb, path, timeout)
    try:
        client.execute()
    except Exception as e:  # keep going: write what ran, report the failure in one line
        error = _one_line(e, client.current, timeout)
        if isinstance(e, CellExecutionError) and getattr(e, "ename", None) != TIMED_OUT:  # for a log read elsewhere
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            print("\n    " + "\n    ".join(lines[-15:]), flush=True)
    finally:
        if env_backup is None:
            os.environ.pop("COURSE_QUICK", None)
        else:
            os.environ["COURSE_QUICK"] = env_backup
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    try:
        import nbconvert  # noqa: F401
    except ImportError:  # a development dependency; the executed .ipynb above holds every output anyway
        pass
    else:
        (out_dir / path.with_suffix(".html").name).write_text(offline_html(nb, out_dir), encoding="utf-8")
    return seconds, error


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MATHJAX_DIR = "mathjax"  # beside the pages in --out


def _mathjax_beside(out_dir: Path) -> str | None:
    """A copy of MathJax in ``out_dir/mathjax`` (from the jupyter-server-mathjax package, copied once), as the
    URL a page there loads it from; None where the package is not installed (pages then use a CDN)."""
    import shutil
    try:
        import jupyter_server_mathjax
    except ImportError:
        return None
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = out_dir / MATHJAX_DIR
    if not (target / "MathJax.js").exists():
        shutil.copytree(source, target, dirs_exist_ok=True)
    return f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # the configuration it ships


def static_widgets(nb):
    """A copy of ``nb`` in which each displayed widget is replaced by what its ``Output`` widgets last held
    (the figure a slider drew), and the widget state is dropped: a page that needs no widget manager."""
    import copy

    import nbformat
    page = copy.deepcopy(nb)
    state = page.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def held(model_id: str, seen: set) -> list:
        model = state.get(model_id)
        if model is None or model_id in seen:
            return []
        seen.add(model_id)
        outputs = list(model.get("state", {}).get("outputs", [])) if model.get("model_name") == "OutputModel" else []
        for child in model.get("state", {}).get("children", []):
            outputs += held(str(child).removeprefix("IPY_MODEL_"), seen)
        return outputs

    for cell in page.cells:
        new_outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                new_outputs.append(output)
                continue
            shown = held(view.get("model_id", ""), set())
            new_outputs += [nbformat.from_dict(o) for o in shown] or [
                nbformat.v4.new_output("stream", name="stdout", text="(an interactive widget: run the notebook)\n")]
        if "outputs" in cell:
            cell.outputs = new_outputs
    return page


def offline_html(nb, out_dir: Path) -> str:
    """The executed notebook as an HTML page that works offline: MathJax from the copy beside it, and every
    widget as the figures it last showed (``static_widgets``)."""
    from nbconvert import HTMLExporter
    exporter = HTMLExporter()
    mathjax = _mathjax_beside(out_dir)
    if mathjax is not None:
        exporter.mathjax_url = mathjax
    exporter.require_js_url = "data:text/javascript,"  # no output needs RequireJS once the widgets are static
    html, _ = exporter.from_notebook_node(static_widgets(nb))
    if mathjax is not None:  # the copy's only web font is STIX-Web: say so before MathJax looks for TeX's
        fonts = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], '
                 'webFont: "STIX-Web", imageFont: null}});</script>\n')
        tag = f'<script src="{mathjax}'
        html = html.replace(tag, fonts + tag, 1)
    return html


def select(notebooks: list[Path], only: str) -> list[Path]:
    """The notebooks whose names start with one of the comma-separated prefixes in ``only`` (all if empty).

    A prefix that matches no notebook is an error that lists the notebooks (a typo must not run nothing)."""
    prefixes = [p.strip() for p in only.split(",") if p.strip()]
    if not prefixes:
        return notebooks
    unknown = [p for p in prefixes if not any(nb.name.startswith(p) for nb in notebooks)]
    if unknown:
        names = ", ".join(nb.stem for nb in notebooks)
        raise SystemExit(f"--only {only}: no notebook starts with {', '.join(map(repr, unknown))}. "
                         f"The notebooks are: {names}.")
    return [nb for nb in notebooks if nb.name.startswith(tuple(prefixes))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build", help="folder for executed notebooks and HTML (default: build)")
    parser.add_argument("--quick", action="store_true",
                        help="quick mode instead of full mode (COURSE_QUICK=1 in the environment does the same)")
    parser.add_argument("--only", default="", help="comma-separated notebook prefixes, e.g. 02,03")
    parser.add_argument("--cell-timeout", type=int, default=DEFAULT_CELL_TIMEOUT_S, metavar="S",
                        help="fail a notebook whose cell runs longer than S seconds, naming the cell, and go on to "
                             f"the next notebook (default: {DEFAULT_CELL_TIMEOUT_S}; 0: no limit)")
    args = parser.parse_args(argv)
    import nbformat  # a development dependency, as nbclient: imported only when notebooks are run

    try:
        notebooks = select(notebooks_in(PROJECT_ROOT / "notebooks"), args.only)
        quick = args.quick or is_quick()  # an invalid COURSE_QUICK is an error that names the allowed values
    except (SystemExit, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    timeout = args.cell_timeout if args.cell_timeout > 0 else None
    out_dir = Path(args.out).resolve()
    mode = "quick" if quick else "full"
    why = " (COURSE_QUICK is set)" if quick and not args.quick else ""
    device = get_device()
    on = f"{device.type} ({device_label(device)})"
    print(f"Executing {len(notebooks)} notebooks in {mode} mode{why} on {on}", flush=True)
    rows, failed = [], 0
    for nb in notebooks:
        print(f"  {nb.name} ...", end=" ", flush=True)
        seconds, error = execute_notebook(nb, out_dir, quick=quick, timeout=timeout)
        print(f"{seconds:7.1f} s" + (f"  FAILED: {error}" if error else ""), flush=True)
        if not error:
            checks = checks_output(nbformat.read(out_dir / nb.name, as_version=4))
            print("    " + checks.replace("\n", "\n    "), flush=True)
        rows.append((nb.name, seconds, error))
        failed += error is not None
    total = sum(s for _, s, _ in rows)
    print("\n| notebook | wall time (s) | status |\n|---|---:|---|")
    for name, seconds, error in rows:
        print(f"| {name} | {seconds:.1f} | {'FAILED: ' + error if error else 'ok'} |")
    print(f"| **total** | **{total:.1f}** | {len(rows) - failed}/{len(rows)} ok |")
    print(f"\nmode={mode}; device={on}; executed copies in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
