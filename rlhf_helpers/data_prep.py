"""Stage 1, dataset preparation: load and validate the course data, explore it, and split it by
prompt into the files every later stage reads.

Why split *by prompt*? The preference file holds two or three pairs per prompt. A random row
split would put pairs about the same ticket on both sides, and the reward model's held-out
accuracy would measure memory, not generalisation.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from rlhf_helpers.config import artifacts_dir, course_seed, data_dir, on_course_data
from rlhf_helpers.course_data import CRITERIA
from rlhf_helpers.data_loading import load_records
from rlhf_helpers.io_utils import atomic_write_jsonl

#: The split files later notebooks read, under ``<artifacts>/data``.
SPLIT_FILES = {
    "sft_train": "sft_train.jsonl",
    "sft_val": "sft_val.jsonl",
    "pref_train": "pref_train.jsonl",
    "pref_val": "pref_val.jsonl",
    "eval": "eval.jsonl",
    "pref_gold": "pref_gold.jsonl",  # custom data only: the gold judge's half (see prepare_splits)
}


#: File types a data folder may hold, in the order they are looked for.
DATA_SUFFIXES = (".jsonl", ".json", ".csv")
#: Custom data only: at most this many evaluation prompts (a seeded, prompt-hashed sample), so that
#: notebooks 05-06 generate and judge as many replies as on the course data (250) and keep its runtime.
MAX_EVAL_PROMPTS = 250
#: Custom data only: the share of preference prompts held out for validation. The course uses 0.1 of
#: ~550 prompts; real comparison sets are smaller (45 articles in the CNN/DM example), and 10% of them
#: would leave a handful of articles to measure the reward model and the gold judge on.
CUSTOM_VAL_FRACTION = 0.2


def find_data_files(folder: str | Path | None = None) -> dict[str, Path]:
    """The data folder's files by kind: ``sft``, ``preferences``, ``eval`` and, if present, ``seed_format``.

    A kind's file is ``<kind>.jsonl`` / ``.json`` / ``.csv`` (the course's names), or else the one file
    whose name contains the kind (``dialogsum_sft.jsonl``, ``cnndm_preferences.csv``), so a folder of
    downloaded files works as it is. Raises ``FileNotFoundError`` naming the folder and what is missing,
    and ``ValueError`` when two files could be meant.
    """
    folder = Path(folder or data_dir())
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist (RLHF_DATA_DIR / --data)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    found: dict[str, Path] = {}
    for kind in ("sft", "preferences", "eval", "seed_format"):
        exact = [folder / f"{kind}{suffix}" for suffix in DATA_SUFFIXES if (folder / f"{kind}{suffix}").is_file()]
        fuzzy = [p for p in files if kind in p.stem.lower() and (kind != "eval" or "seed_format" not in p.stem)]
        candidates = exact or fuzzy
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise ValueError(f"{folder}: more than one {kind} file ({names}); keep one or name it {kind}.jsonl")
        if candidates:
            found[kind] = candidates[0]
        elif kind != "seed_format":
            raise FileNotFoundError(
                f"{folder}: no {kind} file (expected {kind}.jsonl, .json or .csv, or a file whose name contains "
                f"'{kind}'); found: {', '.join(p.name for p in files) or 'no data files'}"
            )
    return found


def load_course_data(folder: str | Path | None = None) -> dict:
    """The data files as validated ``datasets.Dataset`` objects: ``sft``, ``preferences`` and ``eval``
    are required; ``seed_format`` (the seed project's unlabelled pairs, used by the judger notebook) is
    loaded when present, so a learner's own data folder needs only the three training files (found by
    :func:`find_data_files`, in any accepted format)."""
    files = find_data_files(folder)
    data = {kind: load_records(path, "preferences" if kind == "seed_format" else kind) for kind, path in files.items()}
    return data


def _bucket(prompt: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, prompt): the same prompt always lands on the same side."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_prompt(ds, val_fraction: float = 0.1, seed: int | None = None):
    """(train, val) with every prompt on exactly one side; deterministic given the seed."""
    seed = course_seed() if seed is None else seed
    is_val = [_bucket(p, seed) < val_fraction for p in ds["prompt"]]
    train = ds.select([i for i, v in enumerate(is_val) if not v])
    val = ds.select([i for i, v in enumerate(is_val) if v])
    return train, val


def splits_dir() -> Path:
    return artifacts_dir() / "data"


def _cap_eval(ds, limit: int, seed: int):
    """At most ``limit`` rows: those whose prompts hash lowest with the seed, in their original order."""
    if len(ds) <= limit:
        return ds
    ranked = sorted(range(len(ds)), key=lambda i: _bucket(f"eval:{ds[i]['prompt']}", seed))
    return ds.select(sorted(ranked[:limit]))


def prepare_splits(val_fraction: float | None = None, seed: int | None = None, out: str | Path | None = None) -> dict:
    """Write the split files (atomically) and return their sizes plus leakage checks.

    On the course data: ``sft_train/sft_val``, ``pref_train/pref_val`` (``val_fraction`` 0.1) and ``eval``.
    On custom data (:func:`rlhf_helpers.config.on_course_data` is false) the preference training prompts are
    halved once more, by prompt: ``pref_train`` (the proxy reward model's half) and ``pref_gold`` (the half the
    domain-free gold judge trains on, :mod:`rlhf_helpers.gold_judge`), the set-up of Gao et al. (2022): the
    judge that grades PPO never saw the labels PPO's reward model learnt from. ``val_fraction`` defaults to
    :data:`CUSTOM_VAL_FRACTION` there and ``eval`` keeps at most :data:`MAX_EVAL_PROMPTS` prompts.
    """
    out = Path(out or splits_dir())
    seed = course_seed() if seed is None else seed
    course = on_course_data()
    if val_fraction is None:
        val_fraction = 0.1 if course else CUSTOM_VAL_FRACTION
    data = load_course_data()
    sft_train, sft_val = split_by_prompt(data["sft"], val_fraction, seed)
    pref_train, pref_val = split_by_prompt(data["preferences"], val_fraction, seed)
    eval_ds = data["eval"] if course else _cap_eval(data["eval"], MAX_EVAL_PROMPTS, seed)
    splits = {
        "sft_train": sft_train,
        "sft_val": sft_val,
        "pref_train": pref_train,
        "pref_val": pref_val,
        "eval": eval_ds,
    }
    if not course:
        is_gold = [_bucket(f"gold:{p}", seed) < 0.5 for p in pref_train["prompt"]]
        splits["pref_gold"] = pref_train.select([i for i, g in enumerate(is_gold) if g])
        splits["pref_train"] = pref_train = pref_train.select([i for i, g in enumerate(is_gold) if not g])
        if not len(pref_train) or not len(splits["pref_gold"]) or not len(pref_val):
            n_prompts = len(set(data["preferences"]["prompt"]))
            raise ValueError(
                f"{find_data_files()['preferences']}: too few distinct prompts ({n_prompts}) to split into proxy, "
                "gold and validation sets by prompt; the course needs at least about 10"
            )
    for name, ds in splits.items():
        atomic_write_jsonl(out / SPLIT_FILES[name], ds.to_list())
    train_prompts = set(sft_train["prompt"]) | set(pref_train["prompt"])
    stats = {f"n_{name}": len(ds) for name, ds in splits.items()}
    stats["prompt_overlap_pref_train_val"] = len(set(pref_train["prompt"]) & set(pref_val["prompt"]))
    stats["prompt_overlap_eval_train"] = len(set(eval_ds["prompt"]) & train_prompts)
    if not course:
        gold_prompts = set(splits["pref_gold"]["prompt"])
        stats["prompt_overlap_gold_proxy"] = len(gold_prompts & set(pref_train["prompt"]))
        stats["prompt_overlap_gold_val"] = len(gold_prompts & set(pref_val["prompt"]))
        stats["n_eval_available"] = len(data["eval"])
    return stats


def course_validation_pairs(seed: int | None = None):
    """The course's own validation preference pairs (what ``load_split("pref_val")`` gives on the course data),
    whatever the data folder: notebook 04 teaches the rubric judge on them, because their labels come from
    the rubric, even when the course runs on your data."""
    from rlhf_helpers.config import COURSE_DATA_DIR

    return split_by_prompt(load_course_data(COURSE_DATA_DIR)["preferences"], 0.1, seed)[1]


def split_names() -> tuple[str, ...]:
    """The splits :func:`prepare_splits` writes for the current data folder (``pref_gold`` on custom data only)."""
    return tuple(n for n in SPLIT_FILES if n != "pref_gold" or not on_course_data())


def ensure_splits() -> Path:
    """The split folder, created with the default settings if an earlier notebook did not run."""
    folder = splits_dir()
    if not all((folder / SPLIT_FILES[n]).exists() for n in split_names()):
        prepare_splits()
    return folder


def load_split(name: str):
    """One split written by :func:`prepare_splits` (as a Dataset of its kind)."""
    kind = {
        "sft_train": "sft",
        "sft_val": "sft",
        "pref_train": "preferences",
        "pref_val": "preferences",
        "pref_gold": "preferences",
        "eval": "eval",
    }[name]
    return load_records(ensure_splits() / SPLIT_FILES[name], kind)


# --------------------------------------------------------------------------- exploration


def pair_statistics(prefs) -> dict:
    """What decides the preference pairs: per-criterion win rates and the length heuristic."""
    n = len(prefs)
    longer_wins = sum(len(c) > len(r) for c, r in zip(prefs["chosen"], prefs["rejected"], strict=False)) / n
    decided: Counter = Counter()
    if "decided_by" in prefs.column_names:
        decided.update(c for d in prefs["decided_by"] for c in d.split(",") if c)
    stats = {"pairs": n, "prompts": len(set(prefs["prompt"])), "longer_is_chosen": round(longer_wins, 3)}
    for c in CRITERIA:
        if f"chosen_{c}" in prefs.column_names:
            stats[f"pairs_differing_on_{c}"] = decided.get(c, 0)
    return stats


def criterion_table(prefs):
    """A pandas table: mean score of chosen vs rejected replies on each rubric criterion."""
    import pandas as pd

    rows = []
    for c in CRITERIA:
        rows.append(
            {
                "criterion": c,
                "chosen mean": sum(prefs[f"chosen_{c}"]) / len(prefs),
                "rejected mean": sum(prefs[f"rejected_{c}"]) / len(prefs),
            }
        )
    return pd.DataFrame(rows).set_index("criterion").round(2)


def plot_lengths(data: dict, tokenizer, max_source_length: int | None = None):
    """Histograms of token lengths: prompts, SFT responses, chosen and rejected replies."""
    import matplotlib.pyplot as plt

    def lengths(texts):
        return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]

    series = {
        "prompts": lengths(data["sft"]["prompt"]),
        "SFT responses": lengths(data["sft"]["response"]),
        "chosen": lengths(data["preferences"]["chosen"]),
        "rejected": lengths(data["preferences"]["rejected"]),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for name in ("prompts", "SFT responses"):
        axes[0].hist(series[name], bins=30, alpha=0.6, label=name)
    if max_source_length:
        axes[0].axvline(max_source_length, color="k", ls="--", lw=1, label="preset max length")
    axes[0].set(title="SFT data", xlabel="tokens", ylabel="count")
    axes[0].legend()
    for name in ("chosen", "rejected"):
        axes[1].hist(series[name], bins=30, alpha=0.6, label=name)
    axes[1].set(title="preference pairs", xlabel="tokens")
    axes[1].legend()
    fig.tight_layout()
    return fig, series


def plot_criteria(prefs):
    """Bar chart: distribution of each rubric score among chosen and rejected replies."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(CRITERIA), figsize=(12, 3), sharey=True)
    for ax, c in zip(axes, CRITERIA, strict=False):
        for offset, side in ((-0.2, "chosen"), (0.2, "rejected")):
            counts = np.bincount(prefs[f"{side}_{c}"], minlength=3)
            ax.bar(np.arange(3) + offset, counts, width=0.4, label=side)
        ax.set(title=c, xticks=range(3), xlabel="score")
    axes[0].set_ylabel("replies")
    axes[0].legend()
    fig.tight_layout()
    return fig
