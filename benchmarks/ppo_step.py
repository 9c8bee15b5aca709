"""Benchmark: seconds per PPO step and peak memory, our ``rlhf_helpers.ppo.PPOTrainer`` vs trl 0.11.4.

    python benchmarks/ppo_step.py [--steps 5] [--warmup 2] [--shapes ...] [--out benchmarks/results.json]

Needs ``.venv-trl011`` (``bash benchmarks/setup_trl_baseline.sh``) for the trl side; see
benchmarks/README.md for what is measured and the numbers of a run.

Identical settings on both sides: batch 8, mini-batch 4, 4 PPO epochs, exactly 16 sampled new
tokens (min_new_tokens = max_new_tokens = 16, temperature 1, no top-k/top-p), LoRA r=8 on q,v
(the same saved adapter), beta = 0.1 fixed (so both run a reference pass), learning rate 1e-3,
gradient clipping 1.0, no score normalisation (trl 0.11.4's ``use_score_scaling`` crashes:
``self.running.std`` is a float, ``.to`` fails), the same fixed prompts every step, the same
cheap synthetic reward (reply length in words / 16, computed from the decoded replies), fp32 on
the CPU, same torch thread count, flush-denormal on (ours sets it; we set it for trl too).

Two architectures: the seq2seq shapes (T5, trl's ``AutoModelForSeq2SeqLMWithValueHead``; ours with the
frozen-encoder shortcut and with ``train_encoder=True``) and the decoder-only shapes ``tiny-causal`` and
``smollm2-135m-shape`` (random ``LlamaForCausalLM``, trl's ``AutoModelForCausalLMWithValueHead``; ours through
``policy.CausalPolicy``; LoRA on q_proj, v_proj; there is no shortcut, so one like-for-like row each).
``--shapes tiny-causal,smollm2-135m-shape`` runs these alone; the results are merged into ``--out``.

One "step" is the whole PPO iteration on both sides: for ours ``PPOTrainer.step()`` (which
samples, scores and updates); for trl ``generate`` + decode + reward + ``PPOTrainer.step``
(trl's ``step`` alone is reported too).

Every configuration runs in a fresh subprocess (ours with this interpreter, trl with the venv's),
the parent alternates ours / trl / ours-with-trained-encoder (order reversed every other round),
and reports medians over the measured steps (warm-up steps excluded). Memory: the child's peak
resident set (VmHWM, reset with /proc/self/clear_refs after the model is loaded so the load peak
does not count; ``ru_maxrss`` as fallback) and its increase over the RSS right after loading.

On a machine with a CUDA GPU both sides train there (ours through accelerate, trl through its own
accelerator), in the same fp32 settings; each step ends with a synchronise, and the memory columns
are the GPU's peak allocated bytes (``torch.cuda.max_memory_allocated``, reset after loading)
instead of the RSS. There, trl 0.11.4 can share the interpreter (``--trl-python python3`` with trl
on ``PYTHONPATH``): ours never imports trl.

The file is also the worker: ``--worker prep|ours|trl`` (internal). Only the standard library is
imported at the top so the trl venv can run it too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRL_PYTHON = REPO / ".venv-trl011" / "bin" / "python"

# ------------------------------------------------------------------ settings shared by both sides
BATCH, MINI_BATCH, EPOCHS, NEW_TOKENS, LORA_R = 8, 4, 4, 16, 8
LR, BETA, SEED = 1e-3, 0.1, 0
#: The phases of a step, as each side times them. Ours (``PPOTrainer.step``'s record): the KV-cached sampling loop
#: (tokens, log-probs and values at once), the reward, the reference pass, the PPO updates. trl 0.11.4: ``generate``,
#: then in its ``step`` the forward pass (log-probs, values and reference log-probs, teacher-forced), the rewards
#: and the updates (``time/ppo/*``).
OUR_PHASES = ("sample", "score", "reference", "update")
TRL_PHASES = ("generate", "forward_pass", "compute_rewards", "optimize_step")

FLAN_T5_SMALL = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    num_heads=6,
    d_ff=1024,
    num_layers=8,
    num_decoder_layers=8,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
#: Decoder-only shapes (``LlamaForCausalLM``). ``tiny-causal`` mirrors the course's tiny-causal preset
#: (``rlhf_helpers/tiny_causal.py``: ``CausalRecipe`` defaults through ``causal_config``; its vocabulary is the tiny
#: T5's without the 100 sentinels, 449 pieces); ``smollm2-135m`` is SmolLM2-135M's config (hidden 576, 30 layers,
#: 9 heads, 3 KV heads, SwiGLU 1536, vocab 49152, tied embeddings, RoPE theta 1e5), both randomly initialised.
TINY_CAUSAL = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)
CAUSAL_KINDS = {"tiny-causal", "smollm2-135m"}
#: name -> (model shape, prompt length in tokens (seq2seq: including EOS; causal: including the reply cue),
#: rounds per --rounds). The long one is TL;DR-like. The tiny shapes are cheap (~0.2 s/step), so they run 3
#: alternating rounds: a burst of load from another process would otherwise decide their ratio.
SHAPES = {
    "tiny": ("tiny", 12, 3),
    "flan-t5-small": ("flan-t5-small", 12, 1),
    "flan-t5-small-long": ("flan-t5-small", 400, 1),
    "tiny-causal": ("tiny-causal", 12, 3),
    "smollm2-135m-shape": ("smollm2-135m", 12, 1),
}
#: Shapes whose step takes tens of seconds on a 2-core CPU: fewer measured steps (``--long-steps``, ``--long-warmup``).
FEW_STEPS = {"flan-t5-small-long", "smollm2-135m-shape"}


def is_causal(shape: str) -> bool:
    return SHAPES[shape][0] in CAUSAL_KINDS


def reward(replies: list[str]) -> list[float]:
    """Synthetic, essentially free reward: reply length in words / 16."""
    return [len(r.split()) / 16.0 for r in replies]


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since start or last reset) in MB, from /proc/self/status."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ worker: prepare a shape


def synthetic_tokenizer(vocab_size: int):
    """A T5 tokenizer with Flan-T5's layout (pad 0, eos 1, unk 2, pieces, 100 sentinels at the end)
    whose pieces are the words ``t00000`` .. : every such word is exactly one token."""
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [(f"\u2581t{i:05d}", -10.0) for i in range(vocab_size - 3 - 100)]
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    tok = T5Tokenizer(vocab=specials + pieces + sentinels, extra_ids=100)
    tok.model_max_length = 512
    return tok


def causal_tokenizer(t5_tok, cue_piece: bool = False):
    """A decoder-only tokenizer over a T5 tokenizer's unigram vocabulary, as ``rlhf_helpers/tiny_causal.py``'s
    ``causal_tokenizer_from_t5`` builds the tiny-causal one (mirrored here so that the benchmark does not depend
    on the preset's cache): no post-processor (no automatic EOS), the ``<extra_id_*>`` sentinels dropped, pad / EOS /
    unk kept at 0 / 1 / 2, left padding. ``cue_piece``: the last piece becomes ``\u2581Reply:`` (the synthetic
    vocabulary has no piece for the reply cue ``policy.REPLY_CUE``, which would otherwise be one ``<unk>``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(t5_tok.backend_tokenizer.to_str())
    is_sentinel = lambda piece: piece.startswith("<extra_id_")  # noqa: E731
    spec["model"]["vocab"] = [v for v in spec["model"]["vocab"] if not is_sentinel(v[0])]
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not is_sentinel(t["content"])]
    spec["post_processor"] = None
    if cue_piece:
        spec["model"]["vocab"][-1] = ["\u2581Reply:", 0.0]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        truncation_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def make_prompts(tok, n: int, length: int, seed: int, causal: bool = False) -> list[dict]:
    """n prompts of exactly ``length`` tokens that round-trip through the tokenizer, so both trainers
    see the same token ids (ours gets the text, trl the ids). Seq2seq: length-1 words + EOS (the T5
    tokenizer appends it). Causal: words + the reply cue that ``policy.prompt_text`` appends for a
    tokenizer without a chat template (``policy.REPLY_CUE``), no EOS, no special tokens."""
    import random

    rng = random.Random(seed)
    if causal:
        from rlhf_helpers.policy import REPLY_CUE

        suffix = tok(REPLY_CUE, add_special_tokens=False).input_ids
        encode = lambda text: tok(text + REPLY_CUE, add_special_tokens=False).input_ids  # noqa: E731
        end, n_words = [], length - len(suffix)
    else:
        suffix = end = [tok.eos_token_id]
        encode = lambda text: tok(text).input_ids  # noqa: E731
        n_words = length - 1
    words = []
    for piece, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        if piece.startswith("\u2581") and piece[1:].isalnum() and tok(piece[1:]).input_ids == [idx, *end]:
            words.append((piece[1:], idx))
    prompts = []
    while len(prompts) < n:
        chosen = [rng.choice(words) for _ in range(n_words)]
        text = " ".join(w for w, _ in chosen)
        ids = [i for _, i in chosen] + suffix
        if encode(text) == ids:
            prompts.append({"text": text, "ids": ids})
    return prompts


def worker_prep(args) -> dict:
    """Random base model (fixed seed), a LoRA adapter (r=8, q,v), tokenizer and prompts on disk."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    model_kind, prompt_len, _ = SHAPES[args.shape]
    if model_kind in CAUSAL_KINDS:
        return worker_prep_causal(args)
    out = Path(args.shape_dir)
    if model_kind == "tiny":
        from rlhf_helpers.presets import load_tokenizer
        from rlhf_helpers.tiny_model import TinyRecipe, tiny_config

        tok = load_tokenizer("tiny")
        config = tiny_config(TinyRecipe(), len(tok))
    else:
        tok = synthetic_tokenizer(FLAN_T5_SMALL["vocab_size"])
        config = T5Config(**FLAN_T5_SMALL)
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(config)
    # transformers 5.x forces tie_word_embeddings=True in T5Config, but Flan-T5's head is untied (and a
    # checkpoint with a distinct lm_head.weight loads untied). A random *tied* head also samples
    # the decoder-start/pad token (id 0) almost surely at every position (its logit is the squared
    # norm of its own embedding), i.e. degenerate replies. So: an untied head of its own (same cost).
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * config.d_model**-0.5)
    model.generation_config.decoder_start_token_id = 0
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "tokenizer")
    n_params = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, r=LORA_R, lora_alpha=16, lora_dropout=0.0, target_modules=["q", "v"]
        ),
    )
    torch.manual_seed(SEED + 1)
    for name, p in peft_model.named_parameters():  # LoRA B starts at 0; make the adapter non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)
    peft_model.save_pretrained(out / "adapter")
    prompts = make_prompts(tok, BATCH, prompt_len, SEED)
    with torch.no_grad():  # sanity: sampled replies are not degenerate
        sample = model.generate(
            input_ids=torch.tensor([prompts[0]["ids"]]),
            do_sample=True,
            top_k=0,
            min_new_tokens=NEW_TOKENS,
            max_new_tokens=NEW_TOKENS,
        )
    meta = {
        "shape": args.shape,
        "prompt_tokens": prompt_len,
        "vocab": len(tok),
        "params": n_params,
        "sample_reply_ids": sample[0].tolist(),
        "lm_head_tied": model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr(),
        "config": {
            k: getattr(config, k)
            for k in (
                "d_model",
                "d_kv",
                "num_heads",
                "d_ff",
                "num_layers",
                "num_decoder_layers",
                "feed_forward_proj",
                "vocab_size",
            )
        },
    }
    (out / "prompts.json").write_text(json.dumps(prompts))
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def worker_prep_causal(args) -> dict:
    """The decoder-only shapes: a random ``LlamaForCausalLM`` (seed 0), a LoRA adapter (r=8 on q_proj, v_proj),
    its tokenizer (left padding, pad 0 != EOS 1, no automatic EOS) and prompts on disk."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_helpers.policy import CausalPolicy

    model_kind, prompt_len, _ = SHAPES[args.shape]
    out = Path(args.shape_dir)
    if model_kind == "tiny-causal":  # the tiny-causal preset's tokenizer: the tiny T5's vocabulary, 449 pieces
        from rlhf_helpers.presets import load_tokenizer

        tok = causal_tokenizer(load_tokenizer("tiny"))
        shape = dict(TINY_CAUSAL, vocab_size=len(tok))
    else:  # SmolLM2's vocabulary size, synthetic word pieces (+ one piece for the reply cue)
        tok = causal_tokenizer(synthetic_tokenizer(SMOLLM2_135M["vocab_size"] + 100), cue_piece=True)
        shape = dict(SMOLLM2_135M)
    assert len(tok) == shape["vocab_size"], (len(tok), shape["vocab_size"])
    config = LlamaConfig(
        **shape,
        attention_dropout=0.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    for key in ("pad_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    model.generation_config.bos_token_id = None
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "tokenizer")
    n_params = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=LORA_R, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
        ),
    )
    torch.manual_seed(SEED + 1)
    for name, p in peft_model.named_parameters():  # LoRA B starts at 0; make the adapter non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)
    peft_model.save_pretrained(out / "adapter")
    prompts = make_prompts(tok, BATCH, prompt_len, SEED, causal=True)
    # ours tokenises the text itself (policy.prompt_text + CausalPolicy.tokenize): it must give trl's ids exactly
    batch = CausalPolicy(model, tok, max_source_length=prompt_len).tokenize([p["text"] for p in prompts], "cpu")
    assert batch.input_ids.tolist() == [p["ids"] for p in prompts] and bool(batch.attention_mask.all())
    with torch.no_grad():  # sanity: sampled replies are not degenerate
        sample = model.generate(
            input_ids=torch.tensor([prompts[0]["ids"]]),
            do_sample=True,
            top_k=0,
            min_new_tokens=NEW_TOKENS,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=tok.pad_token_id,
        )
    meta = {
        "shape": args.shape,
        "arch": "causal",
        "lora_targets": ["q_proj", "v_proj"],  # settings' "q", "v" are the T5 names
        "prompt_tokens": prompt_len,
        "vocab": len(tok),
        "params": n_params,
        "sample_reply_ids": sample[0, prompt_len:].tolist(),
        "lm_head_tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        # transformers 5 keeps rope_theta inside rope_parameters
        "config": {**{k: getattr(config, k, None) for k in shape}, "rope_parameters": config.rope_parameters},
    }
    (out / "prompts.json").write_text(json.dumps(prompts))
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


