"""environment.yml and pyproject.toml list the same packages; the project's doors exist."""
import os
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment_requirements() -> dict[str, str]:
    found, in_deps = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)(.*)$", line)
        if in_deps and m and m.group(1) not in ("python", "pip"):
            name = CONDA_NAMES.get(m.group(1), m.group(1)).lower()
            found[name] = name + m.group(2).replace(" ", "")
    return found


def test_environment_yml_matches_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_environment_yml_uses_conda_forge_only_and_installs_the_course():
    text = (ROOT / "environment.yml").read_text()
    channels = re.search(r"channels:\n((?:  - .*\n)+)", text).group(1)
    assert [c.strip("- ").strip() for c in channels.splitlines()] == ["conda-forge"]
    assert re.search(r"pip:\n\s+- -e \.", text)


def test_torch_pins_admit_the_tested_release():
    reqs = _pyproject_requirements()
    assert "<=2.14.1" in reqs["torch"] and ">=" in reqs["torch"]
    assert "<=0.29.1" in reqs["torchvision"]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_mnist_files_and_license_ship_in_data():
    folder = ROOT / "data" / "mnist"
    for name in ("SHA256SUMS", "LICENSE.md", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (folder / name).exists(), name
    assert "Creative Commons" in (folder / "LICENSE.md").read_text()


def test_notebooks_are_committed_without_outputs():
    import json
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"{nb.name}: cells {dirty} carry outputs; strip them before committing"


def test_gpu_check_script_parses_and_names_every_stage():
    # the prepared device script (BENCHMARKS.md's GPU rows) must at least be valid bash with its stages
    import subprocess
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for stage in ("bench)", "series)", "warm)", "course_utils.bench", "course_utils.execute", "course_utils.pyro_vae"):
        assert stage in text, stage


def test_make_lab_serves_the_notebooks_and_starts_as_root_too(lab_args):
    assert "--notebook-dir=notebooks" in lab_args
    # JupyterLab exits at once as root without --allow-root; the browser test starts it with these arguments
    assert ("--allow-root" in lab_args) == (os.geteuid() == 0), lab_args
