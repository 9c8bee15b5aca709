"""Suite-wide pytest settings for ``tests/`` and ``notebooks/`` (the unit tests' own settings: tests/conftest.py)."""

import pytest


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook (it is in the dev extras; without it this is never called)
def pytest_xdist_make_scheduler(config, log):
    """Two pytest-xdist workers (``-n 2``, pyproject.toml's addopts): run one test at a time, the suite kept 2 cores
    only ~77% busy (measured: 41.5 CPU-minutes in 28.2 minutes of CI), waiting on tokenizers, subprocess and kernel
    start-ups and file I/O. Work is handed out by scope, as xdist's ``loadscope``:

    * all notebooks are one scope, so they run in course order on one worker: each reads the artifacts the one
      before it wrote (nbval runs a notebook's cells in order on its own kernel);
    * every test module is one scope, so its module-scoped fixtures (a tiny SFT and reward model trained for the
      module) are not trained again on the other worker.

    The notebooks' scope is the largest, so it is handed out first (xdist orders scopes by size) and their ~13
    minutes overlap the unit tests' ~10. Why not ``--dist loadgroup`` with ``xdist_group`` marks: with pytest 9.2 it
    silently stops grouping (pytest-xdist issue #1386), and the notebooks would run out of order."""
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if nodeid.startswith("notebooks/") else nodeid.split("::", 1)[0]

    return CourseScheduling(config, log)
