"""Seconds per training step and peak GPU memory of each stage on Flan-T5-shaped models.

Why: a learner choosing a preset for a free Colab T4 (15 GB, no bf16) or a bigger GPU needs to know
whether SFT, the reward model and PPO fit, and how long a step takes. The hub is not reachable from
our machines, so the models are randomly initialised with the exact shapes of google/flan-t5-small,
-base and -large: memory and time per step do not depend on the weights' values (a random policy
never stops early, so every PPO reply has the full ``max_new_tokens``: the worst case).

Each stage uses the course's settings for hub presets (``sft_defaults``/``reward_defaults``/
``ppo_defaults``): SFT batch 8 of 512 prompt + 128 reply tokens; reward model batch 8 pairs of 640
tokens; our ``PPOTrainer`` with batch 64, mini-batch 16, 4 PPO epochs, 128 new tokens on the course
prompts. Each (shape, precision) runs in a fresh process so that peak memory is its own.

    python benchmarks/gpu_stages.py --shapes flan-t5-base --precisions fp32 bf16 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # d_model, d_ff, layers (encoder = decoder), heads; d_kv 64, gated-gelu, vocab 32128, untied head
    "flan-t5-small": (512, 1024, 8, 6),
    "flan-t5-base": (768, 2048, 12, 12),
    "flan-t5-large": (1024, 2816, 24, 16),
    "smoke": (64, 128, 2, 2),  # a CPU check of this script
}
SOURCE_LEN, TARGET_LEN = 512, 128


def t5_config(shape: str):
    from transformers import T5Config

    d_model, d_ff, layers, heads = SHAPES[shape]
    return T5Config(
        vocab_size=32128,
        d_model=d_model,
        d_ff=d_ff,
        d_kv=64,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def _timed_steps(step, device, n: int) -> list[float]:
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times[1:] if len(times) > 1 else times  # the first includes warm-up


def _train_step(loss_fn, opt, precision: str, device) -> None:
    """One optimizer step: the loss under bf16 autocast (or fp32), backward, update."""
    import torch

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_fn()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_sft(shape: str, precision: str, device, steps: int) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import T5ForConditionalGeneration

    from rlhf_helpers.sft import sft_defaults

    cfg = sft_defaults("flan-t5-base")
    model = get_peft_model(
        T5ForConditionalGeneration(t5_config(shape)).to(device),
        LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=["q", "v"]),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32000, (cfg.batch_size, SOURCE_LEN), generator=g).to(device)
    labels = torch.randint(2, 32000, (cfg.batch_size, TARGET_LEN), generator=g).to(device)

    def loss_fn():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss

    times = _timed_steps(lambda: _train_step(loss_fn, opt, precision, device), device, steps)
    return {"stage": "sft", "batch": cfg.batch_size, "seconds_per_step": statistics.median(times)}


def bench_reward(shape: str, precision: str, device, steps: int) -> dict:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import T5ForSequenceClassification

    from rlhf_helpers.reward import reward_defaults

    cfg = reward_defaults("flan-t5-base")
    config = t5_config(shape)
    config.num_labels = 1
    model = get_peft_model(
        T5ForSequenceClassification(config).to(device),
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            target_modules=["q", "v"],
            modules_to_save=["classification_head"],
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    g = torch.Generator().manual_seed(0)
    # All pairs of one optimizer step at once (the defaults accumulate 2 x 4): the memory this measures
    # is what those defaults avoid.
    pairs = cfg.batch_size * cfg.gradient_accumulation_steps
    ids = torch.randint(2, 32000, (2 * pairs, SOURCE_LEN + TARGET_LEN), generator=g)
    ids[:, -1] = 1  # T5ForSequenceClassification reads the hidden state at the EOS
    ids = ids.to(device)

    def loss_fn():
        r = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.squeeze(-1).float()
        return -F.logsigmoid(r[:pairs] - r[pairs:]).mean()  # Bradley-Terry

    times = _timed_steps(lambda: _train_step(loss_fn, opt, precision, device), device, steps)
    return {"stage": "reward", "batch_pairs": pairs, "seconds_per_step": statistics.median(times)}


def bench_ppo(shape: str, precision: str, device, steps: int) -> dict:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from rlhf_helpers.config import data_dir
    from rlhf_helpers.io_utils import read_jsonl
    from rlhf_helpers.ppo import PPOTrainer, load_policy_and_reference
    from rlhf_helpers.ppo_stage import ppo_defaults
    from rlhf_helpers.tiny_model import tiny_tokenizer_dir

    cfg = ppo_defaults("flan-t5-base", checkpoint_every=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())  # any T5-layout tokenizer: ids < vocab
    prompts = list(dict.fromkeys(r["prompt"] for r in read_jsonl(data_dir() / "sft.jsonl")))
    with tempfile.TemporaryDirectory() as tmp:
        base = T5ForConditionalGeneration(t5_config(shape))
        base.save_pretrained(f"{tmp}/base")
        lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=16, lora_alpha=32, target_modules=["q", "v"])
        get_peft_model(base, lora).save_pretrained(f"{tmp}/sft")
        del base
        model = load_policy_and_reference(f"{tmp}/sft", f"{tmp}/base")

    def length_reward(ps: list[str], rs: list[str]) -> list[float]:
        return [len(r) / 100 for r in rs]

    trainer = PPOTrainer(model, tokenizer, length_reward, prompts, cfg, max_source_length=SOURCE_LEN)
    times = _timed_steps(lambda: trainer.step(), device, steps)
    return {
        "stage": "ppo",
        "batch": cfg.batch_size,
        "mini_batch": cfg.mini_batch_size,
        "new_tokens": cfg.max_new_tokens,
        "seconds_per_step": statistics.median(times),
    }


BENCHES = {"sft": bench_sft, "reward": bench_reward, "ppo": bench_ppo}


def run_one(shape: str, precision: str, stage: str, steps: int) -> dict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    row = BENCHES[stage](shape, precision, device, steps)
    params = sum(p.numel() for p in t5_config_params(shape))
    row.update(
        shape=shape,
        precision=precision,
        peak_gib=_peak_gib(device),
        parameters=params,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    )
    return row


def t5_config_params(shape: str):
    import torch
    from transformers import T5ForConditionalGeneration

    with torch.device("meta"):
        return list(T5ForConditionalGeneration(t5_config(shape)).parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["flan-t5-small", "flan-t5-base", "flan-t5-large"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--stages", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    ap.add_argument("--steps", type=int, default=4, help="timed steps per stage (the first is dropped as warm-up)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--one", nargs=3, metavar=("SHAPE", "PRECISION", "STAGE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(*args.one, args.steps)), flush=True)
        return
    rows = []
    for shape in args.shapes:
        for precision in args.precisions:
            for stage in args.stages:
                env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16" if precision == "bf16" else "no"}
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", shape, precision, stage, "--steps", str(args.steps)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
                row = (
                    json.loads(found[0])
                    if found
                    else {"shape": shape, "precision": precision, "stage": stage, "error": proc.stderr.strip()[-600:]}
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
