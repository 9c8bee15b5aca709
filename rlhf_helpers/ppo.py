"""Stage 5, PPO for encoder-decoder policies — read ``ppo_math.py`` (the equations), then this file.

The objective (Stiennon et al. 2020, eq. 2): maximise, over the policy pi,

    R(x, y) = r(x, y) - beta * log[ pi(y|x) / pi_SFT(y|x) ]

with PPO (Schulman et al. 2017). One step: sample replies (rollout), score them with the reward
model, turn scores and the per-token KL into per-token rewards, estimate advantages with GAE, then
a few epochs of clipped policy and value updates on mini-batches.

Design decisions (each fixes a known pain of trl 0.11.4's seq2seq PPO):
* Policy = the SFT LoRA adapter, trainable. Reference = a second, frozen copy of the *SFT adapter*
  on the same base model (not the bare base, trl #495/#1340): one base in memory, adapters switched.
* Masks: every generated token up to and including the first EOS is trained, the first one too
  (trl #679); a reply made of EOS alone is a valid one-token reply; replies without EOS can be
  penalised (``missing_eos_penalty``).
* Value head: its own small module on the decoder's last hidden state, saved with every
  checkpoint (trl #858/#1650/#2095).
* Speed: the encoder's LoRA is frozen by default, so the encoder runs once per batch and its
  output is reused by generation, the old/reference passes and every PPO epoch; log-probs are
  z_y - logsumexp(z), never a full log-softmax, with a one-buffer backward (``gather_logprobs``), reply
  by reply in the no-grad passes (``logprobs_and_entropy``); the reference pass is skipped when beta = 0.
Only ``forward_policy`` knows the model is an encoder-decoder: a decoder-only policy needs a
forward that returns (logits, hidden) for the response positions; masks and losses are shared.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlhf_helpers.config import course_seed, fast_cpu_math
from rlhf_helpers.distributed import ddp_accelerator, mean_over_processes
from rlhf_helpers.ppo_math import (  # the equations, one small tested function each: read ppo_math.py first
    AdaptiveKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    gather_logprobs,
    kl_k1,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    response_mask,
)


@dataclass
class PPOConfig:
    steps: int = 60
    batch_size: int = 32  # replies sampled per step
    mini_batch_size: int = 8
    ppo_epochs: int = 4
    learning_rate: float = 1e-4
    max_new_tokens: int = 64
    min_new_tokens: int = 1
    temperature: float = 0.7  # rollouts: a small policy samples nonsense at 1.0; eval is greedy
    top_k: int = 0
    top_p: float = 1.0
    # True: log-probs (old, new, reference) of softmax(z / temperature), the distribution replies are drawn from, as
    # OpenRLHF and later trl do. False: of the untempered policy, as trl 0.11.4 did; True was not better on 2 seeds x 2
    # reward models here, and PPO's spread over seeds is wider than either (notebook 05, exercise 4)
    tempered_logprobs: bool = False
    init_kl_coef: float = 0.1  # beta
    adaptive_kl: bool = True  # Ziegler et al. 2019's controller
    kl_target: float = 2.0  # nats per reply
    kl_horizon: int = 1000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    normalize_scores: bool = True  # running mean/std of reward-model scores
    # subtracted from the score of a reply that never ends (no EOS in max_new_tokens). 3.0 (not 1.0) on the
    # tiny preset: PPO then unlearns greedy loops such as "order #1111111..." (gold win rate 0.74 -> 0.91)
    missing_eos_penalty: float = 3.0
    train_encoder: bool = False  # False: encoder LoRA frozen, encoder output shared (fast)
    checkpoint_every: int = 20
    seed: int = 0
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- the policy


class ValueHead(torch.nn.Module):
    """V(s_t) from the decoder's last hidden state: a small MLP of its own (saved with checkpoints)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(hidden_size, hidden_size), torch.nn.Tanh(), torch.nn.Linear(hidden_size, 1)
        )
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)


