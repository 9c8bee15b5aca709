"""Colab support: the "Open in Colab" badge and the install cell of every notebook come from the
two variables below. A fork changes them once and runs ``python -m rlhf_helpers colab-badges``.

Why generated? Badges typed by hand drift (a renamed notebook or a wrong branch gives learners a
404, as in deep-rl-class #434); a test checks every badge against the notebooks on disk.
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY = "rlhf-course/rlhf-course"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook: str | Path) -> str:
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def badge_markdown(notebook: str | Path) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


INSTALL_CELL = f'''# Colab only: fetch the course and install its package. Elsewhere this cell does nothing
# (install locally with `pip install -e ".[dev]"`, see README.md).
import os
import sys

if "google.colab" in sys.modules and not os.path.exists("/content/rlhf-course"):
    import subprocess

    subprocess.run(["git", "clone", "--depth", "1", "-b", "{BRANCH}",
                    "https://github.com/{REPOSITORY}.git", "/content/rlhf-course"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/rlhf-course"], check=True)
if "google.colab" in sys.modules:
    sys.path.insert(0, "/content/rlhf-course")
    os.chdir("/content/rlhf-course/notebooks")'''


def stamp_notebook(path: Path) -> bool:
    """Put the current badge in the first markdown cell and the install cell second; True if changed."""
    import re

    import nbformat

    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    badge_re = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
    new_source = (
        badge_re.sub(badge_markdown(path), first.source)
        if badge_re.search(first.source)
        else badge_markdown(path) + "\n\n" + first.source
    )
    changed = new_source != first.source
    first.source = new_source
    if nb.cells[1].cell_type == "code" and nb.cells[1].source != INSTALL_CELL and "google.colab" in nb.cells[1].source:
        nb.cells[1].source = INSTALL_CELL
        changed = True
    if changed:
        nbformat.write(nb, path)
    return changed
