"""JupyterLab's side of ``make lab``: saving a notebook keeps a clean checkout clean.

``make lab`` sets up a git filter for this clone (nbstripout: git sees each notebook without its outputs and
execution counts) and starts JupyterLab with ``keep_git_clean`` as the post-save hook. A filter alone is not
enough: git takes a file whose size changed for modified without reading it, so a notebook saved with its
outputs stays "modified" for ``git status`` and blocks ``git pull``. After each save, the hook asks git whether
the notebook differs from the committed one in anything the filter keeps; if not, it re-stages it, which records
nothing new and tells git the file is unchanged. A notebook the learner edited stays modified, as it should.
"""
from __future__ import annotations

import subprocess
from pathlib import Path


def keep_git_clean(model: dict | None = None, os_path: str = "", contents_manager=None, **_) -> bool:
    """Post-save hook (``FileContentsManager.post_save_hook``): re-stage a saved notebook whose only changes
    are outputs. Returns True when it did; never raises (a save must not fail because of git)."""
    path = Path(os_path)
    if (model or {}).get("type") != "notebook" or path.suffix != ".ipynb":
        return False

    def git(*args: str) -> int:
        try:
            return subprocess.run(["git", *args], cwd=path.parent, capture_output=True, timeout=60).returncode
        except (OSError, subprocess.SubprocessError):
            return -1

    tracked = git("ls-files", "--error-unmatch", "--", path.name) == 0
    filtered = subprocess.run(["git", "check-attr", "filter", "--", path.name], cwd=path.parent,
                              capture_output=True, text=True).stdout.strip().endswith("nbstripout")
    if not (tracked and filtered):
        return False
    if git("diff", "--quiet", "--", path.name) != 0:  # a change the filter keeps: the learner's own edit
        return False
    return git("add", "--", path.name) == 0
