"""The learner's experience in a real browser: JupyterLab, the latent explorer, a slider, a redraw.

Starts JupyterLab on a free port of 127.0.0.1 with a random token, opens a generated one-cell notebook
in headless Chromium (Debian's ``chromium``, driven by Playwright), runs the cell, moves the first
slider with the keyboard and asserts that the decoded image changed. Screenshots of the output area
before and after go to ``$COURSE_TEST_ARTIFACTS`` (default: a folder in the system's temporary
directory, never the working tree), with the server's log. Skips when Chromium or Playwright is missing;
``.ci/run`` installs Chromium so CI runs it. Never calls ``playwright install`` (it downloads, and
CI is offline).
"""
from __future__ import annotations

import base64
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest


sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed "
                               "(pip install -e '.[dev]')")

CHROMIUM = Path(os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("COURSE_TEST_ARTIFACTS", Path(tempfile.gettempdir()) / "vae-course-test-artifacts"))
JUPYTER = Path(sys.executable).with_name("jupyter")

SERVER_START_S = 60      # JupyterLab answering /api/status
PAGE_LOAD_S = 60         # the notebook open with an idle kernel
WIDGET_RENDER_S = 90     # kernel start, imports, first decode and draw
REDRAW_S = 30            # a slider move to a new picture

# The notebook's one cell: a tiny untrained conv decoder (fixed seed) behind the course's explorer.
# z is scaled by 4 so that a small slider move makes a visible difference in the decoded image.
CELL = """\
%matplotlib inline
import torch
from course_utils.models import ConvVAE
from course_utils.widgets import latent_explorer

torch.manual_seed(0)
model = ConvVAE(z_dim=2, channels=(16, 32), hidden=64).eval()


def decode_images(z):
    return torch.sigmoid(model.decode(4.0 * z))  # [M, 2] -> [M, 1, 28, 28] in [0, 1]


latent_explorer(decode_images, z_dim=2)
"""

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium "
                       "(`apt-get install -y chromium`, as .ci/run does) to run the browser test"),
    pytest.mark.skipif(not JUPYTER.exists(), reason=f"{JUPYTER} is missing: JupyterLab is not installed in this env"),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path) -> None:
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "explorer", "metadata": {}, "outputs": [],
                   "source": CELL.splitlines(keepends=True)}],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1))


def quiet_lab_settings(settings_dir: Path) -> None:
    """No news or update toasts over the notebook (JupyterLab 4 asks on first start)."""
    folder = settings_dir / "@jupyterlab" / "apputils-extension"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                          "checkForUpdates": False}))


def wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url.split('?')[0]} within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server and its kernels (its own process group), then kill whatever is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # kernels that outlived the server
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture
def jupyter_lab(tmp_path, lab_args):
    """A JupyterLab server on a free 127.0.0.1 port serving ``tmp_path/work``; yields (base_url, token, folder)."""
    work = tmp_path / "work"
    work.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel draws inline, as for a learner
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               PATH=f"{JUPYTER.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    quiet_lab_settings(tmp_path / "settings")
    # the arguments of `make lab`, the learner's door (e.g. --allow-root as root), but this test's folder
    door = [arg for arg in lab_args if not arg.startswith("--notebook-dir")]
    command = [str(JUPYTER), "lab", *door, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--notebook-dir={work}"]
    log = tmp_path / "jupyter.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(proc, f"{base}/api/status?token={token}", log, SERVER_START_S)
        yield base, token, work
    finally:
        stop(proc)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "browser-jupyter.log").write_text(log.read_text(errors="replace"))


def image_core(src: str) -> np.ndarray:
    """The decoded image of a drawn latent, as gray pixels: the PNG of a data URL minus the title band."""
    from PIL import Image
    png = base64.b64decode(src.split(",", 1)[1])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)  # [H, W]
    height = pixels.shape[0]
    return pixels[int(0.15 * height):int(0.97 * height)]  # the suptitle (z's values) sits in the top band


def wait_until_stable(page, selector: str, timeout: float, quiet: float = 1.0) -> str:
    """The image's src once it has not changed for ``quiet`` seconds (no redraw still on its way)."""
    deadline = time.monotonic() + timeout
    src, since = page.get_attribute(selector, "src"), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = page.get_attribute(selector, "src")
        if now != src:
            src, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return src
    raise TimeoutError(f"the explorer's image kept changing for {timeout} s")


