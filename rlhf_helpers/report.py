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


def figures_dir() -> Path:
    return artifacts_dir() / "figures"


def save_figure(fig, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``<artifacts>/figures/<name>.png``, atomically (temp file + rename),
    so the run report never links a half-written image. Returns the path."""
    import os
    import tempfile

    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file name without extension, got {name!r}")
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".png.tmp", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- the run report


def _cell(value) -> str:
    """One markdown table cell: numbers to 4 significant digits, None as a dash, no pipes or newlines."""
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


#: Lists of records (e.g. the over-optimisation points) up to this many rows become their own table.
MAX_TABLE_ROWS = 20


def _flatten(metrics: dict, prefix: str = "", tables: list | None = None) -> list[tuple[str, object]]:
    """Nested metrics as ``a.b.c`` rows; short lists of numbers inline; lists of records (dicts) as
    separate tables appended to ``tables`` (when given and short enough); other lists as a count."""
    rows: list[tuple[str, object]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + ".", tables))
        elif isinstance(value, (list, tuple)):
            scalar = all(v is None or isinstance(v, (int, float, str, bool)) for v in value)
            records = bool(value) and all(isinstance(v, dict) for v in value)
            if scalar and len(value) <= 6:
                rows.append((name, "[" + ", ".join(_cell(v) for v in value) + "]"))
            elif records and tables is not None and len(value) <= MAX_TABLE_ROWS:
                tables.append((name, value))
                rows.append((name, f"({len(value)} rows, table below)"))
            else:
                rows.append((name, f"({len(value)} items, see summary.json)"))
        else:
            rows.append((name, value))
    return rows


def _records_table(records: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(k for r in records for k in r))
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        cells = [_cell(r.get(c)) if not isinstance(r.get(c), (dict, list)) else "…" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_summary_markdown(summary: dict) -> str:
    """The run report ``summary.md`` as text: per-notebook runtime table with the total, one metrics
    table per stage, and links to the figures. A pure function of the ``summary.json`` dict (figure
    paths in ``summary["figures"]`` are relative to the report's folder)."""
    lines = ["# Course run summary", ""]
    lines.append(f"Preset `{summary.get('preset', '?')}`, seed {summary.get('seed', '?')}.")
    notebooks = summary.get("notebooks", [])
    failed = [n for n in notebooks if n.get("status") != "ok"]
    lines.append(
        f"**{len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran**"
        + (f"; **{failed[0]['name']} failed**." if failed else ".")
    )
    lines += ["", "## Runtime", "", "| notebook | status | seconds |", "|---|---|---:|"]
    for nb in notebooks:
        lines.append(f"| {_cell(nb.get('name'))} | {_cell(nb.get('status'))} | {_cell(nb.get('seconds'))} |")
    total = summary.get("total_seconds")
    lines.append(f"| **total** | | **{_cell(total)}** |")
    for nb in failed:
        if nb.get("error"):
            lines += ["", f"Error in `{nb['name']}`:", "", "```", str(nb["error"])[-1500:], "```"]

    lines += ["", "## Metrics"]
    metrics = summary.get("metrics") or {}
    if not metrics:
        lines += ["", "No stage recorded metrics."]
    for stage in sorted(metrics):
        lines += ["", f"### {stage}", "", "| metric | value |", "|---|---|"]
        tables: list = []
        rows = (
            _flatten(metrics[stage], tables=tables) if isinstance(metrics[stage], dict) else [("value", metrics[stage])]
        )
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
        for name, records in tables:
            lines += ["", f"{stage}: `{name}`", ""] + _records_table(records)

    lines += ["", "## Figures", ""]
    figures = summary.get("figures") or []
    if not figures:
        lines.append("No figures were saved.")
    for rel in figures:
        name = Path(rel).stem
        lines.append(f"- [{name}]({rel})")
    for rel in figures:
        lines += ["", f"![{Path(rel).stem}]({rel})"]
    return "\n".join(lines) + "\n"


def code_digest(*names: str) -> str:
    """sha256 over the syntax trees of ``rlhf_helpers/<name>`` for each name, docstrings left out: what stored
    benchmark results (``benchmarks/*_seeds.json``) record as the code that made them, so a notebook can say whether
    they are current. Editing prose (docstrings, comments) does not make them stale; changing the code does."""
    import ast
    import hashlib

    h = hashlib.sha256()
    for name in names:
        tree = ast.parse((Path(__file__).resolve().parent / name).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
        h.update(ast.dump(tree).encode())
    return h.hexdigest()