def forward_policy(model, encoder_out, attention_mask, responses, start_token_id: int, temperature: float = 1.0):
    """(logits / temperature, decoder hidden states) for every reply position, teacher-forced.

    The decoder input is the reply shifted right behind the start token, so position t predicts
    reply token t — including t = 0, the first generated token. Encoder-decoder specific.
    Dividing by the sampling temperature makes every log-prob (old, new, reference) that of the
    distribution the replies were really drawn from, softmax(z / T) (OpenRLHF #853 and later trl do the
    same), up to generate's other processors: the EOS ban before ``min_new_tokens`` and any top-k/top-p cut.
    """
    decoder_input = torch.cat([torch.full_like(responses[:, :1], start_token_id), responses[:, :-1]], dim=1)
    out = model(
        encoder_outputs=encoder_out,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input,
        output_hidden_states=True,
        use_cache=False,
    )
    return (out.logits if temperature == 1.0 else out.logits / temperature), out.decoder_hidden_states[-1]


class PolicyWithValue(torch.nn.Module):
    """The trainable parts in one module, (logits, values) per reply position: what PPO updates,
    and what ``accelerator.prepare`` wraps so that DDP averages their gradients across processes."""

    def __init__(self, model, value_head: ValueHead):
        super().__init__()
        self.model, self.value_head = model, value_head

    def forward(self, encoder_out, attention_mask, responses, start_token_id: int, temperature: float = 1.0):
        logits, hidden = forward_policy(self.model, encoder_out, attention_mask, responses, start_token_id, temperature)
        return logits, self.value_head(hidden)


# --------------------------------------------------------------------------- the trainer


