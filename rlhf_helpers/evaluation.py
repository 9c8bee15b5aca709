"""Stage 6, evaluation: the pretrained base, the SFT policy and the PPO policy side by side, and the
reward over-optimisation curve.

Why all three from one base model? The SFT policy is a LoRA adapter on the base, and the PPO policy
is that adapter trained further, so one base with two adapters (``reference`` = SFT, ``policy`` =
PPO, exactly as during PPO training) holds all three; the base itself is the model with the
adapters switched off. One copy of the weights, and nothing can differ between the policies except
what training changed.

Why judge with the gold judge, not the reward model? PPO optimised the reward model, so the reward
model's score is the number being gamed; it is reported (it is what PPO saw) but the verdict comes
from the gold judger of notebook 04, which shares nothing with it.

Why confidence intervals? The held-out set has a few hundred prompts; a win rate of 0.56 on 250 of
them is compatible with no improvement at all. The bootstrap (resample the prompts with
replacement, recompute the win rate, take the 2.5% and 97.5% quantiles) needs no distributional
assumption and treats ties the way the win rate does (half a win).

Why the over-optimisation curve? Optimising a proxy of what we want works until it does not
(Goodhart's law). Stiennon et al. (2020, Fig. 5) and Gao et al. (2022) plot the proxy reward-model
score and a gold score against sqrt(KL(pi || pi_SFT)): the proxy keeps rising with KL while the gold
score peaks and then falls. We measure both at the checkpoints of the main PPO run (and, when it
saved too few, at short extra runs with a beta sweep), sampling at the training temperature as PPO
did, and cache each point under ``<artifacts>/evaluation/`` keyed by the checkpoint's weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_helpers.config import artifacts_dir, course_seed, preset_name
from rlhf_helpers.io_utils import atomic_write_dir, atomic_write_json, read_json
from rlhf_helpers.stats import N_BOOTSTRAP, bootstrap_ci, bootstrap_means  # noqa: F401 (part of this module's API)

#: The three policies, in the order tables show them.
POLICIES = ("base", "sft", "ppo")
POLICY_LABELS = {"base": "base", "sft": "SFT", "ppo": "PPO"}
#: Every pair of policies, (A, B) = "how often is A's reply better than B's".
PAIRINGS = (("ppo", "sft"), ("ppo", "base"), ("sft", "base"))
#: The over-optimisation plot needs at least this many KL levels (SFT itself counts as KL = 0).
MIN_KL_POINTS = 4
#: Extra short PPO runs when the main run saved too few checkpoints: fixed beta, strongest first.
SWEEP_BETAS = (0.3, 0.05, 0.01, 0.0)
SWEEP_STEPS = 20
#: Bump when what a cached file contains changes: old caches are then ignored, never misread.
CACHE_VERSION = 3
FIGURES = ("evaluation_win_rates", "evaluation_scores", "evaluation_lengths", "evaluation_overoptimisation")


def evaluation_dir() -> Path:
    """``<artifacts>/evaluation``: the caches of this stage."""
    return artifacts_dir() / "evaluation"


# =========================================================================== win rates with confidence intervals


def win_outcomes(verdicts: Sequence[str]) -> np.ndarray:
    """Per-prompt outcome of A against B: 1 for a win ('A'), 0.5 for a tie, 0 for a loss ('B').

    The mean of these is exactly ``judger.win_rate``'s (wins + ties / 2) / n."""
    v = np.asarray(list(verdicts), dtype=object)
    unknown = sorted({str(x) for x in v if x not in ("A", "B", "tie")})
    if unknown:
        raise ValueError(f"unknown verdicts {unknown}; expected 'A', 'B' or 'tie'")
    return np.where(v == "A", 1.0, np.where(v == "B", 0.0, 0.5)).astype(float)


@dataclass
class PairwiseWinRate:
    """Win rate of policy ``a`` over policy ``b`` (ties count half) with its bootstrap interval."""

    a: str
    b: str
    rate: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    level: float = 0.95

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "win_rate": self.rate,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ci_level": self.level,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "n": self.n,
        }

    def __str__(self) -> str:
        a, b = POLICY_LABELS.get(self.a, self.a), POLICY_LABELS.get(self.b, self.b)
        return (
            f"{a} over {b}: {self.rate:.3f} (95% CI {self.ci_low:.3f} to {self.ci_high:.3f}; "
            f"{self.wins} wins, {self.ties} ties, {self.losses} losses, n={self.n})"
        )


def pairwise_win_rate(
    verdicts: Sequence[str], a: str = "A", b: str = "B", level: float = 0.95, seed: int | None = None
) -> PairwiseWinRate:
    """Win rate and bootstrap CI from per-prompt verdicts ('A' = a's reply is better, 'B', 'tie')."""
    outcomes = win_outcomes(verdicts)
    low, high = bootstrap_ci(outcomes, level=level, seed=seed)
    wins, losses = int((outcomes == 1).sum()), int((outcomes == 0).sum())
    rate = float(outcomes.mean()) if len(outcomes) else math.nan
    return PairwiseWinRate(a, b, rate, low, high, wins, len(outcomes) - wins - losses, losses, level)


def gold_verdicts(scores_a: Sequence[float], scores_b: Sequence[float], judge) -> np.ndarray:
    """The judge's verdicts from each reply's own score: what ``judge.compare`` decides, without
    scoring every reply once per pairing (each reply is scored once, alone, in both cases)."""
    from rlhf_helpers.judger import verdicts

    return verdicts(np.asarray(scores_a), np.asarray(scores_b), judge.config.tie_margin)


# =========================================================================== the three policies


def _adapter_file(folder: Path) -> Path:
    """The LoRA weights of a saved adapter or PPO checkpoint (which keeps them in ``policy/``)."""
    nested = folder / "policy" / "adapter_model.safetensors"
    return nested if nested.exists() else folder / "adapter_model.safetensors"


