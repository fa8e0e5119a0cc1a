"""Run every notebook headless and keep the executed copies: ``make execute``.

    python -m course_utils.execute [--out build] [--quick] [--only 02,03] [--cell-timeout 300]

Each notebook is executed in a fresh kernel with its folder as working directory;
the executed notebook and an HTML page go to ``--out`` (the page only where nbconvert
is installed: it is a development dependency, absent on a bare GPU machine); each
notebook's Checks output, or the end of its error, is printed as it finishes, and a
table of wall times per notebook, and the total, with the device at the end. Exits
non-zero if any notebook failed (the others still run).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .data import PROJECT_ROOT
from .runtime import device_name, get_device


def checks_output(nb, max_lines: int = 8) -> str:
    """The end of what the notebook's Checks cell printed (the code cell whose output says "checks passed")."""
    for cell in reversed(nb.cells):
        if cell.cell_type != "code":
            continue
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        if "checks passed" in text.lower():
            return "\n".join(text.strip().splitlines()[-max_lines:])
    return "(no Checks output found)"


def execute_notebook(path: Path, out_dir: Path, quick: bool, timeout: int | None = None) -> tuple[float, str | None]:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_backup = os.environ.get("COURSE_QUICK")
    os.environ["COURSE_QUICK"] = "1" if quick else "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    error = None
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       # ipykernel >= 7 logs a warning about unencrypted local sockets into the middle of the
                       # timing table; the kernel's own log stays quiet below errors (cell output is unaffected)
                       extra_arguments=["--IPKernelApp.log_level=ERROR"],
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as e:  # keep going: write what ran, report the failure
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        error = f"{type(e).__name__}: {lines[-1] if lines else ''}"
        print("\n    " + "\n    ".join(lines[-25:]), flush=True)  # the traceback's end, for a log read elsewhere
    finally:
        if env_backup is None:
            os.environ.pop("COURSE_QUICK", None)
        else:
            os.environ["COURSE_QUICK"] = env_backup
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    try:
        from nbconvert import HTMLExporter
    except ImportError:  # a development dependency; the executed .ipynb above holds every output anyway
        pass
    else:
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out_dir / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return seconds, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="build", help="folder for executed notebooks and HTML (default: build)")
    parser.add_argument("--quick", action="store_true", help="quick mode (COURSE_QUICK=1) instead of full mode")
    parser.add_argument("--only", default="", help="comma-separated notebook prefixes, e.g. 02,03")
    parser.add_argument("--cell-timeout", type=int, default=None, metavar="S",
                        help="fail a notebook whose cell runs longer than S seconds, naming the cell, and go on to "
                             "the next notebook (default: no limit; a CPU's full mode has cells of many minutes)")
    args = parser.parse_args(argv)
    import nbformat  # a development dependency, as nbclient: imported only when notebooks are run

    notebooks = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        prefixes = tuple(p.strip() for p in args.only.split(",") if p.strip())
        notebooks = [nb for nb in notebooks if nb.name.startswith(prefixes)]
    out_dir = Path(args.out).resolve()
    mode = "quick" if args.quick else "full"
    device = get_device()
    on = f"{device.type} ({device_name(device)})"
    print(f"Executing {len(notebooks)} notebooks in {mode} mode on {on}", flush=True)
    rows, failed = [], 0
    for nb in notebooks:
        print(f"  {nb.name} ...", end=" ", flush=True)
        seconds, error = execute_notebook(nb, out_dir, quick=args.quick, timeout=args.cell_timeout)
        print(f"{seconds:7.1f} s" + (f"  FAILED: {error}" if error else ""), flush=True)
        if not error:
            checks = checks_output(nbformat.read(out_dir / nb.name, as_version=4))
            print("    " + checks.replace("\n", "\n    "), flush=True)
        rows.append((nb.name, seconds, error))
        failed += error is not None
    total = sum(s for _, s, _ in rows)
    print("\n| notebook | wall time (s) | status |\n|---|---:|---|")
    for name, seconds, error in rows:
        print(f"| {name} | {seconds:.1f} | {'FAILED' if error else 'ok'} |")
    print(f"| **total** | **{total:.1f}** | {len(rows) - failed}/{len(rows)} ok |")
    print(f"\nmode={mode}; device={on}; executed copies in {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
