"""The equations of PPO for RLHF as small tensor functions — read this before ``ppo.py``.

Each function is one formula with its source, written on whole batches of replies (shape
``(batch, reply_length)``) and tested against hand-computed cases (``tests/test_ppo.py``):

* ``response_mask``: which reply tokens are actions of the policy (up to and including the first EOS; ``is_eos``
  and ``has_eos`` take every EOS id of the generation config);
* ``kl_k1`` and ``per_token_rewards``: the KL-penalised reward of Stiennon et al. 2020, eq. 2;
* ``gae``: generalised advantage estimation (Schulman et al. 2016);
* ``clipped_policy_loss`` and ``clipped_value_loss``: PPO's clipped objectives (Schulman et al. 2017), and
  ``policy_clip_fraction``: how many tokens the clip really stops;
* ``AdaptiveKLController``: the adaptive beta of Ziegler et al. 2019;
* ``masked_whiten``, ``RunningMoments``, ``logsumexp``, ``gather_logprobs``, ``entropy_from_logits``,
  ``logprobs_and_entropy``: the plumbing (``gather_logprobs`` with a memory-saving backward, ``logsumexp``
  without torch's slow path for underflowing exponents).

Nothing here knows about models, so the same functions serve encoder-decoder and decoder-only policies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def is_eos(responses: torch.Tensor, eos_token_id: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """True where a token is an EOS. ``eos_token_id``: one id, or several, as a model's generation config may list
    (Qwen2.5's lists two, and ``generate`` and our sampling loop stop at either; counting only the tokenizer's own
    would treat a reply that ended with the other as one that never ended)."""
    if eos_token_id is None:
        raise ValueError("no EOS token id: a reply could never end (set generation_config.eos_token_id)")
    ids = torch.as_tensor(eos_token_id, device=responses.device).reshape(-1)  # an int, numpy int, list or tensor
    return torch.isin(responses, ids.to(responses.dtype))


def response_mask(responses: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """1 for every generated token up to and including the first EOS (any of the ids, :func:`is_eos`), 0 after it.

    The first token is always 1 (it is a real action of the policy), so an EOS-only reply is a
    one-token reply, not an empty one. Replies without EOS are all ones.
    """
    eos = is_eos(responses, eos_token_id).int()
    eos_before = torch.cumsum(eos, dim=1) - eos  # EOS tokens strictly before position t
    return (eos_before == 0).float()


def has_eos(responses: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B,) True for the replies that ended (an EOS anywhere, any of the ids): the others hit the length limit."""
    return is_eos(responses, eos_token_id).any(dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, min_std: float = 1e-2) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, as in trl and the OpenAI code).

    The std is floored at ``min_std``: whitening a near-constant batch (every reply scored the same, no
    KL yet) would otherwise divide rounding noise by ~1e-4 and blow it up 10,000-fold into advantages
    of size ~1; with the floor the amplification is at most 1 / min_std = 100. PPO's advantages have a
    std of order 1 (scores are normalised), so the floor never acts in a healthy run."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var.clamp(min=min_std**2) + 1e-8)
    return whitened if shift_mean else whitened + mean


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate k1 = log pi(y_t) - log pi_ref(y_t) (Schulman's "Approximating KL").
    Unbiased for KL(pi || pi_ref) under samples from pi — so both log-probs must be those of the
    distribution the replies were drawn from (softmax(z / T) at sampling temperature T, as the
    trainer computes them); can be negative for a single token."""
    return logprobs - ref_logprobs


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), masked.

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1}.
    Positions after the reply's end have mask 0: their value is 0, so the last real token
    bootstraps from 0 (the episode ends there). Returns (advantages, returns = A + V).
    """
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """r_t = -beta * KL_t on every reply token, plus the reward-model score on the last one
    (paper eq. 2 spread over tokens: summing r_t gives r(x, y) - beta * log pi/pi_SFT)."""
    rewards = -beta * kl * mask
    last = mask.sum(dim=1).long() - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

    L = E_t[ max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)) ],  rho_t = pi(y_t) / pi_old(y_t).
    Returns (loss, ratio)."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = ratio.clamp(1 - cliprange, 1 + cliprange)
    return masked_mean(torch.max(-advantages * ratio, -advantages * clipped), mask), ratio


def policy_clip_fraction(ratio, advantages, mask, cliprange: float) -> torch.Tensor:
    """The share of reply tokens whose gradient the clip really stops: the clipped term wins the max
    above only when the ratio left [1 - eps, 1 + eps] in the direction the advantage pushes it
    (rho > 1 + eps with A > 0, rho < 1 - eps with A < 0). A ratio outside the range the other way is
    not clipped: its unclipped term is the larger loss, and its gradient flows."""
    clipped = ((ratio > 1 + cliprange) & (advantages > 0)) | ((ratio < 1 - cliprange) & (advantages < 0))
    return masked_mean(clipped.float(), mask)


