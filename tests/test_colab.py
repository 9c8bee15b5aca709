"""Colab's install cell (rlhf_helpers.colab) with a fake ``google.colab`` module: it clones and installs the course,
fetches METEOR's WordNet data, keeps artifacts/ on Google Drive unless told not to, and outside Colab does nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from rlhf_helpers import colab, metrics

VARS = ("RLHF_ARTIFACTS", "RLHF_CACHE", colab.SET_BY_US)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in VARS:  # set first, so that monkeypatch records them and removes what setup_colab sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # setup_colab changes the working folder: restored afterwards
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


@pytest.fixture
def fake_colab(monkeypatch, clean_env):
    """``google.colab`` in sys.modules, a Drive that mounts into tmp, a course checkout in tmp, WordNet found."""
    tmp = clean_env
    mounts = []

    def mount(path, **kwargs):
        mounts.append(path)
        (tmp / "drive" / "MyDrive").mkdir(parents=True, exist_ok=True)

    google = types.ModuleType("google")
    google_colab = types.ModuleType("google.colab")
    google_colab.drive = types.SimpleNamespace(mount=mount)
    google.colab = google_colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google_colab)
    (tmp / "course" / "notebooks").mkdir(parents=True)
    monkeypatch.setattr(colab, "COURSE_DIR", tmp / "course")
    monkeypatch.setattr(colab, "DRIVE_MOUNT", tmp / "drive")
    monkeypatch.setattr(metrics, "fetch_wordnet", lambda download_dir=None: (True, "METEOR: WordNet data found"))
    return types.SimpleNamespace(tmp=tmp, mounts=mounts, drive=tmp / "drive" / "MyDrive" / "rlhf-course")


def test_outside_colab_nothing_happens(clean_env, monkeypatch):
    assert "google.colab" not in sys.modules
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    cwd, path = os.getcwd(), list(sys.path)
    assert colab.setup_colab() == {}
    exec(colab.INSTALL_CELL, {})
    assert calls == [] and os.getcwd() == cwd and sys.path == path
    assert not any(name in os.environ for name in VARS)


def test_in_colab_artifacts_and_cache_go_to_drive(fake_colab, capsys):
    from rlhf_helpers.config import artifacts_dir, cache_dir

    done = colab.setup_colab()
    assert fake_colab.mounts == [str(fake_colab.tmp / "drive")]
    assert os.environ["RLHF_ARTIFACTS"] == str(fake_colab.drive / "artifacts")
    assert os.environ["RLHF_CACHE"] == str(fake_colab.drive / "cache")
    assert artifacts_dir() == fake_colab.drive / "artifacts" and cache_dir() == fake_colab.drive / "cache"
    assert (fake_colab.drive / "artifacts").is_dir() and (fake_colab.drive / "cache").is_dir()
    assert os.getcwd() == str(fake_colab.tmp / "course" / "notebooks")
    assert done == {
        "notebooks": str(fake_colab.tmp / "course" / "notebooks"),
        "wordnet": "METEOR: WordNet data found",
        "drive": str(fake_colab.drive),
        "env": {"RLHF_ARTIFACTS": str(fake_colab.drive / "artifacts"), "RLHF_CACHE": str(fake_colab.drive / "cache")},
    }
    out = capsys.readouterr().out
    assert "METEOR: WordNet data found" in out
    assert "kept on your Google Drive" in out and "set KEEP_ON_DRIVE = False in this cell" in out

    colab.setup_colab()  # the cell run again: the same folders, mounted again, not "already set by you"
    assert os.environ["RLHF_ARTIFACTS"] == str(fake_colab.drive / "artifacts") and len(fake_colab.mounts) == 2

    colab.setup_colab(keep_on_drive=False)  # turned off afterwards: back to the VM's disk
    assert not any(name in os.environ for name in VARS) and len(fake_colab.mounts) == 2
    assert "stays on this VM" in capsys.readouterr().out


def test_opt_out_never_mounts(fake_colab):
    done = colab.setup_colab(keep_on_drive=False)
    assert fake_colab.mounts == [] and done["drive"] is None and "RLHF_ARTIFACTS" not in os.environ


def test_a_folder_the_learner_chose_is_kept(fake_colab, monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_ARTIFACTS", str(tmp_path / "mine"))
    done = colab.setup_colab()
    assert os.environ["RLHF_ARTIFACTS"] == str(tmp_path / "mine")  # theirs
    assert done["env"] == {"RLHF_CACHE": str(fake_colab.drive / "cache")}  # the rest on Drive
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(colab.SET_BY_US)
    fake_colab.mounts.clear()
    assert colab.setup_colab()["drive"] is None and fake_colab.mounts == []  # both chosen: no Drive needed


def test_a_failed_mount_keeps_the_vm_disk(fake_colab, monkeypatch, capsys):
    def refuse(path, **kwargs):
        raise ValueError("mount failed")

    monkeypatch.setattr(sys.modules["google.colab"].drive, "mount", refuse)
    done = colab.setup_colab()
    assert done["drive"] is None and "RLHF_ARTIFACTS" not in os.environ
    assert "Google Drive could not be mounted (ValueError: mount failed); artifacts/ stays on this VM" in (
        capsys.readouterr().out
    )


def test_no_wordnet_is_said_and_the_cell_goes_on(fake_colab, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "fetch_wordnet", lambda download_dir=None: (False, "METEOR's WordNet data could not"))
    done = colab.setup_colab()
    assert done["drive"] == str(fake_colab.drive) and "METEOR's WordNet data could not" in capsys.readouterr().out


@pytest.mark.parametrize("keep", [True, False])
def test_the_install_cell_clones_installs_and_sets_up(fake_colab, monkeypatch, keep):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: calls.append((cmd, kwargs)))
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/content/rlhf-course" else real_exists(p))
    cell = colab.INSTALL_CELL
    assert "KEEP_ON_DRIVE = True" in cell
    exec(cell.replace("KEEP_ON_DRIVE = True", f"KEEP_ON_DRIVE = {keep}"), {})
    url = f"https://github.com/{colab.REPOSITORY}.git"
    assert calls == [
        (["git", "clone", "--depth", "1", "-b", colab.BRANCH, url, "/content/rlhf-course"], {"check": True}),
        ([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/rlhf-course"], {"check": True}),
    ]
    assert sys.path[0] == "/content/rlhf-course"
    assert (os.environ.get("RLHF_ARTIFACTS") == str(fake_colab.drive / "artifacts")) is keep
    assert os.getcwd() == str(fake_colab.tmp / "course" / "notebooks")


def test_every_notebook_has_the_current_install_cell():
    import nbformat

    from rlhf_helpers.runner import course_notebooks

    for path in course_notebooks():
        assert nbformat.read(path, as_version=4).cells[1].source == colab.INSTALL_CELL, path.name


def test_fetch_wordnet_reports_a_failed_download(monkeypatch):
    import nltk

    monkeypatch.setattr(metrics, "wordnet", lambda: None)
    monkeypatch.setattr(metrics, "_wordnet", None)

    def failing(name, quiet=False, print_error_to=sys.stderr, **kwargs):
        print("[nltk_data] Error loading wordnet: <urlopen error offline>", file=print_error_to)
        return False

    monkeypatch.setattr(nltk, "download", failing)
    ok, message = metrics.fetch_wordnet()
    assert not ok
    assert message.startswith("METEOR's WordNet data could not be downloaded (Error loading wordnet: <urlopen error")
    assert "METEOR will be reported as None" in message and "apt-get install wordnet-base" in message

    found = iter([None, object()])  # not there before the download, there after it
    monkeypatch.setattr(metrics, "wordnet", lambda: next(found))
    monkeypatch.setattr(nltk, "download", lambda name, **kwargs: name == "wordnet" and kwargs["quiet"])
    assert metrics.fetch_wordnet() == (True, "METEOR: WordNet data downloaded by NLTK")
