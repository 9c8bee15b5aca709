"""Preference labelling: the "human feedback" of RLHF, collected so that nothing is ever lost.

A labelling session is a queue of pairs (a prompt and two responses). Each annotator sees every
pair with its two responses in a randomised left/right order, because people favour the first
(left) answer they read; the order comes from a hash of the course seed and the pair id, so it is
reproducible, and it is recorded with every label. A label is ``A`` (``response_a`` is better),
``B``, ``tie`` or ``skip``.

Why an append-only log? Labelling is slow human work and a notebook kernel can die at any moment
(a restart, a closed laptop, Colab's idle timeout). Every label and every undo is one JSON line
appended to ``<session folder>/<annotator>.jsonl`` and pushed to disk (``os.fsync``) before the
call returns, so a crash loses at most the click in flight. The file is never rewritten: an undo
is a new ``undo`` record, and the state is rebuilt by replaying the log. Resuming is just opening
the session again. One file per annotator means several people can label the same pairs at once
without any locking; :func:`load_annotations` reads them all back.

The export (:func:`export_preferences`) writes ``prompt, chosen, rejected`` rows, the format the
reward model trains on (ties, skips and pairs the annotators disagree on are left out, and
counted). :func:`agreement` measures Cohen's kappa between two annotators, or between the humans
and any other labeller (the judger, or the course data's hidden gold labels).

No widget code here: ``rlhf_helpers.labeling_widget`` is a thin UI over this module, so all of
this is tested without a browser.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rlhf_helpers.config import artifacts_dir, course_seed
from rlhf_helpers.io_utils import atomic_write_jsonl

#: What a label means: ``A``/``B`` name the pair's ``response_a``/``response_b`` (not a screen side).
LABELS = ("A", "B", "tie", "skip")
#: What an annotator clicks: a side of the screen. :meth:`Shown.to_label` maps it to a label.
CHOICES = ("left", "right", "tie", "skip")
#: The file notebook 06 writes with the policy's own outputs; used in preference to course pairs.
PAIRS_FILE = "pairs_to_label.jsonl"
LOG_VERSION = 1
_ANNOTATOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    """One item to label. ``source`` holds everything else the pair file carried (which model wrote
    each response, the hidden gold label of a course pair, ...): never shown to the annotator."""

    pair_id: str
    prompt: str
    response_a: str
    response_b: str
    source: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def gold(self) -> str | None:
        """The known answer (``A``/``B``) for course pairs, used only to measure agreement."""
        return self.source.get("gold")

    def to_row(self) -> dict:
        return {
            "pair_id": self.pair_id,
            "prompt": self.prompt,
            "response_a": self.response_a,
            "response_b": self.response_b,
            **self.source,
        }


def labeling_dir() -> Path:
    """``<artifacts>/labeling``: the pairs file, the session folders and the exports."""
    return artifacts_dir() / "labeling"


def session_dir(name: str = "default") -> Path:
    """The folder of one labelling session (one JSONL log per annotator inside)."""
    return labeling_dir() / "sessions" / name


def pair_id_for(prompt: str, response_a: str, response_b: str) -> str:
    """A stable id from the texts, so the same pair keeps its id when a file is regenerated."""
    return hashlib.sha256(json.dumps([prompt, response_a, response_b]).encode()).hexdigest()[:16]


def _hash_unit(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (the same recipe as the data splits)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Pairs from a JSONL file with ``prompt, response_a, response_b`` and optionally ``pair_id``
    (made from the texts when missing); other fields go to :attr:`Pair.source`.

    Raises ``ValueError`` naming file and line for a malformed line, a missing or empty text, or a
    repeated pair id: a queue with a broken pair would stop an annotator half-way.
    """
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: malformed JSON line: {e.msg}") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected an object")
            for name in ("prompt", "response_a", "response_b"):
                value = row.get(name)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{path}:{number}: field '{name}': missing or empty text")
            pid = str(row.pop("pair_id", None) or pair_id_for(row["prompt"], row["response_a"], row["response_b"]))
            if pid in seen:
                raise ValueError(f"{path}:{number}: pair_id {pid!r} repeats line {seen[pid]}")
            seen[pid] = number
            prompt, a, b = row.pop("prompt"), row.pop("response_a"), row.pop("response_b")
            pairs.append(Pair(pid, prompt, a, b, row))
    return pairs


def write_pairs(pairs: Iterable[Pair], path: str | os.PathLike | None = None) -> Path:
    """Write a pairs file atomically (default: ``<artifacts>/labeling/pairs_to_label.jsonl``)."""
    return atomic_write_jsonl(path or labeling_dir() / PAIRS_FILE, (p.to_row() for p in pairs))


