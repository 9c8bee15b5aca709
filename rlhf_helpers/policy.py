"""One policy interface for both architectures: what SFT evaluation, generation and PPO need to know
about a model, and nothing else.

An RLHF trainer asks a policy four things: turn prompts into model inputs, sample replies, and give,
teacher-forced, the (tempered) logits and the last hidden state at every *reply* position — the
positions whose logits predict reply token t. Everything after that (masks, KL, GAE, losses) is the
same for every model and lives in ``ppo_math.py``.

* :class:`Seq2SeqPolicy` (Flan-T5): the prompt goes through the encoder once; the decoder reads the
  reply shifted right behind the decoder start token. The encoder's output can be reused by
  the sampling loop, the reference pass and every PPO epoch (the frozen-encoder shortcut).
* :class:`CausalPolicy` (GPT, Llama, SmolLM2): prompt and reply are one sequence. Prompts are
  **left**-padded so that every reply starts at the same column; ``position_ids`` count real tokens
  only (a left-padded row must not start at position 7); the logits that predict reply token t sit at
  column P - 1 + t, so the forward pass feeds prompt + reply[:-1] and computes the language-model head
  on the last T columns only (``logits_to_keep``). Replies end at their first EOS: the masks come from
  that length, never from ``ids != pad`` (pad is often EOS itself). There is no encoder to reuse.

Both also decode one token at a time with a key/value cache (``start_decoding`` / ``continue_decoding``): the
two architecture-specific halves of the rollout's sampling loop in :mod:`rlhf_helpers.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_helpers.sampling import sample_replies

#: what one decoding step returns: (logits (B, V), last hidden state (B, H) or None, the cache and what else the
#: next step needs)
Decoded = tuple[torch.Tensor, "torch.Tensor | None", dict]


def is_encoder_decoder(model) -> bool:
    """True for T5-like models (also through a peft wrapper)."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


#: What a causal policy sees before its reply when the tokenizer has no chat template (the tiny-causal preset):
#: the prompt, then this cue. The tiny-causal base is pretrained on documents of exactly this form.
REPLY_CUE = " Reply:"


def prompt_text(tokenizer, prompt: str) -> str:
    """The text a causal policy is given for ``prompt``: the tokenizer's chat template (one user turn, generation
    prompt added) when it has one, as instruction-tuned models expect; else ``prompt + REPLY_CUE``."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + REPLY_CUE


@dataclass
class PromptBatch:
    """Tokenised prompts (``input_ids``, ``attention_mask``) plus, for an encoder-decoder, the encoder's output."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    encoder_out: object = None

    def rows(self, idx: torch.Tensor) -> PromptBatch:
        enc = None
        if self.encoder_out is not None:
            enc = (self.encoder_out.last_hidden_state[idx],)
        return PromptBatch(self.input_ids[idx], self.attention_mask[idx], enc)