def check_checkpoint(folder: str | Path) -> Path:
    """``folder`` if it is a complete PPO checkpoint, else ``FileNotFoundError`` naming what is missing
    (a run killed while saving must not be evaluated as if it were a policy)."""
    folder = Path(folder)
    missing = [
        name
        for name, path in (
            ("ppo_config.json", folder / "ppo_config.json"),
            ("ppo_state.pt", folder / "ppo_state.pt"),
            ("policy/adapter_model.safetensors", _adapter_file(folder)),
        )
        if not path.exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"{folder}: incomplete PPO checkpoint (missing {', '.join(missing)}); delete it and re-run notebook 05 "
            "or `python -m rlhf_helpers ppo`"
        )
    return folder


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _reward_digest(reward_dir: Path) -> str:
    files = sorted(p for p in reward_dir.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    return _digest(*[(p.name, _file_digest(p)) for p in files])


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Policies:
    """Base, SFT and PPO on one base model. ``trainer`` is a :class:`~rlhf_helpers.ppo.PPOTrainer`
    built with the PPO run's own config: its ``rollout`` samples replies exactly as training did
    (same temperature, same masks) and returns the policy's and the SFT reference's log-probs.

    Its ``policy`` adapter holds whichever weights :meth:`use_weights` put there last (at first the
    SFT adapter, then a checkpoint); the ``reference`` adapter is always the SFT policy."""

    trainer: Any
    preset: str
    sft_dir: Path
    reward_dir: Path
    ppo_dir: Path
    reward_model: Any
    cfg: Any  # the PPO run's PPOConfig
    loaded: str = "sft"
    digests: dict = field(default_factory=dict)
    #: Replies generated per batch. The tiny model's cost is the number of (small) operations, so the
    #: whole eval set goes in one batch (4x fewer than batches of 64); Flan-T5 needs smaller batches.
    batch_size: int = 32

    @property
    def model(self):
        return self.trainer.model

    @property
    def tokenizer(self):
        return self.trainer.tokenizer

    @property
    def final_dir(self) -> Path:
        return self.ppo_dir / "final"

    def use_weights(self, adapter_file: str | Path) -> None:
        """Put a saved adapter's LoRA weights into the ``policy`` adapter (the same loading as
        ``PPOTrainer.load_checkpoint``, without the optimizer state evaluation does not need)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        key = str(adapter_file)
        if key != self.loaded:
            set_peft_model_state_dict(self.model, load_file(adapter_file), adapter_name="policy")
            self.loaded = key

    def use_final(self) -> None:
        self.use_weights(_adapter_file(self.final_dir))

    def replies(self, name: str, prompts: list[str]) -> list[str]:
        """Greedy replies of ``base`` (adapters off), ``sft`` (the ``reference`` adapter) or ``ppo``
        (the final checkpoint in the ``policy`` adapter), decoded as notebook 05 decodes them."""
        from rlhf_helpers.generation import DecodeSettings, generate_responses

        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; choose one of {POLICIES}")
        settings = DecodeSettings(max_new_tokens=self.cfg.max_new_tokens)
        kwargs = dict(batch_size=self.batch_size, max_source_length=self.trainer.max_source_length)
        if name == "base":
            with self.model.disable_adapter():
                return generate_responses(self.model, self.tokenizer, prompts, settings, **kwargs)
        if name == "ppo":
            self.use_final()
        self.model.set_adapter("policy" if name == "ppo" else "reference")
        try:
            return generate_responses(self.model, self.tokenizer, prompts, settings, **kwargs)
        finally:
            self.model.set_adapter("policy")  # what the trainer's rollout samples from


def ensure_ppo(preset: str, ppo_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The PPO run's final checkpoint, training PPO with defaults (and SFT and the reward model
    before it, if missing) when the course's own run is missing, so notebook 06 also runs alone.

    An explicitly given ``ppo_dir`` is never trained into: a typo must not start a training run."""
    from rlhf_helpers.ppo_stage import default_ppo_dir, run_ppo_stage

    ppo_dir = Path(ppo_dir) if ppo_dir is not None else default_ppo_dir()
    final = ppo_dir / "final"
    if final.exists():
        return check_checkpoint(final)
    if ppo_dir.resolve() != default_ppo_dir().resolve():
        raise FileNotFoundError(f"{final}: no PPO checkpoint here (train one with `python -m rlhf_helpers ppo`)")
    run_ppo_stage(preset, out_dir=ppo_dir, progress=progress)
    return check_checkpoint(final)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the reward model's load report ("classification_head ... MISSING": the head lives in the
    adapter, loaded right after) and a peft/transformers deprecation warning while the models load."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_policies(preset: str | None = None, ppo_dir: str | Path | None = None, progress: bool = True) -> Policies:
    """Load base + SFT adapter (twice, as ``policy`` and ``reference``) and the reward model, reading
    the PPO run's config from its final checkpoint. Missing course artifacts are trained first."""
    from transformers import AutoTokenizer

    from rlhf_helpers.ppo import PPOTrainer, load_policy_and_reference, load_ppo_config
    from rlhf_helpers.ppo_stage import default_ppo_dir, ensure_prerequisites
    from rlhf_helpers.presets import get_preset, model_path
    from rlhf_helpers.reward import load_reward_model

    preset = preset or preset_name()
    max_source = get_preset(preset).max_source_length  # unknown preset: ValueError before any work
    ppo_dir = Path(ppo_dir) if ppo_dir is not None else default_ppo_dir()
    if (ppo_dir / "final").exists():
        check_checkpoint(ppo_dir / "final")  # fail fast, before anything is trained
    final = ensure_ppo(preset, ppo_dir, progress)
    sft_dir, reward_dir = ensure_prerequisites(preset, progress)
    cfg = load_ppo_config(final / "ppo_config.json")
    base_path = model_path(preset)
    with _quiet_transformers():
        model = load_policy_and_reference(sft_dir, preset)
        tokenizer = AutoTokenizer.from_pretrained(sft_dir)
        reward_model = load_reward_model(reward_dir)
    trainer = PPOTrainer(model, tokenizer, reward_model.score, [], cfg, max_source_length=max_source)
    digests = {
        "base": _digest(preset, base_path),
        "sft": _file_digest(_adapter_file(sft_dir)),
        "reward": _reward_digest(reward_dir),
        "ppo": _file_digest(_adapter_file(final)),
    }
    batch_size = 256 if get_preset(preset).hub_name is None else 32
    return Policies(
        trainer,
        preset,
        sft_dir,
        reward_dir,
        ppo_dir,
        reward_model,
        cfg,
        str(_adapter_file(sft_dir)),
        digests,
        batch_size,
    )


