"""Run a notebook's code cells as a plain script, printing each cell's wall time as it ends.

    python benchmarks/run_cells.py notebooks/01_elbo.ipynb [--stall-s 60]

For a machine without Jupyter, or to find which cell is slow or stuck: after --stall-s seconds in one cell, every
thread's Python traceback is printed (faulthandler) and the run stops.
"""
import argparse
import faulthandler
import json
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("notebook")
parser.add_argument("--stall-s", type=float, default=60.0)
args = parser.parse_args()
path = Path(args.notebook).resolve()
os.chdir(path.parent)
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(path.parent.parent))
cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
namespace = {"__name__": "__main__", "display": print}
start = time.perf_counter()
for i, cell in enumerate(cells):
    source = "".join(cell["source"])
    first = next((line for line in source.splitlines() if line.strip() and not line.startswith("#")), "")[:70]
    faulthandler.dump_traceback_later(args.stall_s, exit=True)
    t = time.perf_counter()
    exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
    faulthandler.cancel_dump_traceback_later()
    print(f"[cell {i:2d}] {time.perf_counter() - t:7.2f} s  {first}", flush=True)
print(f"{path.name}: {len(cells)} cells, {time.perf_counter() - start:.1f} s", flush=True)
