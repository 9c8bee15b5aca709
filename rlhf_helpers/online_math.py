"""The equations of the critic-free online methods (RLOO, GRPO) and of best-of-N, as small tensor functions.

All three sample k replies per prompt from the policy and score them with the reward model, as PPO's rollout does.
RLOO and GRPO then need no value head: the other replies to the same prompt are the baseline (RLOO: the mean of the
other k - 1; GRPO: the group's mean, its own reply included, and its std); best-of-N does not train at all, it keeps
the best-scored reply. Tested against
hand-computed cases and against trl 1.16's ``GRPOTrainer``/``RLOOTrainer`` (``tests/test_preference_math.py``):

* ``rloo_advantages``: A_i = r_i - mean_{j != i} r_j (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019);
* ``rloo_rewards``: RLOO's reward, the score minus beta * the reply's summed k1 KL estimate to pi_ref;
* ``rloo_policy_loss``: trl's RLOO loss, PPO's clip on the *sequence* ratio pi(y)/pi_old(y);
* ``grpo_advantages``: A_i = (r_i - mean_group) / (std_group + 1e-4) (Shao et al. 2024, sec. 4.1.2, as trl 1.16);
* ``kl_k3``: the always-positive KL estimator GRPO puts in its loss, exp(ref - logp) - (ref - logp) - 1;
* ``grpo_per_token_loss``, ``aggregate_token_loss``: GRPO's clipped per-token loss plus beta * KL, and trl 1.16's
  ways ("dapo" by default, "grpo", "bnpo", "dr_grpo") of turning the per-token losses into one number;
* ``best_of_n_kl``, ``best_of_n_select``: best-of-N's KL to the base policy, log N - (N - 1)/N, and its choice.

**Layout.** A batch holds ``num_prompts * k`` replies *prompt-major*: the k replies to prompt 0 first, then the k to
prompt 1, ... (index = prompt * k + sample), i.e. what ``prompts.repeat_interleave(k)`` gives. trl 1.x lays them out
so (``RepeatSampler(mini_repeat_count=num_generations)``, trl/trainer/grpo_trainer.py:1311 and
trl/trainer/rloo_trainer.py:918) and reads them back with ``rewards.view(-1, num_generations)``
(grpo_trainer.py:2765, rloo_trainer.py:1675). trl 0.x's first RLOOTrainer (e.g. 0.11) was *sample-major*
(``queries.repeat(k, 1)``, ``rlhf_reward.reshape(rloo_k, -1)``): reshaping one layout as the other silently mixes up
the prompts' baselines.

**Unscorable replies.** A NaN reward (trl: every reward function returned None) is left out of its group's baseline
and gets advantage 0, as in trl 1.16 (grpo_trainer.py:2755-2810, rloo_trainer.py:1650-1699).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .ppo_math import kl_k1

GRPO_STD_EPS = 1e-4  # trl 1.16 adds it to the std (not to the variance), grpo_trainer.py:2787


def grouped(x: torch.Tensor, k: int) -> torch.Tensor:
    """The prompt-major flat batch ``(num_prompts * k,)`` as ``(num_prompts, k)``: row p holds prompt p's replies."""
    if x.dim() != 1 or k < 1 or x.numel() % k:
        raise ValueError(f"expected a flat tensor of num_prompts * {k} rewards, got shape {tuple(x.shape)}")
    return x.view(-1, k)


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Standard deviation with Bessel's correction (divide by n - 1) over the non-NaN entries; NaN where fewer than
    two entries are finite. The same definition as trl 1.16's ``nanstd`` (trl/trainer/utils.py:1021-1047), which
    GRPO's and RLOO's advantages use: for GRPO's small groups (k = 4: n - 1 = 3 against n = 4) the choice moves every
    advantage by sqrt(4/3) ~ 15%, so it has to match to reproduce trl."""
    finite = ~torch.isnan(x)
    count = finite.sum(dim=dim, keepdim=True) if dim is not None else finite.sum()
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dim is not None else torch.nanmean(x)
    var = torch.nansum((x - mean) ** 2, dim=dim, keepdim=True) if dim is not None else torch.nansum((x - mean) ** 2)
    std = torch.where(count > 1, var / (count - 1).clamp(min=1), torch.full_like(var, float("nan"))).sqrt()
    return std if keepdim or dim is None else std.squeeze(dim)


def rloo_advantages(rewards: torch.Tensor, k: int, normalize: bool = False) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = r_i - (1 / (k - 1)) * sum_{j != i} r_j.

    Each reply's baseline is the mean reward of the *other* k - 1 replies to the same prompt: it does not depend on
    reply i itself, so E[A_i * grad log pi(y_i)] stays the unbiased policy gradient, while the baseline takes out
    the prompt's difficulty as a learnt value head would. Equivalently A_i = k / (k - 1) * (r_i - mean_group).

    ``rewards``: ``(num_prompts * k,)`` prompt-major (module docstring); returns the same shape. With k = 1 there is
    no other reply and the advantages are 0 (trl's choice, rloo_trainer.py:1687-1692). ``normalize``: then whiten
    the advantages over the whole batch, (A - mean) / (std + 1e-4), Bessel-corrected — trl's ``normalize_advantages``
    (default False, rloo_trainer.py:1695-1696). A NaN reward is left out of its siblings' baselines (their divisor is
    the number of finite siblings) and gets advantage 0, as in trl (rloo_trainer.py:1682-1699).
    """
    g = grouped(rewards, k)
    if k == 1:
        return torch.zeros_like(rewards)
    finite_count = (~torch.isnan(g)).sum(dim=1, keepdim=True)
    baselines = (torch.nansum(g, dim=1, keepdim=True) - g) / (finite_count - 1)  # 0/0 = NaN: one finite reply only
    advantages = (g - baselines).reshape(-1)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + GRPO_STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0)


