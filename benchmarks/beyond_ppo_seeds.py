"""DPO, RLOO, GRPO and best-of-N over several seeds, next to PPO: the gold judge's win rate over SFT (with each run's
bootstrap 95% interval), KL to SFT, training time and peak memory — the head-to-head table of notebook 08.

    python benchmarks/beyond_ppo_seeds.py                                   # tiny, seeds 0 1 2, every method
    python benchmarks/beyond_ppo_seeds.py --methods best-of-n --ns 2,4,8,16 --seeds 0

As ``benchmarks/ppo_seeds.py`` does for PPO, the SFT adapter and the reward model stay those of the course seed; only
the method's own seed changes (DPO's pair order, RLOO/GRPO's prompts and samples, best-of-N's samples). Best-of-N is
run at every N of ``--ns`` (a curve over N) at each seed.

Every run is its own process (this script, ``--one``), so ``peak_memory_mb`` — on a CPU the process's resident
high-water mark, which only grows — describes that run alone, as one CLI command would; runs go one after another,
never in parallel. ``--loops`` afterwards adds each trained run's share of greedy replies that loop on one digit
(``add_greedy_loops``). Each finished run is merged into ``benchmarks/beyond_ppo_seeds.json`` (``--out``) at once
(atomically), so an interrupted sweep keeps what it finished; a rerun replaces the runs it redoes.

The file holds, under ``"defaults"``: ``runs[method][seed]`` (method ``dpo``, ``rloo``, ``grpo``, ``best-of-<N>``),
``summary[method][metric]`` = mean/min/max over the seeds run, ``code_sha256`` (the syntax trees of the code whose
behaviour the numbers describe: ``dpo.py``, ``dpo_math.py``, ``online_rl.py``, ``online_math.py``, ``best_of_n.py``,
``beyond_ppo_stage.py``, docstrings and comments left out), ``shared_code_sha256`` (the PPO code they share,
``ppo_seeds.code_digest()``, recorded for information) and ``ppo``: PPO's defaults over seeds 0-2 copied from
``benchmarks/ppo_seeds.json`` with that file's own digest. Which KL each number is (``kl_measure``):

* DPO, RLOO, GRPO: ``kl_to_sft``, replies sampled at temperature 1 on the first 64 held-out eval prompts, summed k1
  against the SFT adapter (``dpo.sampled_kl``), nats per reply;
* best-of-N: the analytic KL(pi_BoN || pi_SFT) = log N - (N - 1)/N (an upper bound when samples tie);
* PPO: ``kl_end``, the mean summed k1 of the last tenth of training's rollouts (on training prompts), nats per reply.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlhf_helpers.config import artifacts_dir  # noqa: E402
from rlhf_helpers.io_utils import atomic_write_json  # noqa: E402
from rlhf_helpers.report import code_digest as report_code_digest  # noqa: E402
from rlhf_helpers.stats import over_seeds  # noqa: E402

CODE_FILES = ("dpo.py", "dpo_math.py", "online_rl.py", "online_math.py", "best_of_n.py", "beyond_ppo_stage.py")
METHODS = ("dpo", "rloo", "grpo", "best-of-n")
NS = (2, 4, 8, 16)

#: What a run records (every method), from the stage's metrics; plus the interval, the wall time of the run.
KEYS = ("win_rate_vs_sft", "wins", "ties", "losses", "n_eval", "kl_to_sft", "train_seconds", "peak_memory_mb",
        "rm_score_eval", "rm_score_sft_eval")
#: Method-specific extras kept when present.
EXTRA = ("steps", "kl_end", "reward_start", "reward_end", "loss_start", "loss_end", "accuracy_end", "margin_end",
         "n", "rm_score_best", "rm_score_samples", "seconds_per_step")
#: Summarised over seeds.
SUMMARY_KEYS = ("win_rate_vs_sft", "ci_low", "ci_high", "kl_to_sft", "train_seconds", "peak_memory_mb",
                "rm_score_eval", "seconds")

KL_MEASURE = {
    "dpo": "kl_to_sft: sampled at T=1 on 64 held-out prompts, summed k1 vs the SFT adapter (nats/reply)",
    "rloo": "kl_to_sft: sampled at T=1 on 64 held-out prompts, summed k1 vs the SFT adapter (nats/reply)",
    "grpo": "kl_to_sft: sampled at T=1 on 64 held-out prompts, summed k1 vs the SFT adapter (nats/reply)",
    "best-of-n": "analytic: log N - (N - 1)/N (an upper bound when samples tie)",
    "ppo": "kl_end: mean summed k1 of the last tenth of training's rollouts, training prompts (nats/reply)",
}


def code_digest() -> str:
    """sha256 over the syntax trees of the beyond-PPO code, docstrings left out (``report.code_digest``, as
    ``ppo_seeds.code_digest``): editing the prose does not make the numbers stale, changing the code does."""
    return report_code_digest(*CODE_FILES)


def shared_code_digest() -> str:
    """``ppo_seeds.code_digest()``: the PPO code these methods share (``ppo.py``'s rollout, trainer base class and
    adapters, ``policy.py``, ``ppo_stage.py``'s prerequisites). Recorded, not part of ``code_sha256``: a change there
    may or may not move these numbers, and notebook 08 says when it has happened since the sweep."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ppo_seeds", REPO / "benchmarks" / "ppo_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.code_digest()


def run_name(method: str, n: int | None = None) -> str:
    return f"best-of-{n}" if method == "best-of-n" else method


def summarise(runs: dict[str, dict]) -> dict:
    """mean, min and max of each summarised metric over the seeds."""
    return over_seeds(runs, SUMMARY_KEYS)


def ppo_rows() -> dict:
    """PPO's defaults over its seeds, from ``benchmarks/ppo_seeds.json`` (made by ``ppo_seeds.py``), with its digest.
    That file records neither the verdicts (so no interval) nor peak memory; ``seconds`` is the whole run's."""
    path = REPO / "benchmarks" / "ppo_seeds.json"
    if not path.exists():
        return {}
    d = json.loads(path.read_text()).get("defaults")
    if not d:
        return {}
    return {
        "source": "benchmarks/ppo_seeds.json defaults",
        "code_sha256": d["code_sha256"],
        "preset": d["preset"],
        "seeds": d["seeds"],
        "runs": {s: {"win_rate_vs_sft": r["win_rate_vs_sft"], "kl_end": r["kl_end"], "n_eval": r["n_eval"],
                     "seconds": r["seconds"], "rm_score_eval": r["rm_score_ppo_eval"]} for s, r in d["runs"].items()},
        "summary": {k: d["summary"][k] for k in ("win_rate_vs_sft", "kl_end")},
    }


def expected_runs(seeds=(0, 1, 2), methods=METHODS, ns=NS) -> list[tuple[str, str]]:
    """(run name, seed) of a complete sweep: every method at every seed, best-of-N at every N."""
    return [(run_name(m, n), str(s)) for s in seeds for m in methods for n in (ns if m == "best-of-n" else [None])]


def missing_runs(entry: dict, seeds=(0, 1, 2), methods=METHODS, ns=NS) -> list[str]:
    """The runs of a complete sweep that ``entry`` (the file's ``"defaults"``) lacks, as ``name@seed``."""
    runs = entry.get("runs", {})
    return [f"{name}@{seed}" for name, seed in expected_runs(seeds, methods, ns) if seed not in runs.get(name, {})]


def head_to_head(entry: dict, ppo: dict | None = None):
    """The comparison table: one row per method (PPO from ``ppo``, default ``entry["ppo"]`` — the copy made with the
    sweep; pass ``ppo_rows()`` for ``ppo_seeds.json``'s current numbers — then DPO, RLOO, GRPO, best-of-N at each
    N), with the gold win rate over SFT as mean/min/max over the seeds, each seed's bootstrap 95% interval, the KL to
    SFT (mean over seeds; ``kl`` says which KL), the training seconds (best-of-N: sampling and scoring), the whole
    run's seconds, the peak memory (MiB; CPU: the run's process's resident high-water mark) and the share of greedy
    replies that loop on one digit (``--loops``; trained methods only), means over seeds."""
    import pandas as pd

    rows = []

    def row(name, runs, kl_key, kl_kind):
        wins = [r["win_rate_vs_sft"] for r in runs.values()]
        cis = "; ".join(f"{r['ci_low']:.2f}-{r['ci_high']:.2f}" for r in runs.values() if "ci_low" in r)
        def mean(key):
            values = [r[key] for r in runs.values() if key in r]
            return statistics.fmean(values) if len(values) == len(runs) else float("nan")

        rows.append({"method": name, "seeds": ",".join(runs), "win_rate_mean": statistics.fmean(wins),
                     "win_rate_min": min(wins), "win_rate_max": max(wins), "per_seed_95ci": cis or "not stored",
                     "kl_to_sft": mean(kl_key), "kl": kl_kind, "train_seconds": mean("train_seconds"),
                     "run_seconds": mean("seconds"), "peak_memory_mb": mean("peak_memory_mb"),
                     "greedy_loops": mean("greedy_loop_fraction")})

    ppo = entry.get("ppo", {}) if ppo is None else ppo
    if ppo.get("runs"):
        row("ppo", ppo["runs"], "kl_end", "kl_end (training rollouts)")
    runs = entry.get("runs", {})
    for name in ("dpo", "rloo", "grpo"):
        if runs.get(name):
            row(name, runs[name], "kl_to_sft", "sampled, held-out prompts")
    for name in sorted((k for k in runs if k.startswith("best-of-")), key=lambda k: int(k.rsplit("-", 1)[1])):
        row(name, runs[name], "kl_to_sft", "analytic log N - (N-1)/N")
    return pd.DataFrame(rows).set_index("method")


# --------------------------------------------------------------------------- one run (a child process)


def one_run(preset: str, method: str, seed: int, n: int | None, out_json: Path) -> None:
    """One method at one seed, in this process; its record written to ``out_json``."""
    from rlhf_helpers.config import fast_cpu_math, select_preset

    # First, before any tensor work, exactly as ppo_seeds.py (and the CLI, and the notebooks' CONFIG cell) do:
    # an SFT/RM built without flush-to-zero would be another policy, so the runs would not describe the course's.
    fast_cpu_math()
    select_preset(preset)
    from rlhf_helpers.beyond_ppo_stage import run_best_of_n_stage, run_dpo_stage, run_online_stage
    from rlhf_helpers.evaluation import pairwise_win_rate

    folder = artifacts_dir() / "beyond_ppo_seeds" / run_name(method, n) / f"seed_{seed}"
    t0 = time.perf_counter()
    if method == "dpo":
        from rlhf_helpers.dpo import dpo_defaults

        out = run_dpo_stage(preset, dpo_defaults(preset, seed=seed), out_dir=folder, progress=False)
    elif method in ("rloo", "grpo"):
        from rlhf_helpers.online_rl import online_defaults

        out = run_online_stage(method, preset, online_defaults(method, preset, seed=seed), out_dir=folder,
                               progress=False)
    elif method == "best-of-n":
        out = run_best_of_n_stage(preset, n=n, out_dir=folder, progress=False, seed=seed)
    else:
        raise SystemExit(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    m = out.metrics
    ci = pairwise_win_rate(list(out.verdicts["verdict"]))  # bootstrap over the eval prompts, the course seed
    assert abs(ci.rate - m["win_rate_vs_sft"]) < 1e-12, (ci.rate, m["win_rate_vs_sft"])
    record = {k: m[k] for k in KEYS} | {k: m[k] for k in EXTRA if k in m}
    record |= {"ci_low": ci.ci_low, "ci_high": ci.ci_high, "ci_level": ci.level,
               "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out_json, record)


# --------------------------------------------------------------------------- greedy loops (after the sweep)

#: A greedy reply stuck repeating one digit (16 or more in a row): the tiny policies' typical failure, an order number
#: that never ends ("order #1111111111111111..."), so the reply never reaches its next step.
LOOP = re.compile(r"(\d)\1{15,}")


def loop_fraction(replies: list[str]) -> float:
    return sum(bool(LOOP.search(r)) for r in replies) / max(len(replies), 1)


def add_greedy_loops(preset: str, out: Path) -> dict:
    """``--loops``: for every trained run of the stored sweep (DPO, RLOO, GRPO: their saved final adapters), the
    share of its greedy replies to the 250 eval prompts that loop (``LOOP``), as ``greedy_loop_fraction``, and the
    SFT policy's as ``sft_greedy_loop_fraction`` — the replies the gold judge compared. Read from the adapters the
    sweep saved under ``<artifacts>/beyond_ppo_seeds``; the runs' other numbers are not touched."""
    from rlhf_helpers.config import fast_cpu_math, select_preset

    fast_cpu_math()
    select_preset(preset)
    from transformers import AutoTokenizer

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.dpo import dpo_defaults
    from rlhf_helpers.generation import DecodeSettings, generate_responses
    from rlhf_helpers.online_rl import online_defaults
    from rlhf_helpers.ppo import load_policy_and_reference
    from rlhf_helpers.ppo_stage import ensure_prerequisites
    from rlhf_helpers.presets import get_preset

    results = json.loads(out.read_text())
    entry = results["defaults"]
    prompts = list(load_split("eval")["prompt"])
    max_source = get_preset(preset).max_source_length
    sft_dir, _ = ensure_prerequisites(preset, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)

    def greedy(adapter_dir: Path, adapter: str, max_new_tokens: int) -> list[str]:
        model = load_policy_and_reference(adapter_dir, preset)
        model.set_adapter(adapter)
        return generate_responses(model, tokenizer, prompts, DecodeSettings(max_new_tokens=max_new_tokens),
                                  max_source_length=max_source)

    tokens = {"dpo": dpo_defaults(preset).kl_max_new_tokens}  # as the stages' greedy replies
    tokens |= {m: online_defaults(m, preset).max_new_tokens for m in ("rloo", "grpo")}
    entry["sft_greedy_loop_fraction"] = loop_fraction(greedy(sft_dir, "reference", tokens["dpo"]))
    for method in ("dpo", "rloo", "grpo"):
        for seed, record in entry["runs"].get(method, {}).items():
            final = artifacts_dir() / "beyond_ppo_seeds" / method / f"seed_{seed}" / "final" / "policy"
            record["greedy_loop_fraction"] = loop_fraction(greedy(final, "policy", tokens[method]))
            print(f"{method} seed {seed}: {record['greedy_loop_fraction']:.3f} of greedy replies loop "
                  f"(SFT {entry['sft_greedy_loop_fraction']:.3f})", flush=True)
    atomic_write_json(out, results)
    return entry


# --------------------------------------------------------------------------- the sweep


def merge(out: Path, preset: str, name: str, seed: int, record: dict, seeds: list[int], ns: list[int],
          digest: str, shared: str) -> dict:
    results = json.loads(out.read_text()) if out.exists() else {}
    entry = results.get("defaults", {})
    if entry.get("code_sha256") != digest or entry.get("preset") != preset:
        entry = {}  # runs of other code or another preset are not mixed with these
    runs = entry.get("runs", {})
    runs.setdefault(name, {})[str(seed)] = record
    runs = {k: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for k, v in runs.items()}
    results["defaults"] = {
        "preset": preset,
        "seeds": sorted(set(entry.get("seeds", [])) | set(seeds)),
        "ns": sorted(set(entry.get("ns", [])) | set(ns)),
        "kl_measure": KL_MEASURE,
        "runs": runs,
        "summary": {k: summarise(v) for k, v in runs.items()},
        "code_sha256": digest,
        "shared_code_sha256": shared,
        "ppo": ppo_rows(),
    }
    atomic_write_json(out, results)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="best-of-N's N values")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "beyond_ppo_seeds.json"))
    ap.add_argument("--loops", action="store_true", help="after a sweep: add each trained run's greedy-loop share")
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "SEED", "N", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        method, seed, n, out_json = args.one
        one_run(args.preset, method, int(seed), int(n) if n != "-" else None, Path(out_json))
        return
    if args.loops:
        add_greedy_loops(args.preset, Path(args.out))
        return
    from rlhf_helpers.config import select_preset

    select_preset(args.preset)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    ns = [int(n) for n in args.ns.split(",")]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; one of {', '.join(METHODS)}")
    digest, shared = code_digest(), shared_code_digest()  # of the code that runs, read before it runs
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seeds outermost: an interrupted sweep has every method at the seeds it finished
            for method in methods:
                for n in ns if method == "best-of-n" else [None]:
                    name = run_name(method, n)
                    record_file = Path(tmp) / f"{name}_{seed}.json"
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--preset", args.preset,
                           "--one", method, str(seed), str(n) if n else "-", str(record_file)]
                    subprocess.run(cmd, check=True)
                    if code_digest() != digest:
                        raise SystemExit("the beyond-PPO code changed during the sweep: rerun it")
                    record = json.loads(record_file.read_text())
                    merge(out, args.preset, name, seed, record, seeds, ns, digest, shared)
                    print(f"{name} seed {seed}: gold win rate {record['win_rate_vs_sft']:.3f} "
                          f"[{record['ci_low']:.3f}, {record['ci_high']:.3f}], KL {record['kl_to_sft']:.3f}, "
                          f"train {record['train_seconds']} s, peak {record['peak_memory_mb']:.0f} MiB, "
                          f"run {record['seconds']} s", flush=True)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
