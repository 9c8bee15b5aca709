"""Shared helpers of the unit tests. The suite's environment (hub off, OpenMP, progress bars, reference checks) is set
in the root ``conftest.py``, so that the notebooks get it too."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: int = 600):
    """Run ``python -m rlhf_helpers ARGS`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "rlhf_helpers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """A private artifacts folder for one test."""
    folder = tmp_path / "artifacts"
    monkeypatch.setenv("RLHF_ARTIFACTS", str(folder))
    return folder
