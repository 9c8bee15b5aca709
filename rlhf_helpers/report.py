"""Stage metrics: every notebook and CLI command records its numbers the same way, so that
``python -m rlhf_helpers run`` can gather them into one ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_helpers.config import artifacts_dir
from rlhf_helpers.io_utils import atomic_write_json


def metrics_dir() -> Path:
    return artifacts_dir() / "metrics"


def record_metrics(stage: str, metrics: dict, out_dir: str | Path | None = None) -> Path:
    """Write ``metrics`` for ``stage`` to ``<artifacts>/metrics/<stage>.json`` (and to
    ``out_dir/metrics.json`` when a CLI command was given ``--out``). Returns the first path."""
    path = atomic_write_json(metrics_dir() / f"{stage}.json", metrics)
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return path


def collect_metrics(folder: str | Path | None = None) -> dict[str, dict]:
    """All recorded stage metrics, keyed by stage name."""
    folder = Path(folder) if folder else metrics_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