def test_slider_redraws_the_decoded_image(jupyter_lab, tmp_path):
    base, token, work = jupyter_lab
    write_notebook(work / "explorer.ipynb")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("browser-*"):  # no stale screenshot from an earlier run
        old.unlink()
    image_selector = ".jp-OutputArea-output .widget-output img"

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(PAGE_LOAD_S * 1000)
            try:
                page.goto(f"{base}/lab/tree/explorer.ipynb?token={token}", timeout=PAGE_LOAD_S * 1000)
                page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content")
                # The kernel is connected when the status bar says "<kernel name> | Idle".
                page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for()

                # Run the cell as a learner does: click into it, Shift+Enter.
                page.click(".jp-Notebook .jp-Cell .cm-content")
                page.keyboard.press("Shift+Enter")
                page.wait_for_selector(image_selector, state="visible", timeout=WIDGET_RENDER_S * 1000)
                output = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-Cell-outputArea")
                output.screenshot(path=str(ARTIFACTS / "browser-before.png"))
                src_before = page.get_attribute(image_selector, "src")
                readout = page.locator(".widget-readout").first
                assert readout.inner_text().strip() in ("0.00", "0.0", "0"), readout.inner_text()

                # Move z[0] to its maximum with one key on the slider's handle: one change, one redraw.
                handle = page.locator(".widget-slider .noUi-handle").first
                handle.focus()
                handle.press("End")
                page.wait_for_function(
                    "([selector, before]) => { const img = document.querySelector(selector);"
                    " return img !== null && img.complete && img.src !== before; }",
                    arg=[image_selector, src_before], timeout=REDRAW_S * 1000)
                src_after = wait_until_stable(page, image_selector, REDRAW_S)
                output.screenshot(path=str(ARTIFACTS / "browser-after.png"))
                moved_to = float(readout.inner_text())
            except Exception:
                try:  # the whole page, for whoever reads the failure; never hides the original error
                    page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True, timeout=10_000)
                except Exception:
                    pass
                raise
        finally:
            browser.close()

    assert moved_to > 0, f"the slider did not move (readout {moved_to})"
    before, after = image_core(src_before), image_core(src_after)
    assert before.shape == after.shape
    change = np.abs(after - before).mean()  # mean gray-level change, 0..255
    (ARTIFACTS / "browser-result.json").write_text(json.dumps({"slider": moved_to, "mean_gray_change": change}))
    assert change > 1.0, f"the decoded image barely changed after moving z[0] to {moved_to}: {change:.3f} gray levels"
    # `make lab` is quiet: its kernels get CurveZMQ keys, so none warns that it runs over TCP without encryption
    assert "without encryption" not in (tmp_path / "jupyter.log").read_text(errors="replace")


# ------------------------------------------------------------------------------------------------------------
# The handouts: `make execute`'s HTML pages, opened offline
# ------------------------------------------------------------------------------------------------------------
HANDOUT_MARKDOWN = r"""The ELBO of $q$ against the prior $\mathcal N(0, I)$:

$$\log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}(q \,\|\, p(z \mid x))$$"""

HANDOUT_WIDGET = """\
%matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

slider, drawn = widgets.FloatSlider(value=1.0, description="c"), widgets.Output()
with drawn:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, slider.value])
    display(fig)
    plt.close(fig)
display(widgets.VBox([slider, drawn]))
"""


def test_an_executed_page_shows_its_maths_and_widget_figures_offline(tmp_path):
    import nbformat

    from course_utils.execute import execute_notebook
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(HANDOUT_MARKDOWN), nbformat.v4.new_code_cell(HANDOUT_WIDGET)]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    src = tmp_path / "handout.ipynb"
    nbformat.write(nb, src)
    _, error = execute_notebook(src, tmp_path / "build", quick=True, timeout=120)
    assert error is None
    page_path = tmp_path / "build" / "handout.html"
    blocked = []

    def offline(route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page()
            page.route("**/*", offline)
            page.goto(page_path.as_uri(), timeout=PAGE_LOAD_S * 1000)
            page.wait_for_selector(".MathJax, .MathJax_CHTML, mjx-container", timeout=PAGE_LOAD_S * 1000)
            page.wait_for_function("() => !window.MathJax || !MathJax.Hub || MathJax.Hub.queue.pending === 0",
                                   timeout=PAGE_LOAD_S * 1000)
            text = page.inner_text("body")
            rendered = page.locator(".MathJax, .MathJax_CHTML, mjx-container").count()
            figures = page.locator(".jp-OutputArea-output img").count()
        finally:
            browser.close()
    assert blocked == [], f"the page asked the network for {blocked}"
    assert rendered >= 3, f"{rendered} formulas typeset"
    assert "$q$" not in text and r"\mathcal" not in text, "raw TeX left on the page"
    assert figures >= 1, "the widget's figure is missing from the page"
    assert "VBox(children" not in text, "the widget shown as its text stand-in"
