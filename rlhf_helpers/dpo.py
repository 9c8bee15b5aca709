"""Direct preference optimisation (DPO, Rafailov et al. 2023) and IPO (Azar et al. 2023) for encoder-decoder and
decoder-only policies — read ``dpo_math.py`` (the equations), then this file.

DPO minimises, over preference pairs (x, y_w, y_l) of the preference split,

    L = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

(eq. 7): the Bradley-Terry loss of notebook 03 with the implicit reward beta * log pi / pi_ref in place of a learnt
reward model. No reward model, no sampling, no value head: one teacher-forced pass of policy and reference over
both replies of each pair.

Design decisions, the same as PPO's (``ppo.py``) wherever the question is the same:
* Policy = the SFT LoRA adapter, trainable; reference = a second, frozen copy of the SFT adapter on the same base
  (``load_policy_and_reference``), so at step 0 policy == reference, h = 0 and the loss is exactly log 2.
* The architecture is only known to the policy interface (:mod:`rlhf_helpers.policy`): ``forward(batch, replies)``
  gives the logits that predict each reply token — for T5 the reply tokens are the decoder's labels, for a causal
  model the tokens after the prompt (column P - 1 + t predicts reply token t) — and ``dpo_math.reply_logprobs``
  sums them under the reply mask.
* Every reply ends with EOS, as SFT trained it (T5's tokenizer appends it to the labels; the causal format
  ``prompt Reply: reply</s>`` ends with it): pi(y | x) is then the probability of the whole reply *and of stopping*,
  the same event that sampling and PPO's masks (up to the first EOS) score.
* Dropout off in every pass (eval mode, whatever the model was loaded in): the policy's and the reference's
  log-probs must be of the same deterministic network before the first update.
* The encoder's LoRA frozen by default (as PPO's ``train_encoder=False``): the encoder runs once per batch, under
  the policy adapter whose encoder weights are the SFT ones, and policy and reference share its output.
* Deterministic from the seed: the pairs of step s are a seeded permutation of the split (one per epoch).
* KL to SFT on held-out prompts at the end, measured as PPO logs ``kl``: replies sampled from the policy at
  temperature 1, summed k1 = log pi(y_t) - log pi_SFT(y_t) per reply, mean over replies (:func:`sampled_kl`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

from rlhf_helpers.config import course_seed, fast_cpu_math
from rlhf_helpers.dpo_math import dpo_loss, dpo_metrics, ipo_loss, reply_logprobs
from rlhf_helpers.policy import policy_for
from rlhf_helpers.ppo_math import kl_k1, logprobs_and_entropy, response_mask
from rlhf_helpers.sampling import stop_and_pad_ids


@dataclass
class DPOConfig:
    steps: int = 90  # ~1 epoch of the 1418 course pairs at 16 pairs per step
    batch_size: int = 16  # pairs per step
    learning_rate: float = 5e-4
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"  # "sigmoid": DPO eq. 7 (trl's name); "ipo": Azar et al.
    label_smoothing: float = 0.0  # cDPO (sigmoid loss only)
    max_grad_norm: float = 1.0
    max_target_length: int = 64  # reply tokens, EOS included (SFT's max_target_length)
    train_encoder: bool = False  # encoder-decoders: False = encoder LoRA frozen, one encoder pass shared
    # the final KL to SFT: replies sampled at temperature 1 on this many held-out prompts
    kl_prompts: int = 64
    kl_max_new_tokens: int = 64
    seed: int = 0
    extra: dict = field(default_factory=dict)


def reply_token_ids(tokenizer, replies: list[str], max_length: int, causal: bool) -> list[list[int]]:
    """Each reply's token ids, ending with exactly one EOS (kept when truncated to ``max_length``).

    T5: ``tokenizer(text_target=reply)`` as SFT's labels, EOS appended by T5's post-processor. Causal: the text that
    follows ``prompt_text(...)`` in SFT's documents (``" " + reply`` after the tiny format's cue; the reply itself
    after a chat template), tokenised without special tokens, plus EOS — the tiny-causal tokenizer adds none."""
    eos = tokenizer.eos_token_id
    if causal:
        cue = not getattr(tokenizer, "chat_template", None)
        texts = [(" " + r) if cue else r for r in replies]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text_target=replies, add_special_tokens=False)["input_ids"]
    out = []
    for row in ids:
        row = [t for t in row if t != eos][: max_length - 1]
        out.append(row + [eos])
    return out


def pad_replies(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded reply ids (B, T) and their mask (1 on the reply, EOS included)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1.0
    return ids.to(device), mask.to(device)


class DPOTrainer:
    """DPO/IPO with a LoRA policy and a frozen SFT-adapter reference on the same base, any architecture.

    ``pairs``: rows with ``prompt``, ``chosen``, ``rejected`` (a ``datasets.Dataset`` or a list of dicts)."""

    def __init__(self, model, tokenizer, pairs, cfg: DPOConfig, max_source_length: int = 96):
        fast_cpu_math()
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.pairs = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in pairs]
        if not self.pairs:
            raise ValueError("DPO needs at least one preference pair")
        self.max_source_length = max_source_length
        self.device = next(model.parameters()).device
        self.policy = policy_for(model, tokenizer, max_source_length)
        torch.manual_seed(cfg.seed)
        self._use_adapter("policy")
        self.params = [p for p in model.parameters() if p.requires_grad]
        # no weight decay: it would pull the LoRA weights towards the bare base model, not the SFT reference
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, eps=1e-5, weight_decay=0.0)
        self.step_idx, self.history = 0, []
        self.skipped_batches = 0

    # ---- the same adapter and dropout handling as PPOTrainer (ppo.py)
    @property
    def train_encoder(self) -> bool:
        return self.policy.is_encoder_decoder and self.cfg.train_encoder

    def _no_dropout(self) -> None:
        """Eval mode in every pass: with dropout on, policy and reference would be different random sub-networks
        and h would not be 0 (loss log 2) before the first update. Gradients flow in eval mode all the same."""
        self.model.eval()

    def _use_adapter(self, name: str) -> None:
        self.model.set_adapter(name)  # peft: also makes only this adapter's weights trainable
        if name == "policy" and self.policy.is_encoder_decoder and not self.cfg.train_encoder:
            for pname, p in self.model.named_parameters():
                if ".encoder." in pname:
                    p.requires_grad_(False)

    # ---- data
    def pairs_for_step(self, step: int) -> list[dict]:
        """batch_size pairs: epoch e walks a permutation seeded by (seed, e), so every pair is seen once per epoch."""
        n, b = len(self.pairs), self.cfg.batch_size
        out = []
        pos = step * b
        while len(out) < b:
            epoch, offset = divmod(pos, n)
            g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
            take = order[offset : offset + b - len(out)]
            out.extend(self.pairs[i] for i in take)
            pos += len(take)
        return out

    def encode_pairs(self, pairs: list[dict]):
        """One batch of 2B rows: the B chosen replies, then the B rejected ones, each behind its prompt."""
        prompts = [p["prompt"] for p in pairs] * 2
        replies = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
        rows = reply_token_ids(self.tokenizer, replies, self.cfg.max_target_length, not self.policy.is_encoder_decoder)
        ids, mask = pad_replies(rows, self.tokenizer.pad_token_id, self.device)
        return self.policy.tokenize(prompts, self.device), ids, mask

    def sequence_logprobs(self, pairs: list[dict]) -> dict[str, torch.Tensor]:
        """log pi(y|x) and log pi_ref(y|x) for the chosen and rejected reply of each pair (policy with gradient)."""
        batch, ids, mask = self.encode_pairs(pairs)
        if not self.train_encoder:
            batch = self.policy.run_encoder(batch)  # T5: once, shared by both passes (no-op for causal models)
        with torch.no_grad():
            self._use_adapter("reference")
            ref_batch = self.policy.run_encoder(batch) if self.train_encoder else batch
            ref_logits, _ = self.policy.forward(ref_batch, ids)
            ref = reply_logprobs(ref_logits, ids, mask)
            self._use_adapter("policy")
            del ref_logits
        logits, _ = self.policy.forward(batch, ids, encoder_grad=self.train_encoder)
        logps = reply_logprobs(logits, ids, mask)
        b = len(pairs)
        lengths = mask.sum(-1)
        return {
            "chosen": logps[:b], "rejected": logps[b:], "ref_chosen": ref[:b], "ref_rejected": ref[b:],
            "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:],
        }

    def loss_and_metrics(self, lp: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        args = (lp["chosen"], lp["rejected"], lp["ref_chosen"], lp["ref_rejected"])
        if cfg.loss_type == "sigmoid":
            loss = dpo_loss(*args, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        elif cfg.loss_type == "ipo":
            loss = ipo_loss(*args, lp["chosen_lengths"], lp["rejected_lengths"], beta=cfg.beta)
        else:
            raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {cfg.loss_type!r}")
        with torch.no_grad():
            metrics = {k: float(v) for k, v in dpo_metrics(*[a.detach() for a in args], beta=cfg.beta).items()}
        return loss, metrics

    def step(self) -> dict:
        """One optimizer step on batch_size pairs; returns the logged statistics (trl's names)."""
        t0 = time.perf_counter()
        torch.manual_seed(self.cfg.seed * 1_000_003 + self.step_idx)  # nothing samples here; for any dropout-free op
        self._no_dropout()
        loss, metrics = self.loss_and_metrics(self.sequence_logprobs(self.pairs_for_step(self.step_idx)))
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self.optimizer.step()
        else:
            warnings.warn(f"DPO step {self.step_idx}: non-finite loss, batch skipped", stacklevel=2)
            self.skipped_batches += 1
        record = {"step": self.step_idx, "loss": loss.item(), **metrics, "seconds": time.perf_counter() - t0}
        self.history.append(record)
        self.step_idx += 1
        return record

    def train(self, progress: bool = True, steps: int | None = None) -> list[dict]:
        from tqdm.auto import tqdm

        end = self.cfg.steps if steps is None else self.step_idx + steps
        bar = tqdm(total=end - self.step_idx, desc="DPO", unit="step", disable=not progress)
        while self.step_idx < end:
            rec = self.step()
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", margin=f"{rec['rewards/margins']:.2f}")
        bar.close()
        return self.history

    def kl_to_reference(self, prompts: list[str]) -> float:
        """KL(pi || pi_SFT) per reply on ``prompts`` (see :func:`sampled_kl`)."""
        return sampled_kl(
            self.policy, self._use_adapter, prompts, self.cfg.kl_max_new_tokens, seed=self.cfg.seed,
            train_encoder=self.train_encoder,
        )


def sampled_kl(
    policy,
    use_adapter,
    prompts: list[str],
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    temperature: float = 1.0,
    train_encoder: bool = False,
) -> float:
    """KL(pi || pi_SFT) in nats per reply, estimated as PPO logs ``kl``: sample y ~ pi(.|x) (the ``policy`` adapter),
    then KL ~ mean_y sum_t k1_t, k1_t = log pi(y_t | x, y_<t) - log pi_SFT(y_t | x, y_<t) (the ``reference``
    adapter), over the reply's tokens up to its first EOS. Unbiased (E_pi[log pi/pi_SFT] is the KL), one sample per
    prompt. ``use_adapter(name)`` switches adapters (the trainer's); the same seed gives the same replies. With
    ``train_encoder`` (an encoder-decoder whose encoder LoRA trained) the reference gets its own encoder output."""
    model, tok = policy.model, policy.tokenizer
    eos_ids = stop_and_pad_ids(model, tok)[0]
    device = next(model.parameters()).device
    model.eval()
    torch.manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        batch = policy.encode(prompts[start : start + batch_size], device)
        with torch.no_grad():
            responses = policy.generate(
                batch, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens
            )
            mask = response_mask(responses, eos_ids)  # any EOS id the sampling loop stops at
            logits, _ = policy.forward(batch, responses, temperature)
            logprobs, _ = logprobs_and_entropy(logits, responses, entropy=False)
            del logits
            use_adapter("reference")
            ref_batch = policy.run_encoder(batch) if train_encoder else batch
            ref_logits, _ = policy.forward(ref_batch, responses, temperature)
            ref_logprobs, _ = logprobs_and_entropy(ref_logits, responses, entropy=False)
            use_adapter("policy")
        total += (kl_k1(logprobs, ref_logprobs) * mask).sum().item()
        count += responses.shape[0]
    return total / max(count, 1)


def dpo_defaults(preset: str = "tiny", **overrides) -> DPOConfig:
    """Defaults per preset: a high learning rate for the tiny base (as its SFT), gentle steps for real weights."""
    from dataclasses import replace

    from rlhf_helpers.presets import get_preset

    p = get_preset(preset)
    cfg = DPOConfig(seed=course_seed(), max_target_length=p.max_target_length)
    if p.hub_name is not None:
        cfg = replace(cfg, learning_rate=5e-6, batch_size=8, steps=100)
    return replace(cfg, **overrides)

