"""Reward-model recipes for a pretrained encoder, measured on real, noisy human preference labels.

Reads ``../shared/real_data/cnndm_preferences.jsonl`` (425 human comparisons of two summaries of one
CNN/DailyMail article, Stiennon et al. 2020; never copied into the repository), splits it into
article-grouped folds (pairs about one article never sit on both sides: they would inflate accuracy),
trains each recipe on all folds but one with the course's own ``train_reward_model`` and scores the
held-out fold with ``evaluate_reward_model``. Prints a markdown table: held-out accuracy mean/min/max
over folds, the length-only baseline on the same folds, training seconds, and how often the
"learnt nothing" warning fired.

    python benchmarks/reward_real_data.py                      # every recipe, 3 folds: hours (17-30 min a run)
    python benchmarks/reward_real_data.py --recipes default    # the CLI's default only
    python benchmarks/reward_real_data.py --folds 5 --recipes default full_ft_resp_first

Each (recipe, fold) result is cached in ``--cache`` (default artifacts/reward_real_data_runs.json, git-ignored,
keyed by the recipe's full config and the fold's article ids), so a run can be stopped and resumed and
the table re-printed without retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhf_helpers.io_utils import atomic_write_json  # noqa: E402

DATA = REPO.parent / "shared" / "real_data" / "cnndm_preferences.jsonl"

#: name -> (description, overrides of reward_defaults(backbone)); "default" is the CLI's own recipe.
RECIPES: dict[str, tuple[str, dict]] = {
    "old_default": (
        "old default: LoRA r16 lr 3e-4, 1 epoch, batch 16, 256 tokens, prompt first",
        dict(
            use_lora=True, lora_r=16, lora_alpha=32, learning_rate=3e-4, head_learning_rate=None, num_epochs=1,
            batch_size=16, max_length=256, response_first=False, max_prompt_tokens=None, gradient_checkpointing=False,
            length_feature=False, frozen_backbone=False,
        ),
    ),
    "full_ft_plain": (
        "full FT lr 3e-5 (head too), 3 epochs, batch 8, 256 tokens, prompt first",
        dict(
            use_lora=False, learning_rate=3e-5, head_learning_rate=None, num_epochs=3, batch_size=8,
            max_length=256, response_first=False, max_prompt_tokens=None, gradient_checkpointing=False,
            length_feature=False, frozen_backbone=False,
        ),
    ),
    "full_ft_head": (
        "full FT lr 3e-5, head lr 1e-3, 3 epochs, batch 8, 256 tokens, prompt first",
        dict(
            use_lora=False, learning_rate=3e-5, head_learning_rate=1e-3, num_epochs=3, batch_size=8,
            max_length=256, response_first=False, max_prompt_tokens=None, gradient_checkpointing=False,
            length_feature=False, frozen_backbone=False,
        ),
    ),
    "full_ft_resp_first": (
        "full FT lr 3e-5, head lr 1e-3, 3 epochs, batch 8, 192 tokens, response first, prompt <= 96",
        dict(
            use_lora=False, learning_rate=3e-5, head_learning_rate=1e-3, num_epochs=3, batch_size=8,
            max_length=192, response_first=True, max_prompt_tokens=96, gradient_checkpointing=False,
            length_feature=False, frozen_backbone=False,
        ),
    ),
    "lora_big": (
        "LoRA r64 lr 1e-3, head lr 1e-3, 3 epochs, batch 8, 192 tokens, response first, prompt <= 96",
        dict(
            use_lora=True, lora_r=64, lora_alpha=64, learning_rate=1e-3, head_learning_rate=1e-3, num_epochs=3,
            batch_size=8, max_length=192, response_first=True, max_prompt_tokens=96, gradient_checkpointing=False,
            length_feature=False, frozen_backbone=False,
        ),
    ),
    "full_ft_length": (
        "full_ft_resp_first + a learnt length term w*log(1+response tokens), w at lr 3e-2",
        dict(
            use_lora=False, learning_rate=3e-5, head_learning_rate=1e-3, num_epochs=3, batch_size=8,
            max_length=192, response_first=True, max_prompt_tokens=96, gradient_checkpointing=False,
            length_feature=True, length_learning_rate=3e-2, frozen_backbone=False,
        ),
    ),
    "default": ("the CLI's default (reward_defaults): MiniLM frozen, a Bradley-Terry head on its features, the"
                " feature set and L2 strength chosen by grouped cross-validation on the training articles", {}),
}


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise SystemExit(f"{path}: not found (the real data lives in ../shared/real_data; see its README)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def article_folds(rows: list[dict], k: int, seed: int = 0) -> list[set[str]]:
    """k disjoint sets of article ids, dealt round-robin after a seeded shuffle (sorted first: reproducible)."""
    ids = sorted({r["article_id"] for r in rows})
    random.Random(seed).shuffle(ids)
    return [set(ids[i::k]) for i in range(k)]


def run_key(cfg: dict, held_out: set[str], rows: list[dict]) -> str:
    """The cache key of one run: its config and held-out articles. A pair cap at or above the fold's
    training size subsamples nothing, so it is left out (the same run whatever the cap); so are settings that
    the run does not use (LoRA's rank without LoRA, the length rate without the length term). A field that a
    run's code did not have yet takes RewardConfig's default (the behaviour of that code)."""
    from rlhf_helpers.reward import RewardConfig

    cfg = {**asdict(RewardConfig()), **cfg}
    if not cfg["use_lora"]:  # LoRA's rank and alpha mean nothing to a full fine-tune
        cfg["lora_r"] = cfg["lora_alpha"] = None
    if not cfg["length_feature"]:
        cfg["length_learning_rate"] = None
    n_train = sum(r["article_id"] not in held_out for r in rows)
    if cfg.get("max_train_pairs") is not None and cfg["max_train_pairs"] >= n_train:
        cfg["max_train_pairs"] = None
    return json.dumps({"config": cfg, "held_out": sorted(held_out)}, sort_keys=True)


def run_one(backbone: str, overrides: dict, rows: list[dict], held_out: set[str], seed: int) -> dict:
    from datasets import Dataset

    from rlhf_helpers.reward import evaluate_reward_model, reward_defaults, train_reward_model

    cfg = reward_defaults(backbone, seed=seed, **overrides)
    cols = ("prompt", "chosen", "rejected")
    train = [{c: r[c] for c in cols} for r in rows if r["article_id"] not in held_out]
    test = [{c: r[c] for c in cols} for r in rows if r["article_id"] in held_out]
    train_ds, test_ds = Dataset.from_list(train), Dataset.from_list(test)
    result = train_reward_model(cfg, train_ds, None, progress=False)
    m = evaluate_reward_model(result.reward_model, test_ds, seed=seed)
    return {
        "config": asdict(cfg),
        "n_train": result.n_train,
        "n_eval": m["n_eval"],
        "accuracy": m["accuracy"],
        "accuracy_ci": m["accuracy_ci"],
        "length_baseline_accuracy": m["length_baseline_accuracy"],
        "mean_margin": m["mean_margin"],
        "learnt_nothing_warning": m.get("learnt_nothing_warning"),
        "train_seconds": round(result.train_seconds, 1),
        "final_train_loss": next((h["loss"] for h in reversed(result.log_history) if "loss" in h), None),
        # a frozen encoder: what the inner cross-validation chose
        "feature_set": getattr(getattr(result.reward_model, "head", None), "feature_set", None),
        "l2_c": getattr(getattr(result.reward_model, "head", None), "l2_c", None),
    }


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| recipe | folds | accuracy mean | min | max | length baseline | warned | train s (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        if not runs:
            continue
        acc = [r["accuracy"] for r in runs]
        base = [r["length_baseline_accuracy"] for r in runs]
        warned = sum(bool(r["learnt_nothing_warning"]) for r in runs)
        secs = sum(r["train_seconds"] for r in runs) / len(runs)
        lines.append(
            f"| {name} | {len(runs)} | {sum(acc) / len(acc):.3f} | {min(acc):.3f} | {max(acc):.3f} | "
            f"{sum(base) / len(base):.3f} | {warned}/{len(runs)} | {secs:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--folds", type=int, default=3, help="article-grouped folds (each one is held out once)")
    ap.add_argument("--fold-seed", type=int, default=0, help="seed of the article shuffle")
    ap.add_argument("--only-folds", type=int, nargs="+", help="run only these fold indices (0-based)")
    ap.add_argument("--cached-only", action="store_true", help="print the table of cached runs only; train nothing")
    ap.add_argument("--cache", type=Path, default=REPO / "artifacts" / "reward_real_data_runs.json")
    args = ap.parse_args(argv)

    rows = load_rows(args.data)
    folds = article_folds(rows, args.folds, args.fold_seed)
    cache = {}
    for key, run in (json.loads(args.cache.read_text()) if args.cache.exists() else {}).items():
        k = json.loads(key)
        cache[run_key(k["config"], set(k["held_out"]), rows)] = run
    print(f"{len(rows)} pairs, {len({r['article_id'] for r in rows})} articles, {args.folds} article-grouped folds "
          f"(fold seed {args.fold_seed}); backbone {args.backbone}", file=sys.stderr)
    results: dict[str, list[dict]] = {}
    for name in args.recipes:
        results[name] = []
        for i, held_out in enumerate(folds):
            if args.only_folds is not None and i not in args.only_folds:
                continue
            from rlhf_helpers.reward import reward_defaults

            cfg = asdict(reward_defaults(args.backbone, seed=i, **RECIPES[name][1]))
            key = run_key(cfg, held_out, rows)
            if key not in cache and args.cached_only:
                continue
            if key not in cache:
                print(f"  {name}, fold {i}: training ...", file=sys.stderr, flush=True)
                cache[key] = {"recipe": name, "fold": i, **run_one(args.backbone, RECIPES[name][1], rows, held_out, i)}
                atomic_write_json(args.cache, cache)
            r = cache[key]
            print(f"  {name}, fold {i}: accuracy {r['accuracy']:.3f} (length {r['length_baseline_accuracy']:.3f}), "
                  f"{r['train_seconds']} s", file=sys.stderr, flush=True)
            results[name].append(r)
    for name in args.recipes:
        print(f"- **{name}**: {RECIPES[name][0]}")
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