class Seq2SeqPolicy:
    """Encoder-decoder (T5). ``encode`` runs the encoder once (no gradient); pass ``encoder_grad=True`` to
    ``forward`` to re-run it with gradients (``train_encoder=True`` in PPO)."""

    is_encoder_decoder = True

    def __init__(self, model, tokenizer, max_source_length: int = 512):
        self.model, self.tokenizer, self.max_source_length = model, tokenizer, max_source_length

    def texts(self, prompts: list[str]) -> list[str]:
        return list(prompts)

    def tokenize(self, prompts: list[str], device) -> PromptBatch:
        b = self.tokenizer(
            self.texts(prompts), return_tensors="pt", padding=True, truncation=True, max_length=self.max_source_length
        ).to(device)
        return PromptBatch(b.input_ids, b.attention_mask)

    def run_encoder(self, batch: PromptBatch) -> PromptBatch:
        """The encoder's output under the active adapter (no gradient: the rollout's)."""
        with torch.no_grad():
            out = self.model.get_encoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return PromptBatch(batch.input_ids, batch.attention_mask, out)

    def encode(self, prompts: list[str], device) -> PromptBatch:
        return self.run_encoder(self.tokenize(prompts, device))

    def generate(self, batch: PromptBatch, **settings) -> torch.Tensor:
        """Sampled or greedy replies, (B, T), right-padded after EOS, without the decoder start token: our sampling
        loop (``sampling.sample_replies``, ``generate``'s tokens at the same seed), on the encoder's output when
        ``encode`` computed it (PPO reuses it). ``settings``: max_new_tokens, min_new_tokens, do_sample,
        temperature, top_k, top_p."""
        return sample_replies(self, batch, **settings).tokens

    def forward(self, batch: PromptBatch, responses: torch.Tensor, temperature: float = 1.0, encoder_grad=False):
        """(logits / T, last decoder hidden state) at every reply position, teacher-forced: the decoder input
        is the reply shifted right behind the start token, so position t predicts reply token t (t = 0 too)."""
        enc = batch.encoder_out
        if encoder_grad:
            enc = self.model.get_encoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        start = self.model.config.decoder_start_token_id
        decoder_input = torch.cat([torch.full_like(responses[:, :1], start), responses[:, :-1]], dim=1)
        out = self.model(
            encoder_outputs=enc,
            attention_mask=batch.attention_mask,
            decoder_input_ids=decoder_input,
            output_hidden_states=True,
            use_cache=False,
        )
        logits = out.logits.float()  # fp32 log-probs also under bf16 autocast (a no-op in fp32)
        logits = logits if temperature == 1.0 else logits / temperature
        return logits, out.decoder_hidden_states[-1]

    # ---- incremental decoding (the sampling loop of rlhf_helpers.sampling)
    def start_decoding(self, batch: PromptBatch, hidden: bool = False) -> Decoded:
        """(logits, last hidden state or None, state) for reply token 0: the decoder reads its start token. The
        encoder runs here only if ``encode`` did not (its output, and with it the cross-attention keys and values
        the cache computes once, serve every decoding step)."""
        if batch.encoder_out is None:
            batch = self.run_encoder(batch)
        start = self.model.config.decoder_start_token_id
        first = torch.full_like(batch.input_ids[:, :1], start)
        state = {"batch": batch, "cache": None}
        return self.continue_decoding(first[:, 0], state, hidden)

    def continue_decoding(self, tokens: torch.Tensor, state: dict, hidden: bool = False) -> Decoded:
        """Feed one token per row, (B,); (logits, hidden or None, state) for the next reply position."""
        batch = state["batch"]
        out = self.model(
            encoder_outputs=batch.encoder_out,
            attention_mask=batch.attention_mask,
            decoder_input_ids=tokens[:, None],
            cache=state["cache"],
            use_cache=True,
            output_hidden_states=hidden,
        )
        state["cache"] = out.cache
        return out.logits[:, -1], (out.decoder_hidden_states[-1][:, -1] if hidden else None), state


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_ids that count real tokens only: a left-padded row's first real token is position 0."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class CausalPolicy:
    """Decoder-only (Llama, GPT, SmolLM2): prompt and reply in one left-padded sequence."""

    is_encoder_decoder = False

    def __init__(self, model, tokenizer, max_source_length: int = 512):
        self.model, self.tokenizer, self.max_source_length = model, tokenizer, max_source_length
        if tokenizer.pad_token_id is None:  # GPT-2-style tokenizers have none; masks never rely on it
            tokenizer.pad_token = tokenizer.eos_token

    def texts(self, prompts: list[str]) -> list[str]:
        return [prompt_text(self.tokenizer, p) for p in prompts]

    def tokenize(self, prompts: list[str], device) -> PromptBatch:
        tok = self.tokenizer
        side, trunc = tok.padding_side, tok.truncation_side
        tok.padding_side, tok.truncation_side = "left", "left"  # replies start in one column; keep a prompt's end
        try:
            b = tok(
                self.texts(prompts),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_source_length,
                add_special_tokens=False,  # the chat template / the tiny format already holds any special tokens
            ).to(device)
        finally:
            tok.padding_side, tok.truncation_side = side, trunc
        return PromptBatch(b.input_ids, b.attention_mask)

    def run_encoder(self, batch: PromptBatch) -> PromptBatch:
        return batch  # nothing to precompute: no encoder

    def encode(self, prompts: list[str], device) -> PromptBatch:
        return self.tokenize(prompts, device)

    def generate(self, batch: PromptBatch, **settings) -> torch.Tensor:
        """Replies only, (B, T): our sampling loop (``sampling.sample_replies``, ``generate``'s tokens at the same
        seed). After a row's EOS it pads with the tokenizer's pad id (which may be EOS itself: the masks use the
        first EOS, see ``response_mask``). ``settings`` as for :meth:`Seq2SeqPolicy.generate`."""
        return sample_replies(self, batch, pad_token_id=self.tokenizer.pad_token_id, **settings).tokens

    def forward(self, batch: PromptBatch, responses: torch.Tensor, temperature: float = 1.0, encoder_grad=False):
        """(logits / T, last hidden state) at the T columns that predict the reply: prompt + reply[:-1] goes in, and
        the language-model head runs on the last T columns only (column P - 1 + t predicts reply token t)."""
        T = responses.shape[1]
        ids = torch.cat([batch.input_ids, responses[:, :-1]], dim=1)
        mask = torch.cat([batch.attention_mask, torch.ones_like(responses[:, :-1])], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=left_padded_positions(mask),
            logits_to_keep=T,
            output_hidden_states=True,
            use_cache=False,
        )
        logits = out.logits.float()  # fp32 log-probs also under bf16 autocast (a no-op in fp32)
        logits = logits if temperature == 1.0 else logits / temperature
        return logits, out.hidden_states[-1][:, -T:]

    # ---- incremental decoding (the sampling loop of rlhf_helpers.sampling)
    def start_decoding(self, batch: PromptBatch, hidden: bool = False) -> Decoded:
        """(logits, last hidden state or None, state) for reply token 0: the whole left-padded prompt goes in once
        (the head only on its last column), and the key/value cache keeps it for the steps after."""
        positions = left_padded_positions(batch.attention_mask)
        state = {"mask": batch.attention_mask, "position": positions[:, -1], "cache": None}
        return self._decode(batch.input_ids, positions, state, hidden)

    def continue_decoding(self, tokens: torch.Tensor, state: dict, hidden: bool = False) -> Decoded:
        """Feed one token per row, (B,): it sits one position after the row's last real token (a left-padded row
        counts its real tokens only), and every row attends to it (also rows already past their EOS, as in
        ``generate``: what they produce is padding that no mask counts)."""
        state["mask"] = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=1)
        state["position"] = state["position"] + 1
        return self._decode(tokens[:, None], state["position"][:, None], state, hidden)

    def _decode(self, ids: torch.Tensor, positions: torch.Tensor, state: dict, hidden: bool) -> Decoded:
        out = self.model(
            input_ids=ids,
            attention_mask=state["mask"],
            position_ids=positions,
            cache=state["cache"],
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=hidden,
        )
        state["cache"] = out.cache
        return out.logits[:, -1], (out.hidden_states[-1][:, -1] if hidden else None), state


def policy_for(model, tokenizer, max_source_length: int = 512):
    """The interface that fits ``model``: :class:`Seq2SeqPolicy` or :class:`CausalPolicy`."""
    cls = Seq2SeqPolicy if is_encoder_decoder(model) else CausalPolicy
    return cls(model, tokenizer, max_source_length)