# ------------------------------------------------------------------ worker: our trainer


def worker_ours(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference

    d = Path(args.shape_dir)
    rows = json.loads((d / "prompts.json").read_text())
    prompts = [p["text"] for p in rows]
    tok = AutoTokenizer.from_pretrained(d / "tokenizer")
    model = load_policy_and_reference(str(d / "adapter"), str(d / "base"))
    cfg = PPOConfig(
        steps=args.warmup + args.steps,
        batch_size=BATCH,
        mini_batch_size=MINI_BATCH,
        ppo_epochs=EPOCHS,
        learning_rate=LR,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        init_kl_coef=BETA,
        adaptive_kl=False,
        max_grad_norm=1.0,
        normalize_scores=False,
        train_encoder=bool(args.train_encoder),
        checkpoint_every=0,
        seed=SEED,
    )
    trainer = PPOTrainer(
        model, tok, lambda ps, rs: reward(rs), prompts, cfg, max_source_length=max(len(p["ids"]) for p in rows)
    )
    # Our trainer samples prompts (with replacement) itself; give it exactly the 8 fixed prompts trl gets.
    trainer._prompts_for_step = lambda step: list(prompts)
    split = {phase: [] for phase in OUR_PHASES}

    def one_step():
        record = trainer.step()  # it times its own phases (sampling loop, reward, reference pass, updates)
        for phase in OUR_PHASES:
            split[phase].append(record[f"seconds_{phase}"])
        return record

    result = run_steps(args, one_step, torch, model)
    result["split"] = {k: v[args.warmup :] for k, v in split.items()}
    return result


# ------------------------------------------------------------------ worker: trl 0.11.4


def trl_shims() -> list[str]:
    """Runtime patches trl 0.11.4 needs next to transformers 5.x, applied before importing trl and
    listed in the results. With transformers 5.24.0, peft 0.21.2, accelerate 1.15.0, datasets 5.2.0
    and torch 2.13.0 none is needed: trl 0.11.4 imports and runs its seq2seq PPO unpatched (it only
    emits deprecation warnings). Put a patch here, never into site-packages, if a later version
    breaks it. Not a shim but a setting: trl's ``use_score_scaling`` is left off (it crashes in
    0.11.4 itself), and ours' ``normalize_scores`` is off to match."""
    applied: list[str] = []
    return applied


def worker_trl(args) -> dict:
    import torch

    shims = trl_shims()
    import trl
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    from trl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

    d = Path(args.shape_dir)
    queries = [torch.tensor(p["ids"]) for p in json.loads((d / "prompts.json").read_text())]
    tok = AutoTokenizer.from_pretrained(d / "tokenizer")
    torch.set_flush_denormal(True)  # as ours does (rlhf_helpers.config.fast_cpu_math)
    if is_causal(args.shape):  # trl 0.11.4's causal PPO: the same trainer, the causal value-head wrapper
        base_cls, wrapper_cls = AutoModelForCausalLM, AutoModelForCausalLMWithValueHead
    else:
        base_cls, wrapper_cls = AutoModelForSeq2SeqLM, AutoModelForSeq2SeqLMWithValueHead
    base = base_cls.from_pretrained(d / "base")
    peft_model = PeftModel.from_pretrained(base, str(d / "adapter"), is_trainable=True)
    model = wrapper_cls.from_pretrained(peft_model)
    config = PPOConfig(
        batch_size=BATCH,
        mini_batch_size=MINI_BATCH,
        ppo_epochs=EPOCHS,
        learning_rate=LR,
        init_kl_coef=BETA,
        adap_kl_ctrl=False,
        kl_penalty="kl",
        gamma=1.0,
        lam=0.95,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        max_grad_norm=1.0,
        use_score_scaling=False,
        use_score_norm=False,
        seed=SEED,
        log_with=None,
        optimize_device_cache=False,
    )
    trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tok)
    gen_kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_new_tokens=NEW_TOKENS,
        max_new_tokens=NEW_TOKENS,
        pad_token_id=tok.pad_token_id,
    )
    split = {"generate": [], "trl_step": []}

    def one_step():
        t0 = time.perf_counter()
        responses = trainer.generate(queries, return_prompt=False, batch_size=BATCH, **gen_kwargs)
        t1 = time.perf_counter()
        scores = [torch.tensor(s) for s in reward(tok.batch_decode(responses, skip_special_tokens=True))]
        t2 = time.perf_counter()
        stats = trainer.step(queries, responses, scores)
        split["generate"].append(t1 - t0)
        split["trl_step"].append(time.perf_counter() - t2)
        for k, v in stats.items():  # trl's own timing breakdown of step()
            if k.startswith("time/ppo/"):
                split.setdefault(k[len("time/ppo/") :], []).append(float(v))
        return {k: float(stats[k]) for k in ("objective/kl", "ppo/loss/policy", "ppo/loss/value", "ppo/mean_scores")}

    torch.manual_seed(SEED)
    result = run_steps(args, one_step, torch, model)
    result["split"] = {k: v[args.warmup :] for k, v in split.items()}
    result["shims"] = shims
    result["trl_version"] = trl.__version__
    return result


