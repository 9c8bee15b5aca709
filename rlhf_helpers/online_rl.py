"""RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024): critic-free online RL — read ``online_math.py`` (the
equations) and ``ppo.py`` (the rollout machinery these trainers share), then this file.

Both optimise the same RLHF objective as PPO, E[r(x, y)] - beta * KL(pi || pi_SFT), from replies sampled by the policy
and scored by the reward model, but replace PPO's learnt value head by the other replies to the same prompt: each
step samples k replies per prompt, and a reply's advantage is its reward against its siblings',

    RLOO:  A_i = r_i - 1/(k-1) sum_{j != i} r_j,   r_i = score_i - beta * sum_t k1_t   (KL in the reward)
    GRPO:  A_i = (score_i - mean_group) / (std_group + 1e-4)                            (KL k3 in the loss)

RLOO treats the whole reply as one action (one ratio per reply, ``rloo_policy_loss``); GRPO gives every token of the
reply the same advantage in PPO's clipped per-token surrogate (``grpo_per_token_loss``) and averages the tokens as
trl's default ``loss_type="dapo"`` does (``aggregate_token_loss``).

What is shared with PPO, by subclassing :class:`rlhf_helpers.ppo.PPOTrainer` (nothing is copied):
``rollout`` (sampling through the policy interface at the temperature every log-prob is taken at, reward-model
scoring, the missing-EOS penalty, the old and reference log-probs), adapters (SFT-adapter policy, frozen SFT reference),
dropout off, the NaN-score guard, per-step seeding, checkpoints and ``train``. The KL to pi_SFT is measured and logged
as PPO's ``kl`` (summed k1 per reply), whatever beta is.

What differs: the prompts of a step are ``batch_size / k`` distinct prompts, each repeated k times **prompt-major**
(rows p*k .. p*k+k-1 are prompt p's replies, trl 1.x's layout, ``online_math.grouped``); no value head is trained
(PPO's is still built and evaluated by ``rollout``, but it is in no loss and no optimizer); scores are not normalised
by default (GRPO's std does that per group; RLOO's beta acts on the raw reward-model scale, as in trl). As in PPO,
each mini-batch of ``mini_batch_size`` replies is one optimizer step and the batch is reused for ``ppo_epochs``
passes (trl's ``num_iterations``): with one pass and one mini-batch the ratio is 1 (to float rounding) and the
losses are plain REINFORCE with the group baseline.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Literal

import torch

from rlhf_helpers.config import course_seed
from rlhf_helpers.distributed import mean_over_processes
from rlhf_helpers.online_math import (
    aggregate_token_loss,
    grouped,
    grpo_advantages,
    grpo_per_token_loss,
    rloo_advantages,
    rloo_policy_loss,
    rloo_rewards,
)
from rlhf_helpers.ppo import PPOConfig, PPOTrainer
from rlhf_helpers.ppo_math import gather_logprobs, kl_k1


@dataclass
class OnlineRLConfig(PPOConfig):
    """PPOConfig's rollout fields (batch_size = replies per step = prompts per step x k, mini_batch_size, ppo_epochs,
    temperature, max_new_tokens, missing_eos_penalty, ...) plus the critic-free methods' own. PPO's KL controller and
    value-loss fields are unused."""

    k: int = 4  # replies per prompt
    beta: float = 0.05  # RLOO: in the reward (trl 1.16's default 0.05); GRPO: of k3 in the loss (trl: 0.0)
    epsilon_low: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon_low
    scale_rewards: Literal["group", "batch", "none"] = "group"  # GRPO (trl's default "group")
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = "dapo"  # GRPO (trl's default "dapo")
    normalize_advantages: bool = False  # RLOO (trl's default False)
    normalize_scores: bool = False  # PPO's running score normalisation: off (see the module docstring)
    adaptive_kl: bool = False
    init_kl_coef: float = 0.0  # PPO's per-token penalty: unused here (beta above)


class OnlineRLTrainer(PPOTrainer):
    """What RLOO and GRPO share: k replies per prompt, PPO's rollout, no value head, a per-method loss."""

    name = "online"

    def __init__(self, model, tokenizer, reward_fn, prompts: list[str], cfg: OnlineRLConfig, max_source_length=96):
        if cfg.k < 1 or cfg.batch_size % cfg.k:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of k ({cfg.k})")
        super().__init__(model, tokenizer, reward_fn, prompts, cfg, max_source_length)
        # No value head: the optimizer holds the policy's LoRA weights only (PPO's also held the value head's).
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0)
        self.optimizer = self.accelerator.prepare(optimizer)

    def _prompts_for_step(self, step: int) -> list[str]:
        """batch_size / k distinct prompts per process, each repeated k times, prompt-major (p0 x k, p1 x k, ...)."""
        cfg = self.cfg
        per_process = cfg.batch_size // cfg.k
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
        idx = torch.randint(len(self.prompts), (per_process * self.world,), generator=g)
        mine = idx[self.rank * per_process :][:per_process].tolist()
        return [self.prompts[i] for i in mine for _ in range(cfg.k)]

    # ---- per method
    def advantages(self, scores: torch.Tensor, ro: dict, mask: torch.Tensor) -> torch.Tensor:
        """One advantage per reply, (batch,); ``scores`` NaN where a reply is not scorable."""
        raise NotImplementedError

    def loss(self, logprobs, ro: dict, idx: torch.Tensor, advantages, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss of the mini-batch ``idx``, the ratios it clipped or not) from the new per-token log-probs."""
        raise NotImplementedError

    def clip_fraction(self, ratio: torch.Tensor, mask: torch.Tensor) -> float:
        """Share of ratios (per token, or per reply for RLOO) outside [1 - eps_low, 1 + eps_high]."""
        cfg = self.cfg
        high = cfg.epsilon_low if cfg.epsilon_high is None else cfg.epsilon_high
        outside = ((ratio < 1 - cfg.epsilon_low) | (ratio > 1 + high)).float()
        if ratio.dim() == 1:
            return outside.mean().item()
        return ((outside * mask).sum() / mask.sum().clamp(min=1)).item()

    # ---- one step
    def step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        torch.manual_seed((cfg.seed * 1_000_003 + self.step_idx) * self.world + self.rank)  # as PPO
        prompts = self._prompts_for_step(self.step_idx)
        with self.accelerator.autocast():
            ro = self.rollout(prompts)  # PPO's: samples, scores - missing-EOS penalty, old and reference log-probs
        scores = self._normalised_scores(ro["scores"])  # warns about and counts non-finite scores
        valid = torch.isfinite(scores)
        scores = torch.where(valid, scores, torch.full_like(scores, float("nan")))  # NaN: left out of the baselines
        mask = ro["mask"] * valid.unsqueeze(1).float()  # an unscorable reply trains no token (as PPO)
        kl = kl_k1(ro["logprobs"], ro["ref_logprobs"]) * mask
        advantages = self.advantages(scores, ro, mask)

        losses, clipfracs = [], []
        self._no_dropout()
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size)
            for i in range(0, cfg.batch_size, cfg.mini_batch_size):
                idx = order[i : i + cfg.mini_batch_size]
                logits, values = self.policy_and_value(
                    ro["batch"].rows(idx), ro["responses"][idx], cfg.temperature, encoder_grad=self.train_encoder
                )
                logprobs = gather_logprobs(logits, ro["responses"][idx])
                loss, ratio = self.loss(logprobs, ro, idx, advantages, mask)
                # The value head is in no loss; the zero term only keeps DDP's "every parameter used" check happy.
                loss = loss + 0.0 * values.sum()
                if self.accelerator.reduce(torch.isfinite(loss).float(), "sum") < self.world:
                    msg = f"{self.name} step {self.step_idx}: non-finite loss, mini-batch skipped"
                    warnings.warn(msg, stacklevel=2)
                    self.skipped_batches += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                losses.append(loss.item())
                clipfracs.append(self.clip_fraction(ratio.detach(), mask[idx]))

        group_std = torch.nan_to_num(grouped(scores, cfg.k).std(dim=1), nan=0.0) if cfg.k > 1 else torch.zeros(1)
        record = mean_over_processes(
            {
                "reward": ro["raw_scores"][valid].mean().item(),
                "kl": kl.sum(dim=1)[valid].mean().item(),  # KL(pi || pi_SFT) per reply, nats (as PPO's)
                "entropy": ro["entropy"],
                "response_length": mask.sum(dim=1)[valid].mean().item(),
                "eos_fraction": ro["has_eos"].float().mean().item(),
                "loss": sum(losses) / len(losses) if losses else float("nan"),
                "clipfrac": sum(clipfracs) / len(clipfracs) if clipfracs else float("nan"),
                # groups whose k scores are all equal give no signal (advantage 0): trl's frac_reward_zero_std
                "frac_reward_zero_std": (group_std < 1e-8).float().mean().item(),
                "seconds": time.perf_counter() - t0,
            }
        )
        record = {"step": self.step_idx, **record, "beta": cfg.beta}
        self.history.append(record)
        self.samples.append({"step": self.step_idx, "prompt": prompts[0], "reply": ro["replies"][0],
                             "reward": ro["raw_scores"][0].item()})
        self.step_idx += 1
        return record


class RLOOTrainer(OnlineRLTrainer):
    """RLOO as trl 1.16: KL-penalised reply reward, leave-one-out baseline, one clipped ratio per reply."""

    name = "RLOO"

    def advantages(self, scores, ro, mask):
        # r_i = score_i - beta * sum_t k1_t (rollout's log-probs); A_i = r_i - mean of the other k - 1 rewards
        rewards = rloo_rewards(scores, ro["logprobs"], ro["ref_logprobs"], mask, self.cfg.beta)
        return rloo_advantages(rewards, self.cfg.k, normalize=self.cfg.normalize_advantages)

    def loss(self, logprobs, ro, idx, advantages, mask):
        m = mask[idx].bool()
        # sequence log-probs log pi(y_i) = sum_t log pi(y_t): the whole reply is one action
        new = torch.where(m, logprobs, 0.0).sum(-1)
        old = torch.where(m, ro["logprobs"][idx], 0.0).sum(-1)
        return rloo_policy_loss(new, old, advantages[idx], self.cfg.epsilon_low, self.cfg.epsilon_high)


class GRPOTrainer(OnlineRLTrainer):
    """GRPO as trl 1.16: group-normalised advantages, clipped per-token surrogate + beta * k3, "dapo" token mean."""

    name = "GRPO"

    def advantages(self, scores, ro, mask):
        # A_i = (r_i - mean_group) / (std_group + 1e-4); no KL in the reward (it is in the loss)
        return grpo_advantages(scores, self.cfg.k, self.cfg.scale_rewards)

    def loss(self, logprobs, ro, idx, advantages, mask):
        cfg = self.cfg
        per_token, ratio = grpo_per_token_loss(
            logprobs, ro["logprobs"][idx], advantages[idx], ro["ref_logprobs"][idx], beta=cfg.beta,
            epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
        )
        # one optimizer step per mini-batch: "dapo"'s token count is this mini-batch's (no accumulation)
        loss = aggregate_token_loss(per_token, mask[idx], cfg.loss_type, max_completion_length=cfg.max_new_tokens)
        return loss, ratio


TRAINERS = {"rloo": RLOOTrainer, "grpo": GRPOTrainer}


def online_defaults(method: str, preset: str = "tiny", **overrides) -> OnlineRLConfig:
    """Defaults per method and preset. On the tiny preset: 8 prompts x k = 4 replies per step, PPO's learning rate,
    mini-batches of 8 replies, 2 passes. beta: RLOO trl's 0.05 (in the reward); GRPO 0.04 (the paper's; trl's default
    0 would leave the KL to SFT unbounded against a learnt reward model, which the tiny policy exploits)."""
    from rlhf_helpers.ppo_stage import ppo_defaults
    from rlhf_helpers.presets import get_preset

    if method not in TRAINERS:
        raise ValueError(f"method must be one of {sorted(TRAINERS)}, got {method!r}")
    ppo = ppo_defaults(preset)
    base = {f: getattr(ppo, f) for f in ("learning_rate", "max_new_tokens", "temperature", "missing_eos_penalty",
                                         "max_grad_norm", "checkpoint_every")}
    cfg = OnlineRLConfig(seed=course_seed(), **base, steps=60, batch_size=32, mini_batch_size=8, ppo_epochs=2, k=4,
                         beta=0.05 if method == "rloo" else 0.04)
    if get_preset(preset).hub_name is not None:
        cfg = replace(cfg, batch_size=ppo.batch_size, mini_batch_size=ppo.mini_batch_size, steps=ppo.steps)
        cfg = replace(cfg, batch_size=max(cfg.batch_size - cfg.batch_size % cfg.k, cfg.k))
    if "k" in overrides and "batch_size" not in overrides:  # keep the prompts per step; k replies to each
        overrides["batch_size"] = (cfg.batch_size // cfg.k) * overrides["k"]
    return replace(cfg, **overrides)

