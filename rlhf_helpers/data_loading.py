"""One loader for every data file of the course, with validation that names file, line and field.

Accepted inputs: JSON (a list of objects, or an object holding one under ``data``/``rows``/
``train``), JSONL, CSV, a ``datasets`` dataset saved with ``save_to_disk``, a hub dataset name,
and the seed project's ``{prompt, human_answer, machine_answer}`` rows. Every input comes out as a
``datasets.Dataset`` with the standard columns of its kind (extra columns are kept):

* ``sft``          ``prompt, response``
* ``preferences``  ``prompt, chosen, rejected`` (TRL's names). Seed rows are read with the human
  answer as ``chosen``; to let a judger decide instead, use ``rlhf_helpers.judger``.
* ``eval``         ``prompt, reference``

Why so strict? A reward model trained on a file with a silently dropped column or an empty
``rejected`` answer learns nonsense, and the error shows up hours later as a bad PPO run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

KINDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "response"),
    "preferences": ("prompt", "chosen", "rejected"),
    "eval": ("prompt", "reference"),
}
SEED_FIELDS = ("prompt", "human_answer", "machine_answer")
#: Column names accepted in place of the standard ones (source name -> standard name).
ALIASES: dict[str, dict[str, str]] = {
    "sft": {"completion": "response", "human_answer": "response", "answer": "response"},
    "preferences": {"human_answer": "chosen", "machine_answer": "rejected"},
    "eval": {"response": "reference", "human_answer": "reference"},
}
#: The fewest preference pairs a reward model is trained on (:func:`load_training_pairs`): one batch of the tiny
#: recipe (``RewardConfig.batch_size`` 16), and the smallest subsample the test suite trains on. With fewer, the
#: Bradley-Terry loss is fitted on a handful of pairs it memorises; such a file still serves as held-out pairs.
MIN_TRAINING_PAIRS = 16


@dataclass(frozen=True)
class Problem:
    """One finding about the input. ``line`` is 1-based (for CSV: the physical line the row starts on)."""

    path: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.message}"


@dataclass
class ValidationReport:
    path: str
    kind: str
    n_rows: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    duplicates: int = 0
    too_long: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        state = "valid" if self.ok else f"INVALID ({len(self.errors)} errors)"
        return (
            f"{self.path}: {state}: {self.n_rows} {self.kind} rows, "
            f"{self.duplicates} duplicates, {self.too_long} over-long texts"
        )


class DataValidationError(ValueError):
    """Raised by :func:`load_records` when the input has errors; ``.report`` lists them all."""

    def __init__(self, report: ValidationReport):
        self.report = report
        shown = "\n".join(str(p) for p in report.errors[:20])
        more = f"\n... and {len(report.errors) - 20} more" if len(report.errors) > 20 else ""
        super().__init__(f"{report.summary()}\n{shown}{more}")


# --------------------------------------------------------------------------- reading raw rows


def _decode(raw: bytes) -> str:
    """UTF-8 text in which undecodable bytes survive as lone surrogates, so the row and field
    that hold them can be reported later instead of failing on the whole file."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")


