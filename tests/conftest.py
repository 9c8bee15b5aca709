"""Shared test settings. Nothing in the test suite may touch the network: the hub is switched off
for this process and every notebook kernel it starts (they inherit the environment)."""

import os
import sys
from pathlib import Path

import pytest

from rlhf_helpers.config import DEFAULT_SEED, course_seed

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Two xdist workers share 2 cores, each process with torch's 2 OpenMP threads: idle threads should sleep, not spin
# (libgomp's default spin-wait takes the CPU the other worker needs). Read when torch loads; no numbers change.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Progress bars in notebook kernels send a widget update per refresh; under nbval that flood of
# iopub messages can delay a cell's output past nbval's 5 s wait. One refresh a second is plenty.
os.environ.setdefault("TQDM_MININTERVAL", "1")
# Notebook 03 under nbval also asserts the reward model's measured 0.90 target exactly (config.reference_checks):
# it holds at the default seed on the reference CPU (another seed need not reach it, nor a learner's run).
os.environ.setdefault("RLHF_REFERENCE_CHECKS", "1" if course_seed() == DEFAULT_SEED else "0")

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

