"""Batched generation shared by every stage (SFT evaluation, PPO rollouts' evaluation, the final
comparison), so all of them decode the same way, for both architectures (through :mod:`rlhf_helpers.policy`)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_helpers.policy import policy_for


@dataclass(frozen=True)
class DecodeSettings:
    """How replies are decoded. Greedy by default: evaluation must be repeatable."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def generate_responses(
    model,
    tokenizer,
    prompts: list[str],
    settings: DecodeSettings = DecodeSettings(),
    batch_size: int = 64,
    max_source_length: int = 512,
    seed: int | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Replies to ``prompts``, decoded without special tokens, in the prompts' order."""
    import torch
    from tqdm.auto import tqdm

    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    replies: list[str] = []
    kwargs = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    policy = policy_for(model, tokenizer, max_source_length)  # encoder-decoder or decoder-only (left-padded prompts)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        batch = policy.tokenize(prompts[start : start + batch_size], device)
        out = policy.generate(batch, **kwargs)  # the reply tokens only
        replies.extend(t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True))
    model.train(was_training)
    return replies