def clipped_value_loss(values, old_values, returns, mask, cliprange_value: float):
    """0.5 * E_t[ max((V - R)^2, (V_clip - R)^2) ], V_clip = V_old + clip(V - V_old, -eps_v, eps_v):
    the value function may not move further than eps_v per update either (OpenAI's PPO2 code).
    Returns (loss, clip fraction): the share of tokens where the clipped term is the larger one, i.e.
    where the clip really stops the value's gradient."""
    v_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon) (Ziegler et al. 2019).

    ``n`` is the number of replies the KL was measured on: beta moves by at most 20% per ``horizon``
    replies, towards the value that holds the KL per reply at ``target``."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        error = max(min(kl / self.target - 1, 0.2), -0.2)
        self.beta *= 1 + error * n_steps / self.horizon


class RunningMoments:
    """Running mean/std of reward-model scores (parallel Welford), to normalise them.

    Non-finite scores are left out: one NaN would otherwise make the mean NaN for good, and every
    later batch would be NaN too. A batch with no finite score leaves the statistics as they were."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: torch.Tensor) -> None:
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return
        batch_mean, batch_var, n = x.mean().item(), x.var(unbiased=False).item(), x.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-8))


#: Below exp(-80) < 2e-35 a term of a sum whose largest term is exp(0) = 1 (the maximum subtracted first) cannot change
#: an fp32 result (fp32 numbers near 1 are 1.2e-7 apart), so clamping the exponent there changes a sum by float
#: rounding at most. It is for speed: torch's exp is ~30x slower on arguments whose result underflows (on this 2-core
#: CPU 11 ms against 0.3 ms for 8 x 32128 logits at the scale of a random-init T5), and a 32k-word distribution holds
#: thousands of them.
EXP_FLOOR = -80.0


def logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """log sum_i exp(z_i) over the last dimension, as m + log sum_i exp(z_i - m) with m = max_i z_i and each
    exponent clamped at :data:`EXP_FLOOR` (``torch.logsumexp``'s value to float rounding, without its slow path).
    For finite logits, as models produce."""
    m = logits.amax(dim=-1, keepdim=True)
    return (logits - m).clamp_(min=EXP_FLOOR).exp_().sum(dim=-1).log_() + m.squeeze(-1)


def softmax_from(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """softmax(z) = exp(z - logsumexp(z)), the exponent clamped as in :func:`logsumexp`: probabilities below 2e-35
    read as 2e-35."""
    return (logits - lse.unsqueeze(-1)).clamp_(min=EXP_FLOOR).exp_()


class _TokenLogprob(torch.autograd.Function):
    """z_y - logsumexp(z) with a hand-written backward, d/dz = onehot(y) - softmax(z).

    The same numbers as autograd's chain (gather, logsumexp, sub) to float rounding (``logsumexp`` above), but one
    vocabulary-sized buffer in the backward where the chain allocates four: with Flan-T5's 32k vocabulary, a
    mini-batch of 4 x 16 reply tokens saves ~25 MB per backward (``benchmarks/ppo_step.py``: training memory
    152 -> 99 MB with the reply-by-reply rollout below). First derivatives only, as PPO needs."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        lse = logsumexp(logits)
        ctx.save_for_backward(logits, tokens, lse)
        return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    @torch.autograd.function.once_differentiable  # the in-place ops below do not support a second derivative
    def backward(ctx, grad: torch.Tensor):
        logits, tokens, lse = ctx.saved_tensors
        grad_logits = softmax_from(logits, lse).mul_(-grad.unsqueeze(-1))  # -g * softmax(z)
        return grad_logits.scatter_add_(-1, tokens.unsqueeze(-1), grad.unsqueeze(-1)), None  # + g at y


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the full log-softmax tensor."""
    return _TokenLogprob.apply(logits, tokens)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum_i p_i log p_i with log p = z - logsumexp(z) (more accurate than logsumexp(z) - sum_i p_i z_i, which
    subtracts two numbers of the logits' size)."""
    logp = logits - logsumexp(logits).unsqueeze(-1)
    return -(logp.clamp(min=EXP_FLOOR).exp_() * logp).sum(-1)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, entropy: bool = True):
    """(log pi(y_t), entropy_t or None) of a whole batch, one reply at a time (for the no-grad rollout
    passes): the vocabulary-sized temporaries then exist for one reply, not for the whole batch.
    Row by row gives the same numbers as the whole batch at once."""
    if logits.shape[:-1] != tokens.shape:  # zip would silently drop rows where gather_logprobs broadcasts
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    logprobs = torch.stack([gather_logprobs(z, y) for z, y in zip(logits, tokens)])
    return logprobs, torch.stack([entropy_from_logits(z) for z in logits]) if entropy else None