def rloo_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """RLOO's reward of a whole reply: r = score - beta * sum_t k1_t, k1_t = log pi_old(y_t) - log pi_ref(y_t).

    The RLHF objective of Stiennon et al. 2020 (eq. 2), as PPO uses it (``ppo_math.per_token_rewards`` summed over the
    reply), but applied once per reply: RLOO treats the whole reply as one action (Ahmadian et al. 2024, sec. 3), so the
    KL penalty enters the reward, and so the leave-one-out baseline, not the loss. trl 1.16 does exactly this, with the
    rollout's (old) log-probs and beta = 0.05 by default (rloo_trainer.py:1664-1673; config ``beta``)."""
    return scores - beta * torch.where(mask.bool(), kl_k1(logprobs, ref_logprobs), 0.0).sum(-1)


def rloo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """trl 1.16's RLOO loss (rloo_trainer.py:1822-1833), mean over replies:

    L = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps_low, 1 + eps_high)),  rho_i = pi(y_i) / pi_old(y_i),

    with *sequence* log-probs (``logprobs``, ``old_logprobs``: ``(batch,)``, summed over each reply's tokens, e.g.
    ``dpo_math.reply_logprobs``). One reply is one action, so one ratio per reply — unlike GRPO's per-token ratios. On
    the rollout's own policy rho = 1 and the gradient is -A_i grad log pi(y_i): plain REINFORCE with the leave-one-out
    baseline, Ahmadian et al.'s RLOO; the clip only matters when a batch is reused for more than one update.
    ``epsilon_high`` None means eps_high = eps_low (trl's default, rloo_trainer.py:611-612). Returns (loss, ratio)."""
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    return torch.max(-advantages * ratio, -advantages * clipped).mean(), ratio


