"""Build the offline ``tiny-causal`` preset: a small decoder-only ``LlamaForCausalLM`` and its tokenizer,
pretrained locally by next-token prediction on the course corpus.

Why a second tiny model? Every current RLHF library and course teaches on decoder-only models, and
what changes between the architectures (left padding, where a reply's log-probs come from, no encoder
to reuse) is best seen on a model small enough to train on a laptop in a minute, like ``tiny``.

The two ingredients, kept as close to the tiny T5 as possible so the two presets compare fairly:

1. the tokenizer: the **same trained unigram vocabulary** as the tiny T5 (:mod:`rlhf_helpers.tiny_model`),
   with three changes a decoder-only model needs. It appends **no EOS** by itself (T5's post-processor
   adds ``</s>`` to every text; a causal prompt must end where the reply begins, and trl's ``SFTTrainer``
   adds the EOS to the completion itself), it pads on the **left** (every reply then starts in the same
   column), and the 100 ``<extra_id_*>`` span-corruption sentinels are dropped (nothing here uses them).
   pad (``<pad>``, 0) and EOS (``</s>``, 1) stay distinct, so a mask may never confuse them. No chat
   template: :func:`rlhf_helpers.policy.prompt_text` gives the model ``prompt + REPLY_CUE``.
2. the model: a Llama (RMSNorm, rotary positions, SwiGLU feed-forward, tied input/output embeddings) at
   about 1M parameters, pretrained by next-token prediction on the corpus as plain text (each prompt and each
   reply its own document, ending with EOS): it learns the language, not the task. SFT then teaches it to answer
   after ``prompt + REPLY_CUE``, as instruction tuning teaches a real base model.

Deterministic and cached like ``tiny``: the weights depend only on the recipe, the corpus and the seed
(the build runs on ``tiny_model.BUILD_THREADS`` threads), and the cache key hashes all three.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rlhf_helpers.config import cache_dir, fast_cpu_math
from rlhf_helpers.io_utils import atomic_write_dir, atomic_write_json
from rlhf_helpers.policy import REPLY_CUE
from rlhf_helpers.tiny_model import (
    BUILD_THREADS,
    PROMPT_CHARS,
    _training_rows,
    clip_text,
    recipe_for_data,
    recipe_key,
    tiny_tokenizer_dir,
    unigram_loss,
    warmup_cosine,
)

#: Bump when the build recipe changes so stale caches are not reused.
BUILD_VERSION = 2  # 2: plain-text documents (prompts and replies apart), not the task's format
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


@dataclass(frozen=True)
class CausalRecipe:
    """Everything that determines the tiny-causal model's weights (hashed into the cache key)."""

    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384  # 3 x hidden, SwiGLU (three matrices, like Llama's 8/3 x with two)
    pretrain_steps: int = 300  # the loss flattens near 0.58 from step ~200 (400 steps: 0.57, 88 s instead of 57 s)
    batch_size: int = 24
    learning_rate: float = 3e-3
    max_length: int = 128  # tokens per document (the course's longest is 137 with its EOS: a few lose their end)


#: On a learner's own data: fewer, shorter documents per step, as :data:`tiny_model.CUSTOM_RECIPE` does for the
#: tiny T5 (real corpora have long documents). The course's own build keeps :class:`CausalRecipe`'s defaults.
CUSTOM_RECIPE = CausalRecipe(pretrain_steps=300, batch_size=16, max_length=96)


def causal_recipe_for_data() -> CausalRecipe:
    """The recipe for the current data folder: the course's, or :data:`CUSTOM_RECIPE` on custom data (env
    ``RLHF_TINY_STEPS`` sets its step count there, as for the tiny T5). The cache key hashes the recipe and the
    documents, so a course base and a custom base never collide."""
    import os
    from dataclasses import replace

    from rlhf_helpers.config import on_course_data

    if on_course_data():
        return CausalRecipe()
    steps = os.environ.get("RLHF_TINY_STEPS")
    return replace(CUSTOM_RECIPE, pretrain_steps=int(steps)) if steps else CUSTOM_RECIPE


def causal_document(prompt: str, reply: str) -> str:
    """One pretraining document without its EOS: the prompt (its first ``PROMPT_CHARS`` characters, the tiny T5's
    long-input policy), the cue, the reply. The same text ``policy.prompt_text`` + SFT's completion produce."""
    return f"{clip_text(prompt, PROMPT_CHARS)}{REPLY_CUE} {reply}"


def pretraining_documents(folder: Path | None = None) -> list[str]:
    """The corpus as plain text: every distinct prompt (its first ``PROMPT_CHARS`` characters) and every distinct
    reply of the training-side files (SFT and both sides of each preference pair; never the evaluation references),
    each its own document.

    Why not ``prompt Reply: reply`` documents? A base pretrained on the task's own format has already learnt the
    task: SFT would have nothing left to teach (measured: ROUGE-L 0.637 before SFT, 0.687 after). A real base model
    knows the language, not the task; supervised fine-tuning teaches it to answer after the cue. So does this one."""
    rows = _training_rows(folder)
    return list(dict.fromkeys([clip_text(p, PROMPT_CHARS) for p, _ in rows] + [r for _, r in rows]))


# --------------------------------------------------------------------------- tokenizer


