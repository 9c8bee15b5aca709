"""Stage 5, PPO for encoder-decoder and decoder-only policies — read ``ppo_math.py`` (the equations), then this file.

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
* Log-probs of the distribution replies are sampled from: every pass (old, new, reference) divides
  the logits by the sampling temperature T, so the ratio, the gradient, the KL and the entropy are
  those of softmax(z / T), as in lm-human-preference-details and OpenRLHF (OpenRLHF #853, trl #3169).
* KL to the SFT policy is always measured and logged, also when its penalty beta is 0.
* Dropout off: rollouts, log-prob passes and updates run in eval mode (set by the trainer, whatever
  mode the model was loaded in), so the ratio is 1 before the first update (to float rounding: the rollout's
  log-probs come from the KV-cached sampling loop, the update's from a teacher-forced pass; they differ by
  ~1e-6 in fp32, more under bf16 autocast, and so does the KL to the SFT adapter at step 0).
* Speed: the rollout is our own KV-cached sampling loop (``sampling.py``): it samples ``generate``'s tokens and
  returns with them each token's tempered log-prob, the entropy and the value, so no second pass over the
  replies is needed for them; only the reference (the SFT adapter) runs one batched teacher-forced pass. The
  encoder's LoRA is frozen by default, so the encoder runs once per batch and its output is reused by the
  sampling loop, the reference pass and every PPO epoch (with ``train_encoder=True`` the reference gets its
  own, SFT, encoder output). Each mini-batch is cut after its own longest reply (``trimmed_rows``). Log-probs
  are z_y - logsumexp(z), never a full log-softmax, with a one-buffer backward (``gather_logprobs``), reply by
  reply in the no-grad reference pass (``logprobs_and_entropy``). Every step logs its time per phase
  (``seconds_sample``, ``seconds_score``, ``seconds_reference``, ``seconds_update``).
Only the policy interface (:mod:`rlhf_helpers.policy`) knows the architecture: it encodes prompts, samples
replies and returns (logits, hidden) at the reply positions, for T5 (encoder output reused) or for a decoder-only
model (left-padded prompts, logits only where they predict the reply); masks, KL, GAE and losses are shared.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlhf_helpers.config import course_seed, fast_cpu_math
from rlhf_helpers.distributed import ddp_accelerator, mean_over_processes
from rlhf_helpers.policy import policy_for
from rlhf_helpers.ppo_math import (  # the equations, one small tested function each: read ppo_math.py first
    AdaptiveKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    gather_logprobs,
    has_eos,
    kl_k1,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_clip_fraction,
    response_mask,
)
from rlhf_helpers.sampling import sample_replies, stop_and_pad_ids


@dataclass
class PPOConfig:
    steps: int = 60
    batch_size: int = 32  # replies sampled per step
    mini_batch_size: int = 8
    ppo_epochs: int = 4
    learning_rate: float = 1e-4
    max_new_tokens: int = 64
    min_new_tokens: int = 1
    # Rollouts sample from softmax(z / temperature), and every log-prob (old, new, reference) is of that distribution;
    # evaluation decodes greedily. 1.0: PPO then optimises and measures the model's own distribution. On the tiny preset
    # 0.7 did as well within seed noise (benchmarks/ppo_seeds.json, notebook 05 exercise 4); the untempered log-probs
    # at 0.7 that an earlier version used were a biased estimator.
    temperature: float = 1.0
    top_k: int = 0  # 0 / 1.0: no cut. A top-k/top-p cut is not in the log-probs (nor in trl's or OpenRLHF's)
    top_p: float = 1.0
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


class PolicyWithValue(torch.nn.Module):
    """The trainable parts in one module, (logits, values) per reply position: what PPO updates,
    and what ``accelerate.prepare`` wraps so that DDP averages their gradients across processes.
    ``policy`` (see :mod:`rlhf_helpers.policy`) is the only part that knows the model's architecture."""

    def __init__(self, policy, value_head: ValueHead):
        super().__init__()
        self.model, self.value_head = policy.model, value_head
        self.policy = policy

    def forward(self, batch, responses, temperature: float = 1.0, encoder_grad: bool = False):
        logits, hidden = self.policy.forward(batch, responses, temperature, encoder_grad=encoder_grad)
        return logits, self.value_head(hidden)


