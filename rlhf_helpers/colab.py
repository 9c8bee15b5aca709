"""Colab support: the "Open in Colab" badge and the install cell of every notebook come from the
two variables below. A fork changes them once and runs ``python -m rlhf_helpers colab-badges``.

Why generated? Badges typed by hand drift (a renamed notebook or a wrong branch gives learners a
404, as in deep-rl-class #434); a test checks every badge against the notebooks on disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPOSITORY = "rlhf-course/rlhf-course"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(notebook: str | Path) -> str:
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def badge_markdown(notebook: str | Path) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


#: Where Colab's install cell puts the course, and where Google Drive is mounted.
COURSE_DIR = Path("/content/rlhf-course")
DRIVE_MOUNT = Path("/content/drive")
#: The folder on the learner's Drive that keeps ``artifacts/`` (and the tiny-preset cache) between VMs.
DRIVE_FOLDER = "MyDrive/rlhf-course"
#: The variables :func:`setup_colab` set (so that ``KEEP_ON_DRIVE = False`` can take them back).
SET_BY_US = "RLHF_COLAB_DRIVE_VARS"

INSTALL_CELL = f'''# Colab only: fetch the course, install its package and METEOR's WordNet data, and keep artifacts/ on
# Google Drive. Elsewhere this cell does nothing (install locally with `make course`, see README.md).
import os
import sys

KEEP_ON_DRIVE = True  # Colab: trained models on your Drive, so later notebooks reuse them on a fresh VM

if "google.colab" in sys.modules:
    if not os.path.exists("{COURSE_DIR}"):
        import subprocess

        subprocess.run(["git", "clone", "--depth", "1", "-b", "{BRANCH}",
                        "https://github.com/{REPOSITORY}.git", "{COURSE_DIR}"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "{COURSE_DIR}"], check=True)
    sys.path.insert(0, "{COURSE_DIR}")
    from rlhf_helpers.colab import setup_colab

    setup_colab(keep_on_drive=KEEP_ON_DRIVE)'''


def in_colab() -> bool:
    return "google.colab" in sys.modules


def setup_colab(keep_on_drive: bool = True, course_dir: str | Path | None = None) -> dict:
    """What the install cell does in Colab once the package is installed; outside Colab nothing (returns {}).

    1. Works in ``<course>/notebooks``, as a local checkout would.
    2. Fetches METEOR's WordNet data (``nltk.download("wordnet")``, quietly); when that fails it says so and
       METEOR is reported as ``None``, as everywhere without the data.
    3. ``keep_on_drive``: mounts Google Drive and points ``RLHF_ARTIFACTS`` (and ``RLHF_CACHE``, the tiny
       preset) at ``MyDrive/rlhf-course/``. A Colab VM forgets its disk; without this, every notebook after the
       first on a fresh VM silently retrains the SFT adapter, the reward model and PPO it builds on. A variable
       the learner set already is left alone, and a failed mount (declined, no Drive) keeps the VM's disk.

    Returns what it did: ``notebooks``, ``wordnet`` (message), ``drive`` (the folder, or None) and ``env``
    (the variables it set).
    """
    if not in_colab():
        return {}
    import os

    from rlhf_helpers.metrics import fetch_wordnet

    course = Path(course_dir) if course_dir else COURSE_DIR
    done: dict = {"notebooks": None, "wordnet": None, "drive": None, "env": {}}
    if (course / "notebooks").is_dir():
        os.chdir(course / "notebooks")
        done["notebooks"] = str(course / "notebooks")
    ok, message = fetch_wordnet()
    done["wordnet"] = message
    print(message)
    ours = [name for name in os.environ.get(SET_BY_US, "").split(",") if name]  # an earlier run of the cell
    if not keep_on_drive:
        for name in ours:  # back to the VM's disk, also after the cell ran with KEEP_ON_DRIVE = True
            os.environ.pop(name, None)
        os.environ.pop(SET_BY_US, None)
        print("artifacts/ stays on this VM (KEEP_ON_DRIVE = False): a fresh VM retrains what earlier notebooks made.")
        return done
    wanted = {"RLHF_ARTIFACTS": "artifacts", "RLHF_CACHE": "cache"}
    preset = {name: os.environ[name] for name in wanted if os.environ.get(name) and name not in ours}
    if len(preset) == len(wanted):
        print(f"Google Drive not mounted: {', '.join(f'{k}={v}' for k, v in preset.items())} already set.")
        return done
    try:
        from google.colab import drive

        drive.mount(str(DRIVE_MOUNT))
    except Exception as e:  # declined, no Google account, a Colab without Drive: the VM's disk then
        print(f"Google Drive could not be mounted ({type(e).__name__}: {e}); artifacts/ stays on this VM.")
        return done
    folder = DRIVE_MOUNT / DRIVE_FOLDER
    for name, sub in wanted.items():
        if name not in preset:
            (folder / sub).mkdir(parents=True, exist_ok=True)
            os.environ[name] = done["env"][name] = str(folder / sub)
    os.environ[SET_BY_US] = ",".join(done["env"])
    done["drive"] = str(folder)
    print(
        f"artifacts/ is kept on your Google Drive in {folder}: later notebooks, and this one on a fresh VM, reuse "
        "the models earlier ones trained. To keep everything on this VM instead, set KEEP_ON_DRIVE = False in this "
        "cell and run it again (or restart the runtime). Delete the folder to retrain from scratch."
    )
    return done


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
