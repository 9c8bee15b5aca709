"""The notebooks in the repository carry the outputs of one reference run (tiny preset, default seed), so the course
reads well on GitHub and in Colab before anyone runs a cell.

``python -m rlhf_helpers refresh-outputs`` (or ``make notebooks``) executes every notebook headless through the
course runner and copies the executed cells back into ``notebooks/``, cleaned so that they stay small and stable:

* no per-cell execution timestamps (nbclient's ``metadata.execution``) and no progress-bar widget state;
* stream and text outputs of one cell capped at :data:`MAX_TEXT_CHARS` characters;
* a stamp in the notebook's metadata: the sha256 of its own cell sources when it ran, so a test can tell that the
  committed outputs belong to the cells next to them (edit a cell and the stamp no longer matches: refresh).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: Outputs longer than this (per text/stream output) are cut, with a note: a log has no place in a course page.
MAX_TEXT_CHARS = 6000
STAMP_KEY = "rlhf_course"


def source_digest(nb: dict) -> str:
    """sha256 over every cell's type and source: what the outputs were computed from (outputs themselves excluded)."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        h.update(cell["cell_type"].encode() + b"\0" + src.encode() + b"\0")
    return h.hexdigest()[:16]


def _cap(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"\n... [{len(text) - MAX_TEXT_CHARS} more characters cut from this page]\n"


def clean_executed(nb: dict, preset: str, seed: int) -> dict:
    """The executed notebook ``nb`` (nbformat JSON) with volatile metadata removed, long outputs capped and the stamp
    set. Widget views (progress bars, the labelling widget) are dropped: their state is not saved with the page."""
    nb = json.loads(json.dumps(nb))
    nb["metadata"].pop("widgets", None)
    nb["metadata"][STAMP_KEY] = {"preset": preset, "seed": seed, "sources_sha256": source_digest(nb)}
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
        if cell["cell_type"] != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                data.pop("application/vnd.jupyter.widget-view+json")
                if not data:
                    continue
            if out.get("output_type") == "stream":
                text = out["text"] if isinstance(out["text"], str) else "".join(out["text"])
                out["text"] = _cap(text)
            if "text/plain" in data:
                text = data["text/plain"] if isinstance(data["text/plain"], str) else "".join(data["text/plain"])
                data["text/plain"] = _cap(text)
            kept.append(out)
        cell["outputs"] = kept
    return nb


def stale_notebooks(folder: Path) -> list[str]:
    """Names of the notebooks in ``folder`` whose committed outputs do not come from their current cells: no stamp,
    a stamp of other cell sources, or a code cell that never ran."""
    stale = []
    for path in sorted(Path(folder).glob("*.ipynb")):
        nb = json.loads(path.read_text())
        stamp = nb.get("metadata", {}).get(STAMP_KEY, {})
        ran = all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]))
        if stamp.get("sources_sha256") != source_digest(nb) or not ran:
            stale.append(path.name)
    return stale


def refresh_outputs(out: Path, notebooks: Path, preset: str = "tiny") -> list[Path]:
    """Run the course into ``out`` (the runner's fresh artifacts) and write each executed notebook, cleaned, over its
    source in ``notebooks``. Nothing is written unless every notebook ran: a failed run leaves the repository as it
    was."""
    from rlhf_helpers.config import course_seed
    from rlhf_helpers.io_utils import atomic_write_text
    from rlhf_helpers.runner import run_course

    summary = run_course(out, preset=preset)  # raises on the first failing notebook
    written = []
    for entry in summary["notebooks"]:
        executed = json.loads((Path(out) / f"{entry['name']}.ipynb").read_text())
        target = Path(notebooks) / f"{entry['name']}.ipynb"
        cleaned = clean_executed(executed, preset, course_seed())
        atomic_write_text(target, json.dumps(cleaned, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written
