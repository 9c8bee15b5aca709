"""The notebooks in the repository carry the outputs of one reference run (tiny preset, default seed), so the course
reads well on GitHub and in Colab before anyone runs a cell.

``python -m rlhf_helpers refresh-outputs`` (or ``make notebooks``) executes every notebook headless through the
course runner and copies the executed cells back into ``notebooks/``, cleaned so that they stay small and stable:

* no per-cell execution timestamps (nbclient's ``metadata.execution``) and no progress-bar widget state;
* stream and text outputs of one cell capped at :data:`MAX_TEXT_CHARS` characters;
* this machine's folders (the run's output folder, the repository, site-packages, the home folder) cut from the
  outputs' text, so a path reads ``artifacts/sft/adapter``, not ``/home/me/rlhf-course/runs/reference/artifacts/...``;
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


def _strip(text: str, prefixes: dict[str, str]) -> str:
    for prefix in sorted(prefixes, key=len, reverse=True):  # the run folder lies inside the repository: longest first
        text = text.replace(prefix, prefixes[prefix])
    return text


def clean_executed(nb: dict, preset: str, seed: int, strip_paths: dict[str, str] | None = None) -> dict:
    """The executed notebook ``nb`` (nbformat JSON) with volatile metadata removed, long outputs capped and the stamp
    set. Widget views (progress bars, the labelling widget) are dropped: their state is not saved with the page.
    Each key of ``strip_paths`` (a folder prefix ending in ``/``) is replaced in the outputs' text by its value."""
    nb = json.loads(json.dumps(nb))
    # as they appear inside JSON strings
    escaped = {json.dumps(k, ensure_ascii=False)[1:-1]: json.dumps(v, ensure_ascii=False)[1:-1]
               for k, v in (strip_paths or {}).items()}
    for cell in nb["cells"]:
        if cell.get("outputs") and escaped:
            cell["outputs"] = json.loads(_strip(json.dumps(cell["outputs"], ensure_ascii=False), escaped))
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


def machine_paths(out: Path) -> dict[str, str]:
    """What :func:`clean_executed` replaces: the run's output folder (its artifacts live there) and the repository by
    nothing, the installed packages' folder by nothing (a warning reads ``transformers/modeling_utils.py:...``), the
    home folder by ``~/``: absolute paths ending in ``/``."""
    import sysconfig

    from rlhf_helpers.config import REPO_ROOT

    paths = {
        str(Path(out).resolve()) + "/": "",
        str(Path(REPO_ROOT).resolve()) + "/": "",
        str(Path(sysconfig.get_paths()["purelib"]).resolve()) + "/": "",
        str(Path.home().resolve()) + "/": "~/",
    }
    return {k: v for k, v in paths.items() if k.strip("/")}  # a home of "/" would turn every "https://" into "https:~/"


def refresh_outputs(out: Path, notebooks: Path, preset: str = "tiny") -> list[Path]:
    """Run the course into ``out`` (the runner's fresh artifacts) and write each executed notebook, cleaned, over its
    source in ``notebooks``. Nothing is written unless every notebook ran: a failed run leaves the repository as it
    was."""
    from rlhf_helpers.config import course_seed
    from rlhf_helpers.io_utils import atomic_write_text
    from rlhf_helpers.runner import run_course

    summary = run_course(out, preset=preset)  # raises on the first failing notebook
    cleaned = {}
    for entry in summary["notebooks"]:
        executed = json.loads((Path(out) / f"{entry['name']}.ipynb").read_text())
        target = Path(notebooks) / f"{entry['name']}.ipynb"
        cleaned[target] = clean_executed(executed, preset, course_seed(), strip_paths=machine_paths(out))
    # A notebook edited while the course ran would lose that edit to the executed copy: refuse, write nothing.
    edited = [t.name for t, nb in cleaned.items() if source_digest(json.loads(t.read_text())) != source_digest(nb)]
    if edited:
        raise RuntimeError(f"{', '.join(edited)} changed while the reference run ran; nothing was written: run again")
    for target, nb in cleaned.items():
        atomic_write_text(target, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return list(cleaned)