def _iter_jsonl(path: str, text: str, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(Problem(path, number, None, f"malformed JSON line: {e.msg} (column {e.colno})"))


def _iter_json(path: str, text: str, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    """Elements of a top-level JSON array, each with the line where it starts."""
    decoder = json.JSONDecoder()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(Problem(path, e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})"))
        return
    key = None
    if isinstance(whole, dict):
        key = next((k for k in ("data", "rows", "train") if isinstance(whole.get(k), list)), None)
        if key is None:
            problems.append(Problem(path, 1, None, "expected a list of objects (or an object with a 'data' list)"))
            return
    elif not isinstance(whole, list):
        problems.append(Problem(path, 1, None, "expected a list of objects"))
        return
    # Walk the array again with raw_decode to learn where each element starts.
    start = text.index("[", text.index(f'"{key}"') if key else 0) + 1
    pos = start
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        obj, end = decoder.raw_decode(text, pos)
        yield text.count("\n", 0, pos) + 1, obj
        pos = end


def _iter_csv(path: str, text: str, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        problems.append(Problem(path, 1, None, f"broken CSV header: {e}"))
        return
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            problems.append(Problem(path, start, None, f"broken CSV quoting: {e}"))
            return
        if row and len(row) != len(header):
            problems.append(Problem(path, start, None, f"expected {len(header)} columns, found {len(row)}"))
        elif row:
            yield start, dict(zip(header, row, strict=False))
        start = reader.line_num + 1


def _iter_dataset(ds) -> Iterator[tuple[int, object]]:
    yield from enumerate(ds, start=1)


def _open_dataset(source: str):
    """A saved ``datasets`` folder, or a hub dataset name."""
    import datasets

    if Path(source).is_dir():
        ds = datasets.load_from_disk(source)
    else:
        try:
            ds = datasets.load_dataset(source)
        except Exception as e:  # offline, unknown name, ...: say which and why
            raise FileNotFoundError(
                f"{source}: not a file or folder here, and loading it as a hub dataset failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Offline? Save the data as JSONL/CSV first."
            ) from e
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return ds


def read_rows(source: str | Path, problems: list[Problem]) -> Iterator[tuple[int, object]]:
    """(line, raw row) pairs from any accepted source; parse problems are appended to ``problems``."""
    path = Path(source)
    if path.is_file():
        text = _decode(path.read_bytes())
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _iter_jsonl(str(source), text, problems)
        if suffix == ".json":
            return _iter_json(str(source), text, problems)
        if suffix in (".csv", ".tsv"):
            return _iter_csv(str(source), text, problems)
        raise ValueError(f"{source}: unsupported file type {suffix!r}; use .json, .jsonl or .csv")
    if not path.exists() and "/" not in str(source):
        raise FileNotFoundError(f"{source}: no such file or folder")
    return _iter_dataset(_open_dataset(str(source)))


# --------------------------------------------------------------------------- validation


def _normalise_keys(row: dict, kind: str) -> dict:
    aliases = ALIASES[kind]
    out = {}
    for key, value in row.items():
        target = aliases.get(key, key)
        if target in out and key != target:
            continue  # the standard column wins over an alias
        out[target] = value
    return out


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def validate_rows(
    source: str | Path,
    kind: str,
    max_tokens: int | None = None,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
) -> tuple[ValidationReport, list[dict]]:
    """Check every row of ``source`` for ``kind``; return the report and the normalised rows.

    Errors (the file cannot be used): malformed JSON/CSV, undecodable bytes, a missing field, a
    value that is not text, an empty text, ``chosen == rejected``. Warnings (reported with counts):
    exact duplicate rows and texts longer than ``max_tokens`` (they will be truncated).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    required = KINDS[kind]
    report = ValidationReport(str(source), kind)
    rows: list[dict] = []
    lines: list[int] = []
    n_read = 0
    for line, raw in read_rows(source, report.errors):
        n_read += 1
        if not isinstance(raw, dict):
            report.errors.append(Problem(str(source), line, None, f"expected an object, got {type(raw).__name__}"))
            continue
        row = _normalise_keys(dict(raw), kind)
        row_ok = True
        for name in required:
            value = row.get(name)
            problem = None
            if name not in row:
                problem = "missing field"
            elif value is None:
                problem = "missing value (null)"
            elif not isinstance(value, str):
                problem = f"expected text, got {type(value).__name__} ({json.dumps(value)[:40]})"
            elif not value.strip():
                problem = "empty text"
            elif _has_bad_bytes(value):
                problem = "contains bytes that are not valid UTF-8 (is the file in another encoding?)"
            if problem:
                report.errors.append(Problem(str(source), line, name, problem))
                row_ok = False
        if row_ok and kind == "preferences" and row["chosen"].strip() == row["rejected"].strip():
            report.errors.append(Problem(str(source), line, "rejected", "chosen and rejected are identical"))
            row_ok = False
        if row_ok:
            rows.append(row)
            lines.append(line)
    report.n_rows = len(rows)
    if not n_read and not report.errors:  # nothing to read, and no parse error that says why
        report.errors.append(Problem(str(source), None, None, _why_no_rows(source)))
    elif kind == "preferences" and 0 < report.n_rows < MIN_TRAINING_PAIRS:
        report.warnings.append(
            Problem(
                str(source),
                None,
                None,
                f"only {report.n_rows} pairs: enough to evaluate a reward model on, too few to train one on "
                f"(at least {MIN_TRAINING_PAIRS})",
            )
        )

    seen: dict[tuple, int] = {}
    for row, line in zip(rows, lines, strict=False):
        key = tuple(row[n] for n in required)
        if key in seen:
            report.duplicates += 1
            if report.duplicates <= 5:
                report.warnings.append(Problem(str(source), line, None, f"duplicate of line {seen[key]}"))
        else:
            seen[key] = line
    if max_tokens and count_tokens and rows:
        for name in required:
            lengths = count_tokens([r[name] for r in rows])
            over = [(line, n) for line, n in zip(lines, lengths, strict=False) if n > max_tokens]
            report.too_long += len(over)
            for line, n in over[:3]:
                report.warnings.append(
                    Problem(str(source), line, name, f"{n} tokens, longer than the preset's {max_tokens}: truncated")
                )
    return report, rows


def _why_no_rows(source: str | Path) -> str:
    """The message for an input without a single data row."""
    path = Path(source)
    if path.is_file():
        text = _decode(path.read_bytes())
        if not text.strip():
            return "empty file: no data rows" if not text else "no data rows: the file holds only blank lines"
        if path.suffix.lower() in (".csv", ".tsv"):
            return "no data rows: the file holds only a header line"
        return "no data rows (an empty list)" if path.suffix.lower() == ".json" else "no data rows"
    return "no data rows: the dataset is empty"


def load_records(source: str | Path, kind: str, **kwargs):
    """Validate ``source`` and return it as a ``datasets.Dataset`` with the standard columns first.

    Raises :class:`DataValidationError` (listing every error with file:line and field) when invalid.
    """
    import datasets

    report, rows = validate_rows(source, kind, **kwargs)
    if not report.ok:
        raise DataValidationError(report)
    if not rows:
        raise DataValidationError(
            ValidationReport(str(source), kind, errors=[Problem(str(source), None, None, "no rows")])
        )
    required = KINDS[kind]
    extra = [k for k in rows[0] if k not in required and all(k in r for r in rows)]
    return datasets.Dataset.from_list([{k: r[k] for k in (*required, *extra)} for r in rows])


def length_counter(tokenizer) -> Callable[[list[str]], list[int]]:
    """A ``count_tokens`` function for :func:`validate_rows` from a tokenizer."""

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]

    return count


def load_training_pairs(source: str | Path, **kwargs):
    """:func:`load_records` for the pairs a reward model trains on: also invalid with fewer than
    :data:`MIN_TRAINING_PAIRS` pairs (a :class:`DataValidationError` naming the file and the count)."""
    ds = load_records(source, "preferences", **kwargs)
    if len(ds) < MIN_TRAINING_PAIRS:
        message = (
            f"only {len(ds)} preference pairs, too few to train a reward model on: at least {MIN_TRAINING_PAIRS} are "
            "needed (add pairs; a small file can still be the held-out --eval file)"
        )
        report = ValidationReport(str(source), "preferences", n_rows=len(ds))
        report.errors.append(Problem(str(source), None, None, message))
        raise DataValidationError(report)
    return ds
