"""Run by tests/test_accelerate.py under `accelerate launch` with 2 processes: a few steps of our
PPOTrainer under DDP. Usage: ddp_ppo_worker.py SFT_ADAPTER OUT_DIR

A synthetic reward (no reward model needed); on process 1 it is NaN at step 1 (both processes must
leave those replies out of the shared score statistics), and process 1's value head is NaN for that
step, so its loss is not finite: it must skip its mini-batches and the other one with it. Process 0
writes OUT_DIR/report.json with what every process saw; checkpoints go to OUT_DIR/checkpoints
(written once, by process 0).
"""

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import AutoTokenizer

from rlhf_helpers.data_prep import load_split
from rlhf_helpers.distributed import main_process_first
from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference
from rlhf_helpers.presets import model_path

adapter, out = sys.argv[1], Path(sys.argv[2])
with main_process_first():
    prompts = list(load_split("sft_train")["prompt"][:200])
    base = model_path("tiny")
trainer = None


saved_bias = None


def reward(prompts, replies):
    """Called in the rollout before the value pass: it can poison (and later restore) process 1's value head."""
    global saved_bias
    bias = trainer.value_head.net[2].bias
    if trainer.rank == 1 and trainer.step_idx == 1:
        saved_bias = bias.detach().clone()
        with torch.no_grad():
            bias.fill_(float("nan"))
        return [float("nan")] * len(replies)
    if saved_bias is not None:
        with torch.no_grad():
            bias.copy_(saved_bias)
        saved_bias = None
    return [1.0 if r.startswith("Hello") else 0.0 for r in replies]


cfg = PPOConfig(steps=3, batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=16, checkpoint_every=2)
model, tokenizer = load_policy_and_reference(adapter, base), AutoTokenizer.from_pretrained(adapter)
trainer = PPOTrainer(model, tokenizer, reward, prompts, cfg)
before = sum(p.double().sum().item() for p in trainer.params)
trainer.train(checkpoint_dir=out / "checkpoints", progress=False)
trainer.save_checkpoint(out / "final")
seen = {
    "rank": trainer.rank,
    "world": trainer.world,
    "params_before": before,
    "params_after": sum(p.double().sum().item() for p in trainer.params),
    "history": trainer.history,
    "beta": trainer.kl_ctl.beta,
    "skipped": trainer.skipped_batches,
    "skipped_replies": trainer.skipped_replies,
    "score_stats": vars(trainer.score_stats),
    "prompts_step0": trainer._prompts_for_step(0),
    "device": str(trainer.device),
}
report = gather_object([seen])
if trainer.accelerator.is_main_process:
    (out / "report.json").write_text(json.dumps(report))