def course_pairs(split: str = "pref_val", seed: int | None = None, limit: int | None = None) -> list[Pair]:
    """Pairs from the course preference data, with ``chosen``/``rejected`` hidden behind A/B.

    Which of the two becomes ``response_a`` is a seeded coin flip per pair; the answer is kept in
    ``source["gold"]`` so a session on these pairs can be scored against the data's own labels.
    """
    from rlhf_helpers.data_prep import load_split

    seed = course_seed() if seed is None else seed
    pairs: list[Pair] = []
    seen: set[str] = set()
    for row in load_split(split):
        pid = pair_id_for(row["prompt"], row["chosen"], row["rejected"])
        if pid in seen:  # an exact duplicate row: one queue entry is enough
            continue
        seen.add(pid)
        chosen_first = _hash_unit(seed, "gold", pid) < 0.5
        a, b = (row["chosen"], row["rejected"]) if chosen_first else (row["rejected"], row["chosen"])
        pairs.append(Pair(pid, row["prompt"], a, b, {"origin": split, "gold": "A" if chosen_first else "B"}))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def load_pairs_to_label(path: str | os.PathLike | None = None) -> list[Pair]:
    """The pairs to label: ``path`` if given; else ``<artifacts>/labeling/pairs_to_label.jsonl``
    when notebook 06 has exported the policy's own outputs there; else the course validation pairs."""
    if path is not None:
        return read_pairs(path)
    exported = labeling_dir() / PAIRS_FILE
    if exported.is_file():
        return read_pairs(exported)
    return course_pairs()


def gold_labels(pairs: Iterable[Pair]) -> dict[str, str]:
    """``pair_id -> gold label`` for the pairs that carry one (course pairs do)."""
    return {p.pair_id: p.gold for p in pairs if p.gold in ("A", "B", "tie")}


# --------------------------------------------------------------------------- one annotator's session


def display_order(pair_id: str, seed: int | None = None) -> str:
    """``"ab"`` (``response_a`` on the left) or ``"ba"``: a coin flip fixed by seed and pair id, so
    a resumed session, a second annotator and a re-run all see the same screen."""
    seed = course_seed() if seed is None else seed
    return "ba" if _hash_unit(seed, "order", pair_id) < 0.5 else "ab"


def normalise_label(label: str) -> str:
    """``a``/``A`` -> ``A``, ``TIE`` -> ``tie``...; ``ValueError`` for anything else."""
    text = str(label).strip()
    for known in LABELS:
        if text.lower() == known.lower():
            return known
    raise ValueError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")


@dataclass(frozen=True)
class Shown:
    """A pair as the annotator sees it: ``order`` says which response is on the left."""

    pair: Pair
    position: int
    order: str

    @property
    def left(self) -> str:
        return self.pair.response_a if self.order == "ab" else self.pair.response_b

    @property
    def right(self) -> str:
        return self.pair.response_b if self.order == "ab" else self.pair.response_a

    def to_label(self, choice: str) -> str:
        """Screen choice (``left``, ``right``, ``tie``, ``skip``) -> label about ``response_a/b``."""
        if choice not in CHOICES:
            raise ValueError(f"unknown choice {choice!r}; use one of {', '.join(CHOICES)}")
        if choice == "left":
            return "A" if self.order == "ab" else "B"
        if choice == "right":
            return "B" if self.order == "ab" else "A"
        return choice

    def to_choice(self, label: str) -> str:
        label = normalise_label(label)
        if label == "A":
            return "left" if self.order == "ab" else "right"
        if label == "B":
            return "right" if self.order == "ab" else "left"
        return label


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    counts: dict[str, int]  # by label: A, B, tie, skip
    choices: dict[str, int]  # by screen side: left, right, tie, skip (shows a position bias)

    @property
    def remaining(self) -> int:
        return self.total - self.done

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.choices.items())
        return f"{self.done}/{self.total} labelled ({counts})"


@dataclass
class LogState:
    """What replaying a log gives: the label records in force, oldest first (undone ones removed)."""

    records: list[dict] = field(default_factory=list)
    n_lines: int = 0
    n_undos: int = 0
    bad_lines: list[int] = field(default_factory=list)
    ends_with_newline: bool = True

    @property
    def labels(self) -> dict[str, dict]:
        """``pair_id -> record`` of the label in force (a later label of the same pair wins)."""
        return {r["pair_id"]: r for r in self.records}