# =========================================================================== base vs SFT vs PPO


def length_stats(replies: Sequence[str], tokenizer=None) -> dict[str, float]:
    """Reply lengths in words (and tokens, given a tokenizer): RLHF policies tend to grow longer
    replies when the reward model likes length, so every comparison should show them."""
    words = np.array([len(r.split()) for r in replies], dtype=float)
    if len(words) == 0:
        return {"mean_words": math.nan, "median_words": math.nan, "p90_words": math.nan, "max_words": 0}
    out = {
        "mean_words": float(words.mean()),
        "median_words": float(np.median(words)),
        "p90_words": float(np.quantile(words, 0.9)),
        "max_words": int(words.max()),
        "empty_fraction": float((words == 0).mean()),
    }
    if tokenizer is not None:
        out["mean_tokens"] = float(np.mean([len(ids) for ids in tokenizer(list(replies))["input_ids"]]))
    return out


@dataclass
class PolicyComparison:
    """Greedy replies of every policy on the held-out prompts, their per-reply reward-model and gold
    scores, the reference-based metrics, and the gold judge's win rates for every pair of policies."""

    prompts: list[str]
    references: list[str]
    replies: dict[str, list[str]]
    rm_scores: dict[str, list[float]]
    gold_scores: dict[str, list[float]]
    metrics: dict[str, dict]
    win_rates: dict[str, PairwiseWinRate]
    verdicts: dict[str, list[str]]

    def metrics_table(self):
        """One row per policy: ROUGE-1/2/L, BLEU, METEOR, mean reward-model and gold scores, lengths."""
        import pandas as pd

        rows = {}
        for name in POLICIES:
            m = self.metrics[name]
            rows[POLICY_LABELS[name]] = {
                **{k: m[k] for k in ("rouge1", "rouge2", "rougeL", "bleu", "meteor", "rm_score", "gold_score")},
                **{k: m["length"][k] for k in ("mean_words", "median_words", "empty_fraction")},
            }
        return pd.DataFrame(rows).T

    def win_table(self):
        """One row per pair of policies: win rate of A over B, its 95% CI, wins/ties/losses."""
        import pandas as pd

        rows = []
        for key, w in self.win_rates.items():
            rows.append(
                {"A vs B": key.replace("_vs_", " vs ").replace("ppo", "PPO").replace("sft", "SFT"), **w.as_dict()}
            )
        return pd.DataFrame(rows).set_index("A vs B").drop(columns=["a", "b", "ci_level"])

    def sample_table(self, n: int = 5, start: int = 0):
        """Prompt, each policy's reply and both scores, for ``n`` prompts."""
        import pandas as pd

        idx = range(start, min(start + n, len(self.prompts)))
        cols: dict[str, list] = {"prompt": [self.prompts[i] for i in idx]}
        for name in POLICIES:
            cols[POLICY_LABELS[name]] = [self.replies[name][i] for i in idx]
        for name in POLICIES:
            cols[f"RM {POLICY_LABELS[name]}"] = [round(self.rm_scores[name][i], 2) for i in idx]
        for name in POLICIES:
            cols[f"gold {POLICY_LABELS[name]}"] = [round(self.gold_scores[name][i], 3) for i in idx]
        return pd.DataFrame(cols)


def compare_policies(
    policies: Policies,
    prompts: list[str],
    references: list[str],
    judge=None,
    use_cache: bool = True,
    progress: bool = False,
) -> PolicyComparison:
    """Generate (greedy) with base, SFT and PPO on ``prompts``; score every reply with the reward
    model and the gold judge; compute text metrics against ``references`` and all pairwise win rates.

    Replies and scores are cached in ``<artifacts>/evaluation/comparison_<key>.json``; the key
    covers the weights of all three policies and of the reward model, the prompts and the judge."""
    from tqdm.auto import tqdm

    from rlhf_helpers.judger import gold_judge
    from rlhf_helpers.metrics import text_metrics

    judge = judge or gold_judge()
    key = _digest(
        CACHE_VERSION,
        "comparison",
        policies.digests,
        prompts,
        policies.cfg.max_new_tokens,
        policies.batch_size,  # batching pads differently: greedy ties could break differently
        repr(judge),
    )
    cache = evaluation_dir() / f"comparison_{key}.json"
    if use_cache and cache.exists():
        saved = read_json(cache)
    else:
        saved = {"replies": {}, "rm_scores": {}, "gold_scores": {}}
        for name in tqdm(POLICIES, desc="policies", disable=not progress, leave=False):
            replies = policies.replies(name, prompts)
            saved["replies"][name] = replies
            saved["rm_scores"][name] = list(
                policies.reward_model.score(prompts, replies, batch_size=policies.batch_size)
            )
            saved["gold_scores"][name] = judge.score(prompts, replies).total.tolist()
        if use_cache:
            atomic_write_json(cache, saved)

    metrics: dict[str, dict] = {}
    for name in POLICIES:
        replies = saved["replies"][name]
        metrics[name] = {
            **text_metrics(replies, references),
            "rm_score": float(np.mean(saved["rm_scores"][name])),
            "gold_score": float(np.mean(saved["gold_scores"][name])),
            "length": length_stats(replies, policies.tokenizer),
        }
    win_rates, all_verdicts = {}, {}
    for a, b in PAIRINGS:
        v = gold_verdicts(saved["gold_scores"][a], saved["gold_scores"][b], judge)
        all_verdicts[f"{a}_vs_{b}"] = v.tolist()
        win_rates[f"{a}_vs_{b}"] = pairwise_win_rate(v, a, b)
    return PolicyComparison(
        prompts,
        references,
        saved["replies"],
        saved["rm_scores"],
        saved["gold_scores"],
        metrics,
        win_rates,
        all_verdicts,
    )


