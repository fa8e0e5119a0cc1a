"""environment.yml and pyproject.toml list the same packages; the project's doors exist and say what they do."""
import os
import re
import tomllib
from pathlib import Path

import pytest

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


def test_the_installed_releases_are_admitted_and_so_are_their_next_patch_releases():
    # the ranges must hold what this suite runs on, and must not block a bug-fix release of it (a `<=x.y.z` cap did)
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version
    for name in ("torch", "torchvision", "pyro-ppl", "numpy", "matplotlib"):
        spec = Requirement(_pyproject_requirements()[name]).specifier
        installed = Version(version(name))
        assert installed in spec, (name, str(installed), str(spec))
        next_patch = Version(f"{installed.major}.{installed.minor}.{installed.micro + 1}")
        assert next_patch in spec, (name, str(next_patch), str(spec))


def test_the_promised_python_is_the_one_conda_installs_and_this_suite_runs_on():
    import sys

    from packaging.specifiers import SpecifierSet
    promise = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    conda = re.search(r"^  - python=(\d+\.\d+)$", (ROOT / "environment.yml").read_text(), re.M).group(1)
    assert f"{conda}.0" in promise  # environment.yml installs a Python the package accepts ...
    oldest = min(s.version for s in promise if s.operator == ">=")
    assert oldest == conda  # ... and the oldest it accepts, the one the course is tested on
    assert f"{sys.version_info.major}.{sys.version_info.minor}.0" in promise


def _make(*args: str) -> str:
    import shutil
    import subprocess
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", "-s", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_help_lists_every_target():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split())
    defined = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    assert targets == defined, (targets, defined)
    import subprocess
    printed = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    helped = {line.split()[1] for line in printed.splitlines() if line.startswith("make ")}
    assert helped == targets - {"help"}, helped


def test_make_unit_runs_the_unit_tests_only_and_make_test_runs_everything():
    unit = _make("unit")
    assert "pytest" in unit and " tests" in unit and "notebooks" not in unit
    for integration in ("tests/test_browser.py", "tests/test_execute.py", "tests/test_clean_checkout.py"):
        assert f"--ignore={integration}" in unit
    test = _make("test")
    assert " tests notebooks" in test and "--ignore" not in test


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


def test_gpu_check_script_parses_and_runs_only_what_exists():
    # the prepared device script runs on a lent GPU machine, where a wrong module name costs a whole start
    import importlib.util
    import subprocess
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    modules = set(re.findall(r"python3 -m ([\w.]+)", text)) - {"pip", "pytest"}
    scripts = set(re.findall(r"python3 (benchmarks/[\w/]+\.py)", text))
    assert modules and scripts
    # the course's modules are looked up in this checkout (an editable install elsewhere could supply a stale one)
    def runnable(module: str) -> bool:
        if not module.startswith("course_utils."):
            return importlib.util.find_spec(module) is not None
        path = ROOT / (module.replace(".", "/") + ".py")
        return path.exists() and 'if __name__ == "__main__":' in path.read_text()
    missing = [m for m in sorted(modules) if not runnable(m)]
    missing += [s for s in sorted(scripts) if not (ROOT / s).exists()]
    assert not missing, f"gpu_check.sh runs what is not there: {missing}"


def test_make_lab_serves_the_notebooks_and_starts_as_root_too(lab_args):
    assert "--notebook-dir=notebooks" in lab_args
    # JupyterLab exits at once as root without --allow-root; the browser test starts it with these arguments
    assert ("--allow-root" in lab_args) == (os.geteuid() == 0), lab_args