def causal_tokenizer_from_t5(t5_tokenizer):
    """The decoder-only tokenizer over the tiny T5's trained vocabulary: no post-processor (no automatic EOS),
    the sentinels dropped, pad/EOS/unk kept at ids 0/1/2, left padding. Every other piece keeps its id and score,
    so a text is split into exactly the same pieces by both tokenizers."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(t5_tokenizer.backend_tokenizer.to_str())
    is_sentinel = lambda piece: piece.startswith("<extra_id_")  # noqa: E731
    spec["model"]["vocab"] = [v for v in spec["model"]["vocab"] if not is_sentinel(v[0])]
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not is_sentinel(t["content"])]
    spec["post_processor"] = None  # T5's TemplateProcessing appended </s> to every text
    vocab = [piece for piece, _ in spec["model"]["vocab"]]
    if vocab[:3] != [PAD, EOS, UNK] or any(t["id"] >= len(vocab) for t in spec["added_tokens"]):
        raise ValueError(f"unexpected tiny T5 vocabulary layout: {vocab[:3]}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        truncation_side="left",  # a prompt keeps its end (the cue), as policy.CausalPolicy cuts it
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


def _tokenizer_key(t5_dir: Path) -> str:
    return hashlib.sha256(f"{t5_dir.name}|causal-tokenizer|v{BUILD_VERSION}".encode()).hexdigest()[:12]


def tiny_causal_tokenizer_dir() -> Path:
    """Path of the cached tiny-causal tokenizer alone (derived in a second from the tiny T5's, which takes about
    2 s to train the first time): enough for data validation and length plots without building the model."""
    t5_dir = tiny_tokenizer_dir(recipe_for_data())
    target = cache_dir() / f"tiny-causal-tokenizer-{_tokenizer_key(t5_dir)}"
    if not (target / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        t5 = AutoTokenizer.from_pretrained(t5_dir)
        atomic_write_dir(target, lambda tmp: causal_tokenizer_from_t5(t5).save_pretrained(tmp), keep_existing=True)
    return target


# --------------------------------------------------------------------------- model and pretraining


def causal_config(recipe: CausalRecipe, tokenizer):
    """A LlamaConfig at a laptop-friendly size. No BOS: the documents start with the prompt itself."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def encode_documents(tokenizer, documents: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each document plus its EOS, cut to ``max_length`` (keeping the start)."""
    eos = tokenizer.eos_token_id
    return [(ids + [eos])[:max_length] for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]]


def pretrain(model, encoded: list[list[int]], recipe: CausalRecipe, pad_id: int, progress: bool = True) -> list[float]:
    """Next-token prediction with AdamW and a cosine schedule; returns the loss curve (nats per token).

    Each batch is right-padded to its longest document; padding is masked out of attention and of the loss
    (labels -100). Every real token is a target, the EOS included: that is where the model learns to stop."""
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.pretrain_steps))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(recipe.pretrain_steps), desc="pretrain tiny-causal (next token)", disable=not progress)
    for _ in bar:
        rows = [encoded[i] for i in rng.integers(0, len(encoded), recipe.batch_size)]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        labels = input_ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return losses


def greedy_reply(model, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """The model's greedy continuation after ``prompt + REPLY_CUE``: what the build prints as a sample."""
    import torch

    ids = tokenizer(clip_text(prompt, PROMPT_CHARS) + REPLY_CUE, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True).strip()


def build_tiny_causal(out_dir: Path, recipe: CausalRecipe | None = None, progress: bool = True) -> dict:
    """Build tokenizer + pretrained model into ``out_dir`` (atomically) and return the build info."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    recipe = recipe or causal_recipe_for_data()
    t0 = time.perf_counter()
    fast_cpu_math()
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        torch.manual_seed(recipe.seed)
        tokenizer = AutoTokenizer.from_pretrained(tiny_causal_tokenizer_dir())
        model = LlamaForCausalLM(causal_config(recipe, tokenizer))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = None
        rows = _training_rows()
        documents = pretraining_documents()
        encoded = encode_documents(tokenizer, documents, recipe.max_length)
        losses = pretrain(model, encoded, recipe, tokenizer.pad_token_id, progress=progress)
        sample_prompt = rows[0][0]
        sample = greedy_reply(model, tokenizer, sample_prompt)
    finally:
        torch.set_num_threads(threads)
    info = {
        "recipe": asdict(recipe),
        "build_version": BUILD_VERSION,
        "architecture": "causal",
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "pretrain_loss_first": float(np.mean(losses[:20])),
        "pretrain_loss_last": float(np.mean(losses[-20:])),
        # the best context-free guess on the same documents (EOS left out): the loss must fall well below it
        "unigram_loss": unigram_loss(tokenizer, documents, recipe.max_length),
        "sample_prompt": sample_prompt,
        "sample_reply": sample,
        "pretrain_losses": [round(x, 4) for x in losses],
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "build_info.json", info)

    atomic_write_dir(out_dir, write, keep_existing=True)
    return info


def causal_key(recipe: CausalRecipe, documents: list[str]) -> str:
    """Cache key: the recipe, this module's version, the cue, the tokenizer it derives from (whose name is the key
    of the tiny T5 vocabulary's recipe and corpus) and every document."""
    source = tiny_tokenizer_dir(recipe_for_data()).name
    return recipe_key(recipe, [f"causal-v{BUILD_VERSION}", REPLY_CUE, source, *documents])


def tiny_causal_dir(recipe: CausalRecipe | None = None, progress: bool = True) -> Path:
    """Path of the cached tiny-causal preset, building it first if needed (about a minute on 2 CPU cores)."""
    recipe = recipe or causal_recipe_for_data()
    target = cache_dir() / f"tiny-causal-{causal_key(recipe, pretraining_documents())}"
    if not (target / "build_info.json").exists():
        build_tiny_causal(target, recipe, progress=progress)
    return target