# ------------------------------------------------------------------ timing loop (both sides)


def run_steps(args, step, torch, module) -> dict:
    import gc

    # transformers maps safetensors files lazily: weights become resident only when first touched
    # (the first generate would add the whole model to the RSS). Touch every tensor now so the
    # "after load" RSS includes the weights and the increase measures what training allocates.
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.sum()
    gc.collect()
    cuda = torch.cuda.is_available()
    if cuda:  # GPU: memory is the device's peak allocation, reset once the model is loaded
        torch.cuda.synchronize()
        gpu_loaded = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    rss_loaded, hwm_load = rss_mb()
    peak_reset = reset_peak_rss()
    times, cpu_times, last = [], [], {}
    for _ in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        last = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)  # CPU seconds of this process: robust to other load
    last = {k: v for k, v in (last or {}).items() if isinstance(v, (int, float))}  # sanity: finite losses
    rss_end, hwm = rss_mb()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = hwm if peak_reset else maxrss
    gpu = {}
    if cuda:
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
        gpu = {
            "device": torch.cuda.get_device_name(0),
            "gpu_after_load_mb": gpu_loaded,
            "gpu_peak_mb": gpu_peak,
            "gpu_peak_increase_mb": gpu_peak - gpu_loaded,
        }
    return {
        **gpu,
        "times": times[args.warmup :],
        "cpu_times": cpu_times[args.warmup :],
        "warmup_times": times[: args.warmup],
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak,
        "peak_increase_mb": peak - rss_loaded,
        "load_peak_rss_mb": hwm_load,
        "ru_maxrss_mb": maxrss,
        "peak_reset": peak_reset,
        "rss_end_mb": rss_end,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "last_step_stats": last,
    }