# =========================================================================== reward over-optimisation


@dataclass
class KLPoint:
    """One policy on the over-optimisation curve: mean KL(pi || pi_SFT) per reply (nats) of replies
    sampled at the training temperature, and the mean proxy (reward-model) and gold scores."""

    label: str
    source: str  # "sft" | "checkpoint" | "sweep"
    step: int
    kl: float
    kl_sem: float  # standard errors of the means: is a difference between two points more than noise?
    proxy_score: float
    proxy_sem: float
    gold_score: float
    gold_sem: float
    n: int
    beta: float | None = None  # initial KL coefficient of the run
    checkpoint: str | None = None

    @property
    def sqrt_kl(self) -> float:
        """sqrt(KL), the x-axis of Gao et al. 2022; a slightly negative estimate (k1 is unbiased, not
        non-negative) is shown as 0."""
        return math.sqrt(max(self.kl, 0.0))

    def as_dict(self) -> dict:
        return {**asdict(self), "sqrt_kl": self.sqrt_kl}


def sample_kl_point(
    trainer, prompts: list[str], judge, label: str = "policy", seed: int | None = None, batch_size: int = 64
) -> tuple[KLPoint, list[str]]:
    """Sample one reply per prompt with the trainer's ``policy`` adapter, as PPO's rollout does, and
    estimate KL(pi || pi_SFT) per reply: the sum over reply tokens of k1 = log pi(y_t) - log pi_SFT(y_t).

    This is exactly the quantity PPO's penalty and its logged ``kl`` use: log-probabilities of softmax(z / T),
    the distributions replies are sampled from at the training temperature T, so its expectation is
    KL(pi_T || pi_SFT,T) and the points line up with the training curves. For the SFT policy itself it is
    0 to float rounding (~1e-6 in fp32: the sampling loop's log-probs against the reference's teacher-forced pass).
    Returns the point (step 0, source 'checkpoint': callers fill in what they know) and the replies."""
    import torch

    from rlhf_helpers.ppo_math import kl_k1

    torch.manual_seed(course_seed() if seed is None else seed)  # the same draws for every point
    replies, kls, proxy = [], [], []
    for start in range(0, len(prompts), batch_size):  # rollout changes nothing in the trainer
        ro = trainer.rollout(prompts[start : start + batch_size])
        kls.extend((kl_k1(ro["logprobs"], ro["ref_logprobs"]) * ro["mask"]).sum(dim=1).tolist())
        proxy.extend(ro["raw_scores"].tolist())
        replies.extend(ro["replies"])
    gold = judge.score(prompts, replies).total
    kl = np.asarray(kls)
    point = KLPoint(
        label=label,
        source="checkpoint",
        step=0,
        kl=float(kl.mean()),
        kl_sem=_sem(kl),
        proxy_score=float(np.mean(proxy)),
        proxy_sem=_sem(proxy),
        gold_score=float(np.mean(gold)),
        gold_sem=_sem(gold),
        n=len(replies),
    )
    return point, replies


def _sem(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=float)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def gold_peak(points: Sequence[KLPoint]) -> KLPoint:
    """The point with the highest gold score (on a tie, the one nearer SFT): where Goodhart's law starts
    to bite, if the curve turns down after it."""
    if not points:
        raise ValueError("no points")
    return max(points, key=lambda p: (p.gold_score, -p.sqrt_kl))


@dataclass
class _Candidate:
    label: str
    source: str
    step: int
    adapter: Path
    beta: float | None
    checkpoint: str | None


def _step_of(folder: Path) -> int:
    import torch

    return int(torch.load(folder / "ppo_state.pt", weights_only=False, map_location="cpu")["step"])


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(artifacts_dir().resolve()))
    except ValueError:
        return str(path)


def checkpoint_candidates(policies: Policies) -> list[_Candidate]:
    """SFT (KL 0), every complete checkpoint of the main run (same config, not past the final step)
    and the final policy, without duplicates (the last checkpoint usually *is* the final one)."""
    return _candidates_of_run(_adapter_file(policies.sft_dir), policies.ppo_dir)


def _candidates_of_run(sft_adapter: Path, run_dir: Path) -> list[_Candidate]:
    """SFT, then every complete checkpoint of ``run_dir/checkpoints`` made with the final policy's config and not past
    its step, by step, then the final policy (``run_dir/final``), without duplicates."""
    final = run_dir / "final"
    final_cfg = read_json(final / "ppo_config.json")
    final_step = _step_of(final)
    out = [_Candidate("SFT", "sft", 0, sft_adapter, None, None)]
    found = []
    for folder in sorted((run_dir / "checkpoints").glob("step_*")):
        try:
            check_checkpoint(folder)
        except FileNotFoundError:
            continue  # a checkpoint being written, or a killed save: not a policy
        if read_json(folder / "ppo_config.json") != final_cfg:
            continue  # left over from an earlier run with other settings
        step = _step_of(folder)
        if 0 < step <= final_step:
            found.append((step, folder))
    found.append((final_step, final))
    seen = {_file_digest(sft_adapter)}
    for step, folder in sorted(found, key=lambda sf: sf[0]):
        digest = _file_digest(_adapter_file(folder))
        if digest in seen:
            continue
        seen.add(digest)
        beta = final_cfg.get("init_kl_coef")
        out.append(_Candidate(f"step {step}", "checkpoint", step, _adapter_file(folder), beta, _relative(folder)))
    return out


