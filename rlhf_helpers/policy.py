"""One policy interface for both architectures: what SFT evaluation, generation and PPO need to know
about a model, and nothing else.

An RLHF trainer asks a policy four things: turn prompts into model inputs, sample replies, and give,
teacher-forced, the (tempered) logits and the last hidden state at every *reply* position — the
positions whose logits predict reply token t. Everything after that (masks, KL, GAE, losses) is the
same for every model and lives in ``ppo_math.py``.

* :class:`Seq2SeqPolicy` (Flan-T5): the prompt goes through the encoder once; the decoder reads the
  reply shifted right behind the decoder start token. The encoder's output can be reused by
  generation, the old/reference passes and every PPO epoch (the frozen-encoder shortcut).
* :class:`CausalPolicy` (GPT, Llama, SmolLM2): prompt and reply are one sequence. Prompts are
  **left**-padded so that every reply starts at the same column; ``position_ids`` count real tokens
  only (a left-padded row must not start at position 7); the logits that predict reply token t sit at
  column P - 1 + t, so the forward pass feeds prompt + reply[:-1] and computes the language-model head
  on the last T columns only (``logits_to_keep``). Replies end at their first EOS: the masks come from
  that length, never from ``ids != pad`` (pad is often EOS itself). There is no encoder to reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def generate(self, batch: PromptBatch, **kwargs) -> torch.Tensor:
        """Sampled or greedy replies, (B, T), right-padded after EOS; the decoder start token dropped."""
        # with the encoder's output when ``encode`` computed it (PPO reuses it), else from the prompt ids
        inputs = {"input_ids": batch.input_ids} if batch.encoder_out is None else {"encoder_outputs": batch.encoder_out}
        with torch.no_grad():
            gen = self.model.generate(**inputs, attention_mask=batch.attention_mask, **kwargs)
        return gen[:, 1:]

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
        logits = out.logits if temperature == 1.0 else out.logits / temperature
        return logits, out.decoder_hidden_states[-1]


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

    def generate(self, batch: PromptBatch, **kwargs) -> torch.Tensor:
        """Replies only, (B, T): the prompt columns cut off. After a row's EOS, generate pads with
        ``pad_token_id`` (which may be EOS itself: the masks use the first EOS, see ``response_mask``)."""
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        with torch.no_grad():
            gen = self.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
        return gen[:, batch.input_ids.shape[1] :]

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
        logits = out.logits if temperature == 1.0 else out.logits / temperature
        return logits, out.hidden_states[-1][:, -T:]


def policy_for(model, tokenizer, max_source_length: int = 512):
    """The interface that fits ``model``: :class:`Seq2SeqPolicy` or :class:`CausalPolicy`."""
    cls = Seq2SeqPolicy if is_encoder_decoder(model) else CausalPolicy
    return cls(model, tokenizer, max_source_length)
