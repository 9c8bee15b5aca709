"""PPO over several seeds: the gold judge's win rate over SFT (mean, min, max), KL to SFT, reward, time.

One PPO run is one draw from a noisy process (notebook 05 shows runs of one setting from 0.40 to 0.99), so
the course reports its PPO defaults over PPO seeds 0, 1, 2 — the SFT adapter and the reward model stay
those of the course seed — and compares settings the same way. This script makes those numbers:

    python benchmarks/ppo_seeds.py                                  # the defaults, seeds 0 1 2
    python benchmarks/ppo_seeds.py --variant beta0 init_kl_coef=0 adaptive_kl=False
    python benchmarks/ppo_seeds.py --variant t07 temperature=0.7 --seeds 0,1,2

Each variant's runs go to ``<artifacts>/ppo_seeds/<variant>/seed_<s>``; results are merged into
``benchmarks/ppo_seeds.json`` (``--out``), with the sha256 of ``ppo.py``/``ppo_math.py`` that produced them,
so notebook 05 can print them and say whether they are current. The prerequisites (SFT, reward model) are
trained with the defaults if missing, as notebook 05 does. About 1.5 minutes per run on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf_helpers.config import artifacts_dir  # noqa: E402
from rlhf_helpers.io_utils import atomic_write_json  # noqa: E402
from rlhf_helpers.report import code_digest as report_code_digest  # noqa: E402
from rlhf_helpers.stats import over_seeds  # noqa: E402

#: What a run records, from ``run_ppo_stage``'s metrics.
KEYS = ("win_rate_vs_sft", "kl_end", "reward_start", "reward_end", "rm_score_sft_eval", "rm_score_ppo_eval")


#: The PPO code whose behaviour the stored numbers describe.
CODE_FILES = ("ppo.py", "ppo_math.py", "ppo_stage.py", "policy.py", "sampling.py")


def code_digest() -> str:
    """sha256 over the syntax trees of :data:`CODE_FILES` (``report.code_digest``): editing the prose does not make the
    numbers stale, changing the code does."""
    return report_code_digest(*CODE_FILES)


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs, values read as Python literals (``0.7``, ``False``), else kept as strings."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not _:
            raise SystemExit(f"override {item!r}: expected key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def summarise(runs: dict[str, dict]) -> dict:
    """mean, min and max of each recorded metric over the seeds."""
    return over_seeds(runs, KEYS)


def run_variant(preset: str, seeds: list[int], overrides: dict, folder: Path) -> dict[str, dict]:
    from rlhf_helpers.ppo_stage import KL_BOUND, ppo_defaults, run_ppo_stage

    runs = {}
    for seed in seeds:
        t0 = time.perf_counter()
        out = run_ppo_stage(preset, ppo_defaults(preset, seed=seed, **overrides), out_dir=folder / f"seed_{seed}")
        m = out.metrics
        runs[str(seed)] = {k: m[k] for k in KEYS} | {
            "kl_bound": KL_BOUND,
            "n_eval": m["n_eval"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"seed {seed}: " + ", ".join(f"{k} {runs[str(seed)][k]:.3f}" for k in KEYS), flush=True)
    return runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="*", default=["defaults"], help="NAME [key=value ...] (default: defaults)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "ppo_seeds.json"))
    args = ap.parse_args(argv)
    name, overrides = args.variant[0], parse_overrides(args.variant[1:])
    seeds = [int(s) for s in args.seeds.split(",")]
    from rlhf_helpers.config import fast_cpu_math, select_preset

    # First, before any tensor work, as the CLI and the notebooks' CONFIG cell do: CPU threads started later inherit
    # the flush-to-zero mode, and an SFT trained without it is another (equally valid) policy (ROUGE-L 0.443, not the
    # course's 0.416), so the seeds would not describe the course's PPO.
    fast_cpu_math()
    select_preset(args.preset)  # every stage reads and writes this preset's artifacts (config.artifacts_dir)
    digest = code_digest()  # of the code that runs, read before it runs
    runs = run_variant(args.preset, seeds, overrides, artifacts_dir() / "ppo_seeds" / name)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[name] = {
        "preset": args.preset,
        "overrides": overrides,
        "seeds": seeds,
        "runs": runs,
        "summary": summarise(runs),
        "code_sha256": digest,
    }
    atomic_write_json(out, results)
    s = results[name]["summary"]["win_rate_vs_sft"]
    print(f"{name}: gold win rate over SFT mean {s['mean']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}) -> {out}")


if __name__ == "__main__":
    main()