def grpo_advantages(
    rewards: torch.Tensor,
    k: int,
    scale_rewards: Literal["group", "batch", "none"] = "group",
    eps: float = GRPO_STD_EPS,
) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, sec. 4.1.2, outcome supervision), one number per reply,
    given to every token of it:  A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    The group mean is the baseline (it includes r_i itself, unlike RLOO: A_i is RLOO's scaled by (k - 1) / k, then
    divided by the std). Exactly trl 1.16's choices (grpo_trainer.py:2763-2787, config defaults grpo_config.py:789):

    * the std is Bessel-corrected (``nanstd``: n - 1), and ``eps`` = 1e-4 is added to the std, not the variance;
      so a group whose replies all score the same gets advantage 0 (no signal, and no 0/0);
    * ``scale_rewards``: "group" (default) divides by each group's std; "batch" by the std of all rewards in the batch
      (the mean stays the group's); "none" does not divide (Dr. GRPO, Liu et al. 2025: dividing up-weights prompts
      that are too easy or too hard, where the few differing rewards make the std small);
    * k = 1: std 0, advantage 0 (grpo_trainer.py:2769-2773); a NaN reward is left out of its group's mean and std and
      gets advantage 0.

    ``rewards``: ``(num_prompts * k,)`` prompt-major; returns the same shape.
    """
    g = grouped(rewards, k)
    mean = torch.nanmean(g, dim=1, keepdim=True)
    if scale_rewards == "batch":
        std = nanstd(rewards) if rewards.numel() > 1 else torch.zeros(())
        std = std.expand_as(g)
    elif scale_rewards in ("group", "none"):
        std = nanstd(g, dim=1, keepdim=True) if k > 1 else torch.zeros_like(mean)
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    advantages = g - mean
    if scale_rewards != "none":
        advantages = advantages / (std + eps)
    return torch.nan_to_num(advantages.reshape(-1), nan=0.0)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate k3 = pi_ref/pi - log(pi_ref/pi) - 1 = exp(ref - logp) - (ref - logp) - 1
    (Schulman's "Approximating KL"; GRPO, Shao et al. 2024, eq. 4).

    Unbiased for KL(pi || pi_ref) under samples from pi, like k1 (``ppo_math.kl_k1``), but never negative
    (x - log x - 1 >= 0), with lower variance when pi is close to pi_ref: GRPO adds it to the loss token by token, where
    a negative k1 would reward moving away from pi_ref on that token. Its gradient in log pi is 1 - pi_ref/pi."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_per_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    bias_correction_kl: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's per-token loss (Shao et al. 2024, eq. 3, as a loss to minimise), shape ``(batch, reply_length)``:

    l_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * w_t * k3_t,   rho_t = pi(y_t)/pi_old(y_t).

    PPO's clipped surrogate (``ppo_math.clipped_policy_loss``) with the reply's one advantage ``A`` (``(batch,)``,
    from ``grpo_advantages`` or ``rloo_advantages``) on every token, and the KL to pi_ref in the loss (``kl_k3``), not
    in the reward. trl 1.16's choices (grpo_trainer.py:3095-3150, defaults in grpo_config.py):

    * ``beta`` = 0 by default in trl 1.16 (no reference model at all); the paper used 0.04;
    * ``epsilon_high`` None means eps_low (DAPO's "clip-higher" sets it above, e.g. 0.28);
    * ``delta``: if set, also caps the unclipped ratio at delta (two-sided clipping, default None);
    * ``bias_correction_kl`` (default True): w_t = rho_t, the importance weight that makes the KL term's gradient
      the unbiased gradient of KL(pi || pi_ref) (trl cites DeepSeek-V3.2). On the rollout's own policy rho_t = 1,
      so it changes no value, only the gradient: d(rho k3)/d log pi = k3 + 1 - pi_ref/pi = log pi/pi_ref, i.e. k1
      times grad log pi, the REINFORCE form of the reverse KL's gradient; without it (w_t = 1, the paper's loss)
      the gradient is (1 - pi_ref/pi) grad log pi.

    Positions outside the reply are not masked here: ``aggregate_token_loss`` does that. Returns (loss, ratio)."""
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = torch.exp(logprobs - old_logprobs)
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    unclipped = ratio.clamp(max=delta) if delta is not None else ratio
    loss = -torch.min(unclipped * advantages, clipped * advantages)
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta != 0 needs the reference's log-probs")
        kl = kl_k3(logprobs, ref_logprobs)
        loss = loss + beta * (kl * ratio if bias_correction_kl else kl)
    return loss, ratio


