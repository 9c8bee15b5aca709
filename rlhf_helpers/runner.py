"""Run the whole course headless: every numbered notebook, in order, with a progress bar, then a
``summary.json`` with per-notebook seconds, each stage's metrics and the saved figures, and the same
as a readable report, ``summary.md`` (rendered by :func:`rlhf_helpers.report.render_summary_markdown`).

Each run is self-contained: artifacts (adapters, reward models, metrics) go to ``OUT/artifacts``
so two runs never read each other's results; only the tiny base model is shared through the
cache (``RLHF_CACHE``), because it depends on nothing but the seed and the data (its cache key hashes the
corpus, so the course's base and the base of your own data folder never collide).

``data`` (``--data DIR`` on the command line, else ``RLHF_DATA_DIR``) points every notebook at a folder of
your own ``sft``, ``preferences`` and ``eval`` files; it is checked before the first notebook starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlhf_helpers.config import REPO_ROOT, artifacts_dir, course_seed, data_dir
from rlhf_helpers.io_utils import atomic_write_json, atomic_write_text
from rlhf_helpers.report import collect_metrics, render_summary_markdown

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def course_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The course's notebooks in teaching order (``NN_name.ipynb``)."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def run_course(
    out: str | Path = "runs/latest",
    preset: str = "tiny",
    only: list[str] | None = None,
    timeout_per_cell: int = 1800,
    progress: bool = True,
    data: str | Path | None = None,
) -> dict:
    """Execute the notebooks into ``out`` and write ``out/summary.json`` and ``out/summary.md``;
    returns the summary.

    ``data``: the data folder (default ``RLHF_DATA_DIR``, else the course's ``data/``). A folder without
    its three files raises ``FileNotFoundError`` (``ValueError`` when a kind's file is ambiguous) before
    any notebook runs. Stops at the first failing notebook (later ones depend on its results), records
    the error in the summary, and raises ``RuntimeError``.
    """
    from rlhf_helpers.data_prep import find_data_files

    folder = Path(data).expanduser().resolve() if data else data_dir().resolve()
    files = find_data_files(folder)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    kernel_env = {
        "RLHF_ARTIFACTS": str(out / "artifacts"),
        "RLHF_PRESET": preset,
        "RLHF_SEED": str(course_seed()),
        "RLHF_DATA_DIR": str(folder),
        "TQDM_DISABLE": "1",  # the notebooks' inner bars would flood the executed files
    }
    with _environment(kernel_env):  # kernels inherit it; this process is left as it was
        return _run_notebooks(out, preset, only, timeout_per_cell, progress, {k: str(v) for k, v in files.items()})


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _run_notebooks(
    out: Path, preset: str, only: list[str] | None, timeout_per_cell: int, progress: bool, files: dict[str, str]
) -> dict:
    import nbformat
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    notebooks = [nb for nb in course_notebooks() if not only or any(o in nb.stem for o in only)]
    from rlhf_helpers.config import on_course_data

    summary: dict = {"preset": preset, "seed": course_seed(), "notebooks": [], "metrics": {}}
    if not on_course_data():  # the course's own summary keeps its keys
        summary["data"] = files
    start = time.perf_counter()
    bar = tqdm(notebooks, desc="course", unit="notebook", disable=not progress)
    for path in bar:
        bar.set_postfix_str(path.stem)
        nb = nbformat.read(path, as_version=4)
        cells = sum(c.cell_type == "code" for c in nb.cells)
        cell_bar = tqdm(total=cells, desc=f"  {path.stem}", unit="cell", leave=False, disable=not progress)
        client = NotebookClient(
            nb,
            timeout=timeout_per_cell,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            on_cell_executed=lambda bar=cell_bar, **_: bar.update(1),
        )
        t0 = time.perf_counter()
        entry = {"name": path.stem, "status": "ok"}
        try:
            client.execute()
        except Exception as e:
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {str(e)[-2000:]}"
        finally:
            cell_bar.close()
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            atomic_write_text(out / path.name, nbformat.writes(nb))
            summary["notebooks"].append(entry)
        if entry["status"] != "ok":
            break
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    preset_artifacts = artifacts_dir(preset)  # OUT/artifacts, or OUT/artifacts/<preset>: keyed by preset
    summary["metrics"] = collect_metrics(preset_artifacts / "metrics")
    summary["figures"] = [p.relative_to(out).as_posix() for p in sorted((preset_artifacts / "figures").glob("*.png"))]
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", render_summary_markdown(summary))
    failed = [n for n in summary["notebooks"] if n["status"] != "ok"]
    if failed:
        raise RuntimeError(f"notebook {failed[0]['name']} failed; see {out / (failed[0]['name'] + '.ipynb')}")
    return summary
