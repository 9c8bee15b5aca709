"""Stage wiring for the methods beyond PPO (issue 20): DPO (and IPO), RLOO, GRPO and best-of-N, each on PPO's
prerequisites (the SFT adapter and the reward model, trained with defaults if missing) and judged as PPO is: greedy
replies on the held-out eval prompts against the SFT policy's, by the gold judge of notebook 04.

Every method records the same numbers, so notebook 08 can put them in one table: ``win_rate_vs_sft`` (with wins,
ties, losses), ``kl_to_sft`` (nats per reply, measured the same way for every trained method: replies sampled at
temperature 1 on held-out prompts, summed k1 against the SFT adapter — ``dpo.sampled_kl``; best-of-N's is the
analytic log N - (N-1)/N), ``train_seconds`` and ``peak_memory_mb``.

``peak_memory_mb``: on a GPU, torch's peak allocated memory during training (reset at its start); on a CPU, the
process's resident high-water mark (``ru_maxrss``), which includes everything the process loaded before — compare
CPU numbers only between runs started the same way (one CLI command each).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhf_helpers.config import artifacts_dir
from rlhf_helpers.generation import DecodeSettings, generate_responses

#: The held-out prompts the final KL to SFT is sampled on (the first ones of the eval split).
KL_PROMPTS = 64


@dataclass
class StageOutput:
    metrics: dict
    trainer: object
    eval_prompts: list[str]
    sft_replies: list[str]
    replies: list[str]
    verdicts: object


def default_dir(method: str) -> Path:
    return artifacts_dir() / method.replace("-", "_")


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float:
    """Peak memory in MiB: CUDA's peak allocation, else the process's peak resident set (module docstring)."""
    import resource

    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _setup(preset: str, progress: bool):
    """SFT adapter (policy + frozen reference on one base), its tokenizer, the reward model folder, eval prompts."""
    from transformers import AutoTokenizer

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.ppo import load_policy_and_reference
    from rlhf_helpers.ppo_stage import ensure_prerequisites
    from rlhf_helpers.presets import model_path

    sft_dir, reward_dir = ensure_prerequisites(preset, progress)
    model_path(preset)  # builds a tiny base, or fails fast for an unreachable hub preset
    prompts = list(load_split("eval")["prompt"])
    model = load_policy_and_reference(sft_dir, preset)
    return model, AutoTokenizer.from_pretrained(sft_dir), reward_dir, prompts


def _greedy(model, tokenizer, prompts: list[str], adapter: str, max_new_tokens: int, max_source: int) -> list[str]:
    """Greedy replies of one adapter (``policy`` = the trained one, ``reference`` = SFT); leaves ``policy`` active."""
    model.set_adapter(adapter)
    try:
        return generate_responses(
            model, tokenizer, prompts, DecodeSettings(max_new_tokens=max_new_tokens), max_source_length=max_source
        )
    finally:
        model.set_adapter("policy")


def _judge_and_record(method: str, prompts, replies, sft_replies, reward_model, extra: dict, out_dir: Path):
    from rlhf_helpers.judger import gold_judge, win_rate
    from rlhf_helpers.report import record_metrics

    wins = win_rate(prompts, replies, sft_replies, gold_judge())
    metrics = {
        "method": method,
        "win_rate_vs_sft": wins.rate,
        "wins": wins.wins,
        "losses": wins.losses,
        "ties": wins.ties,
        "n_eval": wins.n,
        **extra,
    }
    if reward_model is not None:
        metrics["rm_score_sft_eval"] = _mean(reward_model.score(prompts, sft_replies))
        metrics["rm_score_eval"] = _mean(reward_model.score(prompts, replies))
    record_metrics(method.replace("-", "_"), metrics, out_dir=out_dir)
    return metrics, wins.verdicts


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _window_mean(history: list[dict], key: str, last: bool) -> float:
    window = max(len(history) // 10, 1)
    part = history[-window:] if last else history[:window]
    return _mean(h[key] for h in part)


# --------------------------------------------------------------------------- DPO


def run_dpo_stage(preset: str = "tiny", cfg=None, out_dir: str | Path | None = None, progress: bool = True):
    """What ``python -m rlhf_helpers dpo`` does: DPO (or IPO: ``cfg.loss_type="ipo"``) on the preference split."""
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.dpo import DPOTrainer, dpo_defaults
    from rlhf_helpers.presets import get_preset
    from rlhf_helpers.reward import load_reward_model

    cfg = cfg or dpo_defaults(preset)
    out_dir = Path(out_dir or default_dir("dpo"))
    model, tokenizer, reward_dir, prompts = _setup(preset, progress)
    max_source = get_preset(preset).max_source_length
    trainer = DPOTrainer(model, tokenizer, load_split("pref_train"), cfg, max_source_length=max_source)
    _reset_peak_memory()
    start = time.perf_counter()
    trainer.train(progress=progress)
    seconds = time.perf_counter() - start
    peak = peak_memory_mb()  # of training (sampling and scoring for best-of-N), before evaluation loads the judge
    model.save_pretrained(out_dir / "final", selected_adapters=["policy"])
    kl = trainer.kl_to_reference(prompts[:KL_PROMPTS])
    sft_replies = _greedy(model, tokenizer, prompts, "reference", cfg.kl_max_new_tokens, max_source)
    replies = _greedy(model, tokenizer, prompts, "policy", cfg.kl_max_new_tokens, max_source)
    h = trainer.history
    extra = {
        "steps": len(h),
        "kl_to_sft": kl,
        "loss_start": _window_mean(h, "loss", last=False),
        "loss_end": _window_mean(h, "loss", last=True),
        "margin_end": _window_mean(h, "rewards/margins", last=True),
        "accuracy_end": _window_mean(h, "rewards/accuracies", last=True),
        "logps_chosen_end": _window_mean(h, "logps/chosen", last=True),
        "logps_rejected_end": _window_mean(h, "logps/rejected", last=True),
        "train_seconds": round(seconds, 1),
        "peak_memory_mb": peak,
        "seconds_per_step": _mean(r["seconds"] for r in h),
        "config": asdict(cfg),
    }
    metrics, verdicts = _judge_and_record(
        "dpo", prompts, replies, sft_replies, load_reward_model(reward_dir), extra, out_dir
    )
    (out_dir / "history.json").write_text(json.dumps(h))
    return StageOutput(metrics, trainer, prompts, sft_replies, replies, verdicts)


# --------------------------------------------------------------------------- RLOO, GRPO


def run_online_stage(
    method: str, preset: str = "tiny", cfg=None, out_dir: str | Path | None = None, progress: bool = True
):
    """What ``python -m rlhf_helpers rloo|grpo`` does: the critic-free method on PPO's prompts and reward model."""
    from rlhf_helpers.dpo import sampled_kl
    from rlhf_helpers.online_rl import TRAINERS, online_defaults
    from rlhf_helpers.ppo_stage import train_prompts
    from rlhf_helpers.presets import get_preset
    from rlhf_helpers.reward import load_reward_model

    cfg = cfg or online_defaults(method, preset)
    out_dir = Path(out_dir or default_dir(method))
    model, tokenizer, reward_dir, prompts = _setup(preset, progress)
    reward_model = load_reward_model(reward_dir)
    max_source = get_preset(preset).max_source_length
    trainer = TRAINERS[method](model, tokenizer, reward_model.score, train_prompts(), cfg, max_source_length=max_source)
    _reset_peak_memory()
    start = time.perf_counter()
    trainer.train(checkpoint_dir=out_dir / "checkpoints", progress=progress)
    seconds = time.perf_counter() - start
    peak = peak_memory_mb()  # of training (sampling and scoring for best-of-N), before evaluation loads the judge
    trainer.save_checkpoint(out_dir / "final")
    kl = sampled_kl(
        trainer.policy, trainer._use_adapter, prompts[:KL_PROMPTS], cfg.max_new_tokens, seed=cfg.seed,
        train_encoder=trainer.train_encoder,
    )
    sft_replies = _greedy(model, tokenizer, prompts, "reference", cfg.max_new_tokens, max_source)
    replies = _greedy(model, tokenizer, prompts, "policy", cfg.max_new_tokens, max_source)
    h = trainer.history
    extra = {
        "steps": len(h),
        "kl_to_sft": kl,
        "kl_end": _window_mean(h, "kl", last=True),  # on the training prompts' samples, as PPO's kl_end
        "reward_start": _window_mean(h, "reward", last=False),
        "reward_end": _window_mean(h, "reward", last=True),
        "train_seconds": round(seconds, 1),
        "peak_memory_mb": peak,
        "seconds_per_step": _mean(r["seconds"] for r in h),
        "skipped_batches": trainer.skipped_batches,
        "config": asdict(cfg),
    }
    metrics, verdicts = _judge_and_record(method, prompts, replies, sft_replies, reward_model, extra, out_dir)
    (out_dir / "history.json").write_text(json.dumps(h))
    return StageOutput(metrics, trainer, prompts, sft_replies, replies, verdicts)


