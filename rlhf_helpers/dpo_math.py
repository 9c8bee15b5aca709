"""The equations of direct preference optimisation (DPO, IPO) as small tensor functions.

DPO trains the policy on preference pairs (prompt x, chosen y_w, rejected y_l) directly, with no reward model and
no sampling: the reward is implicit, r(x, y) = beta * log pi(y | x) / pi_ref(y | x) (Rafailov et al. 2023, eq. 5),
and the Bradley-Terry likelihood of the pairs under that reward is the loss (eq. 7). Every function works on the
*summed* log-probability of each reply, so the same code serves encoder-decoder and decoder-only policies; tested
against hand-computed cases and against trl 1.16's ``DPOTrainer`` (``tests/test_preference_math.py``):

* ``reply_logprobs``, ``causal_reply_logprobs``: log pi(y | x) = sum_t log pi(y_t | x, y_<t) over the reply tokens;
* ``dpo_logits``: h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), what every loss here reads;
* ``dpo_loss``: -log sigmoid(beta * h) (eq. 7), with cDPO's label smoothing as an option;
* ``ipo_loss``: (h_avg - 1 / (2 beta))^2 (Azar et al. 2023, eq. 17), on per-token averaged log-ratios as trl does;
* ``implicit_rewards``, ``dpo_metrics``: the implicit rewards and what trl logs about them, under trl's names.

Which side of the pair is which: ``*_chosen`` is y_w (preferred), ``*_rejected`` is y_l; each is shape ``(pairs,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ppo_math import gather_logprobs


def reply_logprobs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) = sum_t mask_t * log softmax(logits_t)[y_t], one number per reply, shape ``(batch,)``.

    ``logits[:, t]`` must be the distribution that predicted ``tokens[:, t]`` (for an encoder-decoder that is the
    decoder's output at t; for a decoder-only model see ``causal_reply_logprobs``). Padding and prompt positions have
    mask 0 and add exactly 0 (``where``, not a product, so a -inf log-prob on a padded position cannot make a NaN).
    DPO needs the *sum*, not the mean: the sequence probability pi(y | x) is the product of the token probabilities.
    """
    logprobs = gather_logprobs(logits, tokens)
    return torch.where(mask.bool(), logprobs, torch.zeros_like(logprobs)).sum(-1)


def causal_reply_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
    """``reply_logprobs`` for a decoder-only model that read prompt + reply as one sequence ``input_ids``.

    The logits at position t predict token t + 1, so logits, tokens and mask are shifted by one:
    ``reply_mask`` marks the reply's tokens in ``input_ids`` (1 on the reply, EOS included, 0 on prompt and padding)
    — trl's ``completion_mask`` (``DataCollatorForPreference``, trl/trainer/dpo_trainer.py:86-207), which trl shifts
    the same way (``completion_mask[..., 1:]``, dpo_trainer.py:1297)."""
    return reply_logprobs(logits[:, :-1], input_ids[:, 1:], reply_mask[:, 1:])


def dpo_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """h = log pi(y_w)/pi_ref(y_w) - log pi(y_l)/pi_ref(y_l), per pair.

    beta * h is the implicit reward margin r(x, y_w) - r(x, y_l); the prompt's partition function Z(x), which makes
    the reward of eq. 5 intractable on its own, cancels in this difference — which is why DPO needs pairs."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO's loss, mean over pairs (Rafailov et al. 2023, eq. 7):  L = -log sigmoid(beta * h).

    It is the Bradley-Terry negative log-likelihood of the reward model of notebook 03, with the implicit reward
    beta * log pi/pi_ref in place of a learnt one. Its gradient is -beta * sigmoid(-beta * h) * grad h: a pair the
    implicit reward already orders confidently (beta * h >> 0) has weight ~0, a wrongly ordered one weight ~beta.
    ``beta`` plays the role of PPO's KL coefficient (small beta: the policy may move further from pi_ref).

    ``label_smoothing`` = eps > 0 is conservative DPO (cDPO, Mitchell 2023): each label is taken as flipped with
    probability eps, L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), so the loss has a finite minimum
    at beta * h = log((1 - eps) / eps) instead of pushing h to infinity. trl <= 0.x applied this smoothing to its
    "sigmoid" loss; trl 1.16's "sigmoid" ignores ``label_smoothing`` (trl/trainer/dpo_trainer.py:1387-1388) and the
    same formula lives in its "aot" loss, which equals it for a batch of one pair (dpo_trainer.py:1447-1457). At
    eps = 0 this is exactly trl 1.16's default ``loss_type="sigmoid"``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    logits = beta * dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(logits)  # logsigmoid, not log(sigmoid): finite for |beta h| in the hundreds
    if label_smoothing > 0:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-logits)
    return losses.mean()


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """IPO's loss, mean over pairs (Azar et al. 2023, eq. 17, beta = their tau):  L = (h_avg - 1 / (2 beta))^2,

    h_avg = (log pi(y_w) - log pi_ref(y_w)) / |y_w| - (log pi(y_l) - log pi_ref(y_l)) / |y_l|.

    DPO's loss keeps falling as h grows, so on pairs with a deterministic preference it drives h (and the KL to
    pi_ref) to infinity however large beta is; IPO instead regresses the margin onto a finite target 1 / (2 beta),
    so beta keeps its meaning as a regulariser. The per-token averages (``*_lengths`` = number of reply tokens, EOS
    included) are trl's choice, not the paper's equation: trl 1.16 divides each summed log-ratio by the reply's
    token count (``completion_mask.sum(dim=1)``, trl/trainer/dpo_trainer.py:1393-1404), a normalisation its comment
    says the IPO authors confirmed their reported results use. Without it the squared loss grows with reply length
    and one beta would not fit short and long replies alike.
    """
    chosen = (policy_chosen_logps - ref_chosen_logps) / chosen_lengths.clamp(min=1)
    rejected = (policy_rejected_logps - ref_rejected_logps) / rejected_lengths.clamp(min=1)
    return ((chosen - rejected - 1 / (2 * beta)) ** 2).mean()


def implicit_rewards(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x)) (Rafailov et al. 2023, eq. 5 without its beta log Z(x),
    which is the same for both replies to one prompt and so cancels in every comparison). Detached: it is a
    measurement, never a term of the loss."""
    return beta * (policy_logps - ref_logps).detach()


def dpo_metrics(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """What trl 1.16's ``DPOTrainer`` logs about the implicit rewards, with its names and definitions
    (trl/trainer/dpo_trainer.py:1581-1601), means over the batch's pairs:

    * ``rewards/chosen``, ``rewards/rejected``: beta * log pi/pi_ref of y_w and of y_l (0 at the start: pi = pi_ref);
    * ``rewards/margins``: their difference, beta * h — the quantity DPO's loss pushes up;
    * ``rewards/accuracies``: the share of pairs with r(y_w) > r(y_l) strictly (a tie counts as wrong, so it starts
      at 0, not 0.5, while pi = pi_ref);
    * ``logps/chosen``, ``logps/rejected``: the policy's summed log-probs. Watch these: DPO may raise the margin by
      lowering both (the chosen log-prob falling too is a known DPO behaviour, not a bug in the loss).

    trl logs the same beta * (summed) log-ratios for IPO, where the loss itself reads per-token averages."""
    chosen = implicit_rewards(policy_chosen_logps, ref_chosen_logps, beta)
    rejected = implicit_rewards(policy_rejected_logps, ref_rejected_logps, beta)
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "logps/chosen": policy_chosen_logps.detach().mean().item(),
        "logps/rejected": policy_rejected_logps.detach().mean().item(),
    }