def sweep_candidates(policies: Policies, needed: int, progress: bool = True) -> list[_Candidate]:
    """``needed`` short PPO runs from the SFT policy with a fixed beta each (strongest penalty first),
    trained once and cached under ``<artifacts>/evaluation/sweep/``: more KL levels when the main
    run saved too few checkpoints. A cached run is reused only if its config and SFT start match."""
    from rlhf_helpers.ppo import PPOTrainer, load_policy_and_reference
    from rlhf_helpers.ppo_stage import ppo_defaults, train_prompts

    out = []
    for beta in SWEEP_BETAS[:needed]:
        fixed_beta = dict(init_kl_coef=beta, adaptive_kl=False, steps=SWEEP_STEPS, checkpoint_every=0)
        cfg = ppo_defaults(policies.preset, **fixed_beta, temperature=policies.cfg.temperature)  # the main run's
        tag = _digest(asdict(cfg), policies.digests["sft"], policies.digests["reward"])
        folder = evaluation_dir() / "sweep" / f"beta_{beta:g}_{tag}"
        final = folder / "final"
        if not (final / "ppo_config.json").exists():
            model = load_policy_and_reference(policies.sft_dir, policies.preset)
            trainer = PPOTrainer(
                model,
                policies.tokenizer,
                policies.reward_model.score,
                train_prompts(),
                cfg,
                max_source_length=policies.trainer.max_source_length,
            )
            trainer.train(progress=progress)
            atomic_write_dir(final, trainer.save_checkpoint)
        out.append(
            _Candidate(
                f"β={beta:g}, {SWEEP_STEPS} steps", "sweep", SWEEP_STEPS, _adapter_file(final), beta, _relative(final)
            )
        )
    return out


def overoptimisation_points(
    policies: Policies,
    prompts: list[str],
    judge=None,
    min_points: int = MIN_KL_POINTS,
    use_cache: bool = True,
    progress: bool = True,
) -> list[KLPoint]:
    """The points of the over-optimisation plot in training order: SFT, the main run's checkpoints and
    final policy by step, then beta-sweep runs (strongest penalty first) when that makes fewer than
    ``min_points``.

    Each point is cached in ``<artifacts>/evaluation/kl_point_<key>.json``, the key made of the
    policy's weights, the SFT reference, the reward model, the prompts, the sampling settings, the
    judge and the seed; re-running only computes points whose checkpoint changed."""

    from rlhf_helpers.judger import gold_judge

    judge = judge or gold_judge()
    candidates = checkpoint_candidates(policies)
    if len(candidates) < min_points:
        candidates += sweep_candidates(policies, min_points - len(candidates), progress)
    return _measure_candidates(policies, candidates, prompts, judge, use_cache, progress)


#: Notebook 06's over-optimisation demonstration: PPO from the SFT policy with no KL anchor (beta = 0, fixed) and a
#: checkpoint every 10 steps, tracked on the first N_PROBE_PROMPTS held-out prompts, against a *small* proxy reward
#: model (OVEROPT_PROXY_PAIRS pairs). Why a small one: against the course's reward model (1418 pairs, accuracy 0.917)
#: the gold score kept rising at beta = 0 -- 60 steps: 0.558 -> 0.617; 90 steps at 5x the learning rate: 0.558 ->
#: 0.689, still rising (2-core CPU, seed 0) -- while against a proxy trained on 128 pairs (accuracy 0.809) the proxy
#: rose from -2.08 to +1.11 and the gold score peaked at step 10 and fell beyond its error bars: Gao et al. (2022)
#: find that smaller proxies (less data, fewer parameters) are over-optimised sooner. ``overoptimisation_run(...,
#: proxy_pairs=None)`` runs against the course's reward model; ``**overrides`` change any PPOConfig field.
OVEROPT_RUN = dict(init_kl_coef=0.0, adaptive_kl=False, steps=60, checkpoint_every=10)
OVEROPT_PROXY_PAIRS = 128
N_PROBE_PROMPTS = 128


@dataclass
class OveroptimisationRun:
    """A cached PPO run tracked on fixed probe prompts: one :class:`KLPoint` per checkpoint (sampled replies, as
    :func:`overoptimisation_points`), and the greedy replies of SFT and of the last checkpoint with their proxy and
    gold scores, to read what the proxy pays for."""

    points: list[KLPoint]
    prompts: list[str]
    config: dict
    folder: Path
    greedy: dict  # {"SFT" | "last": {"replies": [...], "proxy": [...], "gold": [...]}}
    proxy: dict = field(default_factory=dict)  # the reward model PPO optimised: pairs, accuracy, folder

    def table(self):
        import pandas as pd

        cols = ["label", "step", "kl", "sqrt_kl", "proxy_score", "proxy_sem", "gold_score", "gold_sem"]
        return pd.DataFrame([p.as_dict() for p in self.points])[cols]

    def gold_falls_while_proxy_rises(self) -> bool:
        """From the gold peak to the last checkpoint: the proxy rose and the gold score fell, each by more
        than two standard errors (the two points' s.e. combined)."""
        peak, last = gold_peak(self.points), self.points[-1]
        if last is peak:
            return False
        proxy_gain = last.proxy_score - peak.proxy_score
        gold_drop = peak.gold_score - last.gold_score
        return proxy_gain > 2 * math.hypot(last.proxy_sem, peak.proxy_sem) and gold_drop > 2 * math.hypot(
            last.gold_sem, peak.gold_sem
        )

    def hacked_example(self) -> dict:
        """The probe prompt whose greedy reply gained the most proxy score from SFT to the last checkpoint while
        its gold score fell the most: prompt, both replies and both scores."""
        sft, last = self.greedy["SFT"], self.greedy["last"]
        proxy_gain = np.asarray(last["proxy"]) - np.asarray(sft["proxy"])
        gold_gain = np.asarray(last["gold"]) - np.asarray(sft["gold"])
        hacked = np.flatnonzero((proxy_gain > 0) & (gold_gain < 0))
        pool = hacked if len(hacked) else np.arange(len(self.prompts))
        i = int(pool[np.argmax(proxy_gain[pool] - gold_gain[pool] * 10)])  # gold is in [0, 1], the proxy in RM units
        return {
            "prompt": self.prompts[i],
            "SFT reply": sft["replies"][i],
            "last-checkpoint reply": last["replies"][i],
            "proxy SFT": sft["proxy"][i],
            "proxy last": last["proxy"][i],
            "gold SFT": sft["gold"][i],
            "gold last": last["gold"][i],
            "n_hacked": int(len(hacked)),
        }


