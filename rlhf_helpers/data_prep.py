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

from rlhf_helpers.config import artifacts_dir, course_seed, data_dir
from rlhf_helpers.course_data import CRITERIA, DATA_FILES
from rlhf_helpers.data_loading import load_records
from rlhf_helpers.io_utils import atomic_write_jsonl

#: The split files later notebooks read, under ``<artifacts>/data``.
SPLIT_FILES = {
    "sft_train": "sft_train.jsonl",
    "sft_val": "sft_val.jsonl",
    "pref_train": "pref_train.jsonl",
    "pref_val": "pref_val.jsonl",
    "eval": "eval.jsonl",
}


def load_course_data(folder: str | Path | None = None) -> dict:
    """The data files as validated ``datasets.Dataset`` objects: ``sft``, ``preferences`` and ``eval``
    are required; ``seed_format`` (the seed project's unlabelled pairs, used by the judger notebook) is
    loaded when present, so a learner's own data folder needs only the three training files."""
    folder = Path(folder or data_dir())
    data = {
        "sft": load_records(folder / DATA_FILES["sft"], "sft"),
        "preferences": load_records(folder / DATA_FILES["preferences"], "preferences"),
        "eval": load_records(folder / DATA_FILES["eval"], "eval"),
    }
    if (folder / DATA_FILES["seed_format"]).exists():
        data["seed_format"] = load_records(folder / DATA_FILES["seed_format"], "preferences")
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


def prepare_splits(val_fraction: float = 0.1, seed: int | None = None, out: str | Path | None = None) -> dict:
    """Write the split files (atomically) and return their sizes plus leakage checks."""
    out = Path(out or splits_dir())
    data = load_course_data()
    sft_train, sft_val = split_by_prompt(data["sft"], val_fraction, seed)
    pref_train, pref_val = split_by_prompt(data["preferences"], val_fraction, seed)
    splits = {
        "sft_train": sft_train,
        "sft_val": sft_val,
        "pref_train": pref_train,
        "pref_val": pref_val,
        "eval": data["eval"],
    }
    for name, ds in splits.items():
        atomic_write_jsonl(out / SPLIT_FILES[name], ds.to_list())
    train_prompts = set(sft_train["prompt"]) | set(pref_train["prompt"])
    stats = {f"n_{name}": len(ds) for name, ds in splits.items()}
    stats["prompt_overlap_pref_train_val"] = len(set(pref_train["prompt"]) & set(pref_val["prompt"]))
    stats["prompt_overlap_eval_train"] = len(set(data["eval"]["prompt"]) & train_prompts)
    return stats


def ensure_splits() -> Path:
    """The split folder, created with the default settings if an earlier notebook did not run."""
    folder = splits_dir()
    if not all((folder / f).exists() for f in SPLIT_FILES.values()):
        prepare_splits()
    return folder


def load_split(name: str):
    """One split written by :func:`prepare_splits` (as a Dataset of its kind)."""
    kind = {
        "sft_train": "sft",
        "sft_val": "sft",
        "pref_train": "preferences",
        "pref_val": "preferences",
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