# --------------------------------------------------------------------------- best-of-N


def run_best_of_n_stage(
    preset: str = "tiny",
    n: int = 4,
    out_dir: str | Path | None = None,
    progress: bool = True,
    max_new_tokens: int | None = None,
    seed: int | None = None,
):
    """What ``python -m rlhf_helpers best-of-n`` does: N samples per eval prompt from SFT, the reward model's
    favourite kept, judged against SFT's greedy reply. ``train_seconds`` is the sampling and scoring time
    (best-of-N trains nothing: it pays at inference time, N samples and N reward-model calls per prompt)."""
    from rlhf_helpers.best_of_n import best_of_n
    from rlhf_helpers.config import course_seed
    from rlhf_helpers.ppo_stage import ppo_defaults
    from rlhf_helpers.presets import get_preset
    from rlhf_helpers.reward import load_reward_model

    ppo = ppo_defaults(preset)
    max_new_tokens = max_new_tokens or ppo.max_new_tokens
    seed = course_seed() if seed is None else seed
    out_dir = Path(out_dir or default_dir("best-of-n"))
    model, tokenizer, reward_dir, prompts = _setup(preset, progress)
    reward_model = load_reward_model(reward_dir)
    max_source = get_preset(preset).max_source_length
    model.set_adapter("reference")  # the frozen SFT adapter: best-of-N samples from pi_SFT itself
    _reset_peak_memory()
    start = time.perf_counter()
    result = best_of_n(
        model, tokenizer, reward_model.score, prompts, n, max_new_tokens=max_new_tokens,
        temperature=ppo.temperature, missing_eos_penalty=ppo.missing_eos_penalty, seed=seed,
        max_source_length=max_source,
    )
    seconds = time.perf_counter() - start
    peak = peak_memory_mb()  # of training (sampling and scoring for best-of-N), before evaluation loads the judge
    sft_replies = _greedy(model, tokenizer, prompts, "reference", max_new_tokens, max_source)
    extra = {
        "n": n,
        "kl_to_sft": result.kl,  # analytic, log N - (N - 1) / N
        "rm_score_best": _mean(result.scores),
        "rm_score_samples": _mean(s for row in result.all_scores for s in row),
        "train_seconds": round(seconds, 1),
        "peak_memory_mb": peak,
        "config": {"n": n, "max_new_tokens": max_new_tokens, "temperature": ppo.temperature,
                   "missing_eos_penalty": ppo.missing_eos_penalty, "seed": seed},
    }
    metrics, verdicts = _judge_and_record("best-of-n", prompts, result.replies, sft_replies, reward_model, extra,
                                          out_dir)
    return StageOutput(metrics, result, prompts, sft_replies, result.replies, verdicts)
