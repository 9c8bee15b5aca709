"""Benchmark: seconds per step and training memory of our DPO, RLOO and GRPO trainers vs trl 1.x's.

    python benchmarks/beyond_ppo_step.py [--shapes tiny-causal,smollm2-135m-shape] [--methods dpo,rloo,grpo]

Ours: ``rlhf_helpers.dpo.DPOTrainer`` and ``rlhf_helpers.online_rl.RLOOTrainer`` / ``GRPOTrainer`` on a peft model with
two adapters (``policy`` trainable, ``reference`` frozen, ``ppo.load_policy_and_reference``). trl: the installed trl
(1.16 in the course's venv) ``DPOTrainer``, ``RLOOTrainer``, ``GRPOTrainer`` given a ``PeftModel`` with the same saved
adapter (trl then copies it into a frozen ``ref`` adapter: the same reference as ours, one more LoRA forward each).
Both run in the main venv (trl 1.x and ours share it; ours never imports trl).

Identical settings on both sides (see ``SETTINGS`` and benchmarks/README.md, "Beyond PPO"):

* the same random-init ``LlamaForCausalLM`` (the tiny-causal preset's config, or SmolLM2-135M's), its synthetic
  tokenizer and the same LoRA adapter (r=8, alpha 16, q_proj + v_proj, B != 0), prepared by ``ppo_step.py``'s
  ``worker_prep_causal``; 12-token prompts (words + the reply cue ``" Reply:"`` that ``policy.prompt_text`` adds);
* DPO: ``DPO_PAIRS[shape]`` pairs per optimizer step, every chosen and rejected reply 15 words + EOS = 16 tokens (the
  prep step checks that both sides get exactly the same token ids, no padding), beta 0.1, sigmoid loss; one "step" is
  one optimizer step;
* RLOO / GRPO: 2 prompts x k = 4 replies = 8 replies per generation, exactly 16 new tokens (``min_new_tokens =
  max_new_tokens``: EOS cannot be sampled, so every reply has the same length on both sides), temperature 1, no
  top-k / top-p, mini-batches of 4 replies, 2 passes over the batch (ours ``ppo_epochs=2``, trl ``num_iterations=2``,
  ``steps_per_generation=2``): 4 optimizer steps per generation on both sides, and both compute the old and the
  reference log-probs (RLOO beta 0.05, GRPO beta 0.04, epsilon 0.2, GRPO loss "dapo", scale_rewards "group"); one
  "step" is one generation batch (ours ``trainer.step()``, trl 4 optimizer steps, timed from its callbacks);
* the same cheap reward, a deterministic function of the reply text (character codes mod 97 / 97): no reward model;
* AdamW (lr 1e-4, eps 1e-5, no weight decay), constant learning rate, gradient clipping 1.0, fp32 (trl's ``bf16``
  default is True, set False), no gradient checkpointing (trl 1.x's default is True, set False; ours has none),
  dropout off, 1 torch thread, flush-denormal on for both.

Method (as ``ppo_step.py``): every configuration runs in a fresh subprocess, ours / trl alternate and the order is
reversed every other round, warm-up steps are excluded, medians over the measured steps. Memory: the worker's peak
RSS (VmHWM, reset after the trainer is built and every weight touched) and its increase over the RSS at that point
("training memory"). Per phase: ours' ``rollout`` (sampling loop + decode + reward + reference log-probs) and
the sampling loop inside it (``sampling.sample_replies``, reported as "generate": it also returns the old
log-probs), DPO's ``sequence_logprobs`` (reference + policy forward); trl's ``_generate_and_score_completions`` and
``_generate_single_turn``, DPO's ``compute_loss``; "update" = the rest.

The file is also the worker: ``--worker prep|ours|trl`` (internal).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_step as ps  # noqa: E402  (stdlib-only at import; the model / tokenizer / prompt preparation)

REPO = Path(__file__).resolve().parent.parent
SHAPES = ("tiny-causal", "smollm2-135m-shape")
METHODS = ("dpo", "rloo", "grpo")
SEED, LR, LORA_R, PROMPT_TOKENS = 0, 1e-4, 8, 12
REPLY_WORDS = 15  # + EOS = 16 reply tokens in DPO
NEW_TOKENS, K, GEN_BATCH, MINI_BATCH, EPOCHS = 16, 4, 8, 4, 2
DPO_PAIRS = {"tiny-causal": 8, "smollm2-135m-shape": 4}
DPO_BETA, RLOO_BETA, GRPO_BETA, EPSILON = 0.1, 0.05, 0.04, 0.2
N_PROMPTS = 64
#: optimizer steps per timed step: DPO 1; RLOO / GRPO one generation batch = (GEN_BATCH / MINI_BATCH) x EPOCHS
OPT_STEPS = {"dpo": 1, "rloo": GEN_BATCH // MINI_BATCH * EPOCHS, "grpo": GEN_BATCH // MINI_BATCH * EPOCHS}
#: (rounds, measured steps, warm-up steps) per shape: a SmolLM2-shaped step takes tens of CPU seconds
DEFAULT_RUNS = {"tiny-causal": (3, 5, 2), "smollm2-135m-shape": (2, 3, 1)}


def reward_of(text: str) -> float:
    """Cheap, deterministic, varies between replies (so GRPO / RLOO advantages are not all 0)."""
    return (sum(map(ord, text)) % 97) / 97.0


def settings_dict() -> dict:
    return dict(
        seed=SEED, learning_rate=LR, adam_eps=1e-5, weight_decay=0.0, lr_schedule="constant", max_grad_norm=1.0,
        lora=dict(r=LORA_R, alpha=16, dropout=0.0, targets=["q_proj", "v_proj"]), prompt_tokens=PROMPT_TOKENS,
        dpo=dict(pairs_per_step=DPO_PAIRS, reply_tokens=REPLY_WORDS + 1, beta=DPO_BETA, loss="sigmoid"),
        online=dict(replies_per_generation=GEN_BATCH, k=K, prompts_per_generation=GEN_BATCH // K,
                    new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, mini_batch=MINI_BATCH, epochs=EPOCHS,
                    optimizer_steps_per_generation=OPT_STEPS["grpo"], temperature=1.0, top_k=0, top_p=1.0,
                    rloo_beta=RLOO_BETA, grpo_beta=GRPO_BETA, epsilon=EPSILON, grpo_loss_type="dapo",
                    scale_rewards="group"),
        reward="(sum of character codes of the reply text mod 97) / 97",
        dtype="float32", gradient_checkpointing=False, dropout="off",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ worker: prep


def worker_prep(args) -> dict:
    """ppo_step's random Llama + adapter + tokenizer, then N_PROMPTS prompts and DPO pairs of fixed token lengths,
    checked to tokenise to the same ids on both sides."""
    import random

    from transformers import AutoTokenizer

    from rlhf_helpers.dpo import reply_token_ids
    from rlhf_helpers.policy import CausalPolicy, prompt_text

    meta = ps.worker_prep_causal(args)
    d = Path(args.shape_dir)
    tok = AutoTokenizer.from_pretrained(d / "tokenizer")
    prompts = [p["text"] for p in ps.make_prompts(tok, N_PROMPTS, PROMPT_TOKENS, SEED + 7, causal=True)]
    words = [
        piece[1:]
        for piece, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        if piece.startswith("\u2581") and piece[1:].isalnum() and tok(piece[1:]).input_ids == [idx]
    ]
    rng = random.Random(SEED + 11)
    reply = lambda: " ".join(rng.choice(words) for _ in range(REPLY_WORDS))  # noqa: E731
    pairs = [{"prompt": p, "chosen": reply(), "rejected": reply()} for p in prompts]
    # ours: CausalPolicy.tokenize(prompt_text(p)) + reply_token_ids(" " + reply) + EOS
    from transformers import AutoModelForCausalLM

    policy = CausalPolicy(AutoModelForCausalLM.from_pretrained(d / "base"), tok, max_source_length=PROMPT_TOKENS)
    for pair in pairs:
        ours_prompt = policy.tokenize([pair["prompt"]], "cpu").input_ids[0].tolist()
        full = prompt_text(tok, pair["prompt"])
        assert ours_prompt == tok(full).input_ids and len(ours_prompt) == PROMPT_TOKENS, ours_prompt
        for side in ("chosen", "rejected"):
            ours_reply = reply_token_ids(tok, [pair[side]], 64, causal=True)[0]
            # trl's DPO: tokenise prompt + completion + EOS text, the completion = what follows the prompt's ids
            trl_ids = tok(full + " " + pair[side] + tok.eos_token).input_ids
            assert trl_ids[:PROMPT_TOKENS] == ours_prompt and trl_ids[PROMPT_TOKENS:] == ours_reply, (side, pair)
            assert len(ours_reply) == REPLY_WORDS + 1
    (d / "pairs.json").write_text(json.dumps(pairs))
    (d / "online_prompts.json").write_text(json.dumps(prompts))
    meta["dpo_sequence_tokens"] = PROMPT_TOKENS + REPLY_WORDS + 1
    (d / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


# -------------------------------------------------------------------------------------------- timing helpers


class PhaseTimer:
    """Wraps bound methods; per phase name and step: [wall s, CPU s, the peak RSS so far (VmHWM) and the RSS at the
    phase's end, both in MB over the RSS after loading (``base``; the largest over the phase's calls)]."""

    def __init__(self):
        self.current: dict[str, list[float]] = {}
        self.base = None  # RSS after loading, MB: set once measured

    def wrap(self, obj, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        def timed(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                acc = self.current.setdefault(name, [0.0, 0.0, 0.0, 0.0])
                acc[0] += time.perf_counter() - t0
                acc[1] += time.process_time() - c0
                if self.base is not None:  # /proc/self/status: ~20 us
                    rss, hwm = ps.rss_mb()
                    acc[2], acc[3] = max(acc[2], hwm - self.base), max(acc[3], rss - self.base)

        setattr(obj, attr, timed)

    def take(self) -> dict[str, list[float]]:
        out, self.current = self.current, {}
        return out


#: phases that do not nest in one another (``generate`` runs inside ``rollout``); the step's remainder is "rest"
TOP_PHASES = ("rollout", "logprobs", "backward", "optimizer", "clip")


def time_common_phases(timer: PhaseTimer, torch) -> None:
    """The same calls on both sides, timed at the class level: ``Tensor.backward`` (ours calls it, directly or through
    accelerate; HF's Trainer through accelerate), ``AdamW.step`` (ours: torch's default AdamW; trl: HF's default
    ``adamw_torch_fused``, the same class with ``fused=True``) and ``clip_grad_norm_``."""
    timer.wrap(torch.Tensor, "backward", "backward")
    timer.wrap(torch.optim.AdamW, "step", "optimizer")
    timer.wrap(torch.nn.utils, "clip_grad_norm_", "clip")


def touch_and_measure(torch, module) -> tuple[float, float, bool]:
    """Touch every weight (safetensors are mapped lazily), collect garbage, then (RSS, load peak) and reset VmHWM."""
    import gc

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.sum()
    gc.collect()
    rss, hwm = ps.rss_mb()
    return rss, hwm, ps.reset_peak_rss()


def finish(args, times, cpu_times, phases, rss_loaded, hwm_load, peak_reset, torch) -> dict:
    rss_end, hwm = ps.rss_mb()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = hwm if peak_reset else maxrss
    w = args.warmup
    return {
        "times": times[w:], "cpu_times": cpu_times[w:], "warmup_times": times[:w], "phases": phases[w:],
        "warmup_phases": phases[:w],
        "rss_after_load_mb": rss_loaded, "peak_rss_mb": peak, "peak_increase_mb": peak - rss_loaded,
        "load_peak_rss_mb": hwm_load, "ru_maxrss_mb": maxrss, "peak_reset": peak_reset, "rss_end_mb": rss_end,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ worker: ours


def worker_ours(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from rlhf_helpers.ppo import load_policy_and_reference

    d = Path(args.shape_dir)
    tok = AutoTokenizer.from_pretrained(d / "tokenizer")
    model = load_policy_and_reference(str(d / "adapter"), str(d / "base"))
    total = args.warmup + args.steps
    timer = PhaseTimer()
    time_common_phases(timer, torch)
    if args.method == "dpo":
        from rlhf_helpers.dpo import DPOConfig, DPOTrainer

        pairs = json.loads((d / "pairs.json").read_text())
        cfg = DPOConfig(steps=total, batch_size=DPO_PAIRS[args.shape], learning_rate=LR, beta=DPO_BETA,
                        loss_type="sigmoid", max_grad_norm=1.0, max_target_length=64, seed=SEED)  # fmt: skip
        trainer = DPOTrainer(model, tok, pairs, cfg, max_source_length=PROMPT_TOKENS)
        timer.wrap(trainer, "sequence_logprobs", "logprobs")
    else:
        from rlhf_helpers.online_rl import TRAINERS, OnlineRLConfig

        prompts = json.loads((d / "online_prompts.json").read_text())
        cfg = OnlineRLConfig(
            steps=total, batch_size=GEN_BATCH, mini_batch_size=MINI_BATCH, ppo_epochs=EPOCHS, k=K, learning_rate=LR,
            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0,
            beta=RLOO_BETA if args.method == "rloo" else GRPO_BETA, epsilon_low=EPSILON, max_grad_norm=1.0,
            missing_eos_penalty=0.0, normalize_scores=False, checkpoint_every=0, seed=SEED,
        )  # fmt: skip
        reward_fn = lambda ps_, replies: [reward_of(r) for r in replies]  # noqa: E731
        trainer = TRAINERS[args.method](model, tok, reward_fn, prompts, cfg, max_source_length=PROMPT_TOKENS)
        timer.wrap(trainer, "rollout", "rollout")
        import rlhf_helpers.ppo as ppo_module  # the rollout's sampling loop (tokens, log-probs, values at once)

        timer.wrap(ppo_module, "sample_replies", "generate")
    rss_loaded, hwm_load, peak_reset = touch_and_measure(torch, model)
    timer.base = rss_loaded
    times, cpu_times, phases, last = [], [], [], {}
    for _ in range(total):
        t0, c0 = time.perf_counter(), time.process_time()
        last = trainer.step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        phases.append(timer.take())
    out = finish(args, times, cpu_times, phases, rss_loaded, hwm_load, peak_reset, torch)
    out["last_step_stats"] = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    return out


# ------------------------------------------------------------------------------------------------- worker: trl


def worker_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_flush_denormal(True)  # as ours (rlhf_helpers.config.fast_cpu_math)
    d = Path(args.shape_dir)
    tok = AutoTokenizer.from_pretrained(d / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(d / "base")
    model = PeftModel.from_pretrained(base, str(d / "adapter"), is_trainable=True)
    g = OPT_STEPS[args.method]
    total = args.warmup + args.steps
    common = dict(
        output_dir=str(Path(args.shape_dir) / f"trl_out_{args.method}"), report_to=[], use_cpu=True, bf16=False,
        save_strategy="no", gradient_checkpointing=False, learning_rate=LR, lr_scheduler_type="constant",
        warmup_steps=0, adam_epsilon=1e-5, weight_decay=0.0, max_grad_norm=1.0, gradient_accumulation_steps=1,
        max_steps=total * g, seed=SEED, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    timer = PhaseTimer()
    time_common_phases(timer, torch)
    if args.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        from rlhf_helpers.policy import prompt_text

        # trl gets the texts that ours turns into the same ids (checked in prep): the prompt with the reply cue,
        # " " + reply (ours adds the space itself), trl appends the EOS text
        pairs = [{"prompt": prompt_text(tok, p["prompt"]), "chosen": " " + p["chosen"], "rejected": " " + p["rejected"]}
                 for p in json.loads((d / "pairs.json").read_text())]  # fmt: skip
        config = DPOConfig(per_device_train_batch_size=DPO_PAIRS[args.shape], beta=DPO_BETA, loss_type=["sigmoid"],
                           max_length=None, precompute_ref_log_probs=False, **common)  # fmt: skip
        trainer = DPOTrainer(model, ref_model=None, args=config, train_dataset=Dataset.from_list(pairs),
                             processing_class=tok)  # fmt: skip
        timer.wrap(trainer, "compute_loss", "logprobs")
    else:
        from rlhf_helpers.policy import prompt_text

        prompts = [prompt_text(tok, p) for p in json.loads((d / "online_prompts.json").read_text())]

        def reward_fn(prompts, completions, **kwargs):
            return [reward_of(c) for c in completions]

        online = dict(
            per_device_train_batch_size=MINI_BATCH, num_generations=K, steps_per_generation=GEN_BATCH // MINI_BATCH,
            num_iterations=EPOCHS, max_completion_length=NEW_TOKENS, generation_kwargs={"min_new_tokens": NEW_TOKENS},
            temperature=1.0, top_k=0, top_p=1.0, epsilon=EPSILON, log_completions=False, **common,
        )  # fmt: skip
        if args.method == "grpo":
            from trl import GRPOConfig as Config
            from trl import GRPOTrainer as Trainer

            config = Config(beta=GRPO_BETA, loss_type="dapo", scale_rewards="group", **online)
        else:
            from trl import RLOOConfig as Config
            from trl import RLOOTrainer as Trainer

            config = Config(beta=RLOO_BETA, normalize_advantages=False, **online)
        trainer = Trainer(model=model, reward_funcs=reward_fn, args=config,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok)  # fmt: skip
        timer.wrap(trainer, "_generate_and_score_completions", "rollout")
        timer.wrap(trainer, "_generate_single_turn", "generate")

    stamps: list[tuple[float, float]] = []
    step_phases: list[dict] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            stamps.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a, **kw):
            stamps.append((time.perf_counter(), time.process_time()))
            if (len(stamps) - 1) % g == 0:  # one generation batch (online) / one optimizer step (DPO) is done
                step_phases.append(timer.take())

    trainer.add_callback(Clock())
    rss_loaded, hwm_load, peak_reset = touch_and_measure(torch, trainer.model)
    timer.base = rss_loaded
    trainer.train()
    assert len(stamps) == total * g + 1, (len(stamps), total, g)
    cycle = stamps[::g]
    times = [b[0] - a[0] for a, b in zip(cycle, cycle[1:])]
    cpu_times = [b[1] - a[1] for a, b in zip(cycle, cycle[1:])]
    out = finish(args, times, cpu_times, step_phases, rss_loaded, hwm_load, peak_reset, torch)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    out["last_step_stats"] = {k: v for k, v in (logs[-1] if logs else {}).items() if isinstance(v, (int, float))}
    out["trl_version"] = trl.__version__
    out["ref_adapter"] = "ref" in model.peft_config
    return out


# ------------------------------------------------------------------------------------------------------ parent


def spawn(worker: str, method: str, shape: str, shape_dir: Path, tag: str, **extra) -> dict:
    result = shape_dir / f"{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--method", method, "--shape", shape,
           "--shape-dir", str(shape_dir), "--result", str(result)]  # fmt: skip
    out = ps.run_worker(cmd, extra, shape_dir / f"{tag}.log", result, tail_chars=4000, OMP_WAIT_POLICY="PASSIVE",
                        GOMP_SPINCOUNT="0", ACCELERATE_USE_CPU="1")
    out["load_average_after"] = os.getloadavg()
    return out


def summarise(runs: list[dict]) -> dict:
    med = statistics.median
    times = [t for r in runs for t in r["times"]]
    s = {
        "median_s": med(times), "median_cpu_s": med(t for r in runs for t in r["cpu_times"]),
        "min_s": min(times), "max_s": max(times), "n": len(times),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_increase_mb": max(r["peak_increase_mb"] for r in runs),
        "rss_after_load_mb": med(r["rss_after_load_mb"] for r in runs),
    }  # fmt: skip
    for r in runs:  # the step minus its timed top-level phases: the update's forward passes, the loss, bookkeeping
        for t, c, p in zip(r["times"], r["cpu_times"], r["phases"]):
            top = [p[k] for k in TOP_PHASES if k in p]
            p["rest"] = [t - sum(v[0] for v in top), c - sum(v[1] for v in top)]
    phases = [p for r in runs for p in r["phases"]]
    for name in sorted({k for p in phases for k in p}):
        s[f"median_{name}_s"] = med(p.get(name, [0.0, 0.0])[0] for p in phases)
        s[f"median_{name}_cpu_s"] = med(p.get(name, [0.0, 0.0])[1] for p in phases)
        if name != "rest":  # training memory reached by the end of this phase (peak so far, and the RSS then)
            s[f"median_{name}_peak_mb"] = med(p[name][2] for p in phases if name in p)
            s[f"median_{name}_rss_mb"] = med(p[name][3] for p in phases if name in p)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds per row (default: 3 tiny, 2 SmolLM2)")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per run (default: 5 tiny, 3 SmolLM2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (default: 2 tiny, 1 SmolLM2)")
    ap.add_argument("--out", default="benchmarks/beyond_ppo_step.json")
    ap.add_argument("--replace", action="store_true", help="overwrite --out instead of merging shapes into it")
    ap.add_argument("--workdir", default=None, help="keep models and worker logs here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    ap.add_argument("--worker", choices=["prep", "ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--shape-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        ps.serve_worker(args, {"prep": worker_prep, "ours": worker_ours, "trl": worker_trl})
        return

    import hashlib
    from importlib.metadata import version

    shapes = [s for s in args.shapes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="beyond_ppo_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    sha = lambda f: hashlib.sha256((REPO / "rlhf_helpers" / f).read_bytes()).hexdigest()[:16]  # noqa: E731
    report = {
        "settings": settings_dict(),
        "run": dict(
            date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            threads=args.threads,
            cpu_count=os.cpu_count(),
            load_average_start=os.getloadavg(),
            versions={p: version(p) for p in ("torch", "transformers", "peft", "accelerate", "datasets", "trl")},
            sha256={
                f: sha(f) for f in ("dpo.py", "dpo_math.py", "online_rl.py", "online_math.py", "ppo.py", "policy.py")
            },
        ),  # fmt: skip
        "shapes": {},
    }
    t_start = time.perf_counter()
    try:
        for shape in shapes:
            rounds, steps, warmup = DEFAULT_RUNS[shape]
            rounds = args.rounds or rounds
            steps = args.steps or steps
            warmup = warmup if args.warmup is None else args.warmup
            sdir = workdir / shape
            sdir.mkdir(exist_ok=True)
            print(f"[{shape}] preparing random model ...", flush=True)
            spawn("prep", "dpo", shape, sdir, "prep", threads=args.threads)
            meta = json.loads((sdir / "meta.json").read_text())
            entry = {
                "meta": meta,
                "rounds": rounds,
                "steps": steps,
                "warmup": warmup,
                "run": report["run"],
                "load_average_before": os.getloadavg(),
                "methods": {},
            }
            for method in methods:
                runs: dict[str, list[dict]] = {"ours": [], "trl": []}
                for rnd in range(rounds):
                    for side in ("ours", "trl") if rnd % 2 == 0 else ("trl", "ours"):
                        print(f"[{shape} {method}] round {rnd + 1}: {side} ...", end=" ", flush=True)
                        r = spawn(side, method, shape, sdir, f"{method}_{side}_r{rnd}", steps=steps, warmup=warmup,
                                  threads=args.threads)  # fmt: skip
                        runs[side].append(r)
                        print(f"median {statistics.median(r['times']):.3f} s/step (CPU "
                              f"{statistics.median(r['cpu_times']):.3f}), peak RSS {r['peak_rss_mb']:.0f} MB "
                              f"(+{r['peak_increase_mb']:.0f}) [{r['wall_s']:.0f} s, load "
                              f"{r['load_average_after'][0]:.1f}]", flush=True)  # fmt: skip
                summary = {side: summarise(rs) for side, rs in runs.items()}
                o, t = summary["ours"], summary["trl"]
                o["speedup_vs_trl"] = t["median_s"] / o["median_s"]
                o["cpu_speedup_vs_trl"] = t["median_cpu_s"] / o["median_cpu_s"]
                o["peak_rss_ratio_vs_trl"] = o["peak_rss_mb"] / t["peak_rss_mb"]
                o["peak_increase_ratio_vs_trl"] = o["peak_increase_mb"] / t["peak_increase_mb"]
                o["target_speed_met"] = o["speedup_vs_trl"] >= 1.0
                o["target_cpu_speed_met"] = o["cpu_speedup_vs_trl"] >= 1.0
                o["target_memory_met"] = o["peak_increase_ratio_vs_trl"] <= 0.8
                entry["methods"][method] = {"summary": summary, "runs": runs}
                report["shapes"][shape] = entry
            entry["load_average_after"] = os.getloadavg()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["run"]["load_average_end"] = os.getloadavg()
    report["run"]["total_wall_s"] = time.perf_counter() - t_start
    out = Path(args.out)
    if out.exists() and not args.replace:  # the shapes measured now replace theirs; the others are kept
        old = json.loads(out.read_text())
        report["shapes"] = {**{k: v for k, v in old.get("shapes", {}).items() if k not in report["shapes"]},
                            **report["shapes"]}  # fmt: skip
    out.write_text(json.dumps(report, indent=2))
    print()
    print(markdown_table(report))
    print(f"\nwritten {args.out} ({report['run']['total_wall_s']:.0f} s in all)")


def markdown_table(report: dict) -> str:
    lines = [
        "| shape | method | trl s/step (CPU s) | ours s/step (CPU s) | speed-up wall / CPU | training memory ours vs "
        "trl (peak − loaded MB) | ratio | peak RSS ours / trl MB | target (≥ 1× speed, ≤ 0.8× memory) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, entry in report["shapes"].items():
        for method, data in entry["methods"].items():
            o, t = data["summary"]["ours"], data["summary"]["trl"]
            speed = "met" if o["target_speed_met"] else "NOT met"
            mem = "met" if o["target_memory_met"] else "NOT met"
            lines.append(
                f"| {shape} | {method.upper()} | {t['median_s']:.3f} ({t['median_cpu_s']:.3f}) | "
                f"{o['median_s']:.3f} ({o['median_cpu_s']:.3f}) | {o['speedup_vs_trl']:.2f}× / "
                f"{o['cpu_speedup_vs_trl']:.2f}× | {o['peak_increase_mb']:.0f} vs {t['peak_increase_mb']:.0f} | "
                f"{o['peak_increase_ratio_vs_trl']:.2f} | {o['peak_rss_mb']:.0f} / {t['peak_rss_mb']:.0f} | "
                f"speed {speed}, memory {mem} |"
            )
    lines += ["", "Per phase (median wall s per step; CPU s in brackets):", "",
              "| shape | method | side | phase | wall s | CPU s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for shape, entry in report["shapes"].items():
        for method, data in entry["methods"].items():
            for side, s in data["summary"].items():
                keys = [k for k in s if k.startswith("median_") and k.endswith("_cpu_s") and k != "median_cpu_s"]
                for key in sorted(keys):
                    name = key[len("median_") : -len("_cpu_s")]
                    lines.append(f"| {shape} | {method.upper()} | {side} | {name} | {s[f'median_{name}_s']:.3f} | "
                                 f"{s[key]:.3f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