def trimmed_rows(idx: torch.Tensor, mask: torch.Tensor, *per_token: torch.Tensor) -> list[torch.Tensor]:
    """``mask`` and each (batch, T) tensor at the rows ``idx``, cut after the longest reply among those rows.

    A mini-batch of short replies then costs its own length, not the batch's longest: the columns cut are masked
    out of every loss and statistic, and a position's logits depend only on the tokens before it, so the numbers
    are the same (to float rounding)."""
    m = mask[idx]
    width = max(int(m.sum(dim=1).max()), 1)
    return [m[:, :width]] + [t[idx][:, :width] for t in per_token]


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
        # The one part that knows the architecture: encoder-decoder or decoder-only (rlhf_helpers.policy).
        self.policy = policy_for(model, tokenizer, max_source_length)
        torch.manual_seed(cfg.seed)
        self.value_head = ValueHead(model.config.hidden_size).to(self.device)
        self._use_adapter("policy")
        self.params = [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        # No weight decay: it would pull the LoRA weights towards 0, i.e. the policy towards the bare base model,
        # not towards the SFT policy that the KL term anchors to.
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0)
        # accelerate: moves to the device; under DDP wraps the trainable parts (self.model stays unwrapped).
        self.policy_and_value, self.optimizer = self.accelerator.prepare(
            PolicyWithValue(self.policy, self.value_head), self.optimizer
        )
        self.kl_ctl = AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.score_stats = RunningMoments()
        self.step_idx, self.history, self.samples = 0, [], []
        self.skipped_batches = 0  # mini-batches whose loss was not finite
        self.skipped_replies = 0  # replies whose reward-model score was not finite

    @property
    def eos_ids(self) -> list[int]:
        """Every id a reply may end with: the generation config's (it may list several), read as the sampling loop
        reads them at each rollout, so the masks can never count other ends than the loop stopped at."""
        return stop_and_pad_ids(self.model, self.tokenizer)[0]

    def _no_dropout(self) -> None:
        """Eval mode for the policy, the reference and the value head, in every pass: with dropout on, the
        rollout's log-probs, the reference's and the update's would each see another random sub-network,
        and the ratio would not be 1 before the first update. Gradients flow in eval mode all the same."""
        self.model.eval()
        self.value_head.eval()

    def _use_adapter(self, name: str) -> None:
        self.model.set_adapter(name)  # peft: also makes only this adapter's weights trainable
        # Encoder LoRA frozen (default): policy and reference share one encoder output per batch.
        if name == "policy" and self.policy.is_encoder_decoder and not self.cfg.train_encoder:
            for pname, p in self.model.named_parameters():
                if ".encoder." in pname:
                    p.requires_grad_(False)

    @property
    def train_encoder(self) -> bool:
        """Whether the update re-runs the encoder with gradients (encoder-decoders with ``train_encoder=True``)."""
        return self.policy.is_encoder_decoder and self.cfg.train_encoder

    def _prompts_for_step(self, step: int) -> list[str]:
        """batch_size prompts per process: drawn for all processes at once, each takes its own share."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + step)
        idx = torch.randint(len(self.prompts), (self.cfg.batch_size * self.world,), generator=g)
        return [self.prompts[i] for i in idx[self.rank * self.cfg.batch_size :][: self.cfg.batch_size].tolist()]

    # ---- one PPO step
    def rollout(self, prompts: list[str]) -> dict:
        """Sample replies, score them, and keep their old log-probs, values and reference log-probs.

        Changes nothing in the trainer (evaluation calls it too): the score statistics are updated by
        ``step``. ``scores`` are the reward model's minus the missing-EOS penalty, not yet normalised.
        ``seconds`` holds the time of each phase (sampling, scoring, reference pass)."""
        cfg, tok = self.cfg, self.tokenizer
        self._no_dropout()
        t0 = time.perf_counter()
        batch = self.policy.encode(prompts, self.device)  # an encoder-decoder's encoder runs here, once
        # Our KV-cached sampling loop (rlhf_helpers.sampling): generate's tokens at the same seed, and with them
        # each token's tempered log-prob log softmax(z / T)[y_t], the entropy and V(s_t): no second pass for them.
        sample = sample_replies(
            self.policy,
            batch,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            logprobs=True,
            value_head=self.value_head,
        )
        responses = sample.tokens  # right-padded after EOS
        eos_ids = self.eos_ids
        mask = response_mask(responses, eos_ids)  # up to the first EOS, never from ids != pad
        t1 = time.perf_counter()
        replies = tok.batch_decode(responses, skip_special_tokens=True)
        scores = torch.tensor(self.reward_fn(prompts, replies), dtype=torch.float, device=self.device)
        raw_scores = scores.clone()
        ended = has_eos(responses, eos_ids)
        scores = scores - cfg.missing_eos_penalty * (~ended).float()
        t2 = time.perf_counter()
        with torch.no_grad():
            # The reference pass runs whatever beta is: the KL to pi_SFT is always measured (the penalty may be 0).
            self._use_adapter("reference")
            # With a trained encoder LoRA the reference is pi_SFT only with its own (SFT) encoder output.
            ref_batch = self.policy.run_encoder(batch) if self.train_encoder else batch
            ref_logits, _ = self.policy.forward(ref_batch, responses, cfg.temperature)
            ref_logprobs, _ = logprobs_and_entropy(ref_logits, responses, entropy=False)  # reply by reply: less memory
            self._use_adapter("policy")
            del ref_logits
        seconds = {"sample": t1 - t0, "score": t2 - t1, "reference": time.perf_counter() - t2}
        sampled = dict(batch=batch, responses=responses, mask=mask, replies=replies, seconds=seconds)
        entropy = masked_mean(sample.entropy, mask).item()
        scored = dict(scores=scores, raw_scores=raw_scores, has_eos=ended, entropy=entropy)
        return {**sampled, **scored, "logprobs": sample.logprobs, "ref_logprobs": ref_logprobs, "values": sample.values}

    def step(self) -> dict:
        """One PPO iteration; returns the logged statistics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        # sampling depends only on (seed, step) and, under accelerate launch, on the process
        torch.manual_seed((cfg.seed * 1_000_003 + self.step_idx) * self.world + self.rank)
        prompts = self._prompts_for_step(self.step_idx)
        with self.accelerator.autocast():  # accelerate: rollouts in the precision of the updates (bf16 or fp32)
            ro = self.rollout(prompts)
        scores, mask = self._normalised_scores(ro["scores"]), ro["mask"]
        # A reply whose score is not finite (a reward function's NaN) is left out of this step: no reward, no loss.
        valid = torch.isfinite(scores)
        mask = mask * valid.unsqueeze(1).float()
        scores = torch.where(valid, scores, torch.zeros_like(scores))
        kl = kl_k1(ro["logprobs"], ro["ref_logprobs"]) * mask
        rewards = per_token_rewards(scores, kl, mask, self.kl_ctl.beta)
        advantages, returns = gae(rewards, ro["values"], mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)

        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "vf_clipfrac")}
        self._no_dropout()
        t_update = time.perf_counter()
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size)
            for i in range(0, cfg.batch_size, cfg.mini_batch_size):
                idx = order[i : i + cfg.mini_batch_size]
                # the mini-batch cut after its own longest reply: the columns after it are masked out everywhere
                m, responses, old_lp, adv, old_v, ret = trimmed_rows(
                    idx, mask, ro["responses"], ro["logprobs"], advantages, ro["values"], returns
                )
                # the rollout's encoder output is reused, unless the encoder LoRA trains (then it re-runs)
                logits, values = self.policy_and_value(
                    ro["batch"].rows(idx), responses, cfg.temperature, encoder_grad=self.train_encoder
                )
                logprobs = gather_logprobs(logits, responses)
                pg_loss, ratio = clipped_policy_loss(logprobs, old_lp, adv, m, cfg.cliprange)
                vf_loss, vf_clipfrac = clipped_value_loss(values, old_v, ret, m, cfg.cliprange_value)
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
                    stats["clipfrac"].append(policy_clip_fraction(ratio, adv, m, cfg.cliprange).item())
                    stats["approx_kl"].append(0.5 * masked_mean((logprobs - old_lp) ** 2, m).item())
                    stats["vf_clipfrac"].append(vf_clipfrac.item())

        t_end = time.perf_counter()
        trained = mask.bool()
        if trained.sum() > 1:  # 1 - Var(R - V) / Var(R): how much of the returns the value head predicts
            unexplained = torch.var((returns - ro["values"])[trained])
            explained_var = 1 - unexplained / torch.var(returns[trained]).clamp(min=1e-8)
        else:  # no finite score in the batch: nothing to explain
            explained_var = torch.tensor(float("nan"))
        # accelerate: each process saw its own replies; log (and adapt beta to) the mean over processes
        record = mean_over_processes(
            {
                "reward": ro["raw_scores"][valid].mean().item(),
                "kl": kl.sum(dim=1)[valid].mean().item(),  # KL(pi || pi_SFT) per reply, nats, whatever beta is
                "entropy": ro["entropy"],
                "response_length": mask.sum(dim=1)[valid].mean().item(),
                "eos_fraction": ro["has_eos"].float().mean().item(),
                "explained_variance": explained_var.item(),
                "seconds": t_end - t0,
                # where the step's time went: sampling (with log-probs and values), reward model, reference, updates
                **{f"seconds_{phase}": sec for phase, sec in ro["seconds"].items()},
                "seconds_update": t_end - t_update,
                **{k: (sum(v) / len(v) if v else float("nan")) for k, v in stats.items()},
            }
        )
        if cfg.adaptive_kl and math.isfinite(record["kl"]):  # no finite score in the batch: no KL measured, beta stays
            self.kl_ctl.update(record["kl"], cfg.batch_size * self.world)
        # The penalty acts on normalised scores, (r - mean) / std: against the raw score the effective coefficient is
        # beta * std (notebook 05 prints it), and it drifts as the running std does.
        record = {"step": self.step_idx, **record, "beta": self.kl_ctl.beta, "score_std": self.score_stats.std}
        self.history.append(record)
        sample = {"prompt": prompts[0], "reply": ro["replies"][0], "reward": ro["raw_scores"][0].item()}
        self.samples.append({"step": self.step_idx, **sample})
        self.step_idx += 1
        return record

    def _normalised_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(r - running mean) / running std, the statistics updated with this batch's finite scores from
        every process (the same on all of them). A non-finite score is skipped, never averaged in, and says so."""
        everyone = self.accelerator.gather(scores)
        bad = int((~torch.isfinite(everyone)).sum())
        if bad:
            self.skipped_replies += bad
            warnings.warn(f"PPO step {self.step_idx}: {bad} non-finite reward score(s), replies left out", stacklevel=3)
        if not self.cfg.normalize_scores:
            return scores
        self.score_stats.update(everyone)
        return (scores - self.score_stats.mean) / self.score_stats.std

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
                    "skipped_replies": self.skipped_replies,
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
        self.skipped_batches, self.skipped_replies = state["skipped"], state.get("skipped_replies", 0)

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


def load_policy_and_reference(adapter_dir: str | Path, base):
    """Base model + the SFT adapter twice: ``policy`` (trainable) and ``reference`` (frozen).

    ``base``: the loaded base model, a preset name (loaded as :func:`rlhf_helpers.presets.load_base` loads it, e.g.
    SmolLM2 from its GGUF file), or a folder that ``from_pretrained`` reads (the class follows its config:
    encoder-decoder or causal)."""
    from peft import PeftModel

    from rlhf_helpers import presets

    if isinstance(base, str) and base in presets.PRESETS:
        base = presets.load_base(base)[0]
    elif isinstance(base, (str, Path)):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        seq2seq = AutoConfig.from_pretrained(base).is_encoder_decoder
        base = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(base)
    model = PeftModel.from_pretrained(base, adapter_dir, adapter_name="policy", is_trainable=True)
    model.load_adapter(adapter_dir, adapter_name="reference", is_trainable=False)
    model.set_adapter("policy")
    return model


def load_ppo_config(path: str | Path) -> PPOConfig:
    """The PPOConfig a run saved (``ppo_config.json``), with a clear error for a run this version cannot
    continue or evaluate (one made by an older version of the course, with fields that no longer exist)."""
    from dataclasses import fields

    values = json.loads(Path(path).read_text())
    unknown = sorted(set(values) - {f.name for f in fields(PPOConfig)})
    if unknown:
        raise ValueError(
            f"{path}: field(s) {', '.join(unknown)} are not PPOConfig fields of this version; the run was made by an "
            "older version of the course: train it again (delete its folder, or use a new RLHF_ARTIFACTS)"
        )
    return PPOConfig(**values)


def default_config(**overrides) -> PPOConfig:
    return PPOConfig(seed=course_seed(), **overrides)