def replay(path: str | os.PathLike) -> LogState:
    """Rebuild a session's state from its log. A line that is not valid JSON (a write torn by a
    power cut) is reported in ``bad_lines`` and ignored rather than making the log unreadable."""
    state = LogState()
    path = Path(path)
    if not path.exists():
        return state
    raw = path.read_bytes()
    state.ends_with_newline = not raw or raw.endswith(b"\n")
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        state.n_lines += 1
        try:
            record = json.loads(line)
            event = record["event"]
        except (json.JSONDecodeError, TypeError, KeyError):
            state.bad_lines.append(number)
            continue
        if event == "label":
            state.records.append(record)
        elif event == "undo" and state.records:
            state.records.pop()
            state.n_undos += 1
    return state


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_annotator(annotator: str) -> str:
    """Annotator ids name files: letters, digits, ``_ . -``, at most 64 characters."""
    if not isinstance(annotator, str) or not _ANNOTATOR_RE.match(annotator):
        raise ValueError(
            f"annotator id {annotator!r} is not usable as a file name: use letters, digits, '_', '.', '-' "
            "(starting with a letter or digit, at most 64 characters)"
        )
    return annotator


class LabelingSession:
    """One annotator's pass over a queue of pairs, persisted to ``<folder>/<annotator>.jsonl``.

    Opening a session replays its log, so the queue continues at the first unlabelled pair.
    Every :meth:`label`, :meth:`choose` and :meth:`undo` is on disk before it returns, and the
    in-memory state changes only after the write succeeded: memory is never ahead of the file.
    """

    def __init__(
        self,
        pairs: Iterable[Pair],
        annotator: str,
        folder: str | os.PathLike | None = None,
        seed: int | None = None,
        timer: Callable[[], float] = time.monotonic,
    ):
        self.annotator = check_annotator(annotator)
        self.pairs = list(pairs)
        ids = [p.pair_id for p in self.pairs]
        if len(set(ids)) != len(ids):
            raise ValueError("pair ids must be unique within a session")
        self.folder = Path(folder) if folder is not None else session_dir()
        self.path = self.folder / f"{annotator}.jsonl"
        self.seed = course_seed() if seed is None else seed
        self._timer = timer
        self._shown_id: str | None = None
        self._shown_at = timer()
        self._reload()

    # ------------------------------------------------------------------ state

    def _reload(self) -> None:
        state = replay(self.path)
        self._records = state.records
        self.bad_lines = state.bad_lines
        self._needs_newline = not state.ends_with_newline
        self._size = self.path.stat().st_size if self.path.exists() else 0

    @property
    def labels(self) -> dict[str, str]:
        """``pair_id -> label`` in force for this annotator (skips included)."""
        return {pid: r["label"] for pid, r in self.records.items()}

    @property
    def records(self) -> dict[str, dict]:
        """``pair_id -> full label record`` (time, seconds, order, choice...)."""
        return {r["pair_id"]: r for r in self._records}

    def current(self) -> Shown | None:
        """The next unlabelled pair in queue order, or ``None`` when the queue is done.

        The clock for ``seconds`` starts the first time a pair becomes current."""
        done = self.records
        for position, pair in enumerate(self.pairs):
            if pair.pair_id not in done:
                if pair.pair_id != self._shown_id:
                    self._shown_id, self._shown_at = pair.pair_id, self._timer()
                return Shown(pair, position, display_order(pair.pair_id, self.seed))
        return None

    def progress(self) -> Progress:
        in_queue = {p.pair_id for p in self.pairs}
        records = [r for r in self.records.values() if r["pair_id"] in in_queue]
        counts = Counter(r["label"] for r in records)
        choices = Counter(r.get("choice") for r in records)
        return Progress(
            done=len(records),
            total=len(self.pairs),
            counts={k: counts.get(k, 0) for k in LABELS},
            choices={k: choices.get(k, 0) for k in CHOICES},
        )

    @property
    def finished(self) -> bool:
        return self.current() is None

    # ------------------------------------------------------------------ actions

    def choose(self, choice: str) -> dict:
        """Record what the annotator clicked (``left``, ``right``, ``tie``, ``skip``) for the current pair."""
        shown = self._require_current()
        return self._record(shown, shown.to_label(choice))

    def label(self, label: str) -> dict:
        """Record a label about ``response_a``/``response_b`` (``A``, ``B``, ``tie``, ``skip``) for the
        current pair: what a scripted annotator, who knows the pair rather than the screen, calls."""
        return self._record(self._require_current(), normalise_label(label))

    def undo(self) -> dict | None:
        """Withdraw the most recent label in force (appends an ``undo`` record); returns the withdrawn
        record, or ``None`` when there is nothing to undo. The undone pair becomes current again."""
        self._sync()
        if not self._records:
            return None
        last = self._records[-1]
        self._append(
            {
                "v": LOG_VERSION,
                "event": "undo",
                "pair_id": last["pair_id"],
                "undoes": last["time"],
                "annotator": self.annotator,
                "time": _now(),
            }
        )
        self._records.pop()
        self._shown_id = None  # the clock restarts for the pair shown again
        return last

    def _require_current(self) -> Shown:
        self._sync()
        shown = self.current()
        if shown is None:
            raise RuntimeError(f"{self.annotator}: every pair of this session is labelled")
        return shown

    def _record(self, shown: Shown, label: str) -> dict:
        record = {
            "v": LOG_VERSION,
            "event": "label",
            "pair_id": shown.pair.pair_id,
            "label": label,
            "choice": shown.to_choice(label),
            "order": shown.order,
            "position": shown.position,
            "annotator": self.annotator,
            "time": _now(),
            "seconds": round(max(0.0, self._timer() - self._shown_at), 3),
        }
        self._append(record)
        self._records.append(record)
        return record

    def _sync(self) -> None:
        """If the file changed behind our back (the same annotator in a second kernel or browser
        tab), replay it first, so an undo withdraws the truly last label and nothing is shadowed."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self._size:
            self._reload()

    def _append(self, record: dict) -> None:
        """One ``write`` of one whole line with ``O_APPEND``, then ``fsync``.

        ``os.write`` on a raw descriptor has no user-space buffer to flush, so after ``fsync`` the
        line is on the disk, not only in the OS cache: it survives a killed kernel and a power cut.
        ``O_APPEND`` makes concurrent appenders land whole lines one after another."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        if self._needs_newline:  # a torn last line from a crash: start on a fresh line
            data = b"\n" + data
        created = not self.path.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            self._size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self._needs_newline = False
        if created:
            _fsync_dir(self.folder)  # the new file's directory entry must survive a crash too


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_session(
    annotator: str,
    pairs: Iterable[Pair] | None = None,
    session: str = "default",
    folder: str | os.PathLike | None = None,
    seed: int | None = None,
) -> LabelingSession:
    """Open (or resume) ``annotator``'s session: ``folder`` or ``<artifacts>/labeling/sessions/<session>``,
    on ``pairs`` or :func:`load_pairs_to_label`'s."""
    pairs = load_pairs_to_label() if pairs is None else pairs
    return LabelingSession(pairs, annotator, folder if folder is not None else session_dir(session), seed)