def overoptimisation_run(
    policies: Policies,
    prompts: list[str],
    judge=None,
    use_cache: bool = True,
    progress: bool = True,
    proxy_pairs: int | None = OVEROPT_PROXY_PAIRS,
    **overrides,
) -> OveroptimisationRun:
    """Train (once, cached under ``<artifacts>/evaluation/overopt/``, keyed by its config and the SFT and proxy
    weights) a PPO run with :data:`OVEROPT_RUN` (and ``overrides``) from the SFT policy against a proxy reward model,
    and measure every checkpoint on ``prompts``: KL, proxy and gold score of sampled replies (cached per checkpoint like
    the main curve), and the greedy replies of SFT and of the last checkpoint, scored by both judges.

    The proxy is a reward model trained with the preset's defaults on ``proxy_pairs`` of the training pairs (seeded
    subsample, cached; see :data:`OVEROPT_RUN` for why), or the course's reward model when ``proxy_pairs`` is None.
    Every "proxy" number of the run is that model's score: the one PPO climbed."""

    from rlhf_helpers.judger import gold_judge
    from rlhf_helpers.ppo import PPOTrainer, load_policy_and_reference
    from rlhf_helpers.ppo_stage import ppo_defaults, train_prompts

    judge = judge or gold_judge()
    if proxy_pairs is None:
        proxy = policies.reward_model
        proxy_info = {"pairs": None, "folder": str(policies.reward_dir), "digest": policies.digests["reward"]}
        proxy_info |= _recorded_reward_accuracy()
    else:
        proxy, proxy_info = proxy_reward_model(policies, proxy_pairs, progress)
    settings = {**OVEROPT_RUN, "temperature": policies.cfg.temperature, **overrides}
    cfg = ppo_defaults(policies.preset, **settings)
    tag = _digest(asdict(cfg), policies.digests["sft"], proxy_info["digest"])
    folder = evaluation_dir() / "overopt" / tag
    if not (folder / "final" / "ppo_config.json").exists():
        model = load_policy_and_reference(policies.sft_dir, policies.preset)
        trainer = PPOTrainer(
            model,
            policies.tokenizer,
            proxy.score,
            train_prompts(),
            cfg,
            max_source_length=policies.trainer.max_source_length,
        )
        trainer.train(checkpoint_dir=folder / "checkpoints", progress=progress)
        atomic_write_dir(folder / "final", trainer.save_checkpoint)
    candidates = _candidates_of_run(_adapter_file(policies.sft_dir), folder)
    with _scored_by(policies, proxy, proxy_info["digest"]):  # every "proxy" number is the model this run optimised
        points = _measure_candidates(policies, candidates, prompts, judge, use_cache, progress)
        greedy = _greedy_sft_and_last(policies, candidates, prompts, judge, tag, cfg.max_new_tokens, use_cache,
                                      progress)
    return OveroptimisationRun(points, list(prompts), asdict(cfg), folder, greedy, proxy_info)


@contextmanager
def _scored_by(policies: Policies, reward_model, digest: str) -> Iterator[None]:
    """Within the block, ``policies`` scores with ``reward_model`` (its own ``reward_model``, its trainer's
    ``reward_fn`` and the reward digest its caches are keyed by); afterwards it is exactly as before. The same object
    is changed, not a copy, so the weights it records as loaded (``use_weights``) stay true for the caller."""
    saved = (policies.reward_model, policies.digests, policies.trainer.reward_fn)
    policies.reward_model, policies.trainer.reward_fn = reward_model, reward_model.score
    policies.digests = {**policies.digests, "reward": digest}
    try:
        yield
    finally:
        policies.reward_model, policies.digests, policies.trainer.reward_fn = saved


def _greedy_sft_and_last(policies: Policies, candidates, prompts, judge, tag, max_new_tokens, use_cache, progress):
    """Greedy replies of SFT and of the run's last checkpoint, with their proxy and gold scores (cached)."""
    from tqdm.auto import tqdm

    from rlhf_helpers.generation import DecodeSettings, generate_responses

    greedy_cache = evaluation_dir() / f"overopt_greedy_{_digest(CACHE_VERSION, tag, prompts, repr(judge))}.json"
    if use_cache and greedy_cache.exists():
        return read_json(greedy_cache)
    greedy = {}
    decode = DecodeSettings(max_new_tokens=max_new_tokens)
    for name, cand in tqdm((("SFT", candidates[0]), ("last", candidates[-1])), disable=not progress, leave=False):
        policies.use_weights(cand.adapter)
        policies.model.set_adapter("policy")
        replies = generate_responses(
            policies.model,
            policies.tokenizer,
            prompts,
            decode,
            batch_size=policies.batch_size,
            max_source_length=policies.trainer.max_source_length,
        )
        greedy[name] = {
            "replies": replies,
            "proxy": list(policies.reward_model.score(prompts, replies, batch_size=policies.batch_size)),
            "gold": judge.score(prompts, replies).total.tolist(),
        }
    if use_cache:
        atomic_write_json(greedy_cache, greedy)
    return greedy


def _recorded_reward_accuracy() -> dict:
    """The course reward model's held-out accuracy and length baseline, as notebook 03 recorded them (or nothing)."""
    from rlhf_helpers.report import collect_metrics

    recorded = collect_metrics().get("reward", {})
    return {k: recorded[k] for k in ("accuracy", "length_baseline_accuracy", "n_train") if k in recorded}