def aggregate_token_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = "dapo",
    max_completion_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """One loss from per-token losses over the reply tokens (``mask`` 1), as trl 1.16's ``loss_type``
    (grpo_trainer.py:3153-3174; default "dapo", grpo_config.py:801-802):

    * "grpo": mean over replies of each reply's token mean (the paper's 1/G sum_i 1/|o_i| sum_t). Every reply weighs
      the same whatever its length, so a long reply's tokens weigh less each: a length bias (Liu et al. 2025);
    * "bnpo": the mean over all reply tokens of this batch;
    * "dapo" (trl's default; Yu et al. 2025): the sum over reply tokens divided by ``num_items``, the number of reply
      tokens in the whole *generation* batch (trl's ``num_items_in_batch``, grpo_trainer.py:2498) — a token mean
      that stays one when the generation batch is split into micro-batches for gradient accumulation. Without
      ``num_items`` it is this batch's count, i.e. "bnpo";
    * "dr_grpo" (Liu et al. 2025): the sum divided by (replies x ``max_completion_length``), a constant.

    trl also divides "grpo", "bnpo" and "dr_grpo" by the number of accumulation steps (the "dapo" count already spans
    them); a trainer that accumulates must do that itself."""

    def masked_sum(x: torch.Tensor) -> torch.Tensor:  # per reply; where, not a product: no NaN from padding
        return torch.where(mask.bool(), x, 0.0).sum(-1)

    if loss_type == "grpo":
        return (masked_sum(per_token_loss) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked_sum(per_token_loss).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dapo":
        count = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token_loss.dtype)
        return masked_sum(per_token_loss).sum() / count.clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        return masked_sum(per_token_loss).sum() / (per_token_loss.shape[0] * max_completion_length)
    raise ValueError(f"loss_type must be 'dapo', 'grpo', 'bnpo' or 'dr_grpo', got {loss_type!r}")


def best_of_n_kl(n: int) -> float:
    """KL(pi_BoN || pi) = log N - (N - 1) / N, in nats (Stiennon et al. 2020, appendix; Gao et al. 2022).

    Best-of-N keeps the highest-scoring of N samples; if no two replies can tie in score, the chosen reply's score
    rank u = F(r) is distributed as the max of N uniforms, density N u^(N-1), so pi_BoN(y) = N F(r(y))^(N-1) pi(y) and
    KL = E[log N + (N - 1) log u] = log N - (N - 1) / N. With ties (a language model sampling the same reply twice,
    a reward model giving two replies the same score) the true KL is lower: the formula is then an upper bound
    (Beirami et al. 2024). It grows only like log N: N = 4 costs 0.64 nats, N = 16 1.84, N = 64 3.17."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_select(scores: torch.Tensor, n: int) -> torch.Tensor:
    """For each prompt, the index in [0, n) of its highest-scoring reply, ties to the first (the lowest index).

    ``scores``: ``(num_prompts * n,)`` prompt-major (module docstring); returns ``(num_prompts,)`` long. The flat index
    into the batch is ``arange(num_prompts) * n + index``. A NaN score (an unscorable reply) never wins; a prompt
    whose n scores are all NaN gets index 0. Ties go to the first by construction, not through ``argmax``'s tie
    rule, so the choice is part of this function's contract on every device."""
    g = grouped(scores, n)
    g = torch.where(torch.isnan(g), torch.full_like(g, -math.inf), g)
    is_best = g == g.max(dim=1, keepdim=True).values
    positions = torch.arange(n, device=scores.device).expand_as(g)
    return torch.where(is_best, positions, n).min(dim=1).values