# --------------------------------------------------------------------------- several annotators, export


def load_annotations(folder: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """``annotator -> {pair_id: label}`` from every log in a session folder."""
    folder = Path(folder) if folder is not None else session_dir()
    out: dict[str, dict[str, str]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        out[path.stem] = {pid: r["label"] for pid, r in replay(path).labels.items()}
    return out


def combine_labels(annotations: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """One label per pair from several annotators: the strict majority among ``A``/``B``/``tie``
    votes (a skip is no vote); ``disagree`` when there is none (e.g. one A and one B); ``skip``
    when everyone skipped. Why not average? A 1-1 split is no evidence for either response."""
    votes: dict[str, Counter] = {}
    for labels in annotations.values():
        for pid, label in labels.items():
            votes.setdefault(pid, Counter())
            if label != "skip":
                votes[pid][label] += 1
    combined: dict[str, str] = {}
    for pid, counter in votes.items():
        ranked = counter.most_common()
        if not ranked:
            combined[pid] = "skip"
        elif len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
            combined[pid] = ranked[0][0]
        else:
            combined[pid] = "disagree"
    return combined


@dataclass(frozen=True)
class ExportReport:
    path: Path
    written: int
    ties: int
    skips: int
    disagreements: int
    unlabelled: int

    def summary(self) -> str:
        return (
            f"{self.path}: {self.written} preference pairs written; left out: {self.ties} ties, "
            f"{self.skips} skips, {self.disagreements} disagreements, {self.unlabelled} unlabelled"
        )


def export_preferences(
    pairs: Iterable[Pair],
    labels: Mapping[str, str],
    out: str | os.PathLike,
) -> ExportReport:
    """Write the decided pairs as ``prompt, chosen, rejected`` JSONL (plus ``pair_id``), atomically.

    Ties, skips and disagreements carry no preference, so they are left out (and counted): the
    reward model's loss ``-log sigmoid(r_chosen - r_rejected)`` needs a winner."""
    rows, left_out = [], Counter()
    for pair in pairs:
        label = labels.get(pair.pair_id)
        if label == "A":
            rows.append({"prompt": pair.prompt, "chosen": pair.response_a, "rejected": pair.response_b})
        elif label == "B":
            rows.append({"prompt": pair.prompt, "chosen": pair.response_b, "rejected": pair.response_a})
        else:
            left_out[label or "unlabelled"] += 1
            continue
        rows[-1]["pair_id"] = pair.pair_id
    path = atomic_write_jsonl(out, rows)
    return ExportReport(
        path, len(rows), left_out["tie"], left_out["skip"], left_out["disagree"], left_out["unlabelled"]
    )


def export_session(
    folder: str | os.PathLike | None = None,
    pairs: Iterable[Pair] | None = None,
    out: str | os.PathLike | None = None,
) -> ExportReport:
    """Combine every annotator of a session folder and export: the one call an instructor needs.

    Default ``out``: ``<artifacts>/labeling/exports/<session name>.jsonl``."""
    folder = Path(folder) if folder is not None else session_dir()
    pairs = load_pairs_to_label() if pairs is None else pairs
    out = out if out is not None else labeling_dir() / "exports" / f"{folder.name}.jsonl"
    return export_preferences(pairs, combine_labels(load_annotations(folder)), out)


# --------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class Agreement:
    """Agreement of two labellers on the pairs both decided (skips excluded)."""

    n: int
    observed: float  # p_o, the fraction of pairs with the same label
    kappa: float  # Cohen's kappa; nan when undefined (no common pairs, or both always say the same thing)
    confusion: dict[str, dict[str, int]]  # confusion[label_1][label_2] = count

    def __str__(self) -> str:
        return f"n={self.n}, agreement={self.observed:.2f}, kappa={self.kappa:.2f}"


def agreement(
    labels_1: Mapping[str, str],
    labels_2: Mapping[str, str],
    categories: tuple[str, ...] = ("A", "B", "tie"),
) -> Agreement:
    """Compare two ``pair_id -> label`` mappings: two annotators, or the humans and the judger or gold.

    Cohen's kappa corrects raw agreement for chance:
    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_e = sum_k p_1(k) p_2(k)``, the agreement two
    labellers would reach by guessing with their own label frequencies. 1 is perfect, 0 is chance.
    Why not raw agreement alone? Two annotators who both say "A" 90% of the time agree 82% of the
    time by luck. Computed by ``sklearn.metrics.cohen_kappa_score``.
    """
    first = {pid: _known_label(v) for pid, v in labels_1.items()}
    second = {pid: _known_label(v) for pid, v in labels_2.items()}
    common = sorted(pid for pid in first if first[pid] in categories and second.get(pid) in categories)
    y1 = [first[p] for p in common]
    y2 = [second[p] for p in common]
    confusion = {a: {b: 0 for b in categories} for a in categories}
    for a, b in zip(y1, y2):
        confusion[a][b] += 1
    if not common:
        return Agreement(0, math.nan, math.nan, confusion)
    observed = sum(a == b for a, b in zip(y1, y2)) / len(common)
    if len(set(y1) | set(y2)) == 1:  # both always gave the same one label: p_e = 1, kappa is 0/0
        return Agreement(len(common), observed, math.nan, confusion)
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():  # sklearn versions differ in how they warn about edge cases
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(y1, y2, labels=list(categories)))
    return Agreement(len(common), observed, kappa, confusion)


def _known_label(value: str) -> str | None:
    """Normalised label, or ``None`` for anything else (``disagree``, ``None``...): not comparable."""
    try:
        return normalise_label(value)
    except ValueError:
        return None


def pairwise_agreement(annotations: Mapping[str, Mapping[str, str]]) -> dict[tuple[str, str], Agreement]:
    """Cohen's kappa for every pair of annotators of a session."""
    names = sorted(annotations)
    return {(a, b): agreement(annotations[a], annotations[b]) for i, a in enumerate(names) for b in names[i + 1 :]}


def scripted_labels(
    pairs: Iterable[Pair], accuracy: float = 0.9, tie_rate: float = 0.05, seed: int = 0
) -> dict[str, str]:
    """What a simulated annotator answers, for demos and tests: ``tie`` with probability
    ``tie_rate``, else the gold label with probability ``accuracy``, else the other one. Each
    answer is fixed by (seed, pair id), so it does not depend on the order of labelling."""
    out = {}
    for pair in pairs:
        if pair.gold not in ("A", "B"):
            raise ValueError(f"pair {pair.pair_id} has no gold label to simulate an annotator from")
        rng = random.Random(f"{seed}:{pair.pair_id}")
        if rng.random() < tie_rate:
            out[pair.pair_id] = "tie"
        elif rng.random() < accuracy:
            out[pair.pair_id] = pair.gold
        else:
            out[pair.pair_id] = "B" if pair.gold == "A" else "A"
    return out
