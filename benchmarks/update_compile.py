"""Would ``torch.compile`` make PPO's updates cheaper? One PPO mini-batch update, eager against compiled (issue 23).

Why this exists: on the flan-t5-small shape, like for like (``train_encoder=True``), the 8 mini-batch forward and
backward passes are ~60% of a PPO step and cost the same as trl 0.11.4's (the same Hugging Face modules doing the
same fp32 arithmetic), so the rollout alone cannot make the step 2x faster (benchmarks/README.md). The one lever
left on the updates that keeps the arithmetic is fusing it: this measures how much inductor's CPU code gives.

What it times, on one torch thread, fp32, the shape and settings of ``ppo_step.py`` (batch 8, mini-batch 4, 16 new
tokens, LoRA r=8 on q,v, encoder LoRA trained): a real ``PPOTrainer`` samples one rollout, then one mini-batch update
is timed over and over (forward through ``policy_and_value``, encoder included, and the value head; the clipped
losses; backward; gradient clipping; Adam), eager and then with ``policy_and_value`` under ``torch.compile``
(``dynamic=False``: every mini-batch has the same 16 reply columns here). Not timed: the trainer's finiteness check
and its statistics (a few ``.item()`` calls). Medians of ``--repeats`` after 3 warm-ups, eager before and after the
compiled runs; the compile time is the first compiled update, reported apart (inductor caches compiled code on disk:
a second run of this script compiles faster).

    python benchmarks/update_compile.py [--repeats 15] [--out benchmarks/update_compile.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ppo_step as bench  # noqa: E402  (the shape, its settings and its builder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(HERE / "update_compile.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference, trimmed_rows
    from rlhf_helpers.ppo_math import clipped_policy_loss, clipped_value_loss, gather_logprobs

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bench.worker_prep(argparse.Namespace(shape="flan-t5-small", shape_dir=tmp))
        d = Path(tmp)
        prompts = [p["text"] for p in json.loads((d / "prompts.json").read_text())]
        tok = AutoTokenizer.from_pretrained(d / "tokenizer")
        model = load_policy_and_reference(str(d / "adapter"), str(d / "base"))
    cfg = PPOConfig(batch_size=bench.BATCH, mini_batch_size=bench.MINI_BATCH, ppo_epochs=bench.EPOCHS,
                    learning_rate=bench.LR, max_new_tokens=bench.NEW_TOKENS, min_new_tokens=bench.NEW_TOKENS,
                    top_k=0, train_encoder=True, checkpoint_every=0, seed=bench.SEED)
    trainer = PPOTrainer(model, tok, lambda ps, rs: bench.reward(rs), prompts, cfg, max_source_length=16)
    torch.manual_seed(bench.SEED)
    ro = trainer.rollout(prompts)
    idx = torch.arange(bench.MINI_BATCH)
    zeros = torch.zeros_like(ro["logprobs"])
    m, responses, old_lp, adv, old_v, ret = trimmed_rows(
        idx, ro["mask"], ro["responses"], ro["logprobs"], torch.randn_like(zeros), ro["values"], zeros
    )
    rows = ro["batch"].rows(idx)

    forward = {"fn": trainer.policy_and_value}

    def update() -> None:
        logits, values = forward["fn"](rows, responses, cfg.temperature, encoder_grad=True)
        pg_loss, _ = clipped_policy_loss(gather_logprobs(logits, responses), old_lp, adv, m, cfg.cliprange)
        vf_loss, _ = clipped_value_loss(values, old_v, ret, m, cfg.cliprange_value)
        trainer.optimizer.zero_grad(set_to_none=True)
        (pg_loss + cfg.vf_coef * vf_loss).backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, cfg.max_grad_norm)
        trainer.optimizer.step()

    def median_seconds() -> float:
        times = []
        for _ in range(3 + args.repeats):
            t = time.perf_counter()
            update()
            times.append(time.perf_counter() - t)
        return statistics.median(times[3:])

    eager = median_seconds()
    forward["fn"] = torch.compile(trainer.policy_and_value, dynamic=False)
    t = time.perf_counter()
    update()
    compile_s = time.perf_counter() - t
    compiled = median_seconds()
    forward["fn"] = trainer.policy_and_value
    eager_again = median_seconds()  # the machine did not change under us
    result = {
        "shape": "flan-t5-small", "threads": 1, "mini_batch": bench.MINI_BATCH, "reply_tokens": bench.NEW_TOKENS,
        "train_encoder": True, "repeats": args.repeats,
        "eager_median_s": round(eager, 4), "eager_again_median_s": round(eager_again, 4),
        "compiled_median_s": round(compiled, 4), "compile_seconds": round(compile_s, 1),
        "speedup_vs_mean_eager": round(statistics.mean([eager, eager_again]) / compiled, 3),
        "speedup_vs_first_eager": round(eager / compiled, 3),
        "compiled": "PPOTrainer.policy_and_value (policy forward with its encoder, value head)",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
