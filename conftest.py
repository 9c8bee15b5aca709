"""Suite-wide pytest settings for ``tests/`` and ``notebooks/`` (the unit tests' helpers: tests/conftest.py).

Nothing in the test suite may touch the network: the hub is switched off for this process and every notebook kernel
and subprocess it starts (they inherit the environment), also when only ``pytest notebooks`` runs."""

import os

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


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook (it is in the dev extras; without it this is never called)
def pytest_xdist_make_scheduler(config, log):
    """Two pytest-xdist workers (``-n 2``, pyproject.toml's addopts): run one test at a time, CI kept 2 cores only
    ~77% busy (measured: 43.4 CPU-minutes in the 28.2 minutes of ``.ci/run``, its set-up included), waiting on
    tokenizers, subprocess and kernel start-ups and file I/O. Work is handed out by scope, as xdist's ``loadscope``:

    * all notebooks are one scope, so they run in course order on one worker: each reads the artifacts the one
      before it wrote (nbval runs a notebook's cells in order on its own kernel);
    * every test module is one scope, so its module-scoped fixtures (a tiny SFT and reward model trained for the
      module) are not trained again on the other worker.

    The notebooks' scope is the largest, so it is handed out first (xdist orders scopes by size) and their ~13
    minutes overlap the unit tests' ~10. Why not ``--dist loadgroup`` with ``xdist_group`` marks: with pytest 9.2 it
    silently stops grouping (pytest-xdist issue #1386), and the notebooks would run out of order."""
    if config.getvalue("dist") != "loadscope":  # another --dist asked for on the command line: xdist's own
        return None
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if nodeid.startswith("notebooks/") else nodeid.split("::", 1)[0]

    return CourseScheduling(config, log)
