"""The rollout's sampling loop: our own key/value-cached decoding, shared by PPO, RLOO, GRPO and evaluation.

Why not ``model.generate``? It returns only the tokens: PPO then ran the policy a second time over the same
tokens, teacher-forced, for the log-probs and values. This loop costs what ``generate`` costs (the same incremental
forwards; benchmarks/README.md, "Results with the sampling loop") and does both at once. At every step t it has the
logits z_t of reply position t, so it keeps

    log pi(y_t | x, y_<t) = log softmax(z_t / T)[y_t]    (the tempered log-prob, as every PPO pass uses)
    H_t = entropy of softmax(z_t / T)                     (logged)
    V(s_t) = value_head(h_t)                              (PPO's critic, on the same hidden state h_t)

and the separate old-log-prob/value pass disappears. The reference log-probs still need the SFT adapter: one
batched teacher-forced pass (``ppo.PPOTrainer.rollout``).

The token choice is ``generate``'s, step for step: the same logits processors (transformers' own
``MinNewTokensLengthLogitsProcessor``, ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``,
in generate's order), one ``torch.multinomial`` draw per step (or ``argmax`` when greedy), rows past their EOS
padded, and a stop when every row has ended. So at the same seed it samples the same tokens
(``tests/test_sampling.py``). Two differences, both deliberate: the model's own extra generation settings (a
repetition penalty, banned words: :data:`IGNORED_GENERATION_SETTINGS`) are left out, with a warning, and an unset
``top_k`` means no cut (``generate``'s default is 50). The log-probs are of softmax(z / T) *before* the min-length and
top-k/top-p cuts, exactly as the teacher-forced passes compute them (PPO's ratio and KL are of the tempered model, not
of the cut).

Only the two halves that know the architecture come from the policy (:mod:`rlhf_helpers.policy`):
``start_decoding`` (T5: the decoder reads its start token, the encoder output and its cross-attention keys
computed once; causal: the left-padded prompt goes in once) and ``continue_decoding`` (one new token per row).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlhf_helpers.ppo_math import entropy_from_logits, gather_logprobs


@dataclass
class SampledReplies:
    """What the loop returns, each (B, T) with T the longest reply: the tokens (right-padded with pad after a
    row's EOS), and when asked for, each token's tempered log-prob, the entropy at its position, and the value."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def stop_and_pad_ids(model, tokenizer=None, pad_token_id: int | None = None) -> tuple[list[int], int]:
    """(EOS ids, pad id) as ``generate`` takes them: the model's generation config first (SmolLM2's may list
    several EOS ids), then the tokenizer; pad (unless given) falls back to the first EOS, as in ``generate``."""
    cfg = model.generation_config
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the model has no EOS token id (generation_config.eos_token_id): a reply could never end")
    eos = [eos] if isinstance(eos, int) else list(eos)
    pad = pad_token_id if pad_token_id is not None else cfg.pad_token_id
    pad = pad if pad is not None else getattr(tokenizer, "pad_token_id", None)
    return eos, eos[0] if pad is None else pad


#: ``generation_config`` fields that change ``generate``'s token choice and that this loop does not apply (a model
#: whose config sets one gets a warning). PPO's log-probs are of softmax(z / T) without them, so leaving them out is
#: what keeps the sampled distribution and the trained one the same.
IGNORED_GENERATION_SETTINGS = (
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
    "min_length", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "sequence_bias",
    "exponential_decay_length_penalty",
)  # fmt: skip
_warned: set[int] = set()


def ignored_generation_settings(model) -> list[str]:
    """The :data:`IGNORED_GENERATION_SETTINGS` that ``model.generation_config`` sets to a non-default value."""
    from transformers import GenerationConfig

    cfg, default = model.generation_config, GenerationConfig()
    return [k for k in IGNORED_GENERATION_SETTINGS if getattr(cfg, k, None) != getattr(default, k, None)]


def logits_processors(
    eos: list[int], min_new_tokens: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
    device: torch.device | str = "cpu",
) -> LogitsProcessorList:
    """transformers' own processors, in ``generate``'s order: first the min-length ban on EOS, then (sampling
    only) temperature, top-k, top-p. ``device``: the logits' (the EOS ids are compared there)."""
    procs = LogitsProcessorList()
    if min_new_tokens > 0:  # counts the reply tokens so far (the loop passes only those)
        procs.append(MinNewTokensLengthLogitsProcessor(0, min_new_tokens, eos, device=device))
    if do_sample:
        if temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
    return procs


@torch.no_grad()
def sample_replies(
    policy,
    batch,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logprobs: bool = False,
    value_head: torch.nn.Module | None = None,
    pad_token_id: int | None = None,
) -> SampledReplies:
    """Sample (or, with ``do_sample=False``, greedily decode) up to ``max_new_tokens`` reply tokens for every
    prompt of ``batch`` (a :class:`policy.PromptBatch`), with ``policy`` a :mod:`rlhf_helpers.policy` interface.

    ``logprobs=True`` also returns each token's log softmax(z / T) and the entropy of that distribution;
    ``value_head`` also returns V at every position; ``pad_token_id`` fills rows past their EOS (default: the
    model's generation config, as ``generate``). The randomness is torch's global generator, drawn as
    ``generate`` draws it: seed it before the call for repeatable replies.
    """
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 to sample, got {temperature}")
    eos, pad = stop_and_pad_ids(policy.model, policy.tokenizer, pad_token_id)
    ignored = ignored_generation_settings(policy.model)
    if ignored and id(policy.model) not in _warned:
        _warned.add(id(policy.model))
        warnings.warn(f"the model's generation_config sets {', '.join(ignored)}: the sampling loop does not apply "
                      "it (PPO's log-probs are of softmax(z / T) without it)", stacklevel=2)
    device = batch.input_ids.device
    procs = logits_processors(eos, min_new_tokens, do_sample, temperature, top_k, top_p, device=device)
    eos_ids = torch.tensor(eos, device=device)
    n = batch.input_ids.shape[0]
    unfinished = torch.ones(n, dtype=torch.long, device=batch.input_ids.device)
    tokens = batch.input_ids.new_empty((n, 0))
    kept: dict[str, list[torch.Tensor]] = {"logprobs": [], "entropy": [], "values": []}

    logits, hidden, state = policy.start_decoding(batch, hidden=value_head is not None)
    for _ in range(max_new_tokens):
        z = logits.float()  # (B, V): the logits of this reply position
        scores = procs(tokens, z)
        if do_sample:
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)
        next_tokens = next_tokens * unfinished + pad * (1 - unfinished)  # a row past its EOS gets padding
        if logprobs:
            tempered = z if temperature == 1.0 else z / temperature
            kept["logprobs"].append(gather_logprobs(tempered, next_tokens))
            kept["entropy"].append(entropy_from_logits(tempered))
        if value_head is not None:
            kept["values"].append(value_head(hidden))
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
        unfinished = unfinished & ~torch.isin(next_tokens, eos_ids)
        if not unfinished.any() or tokens.shape[1] == max_new_tokens:
            break
        logits, hidden, state = policy.continue_decoding(next_tokens, state, hidden=value_head is not None)

    stacked = {k: torch.stack(v, dim=1) if v else None for k, v in kept.items()}
    return SampledReplies(tokens, **stacked)