class PPOTrainer:
    """PPO with a LoRA policy, a frozen SFT-adapter reference on the same base, and a value head.

    ``reward_fn(prompts, replies) -> list[float]`` is any scorer (the reward model's ``score``, or
    a synthetic reward in tests).
    """

    def __init__(self, model, tokenizer, reward_fn, prompts: list[str], cfg: PPOConfig, max_source_length: int = 96):
        fast_cpu_math()
        self.model, self.tokenizer, self.reward_fn, self.prompts, self.cfg = model, tokenizer, reward_fn, prompts, cfg
        self.max_source_length = max_source_length
        # Scale-out: under `accelerate launch` each process runs this trainer on its own replies and DDP
        # averages the gradients. One process: the same plain loop. (Plumbing marked "accelerate:".)
        self.accelerator = ddp_accelerator()
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        torch.manual_seed(cfg.seed)
        self.value_head = ValueHead(model.config.d_model).to(self.device)
        self._use_adapter("policy")
        self.params = [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, eps=1e-5)
        # accelerate: moves to the device; under DDP wraps the trainable parts (self.model stays unwrapped).
        self.policy_and_value, self.optimizer = self.accelerator.prepare(
            PolicyWithValue(self.model, self.value_head), self.optimizer
        )
        self.kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.score_stats = RunningMoments()
        self.step_idx, self.history, self.samples = 0, [], []
        self.skipped_batches = 0

    @property
    def logprob_temperature(self) -> float:
        """What logits are divided by before any log-prob: 1.0 (no division, the default path) unless tempered."""
        return self.cfg.temperature if self.cfg.tempered_logprobs else 1.0

    def _use_adapter(self, name: str) -> None:
        self.model.set_adapter(name)  # peft: also makes only this adapter's weights trainable
        # Encoder LoRA frozen (default): policy and reference share one encoder output per batch.
        if name == "policy" and not self.cfg.train_encoder:
            for pname, p in self.model.named_parameters():
                if ".encoder." in pname:
                    p.requires_grad_(False)

    def _encode(self, prompts: list[str]):
        batch = self.tokenizer(
            prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_source_length
        ).to(self.device)
        with torch.no_grad():
            encoder_out = self.model.get_encoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return batch, encoder_out

    def _prompts_for_step(self, step: int) -> list[str]:
        """batch_size prompts per process: drawn for all processes at once, each takes its own share."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + step)
        idx = torch.randint(len(self.prompts), (self.cfg.batch_size * self.world,), generator=g)
        return [self.prompts[i] for i in idx[self.rank * self.cfg.batch_size :][: self.cfg.batch_size].tolist()]

    # ---- one PPO step
    def rollout(self, prompts: list[str]) -> dict:
        """Sample replies, score them, and compute old log-probs, values, reference log-probs."""
        cfg, tok = self.cfg, self.tokenizer
        batch, encoder_out = self._encode(prompts)
        with torch.no_grad():
            gen = self.model.generate(
                encoder_outputs=encoder_out,
                attention_mask=batch.attention_mask,
                do_sample=True,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens,
            )
        responses = gen[:, 1:]  # drop the decoder start token; right-padded with pad after EOS
        mask = response_mask(responses, tok.eos_token_id)
        replies = tok.batch_decode(responses, skip_special_tokens=True)
        scores = torch.tensor(self.reward_fn(prompts, replies), dtype=torch.float, device=self.device)
        raw_scores = scores.clone()
        has_eos = (responses == tok.eos_token_id).any(dim=1)
        scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
        if cfg.normalize_scores:
            self.score_stats.update(self.accelerator.gather(scores))  # the same statistics on every process
            scores = (scores - self.score_stats.mean) / self.score_stats.std
        teacher_forced = (encoder_out, batch.attention_mask, responses, self.model.config.decoder_start_token_id)
        with torch.no_grad():
            logits, hidden = forward_policy(self.model, *teacher_forced, self.logprob_temperature)
            logprobs, entropy = logprobs_and_entropy(logits, responses)  # reply by reply: less memory
            entropy = masked_mean(entropy, mask)
            values = self.value_head(hidden)
            del logits
            if self.kl_ctl.beta > 0:  # the reference pass is only needed when the KL term is used
                self._use_adapter("reference")
                ref_logits, _ = forward_policy(self.model, *teacher_forced, self.logprob_temperature)
                ref_logprobs, _ = logprobs_and_entropy(ref_logits, responses, entropy=False)
                self._use_adapter("policy")
                del ref_logits
            else:
                ref_logprobs = logprobs
        sampled = dict(batch=batch, encoder_out=encoder_out, responses=responses, mask=mask, replies=replies)
        scored = dict(scores=scores, raw_scores=raw_scores, has_eos=has_eos, entropy=entropy.item())
        return {**sampled, **scored, "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values}

    def step(self) -> dict:
        """One PPO iteration; returns the logged statistics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        # sampling depends only on (seed, step) and, under accelerate launch, on the process
        torch.manual_seed((cfg.seed * 1_000_003 + self.step_idx) * self.world + self.rank)
        prompts = self._prompts_for_step(self.step_idx)
        with self.accelerator.autocast():  # accelerate: rollouts in the precision of the updates (bf16 or fp32)
            ro = self.rollout(prompts)
        mask = ro["mask"]
        kl = kl_k1(ro["logprobs"], ro["ref_logprobs"]) * mask
        rewards = per_token_rewards(ro["scores"], kl, mask, self.kl_ctl.beta)
        advantages, returns = gae(rewards, ro["values"], mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)

        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "vf_clipfrac")}
        start = self.model.config.decoder_start_token_id
        enc_hidden = ro["encoder_out"].last_hidden_state
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size)
            for i in range(0, cfg.batch_size, cfg.mini_batch_size):
                idx = order[i : i + cfg.mini_batch_size]
                m = mask[idx]
                if not cfg.train_encoder:
                    enc = (enc_hidden[idx],)
                else:
                    enc = self.model.get_encoder()(
                        input_ids=ro["batch"].input_ids[idx], attention_mask=ro["batch"].attention_mask[idx]
                    )
                logits, values = self.policy_and_value(
                    enc, ro["batch"].attention_mask[idx], ro["responses"][idx], start, self.logprob_temperature
                )
                logprobs = gather_logprobs(logits, ro["responses"][idx])
                pg_loss, ratio = clipped_policy_loss(logprobs, ro["logprobs"][idx], advantages[idx], m, cfg.cliprange)
                old_v = ro["values"][idx]
                vf_loss = clipped_value_loss(values, old_v, returns[idx], m, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                # NaN/inf guard: skip this mini-batch, say so (every process skips if one must: DDP steps together)
                if self.accelerator.reduce(torch.isfinite(loss).float(), "sum") < self.world:
                    warnings.warn(f"PPO step {self.step_idx}: non-finite loss, mini-batch skipped", stacklevel=2)
                    self.skipped_batches += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(loss)  # accelerate: under DDP, gradients are averaged across processes
                self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    stats["pg_loss"].append(pg_loss.item())
                    stats["vf_loss"].append(vf_loss.item())
                    stats["clipfrac"].append(masked_mean(((ratio - 1).abs() > cfg.cliprange).float(), m).item())
                    stats["approx_kl"].append(0.5 * masked_mean((logprobs - ro["logprobs"][idx]) ** 2, m).item())
                    stats["vf_clipfrac"].append(
                        masked_mean(((values - old_v).abs() > cfg.cliprange_value).float(), m).item()
                    )

        explained_var = 1 - torch.var((returns - ro["values"])[mask.bool()]) / torch.var(returns[mask.bool()]).clamp(
            min=1e-8
        )
        # accelerate: each process saw its own replies; log (and adapt beta to) the mean over processes
        record = mean_over_processes(
            {
                "reward": ro["raw_scores"].mean().item(),
                "kl": kl.sum(dim=1).mean().item(),
                "entropy": ro["entropy"],
                "response_length": mask.sum(dim=1).mean().item(),
                "eos_fraction": ro["has_eos"].float().mean().item(),
                "explained_variance": explained_var.item(),
                "seconds": time.perf_counter() - t0,
                **{k: (sum(v) / len(v) if v else float("nan")) for k, v in stats.items()},
            }
        )
        if cfg.adaptive_kl:
            self.kl_ctl.update(record["kl"], cfg.batch_size * self.world)
        record = {"step": self.step_idx, **record, "beta": self.kl_ctl.beta}
        self.history.append(record)
        sample = {"prompt": prompts[0], "reply": ro["replies"][0], "reward": ro["raw_scores"][0].item()}
        self.samples.append({"step": self.step_idx, **sample})
        self.step_idx += 1
        return record

    # ---- checkpoints
    def save_checkpoint(self, folder: str | Path) -> Path:
        """Everything needed to continue exactly: adapter, value head, optimizer, controller, stats.
        accelerate: every process holds the same state; the main one writes it, the others wait."""
        folder = Path(folder)
        if self.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(folder, selected_adapters=["policy"])
            torch.save(
                {
                    "value_head": self.value_head.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "beta": self.kl_ctl.beta,
                    "score_stats": vars(self.score_stats),
                    "step": self.step_idx,
                    "history": self.history,
                    "samples": self.samples,
                    "skipped": self.skipped_batches,
                },
                folder / "ppo_state.pt",
            )
            (folder / "ppo_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        self.accelerator.wait_for_everyone()
        return folder

    def load_checkpoint(self, folder: str | Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        adapter_dir = folder / "policy" if (folder / "policy").is_dir() else folder
        set_peft_model_state_dict(
            self.model, load_file(adapter_dir / "adapter_model.safetensors"), adapter_name="policy"
        )
        state = torch.load(folder / "ppo_state.pt", weights_only=False)
        self.value_head.load_state_dict(state["value_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.beta = state["beta"]
        vars(self.score_stats).update(state["score_stats"])
        self.step_idx, self.history, self.samples = state["step"], state["history"], state["samples"]
        self.skipped_batches = state["skipped"]

    def train(
        self, checkpoint_dir: str | Path | None = None, progress: bool = True, steps: int | None = None
    ) -> list[dict]:
        """Run until ``cfg.steps`` (or ``steps`` more); checkpoint every ``cfg.checkpoint_every`` steps."""
        from tqdm.auto import tqdm

        end = self.cfg.steps if steps is None else self.step_idx + steps
        bar = tqdm(total=end - self.step_idx, desc="PPO", unit="step", disable=not progress or self.rank > 0)
        while self.step_idx < end:
            rec = self.step()
            bar.update(1)
            bar.set_postfix(reward=f"{rec['reward']:.2f}", kl=f"{rec['kl']:.2f}", len=f"{rec['response_length']:.0f}")
            if checkpoint_dir and self.cfg.checkpoint_every and self.step_idx % self.cfg.checkpoint_every == 0:
                self.save_checkpoint(Path(checkpoint_dir) / f"step_{self.step_idx:05d}")
        bar.close()
        return self.history


def load_policy_and_reference(adapter_dir: str | Path, base_path: str):
    """Base model + the SFT adapter twice: ``policy`` (trainable) and ``reference`` (frozen)."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    base = AutoModelForSeq2SeqLM.from_pretrained(base_path)
    model = PeftModel.from_pretrained(base, adapter_dir, adapter_name="policy", is_trainable=True)
    model.load_adapter(adapter_dir, adapter_name="reference", is_trainable=False)
    model.set_adapter("policy")
    return model


def default_config(**overrides) -> PPOConfig:
    return PPOConfig(seed=course_seed(), **overrides)