# ------------------------------------------------------------------ parent


def spawn(python: Path | str, worker: str, shape: str, shape_dir: Path, logdir: Path, tag: str, **extra) -> dict:
    result = logdir / f"{tag}.json"
    cmd = [
        str(python),
        str(Path(__file__).resolve()),
        "--worker",
        worker,
        "--shape",
        shape,
        "--shape-dir",
        str(shape_dir),
        "--result",
        str(result),
    ]
    return run_worker(cmd, extra, logdir / f"{tag}.log", result, tail_chars=3000)


def serve_worker(args: argparse.Namespace, workers: dict) -> None:
    """The worker side of :func:`run_worker`: set the torch thread count (``--threads``), run the worker named by
    ``--worker`` and write the JSON it returns to ``--result``. Shared with ``beyond_ppo_step.py``."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    Path(args.result).write_text(json.dumps(workers[args.worker](args), indent=2))


def run_worker(cmd: list[str], extra: dict, log_path: Path, result: Path, tail_chars: int, **env_extra: str) -> dict:
    """Run one benchmark worker in a fresh process (``extra`` becomes ``--key value`` flags; ``threads`` also sets the
    thread count), its output in ``log_path``; return the JSON it wrote to ``result`` with the wall time added. Shared
    with ``beyond_ppo_step.py``, which adds its own environment (``env_extra``)."""
    cmd = list(cmd)
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(
        os.environ,
        TQDM_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
        TRANSFORMERS_VERBOSITY="error",
        HF_HUB_OFFLINE="1",
        WANDB_DISABLED="true",
        **env_extra,
    )
    env.setdefault("RLHF_CACHE", "/tmp/c5")
    if extra.get("threads"):
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(extra["threads"])
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not result.exists():
        tail = log_path.read_text()[-tail_chars:]
        raise RuntimeError(f"worker {log_path.stem} failed (rc {proc.returncode}); log tail:\n{tail}")
    out = json.loads(result.read_text())
    out["wall_s"] = time.perf_counter() - t0
    return out


def summarise(runs: list[dict]) -> dict:
    times = [t for r in runs for t in r["times"]]
    s = {
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(t for r in runs for t in r["cpu_times"]),
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_increase_mb": max(r["peak_increase_mb"] for r in runs),
        "rss_after_load_mb": statistics.median(r["rss_after_load_mb"] for r in runs),
    }
    if "gpu_peak_mb" in runs[0]:  # on a GPU the memory that matters is the device's
        s["device"] = runs[0]["device"]
        s["peak_rss_mb"] = max(r["gpu_peak_mb"] for r in runs)
        s["peak_increase_mb"] = max(r["gpu_peak_increase_mb"] for r in runs)
        s["rss_after_load_mb"] = statistics.median(r["gpu_after_load_mb"] for r in runs)
        s["memory"] = "GPU max_memory_allocated"
    if "split" in runs[0]:
        for k in runs[0]["split"]:
            s[f"median_{k}_s"] = statistics.median(t for r in runs for t in r["split"][k])
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="measured steps per run (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per run, not measured (default 2)")
    ap.add_argument(
        "--long-steps",
        type=int,
        default=None,
        help=f"measured steps for the slow shapes {sorted(FEW_STEPS)} (default: --steps minus 2, at least 2)",
    )
    ap.add_argument("--long-warmup", type=int, default=1, help="warm-up steps for the slow shapes (default 1)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the alternation (order reversed each round)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    ap.add_argument(
        "--out",
        default="benchmarks/results.json",
        help="results file; the shapes measured now replace their earlier entries there, the others are kept",
    )
    ap.add_argument("--replace", action="store_true", help="overwrite --out instead of merging into it")
    ap.add_argument("--workdir", default=None, help="keep models and worker logs here (default: a temp dir)")
    ap.add_argument("--trl-python", default=str(TRL_PYTHON))
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (default 1: on a 2-core machine shared with other work, "
        "2 OpenMP threads can be 10-50x slower; 0 = torch's default)",
    )
    # internal (worker) arguments
    ap.add_argument("--worker", choices=["prep", "ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--shape-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--train-encoder", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        serve_worker(args, {"prep": worker_prep, "ours": worker_ours, "trl": worker_trl})
        return

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not Path(args.trl_python).exists() and shutil.which(args.trl_python):
        args.trl_python = shutil.which(args.trl_python)  # a command name, e.g. python3 on a GPU machine
    if not args.skip_trl and not Path(args.trl_python).exists():
        sys.exit(f"{args.trl_python} not found: run `bash benchmarks/setup_trl_baseline.sh` (or pass --skip-trl)")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ppo_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    configs = [("ours", "ours", 0), ("trl", "trl", 0), ("ours_train_encoder", "ours", 1)]
    if args.skip_trl:
        configs = [c for c in configs if c[1] != "trl"]
    import hashlib

    settings = dict(
        batch=BATCH,
        mini_batch=MINI_BATCH,
        ppo_epochs=EPOCHS,
        new_tokens=NEW_TOKENS,
        lora_r=LORA_R,
        lora_targets=["q", "v"],
        beta=BETA,
        lr=LR,
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        threads=args.threads,
        cpu_count=os.cpu_count(),
        dtype="float32",
        load_average=os.getloadavg(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        ppo_py_sha256=hashlib.sha256((REPO / "rlhf_helpers" / "ppo.py").read_bytes()).hexdigest()[:16],
        ppo_math_py_sha256=hashlib.sha256((REPO / "rlhf_helpers" / "ppo_math.py").read_bytes()).hexdigest()[:16],
        policy_py_sha256=hashlib.sha256((REPO / "rlhf_helpers" / "policy.py").read_bytes()).hexdigest()[:16],
        sampling_py_sha256=hashlib.sha256((REPO / "rlhf_helpers" / "sampling.py").read_bytes()).hexdigest()[:16],
    )
    report = {"settings": settings, "shapes": {}}
    t_start = time.perf_counter()
    try:
        for shape in shapes:
            sdir = workdir / shape
            sdir.mkdir(exist_ok=True)
            print(f"[{shape}] preparing random model ...", flush=True)
            spawn(sys.executable, "prep", shape, sdir, sdir, "prep")
            meta = json.loads((sdir / "meta.json").read_text())
            steps, warmup = args.steps, args.warmup
            if shape in FEW_STEPS:  # ~20 s per trl step: fewer steps keep the whole run short
                steps = args.long_steps if args.long_steps is not None else max(2, args.steps - 2)
                warmup = min(args.warmup, args.long_warmup)
            # a decoder-only model has no encoder: no train_encoder variant, ours and trl only
            shape_configs = [c for c in configs if not (c[2] and is_causal(shape))]
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in shape_configs}
            for rnd in range(args.rounds * SHAPES[shape][2]):
                order = shape_configs if rnd % 2 == 0 else shape_configs[::-1]
                for name, worker, train_enc in order:
                    python = args.trl_python if worker == "trl" else sys.executable
                    print(f"[{shape}] round {rnd + 1}: {name} ...", end=" ", flush=True)
                    r = spawn(
                        python,
                        worker,
                        shape,
                        sdir,
                        sdir,
                        f"{name}_r{rnd}",
                        steps=steps,
                        warmup=warmup,
                        train_encoder=train_enc,
                        threads=args.threads,
                    )
                    runs[name].append(r)
                    print(
                        f"median {statistics.median(r['times']):.3f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB "
                        f"(+{r['peak_increase_mb']:.0f}) [{r['wall_s']:.0f} s]",
                        flush=True,
                    )
            summary = {name: summarise(rs) for name, rs in runs.items()}
            if "trl" in summary:
                t = summary["trl"]
                for name in [n for n in ("ours", "ours_train_encoder") if n in summary]:
                    s = summary[name]
                    s["speedup_vs_trl"] = t["median_s"] / s["median_s"]
                    s["cpu_speedup_vs_trl"] = t["median_cpu_s"] / s["median_cpu_s"]
                    s["peak_rss_ratio_vs_trl"] = s["peak_rss_mb"] / t["peak_rss_mb"]
                    s["peak_increase_ratio_vs_trl"] = s["peak_increase_mb"] / t["peak_increase_mb"]
            report["shapes"][shape] = {"meta": meta, "steps": steps, "warmup": warmup, "summary": summary, "runs": runs}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    # where the workers trained: each GPU worker records its device (CPU workers record none)
    devices = [s["device"] for d in report["shapes"].values() for s in d["summary"].values() if "device" in s]
    settings["device"] = devices[0] if devices else "cpu"
    report["total_wall_s"] = time.perf_counter() - t_start
    for data in report["shapes"].values():  # each shape says which run measured it (they survive a merge)
        data["settings"] = settings
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = report if args.replace or not out.exists() else merge_results(json.loads(out.read_text()), report)
    out.write_text(json.dumps(merged, indent=2))
    print()
    print(markdown_table(report))
    print(f"\nwritten {args.out} ({report['total_wall_s']:.0f} s in all)")


def merge_results(old: dict, new: dict) -> dict:
    """``new``'s shapes replace the same shapes of an earlier results file; the others are kept, each with the
    settings of the run that measured it (an entry written before shapes carried their own gets the old file's
    top-level settings). The top-level ``settings`` and ``total_wall_s`` are those of the latest run."""
    shapes = {}
    for name, data in old.get("shapes", {}).items():
        if name not in new["shapes"]:
            data.setdefault("settings", old.get("settings", {}))
            data.setdefault("total_wall_s_of_its_run", old.get("total_wall_s"))
        shapes[name] = new["shapes"].get(name, data)
    shapes.update({k: v for k, v in new["shapes"].items() if k not in shapes})
    return {**new, "shapes": shapes}


def markdown_table(report: dict) -> str:
    labels = {
        "ours": "ours (encoder LoRA frozen, default)",
        "ours_train_encoder": "ours (train_encoder=True)",
        "trl": "trl 0.11.4",
    }
    causal_labels = {"ours": "ours (CausalPolicy)", "trl": "trl 0.11.4 (AutoModelForCausalLMWithValueHead)"}
    mem = "GPU peak MB" if report["settings"].get("device", "cpu") != "cpu" else "peak RSS MB"
    lines = [
        f"Device: {report['settings'].get('device', 'cpu')}.",
        "",
        "| shape | prompt tokens | trainer | s/step (median) | min–max | CPU s/step | speed-up vs trl "
        f"(wall / CPU) | {mem} | ratio | peak − loaded MB | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, data in report["shapes"].items():
        for name, s in data["summary"].items():
            extra = ""
            if name == "trl" and "median_generate_s" in s:
                extra = f" (generate {s['median_generate_s']:.3f} + step {s['median_trl_step_s']:.3f})"
            sp = f"{s['speedup_vs_trl']:.2f}× / {s['cpu_speedup_vs_trl']:.2f}×" if "speedup_vs_trl" in s else "1"
            r1 = f"{s['peak_rss_ratio_vs_trl']:.2f}" if "peak_rss_ratio_vs_trl" in s else "1"
            r2 = f"{s['peak_increase_ratio_vs_trl']:.2f}" if "peak_increase_ratio_vs_trl" in s else "1"
            label = (causal_labels if data["meta"].get("arch") == "causal" else labels)[name]
            lines.append(
                f"| {shape} | {data['meta']['prompt_tokens']} | {label} | {s['median_s']:.3f}{extra} | "
                f"{s['min_s']:.3f}–{s['max_s']:.3f} | {s['median_cpu_s']:.3f} | {sp} | {s['peak_rss_mb']:.0f} | {r1} | "
                f"{s['peak_increase_mb']:.0f} | {r2} |"
            )
    lines += ["", "Where a step's time goes (median seconds per phase):", ""]
    for shape, data in report["shapes"].items():
        for name, s in data["summary"].items():
            phases = OUR_PHASES if name.startswith("ours") else TRL_PHASES
            parts = [f"{k} {s[f'median_{k}_s']:.3f}" for k in phases if f"median_{k}_s" in s]
            if parts:
                label = (causal_labels if data["meta"].get("arch") == "causal" else labels)[name]
                lines.append(f"- {shape}, {label}: " + ", ".join(parts))
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    ref = report["shapes"].get("flan-t5-small", {}).get("summary", {}).get("ours", {})
    if "speedup_vs_trl" in ref:
        lines += [
            "",
            f"Targets on the flan-t5-small shape (ours, default): ≥ 2× faster per step: "
            f"{ok(ref['speedup_vs_trl'] >= 2)} ({ref['speedup_vs_trl']:.2f}×); ≤ 0.7× peak memory: peak "
            f"{ok(ref['peak_rss_ratio_vs_trl'] <= 0.7)} ({ref['peak_rss_ratio_vs_trl']:.2f}×), "
            f"peak increase over the loaded model {ok(ref['peak_increase_ratio_vs_trl'] <= 0.7)} "
            f"({ref['peak_increase_ratio_vs_trl']:.2f}×).",
        ]
    for shape, data in report["shapes"].items():  # issue 19's targets for the decoder-only rows, like for like
        ref = data["summary"].get("ours", {})
        if data["meta"].get("arch") == "causal" and "speedup_vs_trl" in ref:
            lines += [
                "",
                f"Targets on {shape} (decoder-only, like for like): ≥ 2× faster per step: "
                f"{ok(ref['speedup_vs_trl'] >= 2)} ({ref['speedup_vs_trl']:.2f}×); ≤ 0.7× training memory (peak − "
                f"loaded): {ok(ref['peak_increase_ratio_vs_trl'] <= 0.7)} ({ref['peak_increase_ratio_vs_trl']:.2f}×), "
                f"whole-process peak {ref['peak_rss_ratio_vs_trl']:.2f}×.",
            ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
