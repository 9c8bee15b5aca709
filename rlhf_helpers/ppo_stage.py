"""Stage 5 wiring: load the SFT adapter and the reward model, run :mod:`rlhf_helpers.ppo`,
evaluate the result with the gold judger, plot, save. Kept apart from ``ppo.py`` so that the
algorithm reads top to bottom without the plumbing."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rlhf_helpers.config import artifacts_dir
from rlhf_helpers.distributed import main_process_first, num_processes, on_main_process
from rlhf_helpers.generation import DecodeSettings, generate_responses
from rlhf_helpers.ppo import PPOConfig, PPOTrainer, default_config, load_policy_and_reference

#: The bound we enforce on the final mean KL(pi || pi_SFT) per reply, in nats (see ppo_defaults).
KL_BOUND = 12.0


def ppo_defaults(preset: str = "tiny", **overrides) -> PPOConfig:
    """Defaults per preset. The adaptive controller aims at ``kl_target`` nats per reply; the stage
    checks the final KL stays under :data:`KL_BOUND`."""
    from rlhf_helpers.config import device_name
    from rlhf_helpers.presets import get_preset

    cfg = default_config()
    if get_preset(preset).hub_name is not None:  # real pretrained weights: gentle steps
        cfg = replace(cfg, learning_rate=1.4e-5, batch_size=64, mini_batch_size=16, max_new_tokens=128, steps=200)
        if device_name() == "cpu":
            # A CPU demonstration that finishes in minutes (a SmolLM2-135M PPO step of 8 replies takes tens of
            # seconds on 2 cores); the settings above are for a GPU.
            cfg = replace(cfg, batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=32, steps=4,
                          checkpoint_every=0)
    return replace(cfg, **overrides)


def train_prompts() -> list[str]:
    """The prompts PPO samples from: every distinct training prompt of SFT and of the preference pairs
    (the held-out eval prompts are never trained on)."""
    from rlhf_helpers.data_prep import load_split

    return list(dict.fromkeys(list(load_split("sft_train")["prompt"]) + list(load_split("pref_train")["prompt"])))


def default_ppo_dir() -> Path:
    return artifacts_dir() / "ppo"


def ensure_prerequisites(preset: str, progress: bool = True) -> tuple[Path, Path]:
    """Paths of the SFT adapter and the reward model, training them with defaults if missing
    (so this notebook also runs on its own): the reward model notebook 03 would train for this data folder (the
    preset's own on the course data, the frozen MiniLM head on yours, ``reward.default_reward_backbone``)."""
    from rlhf_helpers.reward import default_reward_backbone, default_reward_dir, reward_defaults, run_reward_stage
    from rlhf_helpers.sft import default_sft_dir, run_sft_stage, sft_defaults

    sft_dir = default_sft_dir() / "adapter"
    if not (sft_dir / "sft_config.json").exists():
        run_sft_stage(sft_defaults(preset), progress=progress)
    reward_dir = default_reward_dir()
    if not (reward_dir / "reward_config.json").exists():
        run_reward_stage(reward_defaults(default_reward_backbone(preset)), progress=progress)
    return sft_dir, reward_dir


def greedy_replies(trainer: PPOTrainer, prompts: list[str], adapter: str, max_new_tokens: int) -> list[str]:
    """Greedy replies of one adapter (``policy`` = PPO, ``reference`` = SFT) of the shared model."""
    trainer.model.set_adapter(adapter)
    try:
        return generate_responses(
            trainer.model,
            trainer.tokenizer,
            prompts,
            DecodeSettings(max_new_tokens=max_new_tokens),
            max_source_length=trainer.max_source_length,
        )
    finally:
        trainer._use_adapter("policy")


@dataclass
class PPOStageOutput:
    metrics: dict
    trainer: PPOTrainer
    eval_prompts: list[str]
    sft_replies: list[str]
    ppo_replies: list[str]
    verdicts: object


def run_ppo_stage(
    preset: str = "tiny",
    cfg: PPOConfig | None = None,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    progress: bool = True,
) -> PPOStageOutput:
    """What notebook 05 and ``python -m rlhf_helpers ppo`` do; metrics are recorded as stage ``ppo``."""
    from transformers import AutoTokenizer

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.judger import gold_judge, win_rate
    from rlhf_helpers.presets import get_preset, model_path
    from rlhf_helpers.report import record_metrics
    from rlhf_helpers.reward import load_reward_model

    cfg = cfg or ppo_defaults(preset)
    out_dir = Path(out_dir or default_ppo_dir())
    sft_dir, reward_dir = ensure_prerequisites(preset, progress)
    # Under `accelerate launch` (see rlhf_helpers.distributed) every process trains; the main process alone
    # builds the tiny base and writes the splits (first), then saves, evaluates and records (once).
    with main_process_first():
        model_path(preset)  # builds a tiny base (main process first), or fails fast for an unreachable hub preset
        prompts_for_training = train_prompts()
        prompts = list(load_split("eval")["prompt"])
    model = load_policy_and_reference(sft_dir, preset)
    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    reward_model = load_reward_model(reward_dir)
    max_source = get_preset(preset).max_source_length
    trainer = PPOTrainer(model, tokenizer, reward_model.score, prompts_for_training, cfg, max_source_length=max_source)
    if resume_from:
        trainer.load_checkpoint(resume_from)
    start = time.perf_counter()
    trainer.train(checkpoint_dir=out_dir / "checkpoints", progress=progress)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(out_dir / "final")

    def evaluate_and_record():
        sft_replies = greedy_replies(trainer, prompts, "reference", cfg.max_new_tokens)
        ppo_replies = greedy_replies(trainer, prompts, "policy", cfg.max_new_tokens)
        wins = win_rate(prompts, ppo_replies, sft_replies, gold_judge())
        history = trainer.history
        window = max(len(history) // 10, 1)
        metrics = {
            "steps": len(history),
            "reward_start": sum(h["reward"] for h in history[:window]) / window,
            "reward_end": sum(h["reward"] for h in history[-window:]) / window,
            "kl_end": sum(h["kl"] for h in history[-window:]) / window,
            "kl_bound": KL_BOUND,
            "win_rate_vs_sft": wins.rate,
            "wins": wins.wins,
            "losses": wins.losses,
            "ties": wins.ties,
            "n_eval": wins.n,
            "rm_score_sft_eval": _mean(reward_model.score(prompts, sft_replies)),
            "rm_score_ppo_eval": _mean(reward_model.score(prompts, ppo_replies)),
            "seconds_per_step": sum(h["seconds"] for h in history) / max(len(history), 1),
            "train_seconds": round(seconds, 1),
            "skipped_batches": trainer.skipped_batches,
            "num_processes": num_processes(),
            "config": asdict(cfg),
        }
        record_metrics("ppo", metrics, out_dir=out_dir)
        (out_dir / "history.json").write_text(json.dumps(history))
        return metrics, sft_replies, ppo_replies, wins.verdicts

    metrics, sft_replies, ppo_replies, verdicts = on_main_process(evaluate_and_record)
    return PPOStageOutput(metrics, trainer, prompts, sft_replies, ppo_replies, verdicts)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def plot_training(history: list[dict]):
    """Reward, KL, response length, and the PPO diagnostics over steps."""
    import matplotlib.pyplot as plt

    panels = [
        ("reward", "reward-model score"),
        ("kl", "KL(pi || pi_SFT), nats"),
        ("response_length", "reply tokens"),
        ("entropy", "entropy / token"),
        ("clipfrac", "clip fraction"),
        ("approx_kl", "approx. KL (per update)"),
        ("vf_loss", "value loss"),
        ("explained_variance", "explained variance"),
        ("seconds", "seconds / step"),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(13, 8))
    steps = [h["step"] for h in history]
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(steps, [h[key] for h in history])
        ax.set(title=title, xlabel="step")
    fig.tight_layout()
    return fig


#: What a healthy run of the course shows in each training panel (notebook 05 explains them): (low, high) for the
#: last logged value, None for an open end. Rules of thumb from the course's runs and the PPO literature, not laws.
PANEL_GUIDE = {
    "kl": ((0.0, KL_BOUND), "nats per reply; near kl_target with the adaptive controller"),
    "entropy": ((0.05, None), "per token; near 0: the policy collapsed onto a few replies"),
    "clipfrac": ((0.0, 0.3), "share of tokens whose gradient the clip stopped"),
    "approx_kl": ((0.0, 0.05), "per update; larger: steps far outside the trust region"),
    "explained_variance": ((0.0, 1.0), "starts at 0 (zero value head); <= 0 later: the critic adds noise"),
    "eos_fraction": ((0.9, 1.0), "replies that ended; low: loops the penalty should remove"),
}


def panel_report(history: list[dict]):
    """One row per training panel: first, last, min and max over the run, the healthy range of the last value
    (:data:`PANEL_GUIDE`) and whether the run's last value lies in it."""
    import math

    import pandas as pd

    rows = {}
    for key in (
        "reward",
        "kl",
        "response_length",
        "entropy",
        "clipfrac",
        "approx_kl",
        "vf_loss",
        "explained_variance",
        "eos_fraction",
    ):
        values = [h[key] for h in history if key in h and math.isfinite(h[key])]
        if not values:
            continue
        row = {"first": values[0], "last": values[-1], "min": min(values), "max": max(values)}
        if key in PANEL_GUIDE:
            (low, high), note = PANEL_GUIDE[key]
            row["healthy"] = f"[{low:g}, {'∞' if high is None else f'{high:g}'}]"
            row["ok"] = low <= values[-1] and (high is None or values[-1] <= high)
            row["note"] = note
        rows[key] = row
    return pd.DataFrame(rows).T.fillna("")