def proxy_reward_model(policies: Policies, pairs: int, progress: bool = True):
    """A reward model trained with the preset's defaults on a seeded subsample of ``pairs`` training pairs, cached
    under ``<artifacts>/evaluation/overopt/proxy_<key>`` (keyed by its config, the preset's base and the data); its
    held-out accuracy and the length baseline's are measured on the validation pairs. The course's own reward
    model and its metrics are left alone. Returns the model and ``{"pairs", "accuracy", "length_baseline_accuracy",
    "digest", "folder"}``."""
    from rlhf_helpers.data_prep import SPLIT_FILES, ensure_splits, load_split
    from rlhf_helpers.reward import (
        default_reward_backbone,
        evaluate_reward_model,
        load_reward_model,
        reward_defaults,
        subsample,
        train_reward_model,
    )

    # the recipe of notebook 03 for this data folder: the preset's model on the course data, the frozen MiniLM head
    # on yours (the config is part of the cache key: a proxy cached before frozen_backbone existed is retrained once)
    cfg = reward_defaults(default_reward_backbone(policies.preset), max_train_pairs=pairs)
    train_ds, eval_ds = load_split("pref_train"), load_split("pref_val")
    data = [_file_digest(ensure_splits() / SPLIT_FILES[name]) for name in ("pref_train", "pref_val")]
    key = _digest(CACHE_VERSION, asdict(cfg), policies.digests["base"], data)
    folder = evaluation_dir() / "overopt" / f"proxy_{key}"
    if not (folder / "proxy.json").exists():
        eval_ds, _ = subsample(eval_ds, cfg.max_eval_pairs, cfg.seed)  # as run_reward_stage
        training = train_reward_model(cfg, train_ds, eval_ds, progress=progress)
        scores = evaluate_reward_model(training.reward_model, eval_ds, seed=cfg.seed)

        def write(tmp: Path) -> None:
            training.reward_model.save(tmp / "model")
            info = {"pairs": training.n_train, "accuracy": scores["accuracy"],
                    "length_baseline_accuracy": scores["length_baseline_accuracy"]}
            atomic_write_json(tmp / "proxy.json", info)

        atomic_write_dir(folder, write, keep_existing=True)
    info = read_json(folder / "proxy.json") | {"digest": _reward_digest(folder / "model"), "folder": str(folder)}
    return load_reward_model(folder / "model"), info


def _measure_candidates(
    policies: Policies, candidates: list, prompts: list[str], judge, use_cache: bool, progress: bool
):
    """One cached :class:`KLPoint` per candidate policy (see :func:`overoptimisation_points`)."""
    from tqdm.auto import tqdm

    cfg = policies.cfg
    sampling = (cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, cfg.min_new_tokens)
    points = []
    for cand in tqdm(candidates, desc="KL points", disable=not progress, leave=False):
        key = _digest(
            CACHE_VERSION,
            "kl_point",
            _file_digest(cand.adapter),
            policies.digests["sft"],
            policies.digests["reward"],
            policies.digests["base"],
            prompts,
            sampling,
            policies.batch_size,  # the random draws depend on how the prompts are batched
            repr(judge),
            course_seed(),
        )
        cache = evaluation_dir() / f"kl_point_{key}.json"
        if use_cache and cache.exists():
            point = KLPoint(**{k: v for k, v in read_json(cache).items() if k != "sqrt_kl"})
        else:
            policies.use_weights(cand.adapter)
            point, _ = sample_kl_point(policies.trainer, prompts, judge, cand.label, batch_size=policies.batch_size)
            if use_cache:
                atomic_write_json(cache, asdict(point) | _identity(cand))
        points.append(KLPoint(**(asdict(point) | _identity(cand))))
    return points


def _identity(cand: _Candidate) -> dict:
    return {
        "label": cand.label,
        "source": cand.source,
        "step": cand.step,
        "beta": cand.beta,
        "checkpoint": cand.checkpoint,
    }


# =========================================================================== pairs for human labelling


def label_pairs_from(comparison: PolicyComparison, judge=None) -> list:
    """(SFT, PPO) reply pairs in the labelling format of notebook 07: ``response_a`` = SFT,
    ``response_b`` = PPO (the widget shows them in a random left/right order), the gold judge's
    verdict as ``gold`` (so 07 can measure human agreement with it) and which model wrote which.

    Pairs with identical replies (nothing to choose) or an empty reply (the labelling queue refuses
    empty texts) are left out, as are repeated pairs."""
    from rlhf_helpers.judger import gold_judge
    from rlhf_helpers.labeling import Pair, pair_id_for

    judge = judge or gold_judge()
    verdict = gold_verdicts(comparison.gold_scores["sft"], comparison.gold_scores["ppo"], judge)
    pairs, seen = [], set()
    for i, prompt in enumerate(comparison.prompts):
        a, b = comparison.replies["sft"][i], comparison.replies["ppo"][i]
        if not a.strip() or not b.strip() or a == b:
            continue
        pid = pair_id_for(prompt, a, b)
        if pid in seen:
            continue
        seen.add(pid)
        source = {
            "origin": "evaluation",
            "model_a": "sft",
            "model_b": "ppo",
            "gold": str(verdict[i]),
            "gold_score_a": round(float(comparison.gold_scores["sft"][i]), 4),
            "gold_score_b": round(float(comparison.gold_scores["ppo"][i]), 4),
        }
        pairs.append(Pair(pid, prompt, a, b, source))
    return pairs


def export_label_pairs(comparison: PolicyComparison, path: str | Path | None = None, judge=None) -> tuple[Path, int]:
    """Write :func:`label_pairs_from`'s pairs to ``<artifacts>/labeling/pairs_to_label.jsonl`` (or
    ``path``), atomically. Returns (path, number of pairs)."""
    from rlhf_helpers.labeling import write_pairs

    pairs = label_pairs_from(comparison, judge)
    return write_pairs(pairs, path), len(pairs)


# =========================================================================== figures


