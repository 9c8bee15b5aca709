"""Best-of-N (rejection sampling): sample N replies per prompt from the SFT policy, keep the reward model's favourite.

No training at all: the policy is pi_SFT, and the reward model only ranks. The distribution of the kept reply is
pi_BoN(y) = N F(r(y))^(N-1) pi_SFT(y) (F: the CDF of the score under pi_SFT), whose KL to pi_SFT has the closed form

    KL(pi_BoN || pi_SFT) = log N - (N - 1) / N                       (Stiennon et al. 2020; Gao et al. 2022)

(``online_math.best_of_n_kl``; an upper bound when scores tie). It is the baseline every RL method has to beat at the
same KL: the price is N samples and N reward-model calls per prompt at inference time, instead of training.

The replies are scored as PPO's rollouts are: the reward model's score minus ``missing_eos_penalty`` for a reply that
never ends (no EOS within ``max_new_tokens``), so a reply cut off mid-sentence is not kept for its partial text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_helpers.online_math import best_of_n_kl, best_of_n_select
from rlhf_helpers.policy import policy_for
from rlhf_helpers.ppo_math import has_eos
from rlhf_helpers.sampling import stop_and_pad_ids


@dataclass
class BestOfNResult:
    replies: list[str]  # the kept reply per prompt
    scores: list[float]  # its score (reward model minus the missing-EOS penalty)
    index: list[int]  # which of the N samples it was, in [0, N)
    all_replies: list[list[str]]  # the N samples per prompt
    all_scores: list[list[float]]
    n: int
    kl: float  # the analytic KL(pi_BoN || pi_SFT), nats


def best_of_n(
    model,
    tokenizer,
    reward_fn,
    prompts: list[str],
    n: int,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    missing_eos_penalty: float = 3.0,
    seed: int = 0,
    prompts_per_batch: int = 16,
    max_source_length: int = 96,
) -> BestOfNResult:
    """For each prompt, N replies sampled from ``model`` (its active adapter: the SFT policy) at ``temperature``
    (no top-k/top-p cut: the samples are pi_SFT's own, as the analytic KL assumes), scored by
    ``reward_fn(prompts, replies)``, the highest kept (ties: the first sample). Deterministic from ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    policy = policy_for(model, tokenizer, max_source_length)
    eos_ids = stop_and_pad_ids(model, tokenizer)[0]  # every id the sampling loop stops at
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    all_replies: list[list[str]] = []
    all_scores: list[list[float]] = []
    for start in range(0, len(prompts), prompts_per_batch):
        chunk = prompts[start : start + prompts_per_batch]
        repeated = [p for p in chunk for _ in range(n)]  # prompt-major: row p * n + i is prompt p's i-th sample
        batch = policy.encode(repeated, device)
        responses = policy.generate(
            batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens
        )
        ended = has_eos(responses, eos_ids)
        replies = [t.strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)]
        scores = torch.tensor(reward_fn(repeated, replies), dtype=torch.float)
        scores = scores - missing_eos_penalty * (~ended).float().cpu()
        for p in range(len(chunk)):
            all_replies.append(replies[p * n : (p + 1) * n])
            all_scores.append(scores[p * n : (p + 1) * n].tolist())
    model.train(was_training)
    flat = torch.tensor([s for row in all_scores for s in row], dtype=torch.float)
    index = best_of_n_select(flat, n).tolist() if len(flat) else []
    return BestOfNResult(
        replies=[all_replies[p][i] for p, i in enumerate(index)],
        scores=[all_scores[p][i] for p, i in enumerate(index)],
        index=index,
        all_replies=all_replies,
        all_scores=all_scores,
        n=n,
        kl=best_of_n_kl(n),
    )