def plot_win_rates(win_rates: dict[str, PairwiseWinRate]):
    """Win rate of A over B for every pair, with its 95% bootstrap interval; 0.5 = no difference."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 2.6))
    items = list(win_rates.values())
    y = np.arange(len(items))
    rates = np.array([w.rate for w in items])
    err = np.array([[w.rate - w.ci_low for w in items], [w.ci_high - w.rate for w in items]])
    ax.barh(y, rates, xerr=err, capsize=4, color="tab:blue", alpha=0.8)
    ax.axvline(0.5, color="k", ls="--", lw=1)
    ax.set(
        yticks=y,
        yticklabels=[f"{POLICY_LABELS[w.a]} over {POLICY_LABELS[w.b]}" for w in items],
        xlim=(0, 1),
        xlabel="gold-judge win rate (ties = 1/2), 95% bootstrap CI",
    )
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def plot_scores(comparison: PolicyComparison):
    """Reference-based metrics and the two judges' mean scores, per policy."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    names = ["rouge1", "rouge2", "rougeL", "bleu", "meteor"]
    width = 0.8 / len(POLICIES)
    for j, policy in enumerate(POLICIES):
        m = comparison.metrics[policy]
        values = [m[k] if m[k] is not None else 0.0 for k in names]
        axes[0].bar(np.arange(len(names)) + (j - 1) * width, values, width, label=POLICY_LABELS[policy])
    axes[0].set(xticks=range(len(names)), xticklabels=names, title="vs references", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    labels = [POLICY_LABELS[p] for p in POLICIES]
    axes[1].bar(labels, [comparison.metrics[p]["rm_score"] for p in POLICIES], color="tab:orange")
    axes[1].set(title="reward model (proxy, what PPO optimised)")
    axes[2].bar(labels, [comparison.metrics[p]["gold_score"] for p in POLICIES], color="tab:green")
    axes[2].set(title="gold judge (held out from training)", ylim=(0, 1))
    fig.tight_layout()
    return fig


def plot_lengths(comparison: PolicyComparison):
    """Histogram of reply lengths (words) per policy."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    lengths = {p: [len(r.split()) for r in comparison.replies[p]] for p in POLICIES}
    top = max(max(v, default=0) for v in lengths.values())
    bins = np.arange(0, top + 2) - 0.5 if top < 60 else 30
    for p in POLICIES:
        ax.hist(lengths[p], bins=bins, alpha=0.5, label=f"{POLICY_LABELS[p]} (mean {np.mean(lengths[p]):.1f})")
    ax.set(xlabel="reply length (words)", ylabel="replies")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_overoptimisation(points: Sequence[KLPoint]):
    """Proxy (reward-model) and gold scores against sqrt(KL(pi || pi_SFT)), the gold peak marked:
    Stiennon et al. 2020, Fig. 5; Gao et al. 2022."""
    import matplotlib.pyplot as plt

    pts = sorted(points, key=lambda p: p.sqrt_kl)
    x = [p.sqrt_kl for p in pts]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.errorbar(
        x,
        [p.proxy_score for p in pts],
        yerr=[p.proxy_sem for p in pts],
        fmt="o-",
        capsize=3,
        color="tab:orange",
        label="proxy: reward model",
    )
    ax.set(
        xlabel=r"$\sqrt{\mathrm{KL}(\pi\,\|\,\pi_\mathrm{SFT})}$  (nats$^{1/2}$ per reply)", ylabel="reward-model score"
    )
    ax.tick_params(axis="y", colors="tab:orange")
    ax2 = ax.twinx()
    ax2.errorbar(
        x,
        [p.gold_score for p in pts],
        yerr=[p.gold_sem for p in pts],
        fmt="s-",
        capsize=3,
        color="tab:green",
        label="gold judge (± 1 s.e.)",
    )
    ax2.set_ylabel("gold-judge score")
    ax2.tick_params(axis="y", colors="tab:green")
    peak = gold_peak(pts)
    ax2.axvline(peak.sqrt_kl, color="tab:green", ls=":", lw=1)
    ax2.plot([peak.sqrt_kl], [peak.gold_score], "*", ms=16, color="tab:red", label=f"gold peak ({peak.label})")
    for p in pts:
        ax2.annotate(p.label, (p.sqrt_kl, p.gold_score), textcoords="offset points", xytext=(4, -12), fontsize=7)
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize=8)
    ax.set_title("reward over-optimisation")
    fig.tight_layout()
    return fig


# =========================================================================== the whole stage


@dataclass
class EvaluationOutput:
    metrics: dict
    comparison: PolicyComparison
    points: list[KLPoint]
    pairs_path: Path
    n_pairs: int
    figures: dict[str, Path]


def run_evaluation(
    preset: str | None = None,
    out_dir: str | Path | None = None,
    ppo_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> EvaluationOutput:
    """What notebook 06 and ``python -m rlhf_helpers evaluate`` do: compare the three policies on the
    held-out prompts, measure the over-optimisation curve, export (SFT, PPO) pairs for labelling,
    save the figures under ``<artifacts>/figures/`` and record the metrics as stage ``evaluation``."""
    import matplotlib.pyplot as plt

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.judger import gold_judge
    from rlhf_helpers.report import record_metrics, save_figure

    start = time.perf_counter()
    policies = load_policies(preset, ppo_dir, progress)
    eval_ds = load_split("eval")
    prompts, references = list(eval_ds["prompt"]), list(eval_ds["reference"])
    judge = gold_judge()
    points = overoptimisation_points(policies, prompts, judge, use_cache=use_cache, progress=progress)
    comparison = compare_policies(policies, prompts, references, judge, use_cache=use_cache, progress=progress)
    pairs_path, n_pairs = export_label_pairs(comparison, judge=judge)

    figures = {}
    for name, make in zip(
        FIGURES,
        (
            lambda: plot_win_rates(comparison.win_rates),
            lambda: plot_scores(comparison),
            lambda: plot_lengths(comparison),
            lambda: plot_overoptimisation(points),
        ),
    ):
        fig = make()
        figures[name] = save_figure(fig, name)
        plt.close(fig)  # the notebook draws its own copies where it explains them

    peak = gold_peak(points)
    headline = comparison.win_rates["ppo_vs_sft"]
    metrics = {
        "preset": policies.preset,
        "n_eval": len(prompts),
        "ppo_checkpoint": _relative(policies.final_dir),
        "policies": comparison.metrics,
        "win_rates": {k: w.as_dict() for k, w in comparison.win_rates.items()},
        "win_rate_ppo_vs_sft": headline.rate,
        "win_rate_ppo_vs_sft_ci": [headline.ci_low, headline.ci_high],
        "overoptimisation": {
            "points": [p.as_dict() for p in points],
            "gold_peak": peak.as_dict(),
            "sampling_temperature": policies.cfg.temperature,
        },
        "pairs_exported": n_pairs,
        "pairs_file": _relative(pairs_path),
        "figures": [_relative(p) for p in figures.values()],
        "seconds": round(time.perf_counter() - start, 1),
    }
    record_metrics("evaluation", metrics, out_dir=out_dir)
    return EvaluationOutput(metrics, comparison, points, pairs_path, n_pairs, figures)
