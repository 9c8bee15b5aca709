"""Stage 3, the reward model: a scalar r(x, y) trained on preference pairs.

Loss (Stiennon et al. 2020, eq. 1; Bradley–Terry):

    loss = -log sigmoid( r(x, y_chosen) - r(x, y_rejected) - margin )

computed by trl's ``RewardTrainer`` (trl 1.x). Backbones: the preset's T5 as
``T5ForSequenceClassification`` (``num_labels=1``, score read at the final EOS), the offline
all-MiniLM-L6-v2 encoder (``minilm``), or any ``AutoModelForSequenceClassification`` name/path.

Inputs are formatted like the policy sees them: the prompt, then the response, joined with the
tokenizer's own pair template (T5: ``prompt </s> response </s>``; BERT: ``[CLS] prompt [SEP]
response [SEP]``). Truncation policy, stated once and used everywhere (training and scoring): the
response keeps its *end* (its last tokens: the closing and the final EOS are where a reply is
judged finished) and gets up to 3/4 of the budget; the prompt keeps its *start* (where the facts
are) in the rest. Nothing ever crashes on length.

Pretrained encoders (``minilm`` or any encoder name) are **frozen** by default (``frozen_backbone``): the
reward is a Bradley–Terry head on a few features of their sentence embeddings, the feature set and its L2
strength chosen by grouped cross-validation on the training pairs (:mod:`rlhf_helpers.feature_reward`).
Measured on real human labels (425 CNN/DM summary comparisons, 5 article-grouped folds;
benchmarks/reward_real_data.py, table in benchmarks/README.md), it is the only recipe that beats "the longer
summary wins"; fine-tuning the encoder memorises the few hundred pairs. That is also the reward model of the
course on your own data (:func:`default_reward_backbone`). ``frozen_backbone=False`` fine-tunes the encoder with
``ENCODER_FINETUNE_RECIPE``, the best fine-tuning recipe measured there. Why each part of it:

* **full fine-tuning at 3e-5 with the head at 1e-3** (``head_learning_rate``): the old LoRA r=16 at 3e-4 for
  one pass never moved the encoder (loss 0.693, margins ~2e-4, accuracy 0.51); a random head at the body's
  gentle rate stays near 0 and passes the encoder almost no gradient.
* **the response first, the prompt cut to its first 96 tokens, 192 in all** (``response_first``,
  ``max_prompt_tokens``): news articles run ~800 tokens, and what the labellers judged is the summary; the
  article's lead is what a summary should cover. Shorter inputs also make a 3-epoch CPU run affordable.
* **3 epochs, batch 8, no gradient checkpointing**: ~110 optimizer steps on ~300 pairs; training loss
  falls to ~0.3 (the repeated comparisons of one article are easy to memorise), so more epochs only overfit.
* **no length term** (``length_feature`` off; see :func:`length_aware_class`): the longer summary wins 66%
  of human comparisons and the encoder alone does not pick that up (0.58-0.61 on folds where length alone
  scores 0.64-0.71), but a learnt ``w * log(1 + tokens)`` scored the same 0.579 on the fold measured, and
  an RM that pays for length is one PPO learns to game. It stays an option.
* **the result does not beat the length baseline on this data** (see the table): ~300 noisy pairs are too
  few for a 22M encoder; :func:`learning_check` says so on every such run instead of staying silent. Hence the
  frozen default.
* the [CLS] pooler of ``BertForSequenceClassification`` is kept (no mean pooling: not measured here).

The tiny preset and the hub T5 presets do not use any of these options (their defaults leave them off).

Decoder-only backbones (``tiny-causal``, ``smollm2-135m``, a causal hub name) become
``AutoModelForSequenceClassification`` (``LlamaForSequenceClassification``: a one-output ``score`` head on the
hidden state of the last non-pad token), trained with LoRA (``q_proj``, ``v_proj``; ``score`` in
``modules_to_save``). A causal model has no pair template, so the text is the one the policy writes
(:func:`encode_causal`): ``prompt_text(prompt)`` (chat template or ``prompt Reply:``), the response, then one
EOS, right-padded. The pooled token is found by ``input_ids != pad``, so pad must differ from EOS or the EOS we
append would count as padding: where a tokenizer pads with its EOS (SmolLM2) the reward model pads with another
special token (:func:`reward_pad_token`); the score then reads the EOS, which has seen the whole reply.
After evaluation, :func:`learning_check` warns when held-out accuracy is not clearly above chance or the
length-only baseline (``learnt_nothing_warning`` in metrics.json, and on stderr).
"""

from __future__ import annotations

import functools
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlhf_helpers.backbones import minilm_path
from rlhf_helpers.config import artifacts_dir, course_seed, device_name, fast_cpu_math
from rlhf_helpers.course_data import CRITERIA
from rlhf_helpers.distributed import is_main_process, main_process_first, num_processes, on_main_process
from rlhf_helpers.io_utils import atomic_write_dir
from rlhf_helpers.presets import PRESETS, get_preset, model_path

if TYPE_CHECKING:
    import torch

    from rlhf_helpers.feature_reward import FeatureRewardModel

#: The classification head's module name per backbone family: with LoRA it must be trained and
#: saved in full (``modules_to_save``), else peft leaves it random and drops it from the checkpoint.
HEAD_NAMES = {
    "t5": "classification_head",
    "bert": "classifier",
    "roberta": "classifier",
    "deberta-v2": "classifier",
    # decoder-only families (GenericForSequenceClassification)
    "llama": "score",
    "qwen2": "score",
    "mistral": "score",
    "gemma": "score",
}
LORA_TARGETS = {
    "t5": ["q", "v"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    **{family: ["q_proj", "v_proj"] for family in ("llama", "qwen2", "mistral", "gemma")},
}


@dataclass
class RewardConfig:
    backbone: str = "tiny"  # a preset name, "minilm", or any sequence-classification model name/path
    use_lora: bool = True
    lora_r: int = 32
    lora_alpha: int = 32
    learning_rate: float = 5e-3  # tiny, 2 epochs: held-out accuracy 0.917 (3e-3 gave 0.89-0.90, too close to 0.90)
    num_epochs: float = 2  # tiny: 2 passes, 85-108 s on 2 CPU cores
    batch_size: int = 16
    gradient_accumulation_steps: int = 1  # batches per optimizer step (same result, less memory)
    max_length: int = 160
    margin: float = 0.0  # optional fixed margin in the loss (trl's "margin" column)
    max_train_pairs: int | None = None  # subsample the training pairs (stated in the output when used)
    # Recompute activations in the backward pass instead of storing them: less memory, ~50% more compute (trl's
    # default, kept). The tiny preset fits without it and trains in 65 s instead of 108 s, but floating-point sums
    # then differ and give another RM: held-out accuracy 0.930 (vs 0.917), yet a weaker PPO target on the course data
    # (gold win rate of PPO over SFT 0.746 and 0.58 for PPO seeds 0 and 1, vs 0.908, 0.992 and 0.888 with it on).
    gradient_checkpointing: bool = True
    # Pretrained-encoder options (see ENCODER_FINETUNE_RECIPE); their defaults leave the tiny/T5 path as it was.
    # frozen_backbone: no fine-tuning at all, a Bradley-Terry head on the encoder's sentence-embedding features
    # (rlhf_helpers.feature_reward; the default for pretrained encoders). The optimiser fields below are then unused.
    frozen_backbone: bool = False
    response_first: bool = False  # encode (response, prompt) instead of (prompt, response)
    max_prompt_tokens: int | None = None  # hard cap on the prompt's tokens (its start is kept); None: the 1/4+ rule
    head_learning_rate: float | None = None  # the freshly initialised head's rate; None: learning_rate for all
    # add w * log(1 + response tokens) to the score, w learnt from the labels (starts at 0); needs response_first
    # and full fine-tuning (see length_aware_class)
    length_feature: bool = False
    # the length weight's own rate: with Adam a weight moves ~lr per step, and a useful one is ~1 (the BT logistic
    # fit of log-length alone), so at the head's 1e-3 it would stay near 0 for the ~100 steps of a CPU run
    length_learning_rate: float = 3e-2
    # held-out accuracy twice per epoch during training (the notebook's plot); off for the CPU demo of a real
    # decoder-only model, where scoring the held-out pairs costs as much as training
    eval_during_training: bool = True
    max_eval_pairs: int | None = None  # score only this many held-out pairs (seeded subsample; None: all)
    report_to: str = "none"  # "tensorboard": the Trainer's curves too (rlhf_helpers.tracking)
    seed: int = 0
    extra: dict = field(default_factory=dict)


#: Fine-tuning a pretrained encoder (``minilm`` or any sequence-classification name) with ``frozen_backbone=False``:
#: the best of the fine-tuning recipes measured on real human labels by benchmarks/reward_real_data.py (table in
#: benchmarks/README.md). See the module docstring for why.
ENCODER_FINETUNE_RECIPE: dict = dict(
    use_lora=False,
    learning_rate=3e-5,
    head_learning_rate=1e-3,
    num_epochs=3,
    batch_size=8,
    max_length=192,
    response_first=True,
    max_prompt_tokens=96,
    gradient_checkpointing=False,
    length_feature=False,  # measured no better on held-out articles (benchmarks/README.md); invites length hacking
)
#: The default for a pretrained encoder: frozen, a feature head on its embeddings (module docstring).
ENCODER_RECIPE: dict = dict(ENCODER_FINETUNE_RECIPE, frozen_backbone=True)
#: On a CPU a fine-tuned encoder trains on at most this many pairs (subsampled, and the CLI says so). Measured:
#: 3 epochs on ~285 pairs took 1000-1100 s on 2 cores shared with 4-5 other jobs; an idle machine is
#: several times faster.
ENCODER_CPU_MAX_PAIRS = 600


def reward_defaults(backbone: str = "tiny", **overrides) -> RewardConfig:
    """Per-backbone defaults: the tiny T5 trains fast with a high rate; pretrained encoders do not.

    ``tiny-causal`` takes the tiny T5's recipe unchanged (LoRA r=32 at 5e-3, 2 epochs): held-out accuracy 0.949
    [0.911, 0.981] on the course's 157 pairs (length baseline 0.573; 170 s on 2 shared cores), no tuning needed."""
    cfg = RewardConfig(backbone=backbone, seed=course_seed())
    if _pretrained_causal(backbone):
        cfg = replace(cfg, **causal_pretrained_recipe(backbone))
    elif backbone in PRESETS:
        preset = get_preset(backbone)
        cfg = replace(cfg, max_length=preset.max_source_length + preset.max_target_length)
        if preset.hub_name is not None:
            # 2 pairs x 4 accumulated = 8 per step. Measured (benchmarks/gpu_stages.py): 8 pairs of 640 tokens
            # at once need 36 GiB on flan-t5-base in fp32, far over a free Colab T4's 15 GiB; 2 at a time fit.
            cfg = replace(cfg, learning_rate=2e-4, lora_r=16, lora_alpha=32, num_epochs=2)
            cfg = replace(cfg, batch_size=2, gradient_accumulation_steps=4)
    else:  # a pretrained encoder such as MiniLM: frozen (ENCODER_RECIPE) unless told to fine-tune
        cfg = replace(cfg, **ENCODER_RECIPE)
        if not overrides.get("frozen_backbone", True) and device_name() == "cpu":
            cfg = replace(cfg, max_train_pairs=ENCODER_CPU_MAX_PAIRS)  # a frozen head needs no cap: it fits in seconds
    return replace(cfg, **overrides)


def default_reward_backbone(preset: str | None = None) -> str:
    """The reward model's backbone for the current data folder: the preset's own model on the course data, the
    frozen MiniLM feature head (``"minilm"``, :data:`ENCODER_RECIPE`) on your own.

    Why not the preset on your data too? A real comparison set has a few hundred noisy labels. On the worked
    example of README's "The course on your data" (204 training pairs of CNN/DM summaries) the fine-tuned tiny T5
    scored 0.532 on held-out articles against 0.617 for "the longer summary wins": PPO would optimise noise.
    The frozen encoder's head is the one recipe measured above that baseline (benchmarks/README.md)."""
    from rlhf_helpers.config import on_course_data, preset_name

    return (preset or preset_name()) if on_course_data() else "minilm"


def _pretrained_causal(backbone: str) -> bool:
    """A real (not locally built) decoder-only backbone: a causal hub preset or a causal model name/path."""
    if backbone in PRESETS:
        return get_preset(backbone).is_causal and get_preset(backbone).hub_name is not None
    from rlhf_helpers.presets import _locally_cached, hub_reachable

    if backbone == "minilm" or not (Path(backbone).is_dir() or _locally_cached(backbone) or hub_reachable()):
        return False  # not readable here: training fails later with the loader's own clear message
    try:
        return is_causal_backbone(backbone)
    except Exception:  # no model there (a typo): decided later, where loading it fails clearly
        return False


def causal_pretrained_recipe(backbone: str) -> dict:
    """A real decoder-only preset (SmolLM2, Qwen2.5): LoRA r=16 at 2e-4 with the head at 1e-3 (it starts random;
    see :func:`head_rate_optimizer`), 2 epochs of batch 8. On a CPU, a demonstration that finishes in minutes
    (smollm2-135m on 2 cores shared with other jobs: 12 steps of 4 pairs in 121 s, the stage in 3.6 minutes,
    held-out accuracy 0.797 [0.703, 0.891] against 0.594 for length): 48 pairs, 1 epoch, no evaluation during
    training, 64 held-out pairs scored after it, replies and prompts within 160 tokens."""
    from rlhf_helpers.config import device_name

    lengths = 640  # a name that is no preset: 512 prompt + 128 reply tokens, as the hub presets
    if backbone in PRESETS:
        lengths = get_preset(backbone).max_source_length + get_preset(backbone).max_target_length
    recipe = dict(
        learning_rate=2e-4,
        head_learning_rate=1e-3,
        lora_r=16,
        lora_alpha=32,
        num_epochs=2,
        batch_size=8,
        max_length=min(lengths, 640),
    )
    if device_name() == "cpu":
        recipe.update(max_train_pairs=48, num_epochs=1, batch_size=4, max_length=160)
        recipe.update(eval_during_training=False, max_eval_pairs=64)
    return recipe


def backbone_path(backbone: str) -> str:
    if backbone in PRESETS:
        return model_path(backbone)
    if backbone == "minilm":
        return minilm_path()
    return backbone


# --------------------------------------------------------------------------- formatting


def pair_template(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(prefix, middle, suffix) special ids that the tokenizer puts around a text pair, read off
    one encoded example (T5: ``[], [</s>], [</s>]``; BERT: ``[CLS], [SEP], [SEP]``). transformers 5
    no longer exposes ``build_inputs_with_special_tokens``, and we must truncate ids ourselves."""
    cached = getattr(tokenizer, "_rlhf_pair_template", None)
    if cached is not None:
        return cached
    a = tokenizer("hello", add_special_tokens=False)["input_ids"]
    b = tokenizer("world", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", "world")["input_ids"]
    i = next(k for k in range(len(full)) if full[k : k + len(a)] == a)
    j = next(k for k in range(i + len(a), len(full)) if full[k : k + len(b)] == b)
    template = (full[:i], full[i + len(a) : j], full[j + len(b) :])
    tokenizer._rlhf_pair_template = template
    return template


def encode_pair(
    tokenizer,
    prompt: str,
    response: str,
    max_length: int,
    *,
    response_first: bool = False,
    max_prompt_tokens: int | None = None,
) -> list[int]:
    """Token ids of (prompt, response) under the truncation policy of the module docstring.

    ``max_prompt_tokens`` first cuts the prompt to its first that many tokens, so a long article can
    never take budget the response could use; ``response_first`` then puts the response in the first
    slot (``[CLS] response [SEP] prompt [SEP]``), so the response sits at the same positions whatever
    the prompt's length. Both are off by default (the tiny preset's encoding is unchanged)."""
    prefix, middle, suffix = pair_template(tokenizer)
    p = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False, verbose=False)["input_ids"]
    if max_prompt_tokens is not None:
        p = p[: max(max_prompt_tokens, 0)]
    budget = max_length - len(prefix) - len(middle) - len(suffix)
    r_keep = min(len(r), max(budget * 3 // 4, budget - len(p)))
    r = r[len(r) - r_keep :] if r_keep > 0 else []
    p = p[: max(budget - len(r), 0)]
    if response_first:
        return prefix + r + middle + p + suffix
    return prefix + p + middle + r + suffix


@functools.lru_cache(maxsize=64)
def is_causal_backbone(backbone: str) -> bool:
    """True for a decoder-only backbone: a causal preset, or a model whose config names a ``*ForCausalLM``
    architecture (``minilm`` and the T5 presets are not)."""
    if backbone in PRESETS:
        return get_preset(backbone).is_causal
    if backbone == "minilm":
        return False
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(backbone_path(backbone))
    return not config.is_encoder_decoder and any(a.endswith("ForCausalLM") for a in config.architectures or [])


def reward_pad_token(tokenizer) -> str:
    """The pad token a causal reward model uses: the tokenizer's own, unless it is missing or the EOS itself
    (SmolLM2 pads with ``<|im_end|>``), then the unknown token (``<|endoftext|>`` for SmolLM2), which no course
    text contains. Why: the classifier pools at the last token that is not pad (``input_ids != pad_token_id``), so
    with pad == EOS the EOS that ends every input would be read as padding."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        return tokenizer.pad_token
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != eos:
        return tokenizer.unk_token
    raise ValueError(f"{type(tokenizer).__name__}: no pad token distinct from EOS ({tokenizer.eos_token!r})")


def encode_causal(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of (prompt, response) for a decoder-only reward model: the text the policy sees and writes,
    ``prompt_text(prompt)`` + the response (:func:`rlhf_helpers.sft.completion_text`), then one EOS.

    Truncation: the response keeps its end and up to 3/4 of the budget, as in :func:`encode_pair`; the prompt
    keeps its *end* (where :class:`rlhf_helpers.policy.CausalPolicy` cuts it: the cue or the chat template's
    generation prompt stays next to the reply), and the EOS is always last."""
    from rlhf_helpers.policy import prompt_text
    from rlhf_helpers.sft import completion_text

    p = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False, verbose=False)["input_ids"]
    r = tokenizer(completion_text(tokenizer, response), add_special_tokens=False, verbose=False)["input_ids"]
    budget = max_length - 1
    r_keep = min(len(r), max(budget * 3 // 4, budget - len(p)))
    r = r[len(r) - r_keep :] if r_keep > 0 else []
    p_keep = max(budget - len(r), 0)
    p = p[len(p) - p_keep :] if p_keep > 0 else []
    return p + r + [tokenizer.eos_token_id]


def encode_for(cfg: RewardConfig, tokenizer, prompt: str, response: str) -> list[int]:
    """:func:`encode_pair` with ``cfg``'s length, order and prompt cap (:func:`encode_causal` for a decoder-only
    backbone): the one encoding of training and scoring."""
    if is_causal_backbone(cfg.backbone):
        return encode_causal(tokenizer, prompt, response, cfg.max_length)
    return encode_pair(
        tokenizer,
        prompt,
        response,
        cfg.max_length,
        response_first=cfg.response_first,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )


def preference_features(ds, tokenizer, cfg: RewardConfig):
    """The pre-tokenised columns trl's RewardTrainer reads (``chosen_ids``, ``rejected_ids``)."""

    def encode(row):
        out = {
            "chosen_ids": encode_for(cfg, tokenizer, row["prompt"], row["chosen"]),
            "rejected_ids": encode_for(cfg, tokenizer, row["prompt"], row["rejected"]),
        }
        if cfg.margin:
            out["margin"] = cfg.margin
        return out

    return ds.map(encode, remove_columns=ds.column_names)


# --------------------------------------------------------------------------- the model


def _family(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return config.model_type


_LENGTH_AWARE_CLASSES: dict[type, type] = {}


def length_aware_class(base_cls: type) -> type:
    """``base_cls`` (a ``*ForSequenceClassification``) plus one learnt scalar: the score becomes
    ``base score + length_weight * log(1 + n)``, with ``n`` the response's token count read off the ids
    (the response comes first: ``[CLS] response [SEP] prompt [SEP]``, so ``n`` = the first separator's
    position - 1). ``length_weight`` is saved and reloaded with the model.

    Why: in human summary comparisons the longer summary wins 66% of the time (CNN/DM, Stiennon et al.
    2020), yet a 22M-parameter encoder fine-tuned on ~300 pairs does not learn to count tokens: it scored
    0.58 on held-out articles where "longer wins" scores 0.71 (benchmarks/README.md). Given length as a
    feature whose weight the labels set (0 at the start, so data where length says nothing leaves it
    near 0), the encoder's capacity could go to the content. Measured: 0.579 on that fold, the same as
    without it, so it is off in ENCODER_RECIPE. The price when on: an RM that pays for length, as the
    labellers did; PPO against it will lengthen replies, which the KL penalty has to hold back."""
    if base_cls in _LENGTH_AWARE_CLASSES:
        return _LENGTH_AWARE_CLASSES[base_cls]
    import torch

    class LengthAware(base_cls):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            self.length_weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            sep = getattr(self.config, "rlhf_length_sep_id", None)
            if sep is None:
                raise ValueError("length_feature: config.rlhf_length_sep_id (the separator's id) is not set")
            n = ((input_ids == sep).int().argmax(dim=1) - 1).clamp(min=0)
            out.logits = out.logits + self.length_weight.to(out.logits.dtype) * torch.log1p(n.float()).unsqueeze(-1)
            return out

    LengthAware.__name__ = LengthAware.__qualname__ = f"LengthAware{base_cls.__name__}"
    _LENGTH_AWARE_CLASSES[base_cls] = LengthAware
    return LengthAware


def _sequence_classifier_class(path: str, length_feature: bool):
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if not length_feature:
        return AutoModelForSequenceClassification
    return length_aware_class(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(AutoConfig.from_pretrained(path))])


def _classifier_backbone(path: str, length_feature: bool = False):
    """The backbone with a fresh one-output head. transformers reports that head as "newly initialized"
    (or "MISSING" when an adapter holds it): expected either way, so the report is silenced."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = _sequence_classifier_class(path, length_feature).from_pretrained(path, num_labels=1)
    finally:
        hf_logging.set_verbosity(verbosity)
    if length_feature:
        import torch

        with torch.no_grad():
            model.length_weight.zero_()  # missing from the pretrained checkpoint: start at "length says nothing"
    return model


def load_backbone(cfg: RewardConfig):
    """(sequence-classification model with one output, tokenizer) for ``cfg.backbone``."""
    import torch
    from transformers import AutoTokenizer

    if cfg.length_feature and (cfg.use_lora or not cfg.response_first):
        raise ValueError("length_feature needs response_first=True and use_lora=False (full fine-tuning)")
    path = backbone_path(cfg.backbone)
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = _classifier_backbone(path, cfg.length_feature)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if is_causal_backbone(cfg.backbone):
        tokenizer.pad_token = reward_pad_token(tokenizer)  # saved with the reward model, so scoring pads alike
        tokenizer.padding_side = "right"  # RewardModel.score and trl's collator pad on the right anyway
        model.config.pad_token_id = tokenizer.pad_token_id  # where the classifier looks for the last real token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.length_feature:
        prefix, middle, _ = pair_template(tokenizer)
        if len(prefix) != 1 or not middle:
            raise ValueError(f"length_feature needs a '[CLS] a [SEP] b [SEP]' pair template, got {prefix}, {middle}")
        model.config.rlhf_length_sep_id = middle[0]
    return model, tokenizer


def lora_config_for(model, cfg: RewardConfig):
    from peft import LoraConfig, TaskType

    family = _family(model)
    if family not in HEAD_NAMES:
        raise ValueError(f"no LoRA recipe for model type {family!r}; use use_lora=False (full fine-tuning)")
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        target_modules=LORA_TARGETS.get(family, ["query", "value"]),
        modules_to_save=[HEAD_NAMES[family]],  # train and save the head in full (see HEAD_NAMES)
    )


class RewardModel:
    """A trained reward model with a batched ``score(prompts, responses) -> list[float]``.

    Used by the judger's reward criterion, by PPO (reward at the last response token) and by the
    evaluation notebook. Scores use the same formatting and truncation as training.
    """

    def __init__(self, model, tokenizer, cfg: RewardConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.model.eval()

    @property
    def device(self):
        return next(self.model.parameters()).device

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        scores: list[float] = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(prompts), batch_size):
            ids = [
                encode_for(self.cfg, self.tokenizer, p, r)
                for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
            ]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=self.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            scores.extend(logits.squeeze(-1).float().tolist())
        return scores

    def save(self, out_dir: str | Path) -> Path:
        """Save weights (adapter + head, or the full model), tokenizer and config, atomically."""

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "reward_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))

        return atomic_write_dir(out_dir, write)


class FrozenEncoderRewardModel:
    """A reward model with a frozen encoder (``frozen_backbone``): the interface of :class:`RewardModel`
    (``score``, ``save``, ``cfg``) around a :class:`rlhf_helpers.feature_reward.FeatureRewardModel`.

    It has no torch weights of its own (the encoder is the packaged one, or the name in ``cfg.backbone``), so
    ``model`` and ``tokenizer`` are None: code that needs a fine-tuned network (notebook 03's forward pass by
    hand) checks ``cfg.frozen_backbone`` first."""

    model = None
    tokenizer = None

    def __init__(self, head: FeatureRewardModel, cfg: RewardConfig):
        self.head, self.cfg = head, cfg

    @property
    def device(self) -> torch.device:
        """Where the scores are computed: the head is numpy on the CPU (the encoder picks its own device)."""
        import torch

        return torch.device("cpu")

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
        """One reward per (prompt, response), as :meth:`RewardModel.score` (the encoder batches by itself)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.head.score(list(prompts), list(responses))

    def save(self, out_dir: str | Path) -> Path:
        """The head (weights, standardisation, the selection table) and the config, atomically."""

        def write(tmp: Path) -> None:
            (tmp / FEATURE_HEAD_FILE).write_text(json.dumps(self.head.to_json(), indent=1))
            (tmp / "reward_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))

        return atomic_write_dir(out_dir, write)


#: The file a frozen-encoder reward model keeps its head in.
FEATURE_HEAD_FILE = "feature_head.json"


def default_reward_dir() -> Path:
    return artifacts_dir() / "reward"


def load_reward_model(path: str | Path | None = None) -> RewardModel | FrozenEncoderRewardModel:
    """Reload a saved reward model (LoRA adapter + head on its backbone, or a full model)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    path = Path(path or default_reward_dir())
    if not (path / "reward_config.json").exists():
        raise FileNotFoundError(
            f"{path}: no saved reward model here (run notebook 03 or `python -m rlhf_helpers reward`)"
        )
    cfg = RewardConfig(**json.loads((path / "reward_config.json").read_text()))
    if cfg.frozen_backbone:
        from rlhf_helpers.feature_reward import FeatureRewardModel

        head = FeatureRewardModel.from_json(json.loads((path / FEATURE_HEAD_FILE).read_text()))
        return FrozenEncoderRewardModel(head, cfg)
    if cfg.use_lora:
        base = _classifier_backbone(backbone_path(cfg.backbone))  # the head's weights come with the adapter
        tokenizer = AutoTokenizer.from_pretrained(path)
        if base.config.pad_token_id is None or is_causal_backbone(cfg.backbone):  # causal: reward_pad_token's
            base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, path)
    else:
        model = _sequence_classifier_class(str(path), cfg.length_feature).from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return RewardModel(model, tokenizer, cfg)


# --------------------------------------------------------------------------- training


@dataclass
class RewardTrainingResult:
    reward_model: RewardModel | FrozenEncoderRewardModel
    log_history: list[dict]
    train_seconds: float
    n_train: int
    subsampled_from: int | None


def subsample(ds, n: int | None, seed: int):
    """At most ``n`` rows (``None`` or 0: all), chosen by a seeded shuffle; returns (dataset,
    original size, or None when nothing was dropped)."""
    if not n or len(ds) <= n:
        return ds, None
    return ds.shuffle(seed=seed).select(range(n)), len(ds)


def head_rate_optimizer(model, cfg: RewardConfig):
    """AdamW with per-part rates: ``cfg.head_learning_rate`` for the new one-output head,
    ``cfg.length_learning_rate`` for the length weight (``length_feature``), ``cfg.learning_rate`` for the
    rest. The Trainer's own default otherwise (AdamW, betas 0.9/0.999, eps 1e-8, no weight decay) and its
    linear schedule, which scales every group alike.

    Why: a pretrained encoder must move gently (1e-5..5e-5) or it forgets what it knows, but the head
    starts random and at such a rate barely leaves its initial ~0 outputs within a few hundred steps, so
    the encoder gets almost no gradient either: loss stays at log 2 (what the old MiniLM default did)."""
    import torch

    head = HEAD_NAMES.get(_family(model.get_base_model() if hasattr(model, "get_base_model") else model))
    if head is None:
        raise ValueError(f"no head name known for model type {_family(model)!r}; unset head_learning_rate")
    groups: dict[str, list] = {"body": [], "head": [], "length": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = "length" if name.endswith("length_weight") else "head" if f"{head}." in name else "body"
            groups[part].append(param)
    if not groups["head"]:
        raise ValueError(f"no trainable parameter named {head!r}: cannot give the head its own rate")
    rates = {"body": cfg.learning_rate, "head": cfg.head_learning_rate, "length": cfg.length_learning_rate}
    return torch.optim.AdamW(
        [{"params": params, "lr": rates[part]} for part, params in groups.items() if params],
        lr=cfg.learning_rate,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
    )


def train_reward_model(cfg: RewardConfig, train_ds, eval_ds=None, progress: bool = True) -> RewardTrainingResult:
    """Train with trl's RewardTrainer on pre-tokenised pairs (our truncation, nothing filtered); a frozen encoder
    (``cfg.frozen_backbone``) fits its feature head instead (:func:`train_frozen_encoder_head`)."""
    if cfg.frozen_backbone:
        return train_frozen_encoder_head(cfg, train_ds)
    from transformers import set_seed as hf_set_seed
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    from rlhf_helpers.sft import mixed_precision, use_compact_progress
    from rlhf_helpers.tracking import add_tensorboard

    fast_cpu_math()
    hf_set_seed(cfg.seed)
    train_ds, original = subsample(train_ds, cfg.max_train_pairs, cfg.seed)
    model, tokenizer = load_backbone(cfg)
    train_features = preference_features(train_ds, tokenizer, cfg)
    evaluate = eval_ds is not None and cfg.eval_during_training
    eval_features = preference_features(eval_ds, tokenizer, cfg) if evaluate else None
    # batch_size is per process (the Trainer's convention): N processes take N batches per step.
    pairs_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * num_processes()
    steps_per_epoch = max(math.ceil(len(train_features) / pairs_per_step), 1)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrlRewardConfig(
            output_dir=scratch,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            per_device_eval_batch_size=max(64 // cfg.gradient_accumulation_steps, 8),
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.num_epochs,
            lr_scheduler_type="linear",
            warmup_steps=max(int(0.05 * steps_per_epoch * cfg.num_epochs), 1),
            logging_steps=max(steps_per_epoch // 4, 1),
            # twice per epoch: enough points for the "accuracy during training" plot at little cost
            eval_strategy="steps" if eval_features is not None else "no",
            eval_steps=max(steps_per_epoch // 2, 1),
            save_strategy="no",
            report_to=[],
            seed=cfg.seed,
            max_length=None,  # we truncate ourselves (encode_pair); trl would drop long pairs instead
            # trl defaults to gradient checkpointing on; transformers 5 names it activation_checkpointing
            activation_checkpointing=cfg.gradient_checkpointing,
            disable_tqdm=not progress,
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False if cfg.use_lora else None,  # DDP: every LoRA weight is used
            use_cpu=device_name() == "cpu",
            **mixed_precision(),
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=train_features,
            eval_dataset=eval_features,
            processing_class=tokenizer,
            peft_config=lora_config_for(model, cfg) if cfg.use_lora else None,
        )
        if cfg.head_learning_rate is not None:
            trainer.optimizer = head_rate_optimizer(trainer.model, cfg)  # the Trainer keeps a preset optimizer
        use_compact_progress(trainer, progress, desc="reward model")
        add_tensorboard(trainer, cfg.report_to, "reward")
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return RewardTrainingResult(
        RewardModel(trainer.model, tokenizer, cfg), trainer.state.log_history, seconds, len(train_ds), original
    )


def train_frozen_encoder_head(cfg: RewardConfig, train_ds) -> RewardTrainingResult:
    """The frozen-encoder recipe: embed every prompt and reply once, let grouped cross-validation choose the
    feature set and L2 strength, fit the Bradley–Terry ensemble (:mod:`rlhf_helpers.feature_reward`). Its
    "log history" is the selection table (one row per candidate, with held-out log-likelihood and accuracy)."""
    from rlhf_helpers.feature_reward import train_feature_reward_model

    train_ds, original = subsample(train_ds, cfg.max_train_pairs, cfg.seed)
    encoder = None if cfg.backbone == "minilm" else backbone_path(cfg.backbone)
    start = time.perf_counter()
    head = train_feature_reward_model(
        train_ds["prompt"], train_ds["chosen"], train_ds["rejected"], seed=cfg.seed, encoder=encoder
    )
    seconds = time.perf_counter() - start
    rm = FrozenEncoderRewardModel(head, cfg)
    return RewardTrainingResult(rm, list(head.selection), seconds, len(train_ds), original)


# --------------------------------------------------------------------------- evaluation


def evaluate_reward_model(rm: RewardModel, ds, seed: int = 0, n_bins: int = 10) -> dict:
    """Held-out pairwise accuracy, the length baseline, margins, calibration, per-criterion accuracy.

    Calibration needs both outcomes, so each pair is shown in a seeded random order (A, B):
    predicted P(A preferred) = sigmoid(r_A - r_B) is compared with how often A really is the chosen one.
    """
    prompts, chosen, rejected = list(ds["prompt"]), list(ds["chosen"]), list(ds["rejected"])
    r_c = np.array(rm.score(prompts, chosen))
    r_r = np.array(rm.score(prompts, rejected))
    margins = r_c - r_r
    correct = margins > 0
    length_baseline = np.array([len(c) > len(r) for c, r in zip(chosen, rejected)])

    rng = random.Random(seed)
    a_is_chosen = np.array([rng.random() < 0.5 for _ in prompts])
    diff = np.where(a_is_chosen, margins, -margins)
    p_a = 1 / (1 + np.exp(-diff))
    bins = np.clip((p_a * n_bins).astype(int), 0, n_bins - 1)
    calibration = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            calibration.append(
                {
                    "bin": b,
                    "predicted": float(p_a[sel].mean()),
                    "observed": float(a_is_chosen[sel].mean()),
                    "count": int(sel.sum()),
                }
            )
    ece = sum(abs(c["predicted"] - c["observed"]) * c["count"] for c in calibration) / len(prompts)

    from rlhf_helpers.stats import bootstrap_ci  # the same percentile bootstrap as notebook 06's win rates

    metrics = {
        "accuracy": float(correct.mean()),
        # ~150 held-out pairs: standard error ~0.022, 95% interval ~+-0.045; resampling the pairs says how far
        "accuracy_ci": list(bootstrap_ci(correct.astype(float), seed=seed)),
        "n_eval": len(prompts),
        "length_baseline_accuracy": float(length_baseline.mean()),
        "mean_margin": float(margins.mean()),
        "expected_calibration_error": float(ece),
        "calibration": calibration,
        "reward_chosen_mean": float(r_c.mean()),
        "reward_rejected_mean": float(r_r.mean()),
    }
    frozen = bool(getattr(getattr(rm, "cfg", None), "frozen_backbone", False))
    metrics.update(
        learning_check(metrics["accuracy"], metrics["accuracy_ci"], metrics["length_baseline_accuracy"], frozen=frozen)
    )
    if "decided_by" in ds.column_names:
        for c in CRITERIA:
            sel = np.array([c in d.split(",") for d in ds["decided_by"]])
            if sel.any():
                metrics[f"accuracy_{c}"] = float(correct[sel].mean())
                metrics[f"n_{c}"] = int(sel.sum())
    metrics["_scores"] = {"chosen": r_c.tolist(), "rejected": r_r.tolist()}
    return metrics


def learning_check(
    accuracy: float, accuracy_ci: list[float] | tuple[float, float], length_baseline: float, frozen: bool = False
) -> dict:
    """Did the reward model learn anything a trivial rule would not? Two questions, each answered by the
    95% bootstrap interval of held-out accuracy (``accuracy_ci``, from :func:`evaluate_reward_model`):
    is its lower end above chance (0.5), and above the accuracy of "the longer response wins"?

    ``frozen``: the model is a frozen encoder's head (``frozen_backbone``), whose advice differs (it has no
    training loss or rate to tune). Returns ``beats_chance``, ``beats_length_baseline`` and
    ``learnt_nothing_warning``: ``None`` when both
    hold, else a sentence saying which failed and what to try. Why: a pretrained encoder under a bad
    recipe trains to loss log 2 = 0.693 with margins ~1e-4 and scores ~0.5, and nothing else says so;
    and on human summary labels the longer summary wins 66% of the time, so an RM that does not beat
    that has learnt at most what a character count knows. A NaN interval (no pairs) beats nothing."""
    low = float(accuracy_ci[0])
    beats_chance = bool(low > 0.5)
    beats_length = bool(low > length_baseline)
    failed = []
    if not beats_chance:
        failed.append("chance (0.5)")
    if not beats_length:
        failed.append(f"the length-only baseline ({length_baseline:.3f}: the longer response wins)")
    warning = None
    if failed:
        warning = (
            f"held-out accuracy {accuracy:.3f} (95% interval [{low:.3f}, {float(accuracy_ci[1]):.3f}]) is not "
            f"clearly above {' nor '.join(failed)}"
        )
        if not beats_chance and frozen:
            warning += (
                ": the frozen encoder's head found nothing usable in these features (more pairs, check the labels; "
                "with thousands of pairs try fine-tuning, frozen_backbone=False)"
            )
        elif not beats_chance:
            warning += (
                ": the reward model learnt nothing usable on held-out pairs (training loss still ~0.693 = log 2: it did"
                " not train, raise the rate; loss well below: it memorised its pairs, get more or train fewer epochs)"
            )
        else:
            warning += ": it may have learnt little beyond length (more pairs, or check the labels)"
    return {"beats_chance": beats_chance, "beats_length_baseline": beats_length, "learnt_nothing_warning": warning}


def accuracy_curve(log_history: list[dict]) -> list[tuple[float, float]]:
    return [(h["epoch"], h["eval_accuracy"]) for h in log_history if "eval_accuracy" in h]


def plot_reward_diagnostics(metrics: dict, log_history: list[dict]):
    """Chosen vs rejected reward histograms, the calibration curve, accuracy over training."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    scores = metrics["_scores"]
    bins = np.linspace(min(scores["rejected"] + scores["chosen"]), max(scores["rejected"] + scores["chosen"]), 30)
    axes[0].hist(scores["chosen"], bins=bins, alpha=0.6, label="chosen")
    axes[0].hist(scores["rejected"], bins=bins, alpha=0.6, label="rejected")
    axes[0].set(title="rewards on held-out pairs", xlabel="r(x, y)", ylabel="pairs")
    axes[0].legend()
    cal = metrics["calibration"]
    axes[1].plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    axes[1].plot([c["predicted"] for c in cal], [c["observed"] for c in cal], "o-", label="reward model")
    axes[1].set(
        title=f"calibration (ECE {metrics['expected_calibration_error']:.3f})",
        xlabel="predicted P(A preferred)",
        ylabel="observed frequency",
    )
    axes[1].legend()
    curve = accuracy_curve(log_history)
    if curve:
        axes[2].plot(*zip(*curve), "o-", label="reward model")
    axes[2].axhline(metrics["length_baseline_accuracy"], color="gray", ls=":", label="longer wins")
    axes[2].set(title="held-out accuracy during training", xlabel="epoch", ylabel="accuracy", ylim=(0.4, 1.01))
    axes[2].legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the whole stage


@dataclass
class RewardStageOutput:
    metrics: dict
    training: RewardTrainingResult
    eval_metrics: dict


def run_reward_stage(
    cfg: RewardConfig | None = None,
    train_path: str | Path | None = None,
    eval_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> RewardStageOutput:
    """What notebook 03 and ``python -m rlhf_helpers reward`` do: load (and validate) the pairs,
    train, evaluate on held-out pairs, save the model to ``out_dir`` (default artifacts/reward)."""
    from rlhf_helpers.data_loading import load_records, load_training_pairs
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.report import record_metrics

    cfg = cfg or reward_defaults(default_reward_backbone())
    # Under `accelerate launch` (see rlhf_helpers.distributed) every process trains, but the main process
    # alone writes the data splits and builds the tiny base (first), evaluates, saves and records (once).
    with main_process_first():
        train_ds = load_training_pairs(train_path) if train_path else load_split("pref_train")
        eval_ds = load_records(eval_path, "preferences") if eval_path else load_split("pref_val")
        backbone_path(cfg.backbone)
    eval_ds, _ = subsample(eval_ds, cfg.max_eval_pairs, cfg.seed)
    training = train_reward_model(cfg, train_ds, eval_ds, progress=progress)
    eval_metrics = on_main_process(evaluate_reward_model, training.reward_model, eval_ds, seed=cfg.seed)
    saved = on_main_process(training.reward_model.save, Path(out_dir) / "model" if out_dir else default_reward_dir())
    metrics = {k: v for k, v in eval_metrics.items() if not k.startswith("_")}
    metrics.update(
        train_seconds=round(training.train_seconds, 1),
        n_train=training.n_train,
        subsampled_from=training.subsampled_from,
        backbone=cfg.backbone,
        use_lora=cfg.use_lora,
        frozen_backbone=cfg.frozen_backbone,
        num_processes=num_processes(),
        model_dir=str(saved),
    )
    if cfg.frozen_backbone:  # what the cross-validation chose (the full table is in the saved head)
        head = training.reward_model.head
        metrics.update(feature_set=head.feature_set, l2_c=head.l2_c)
    if metrics.get("learnt_nothing_warning") and is_main_process():
        print(f"WARNING: {metrics['learnt_nothing_warning']}", file=sys.stderr, flush=True)
    on_main_process(record_metrics, "reward", metrics, out_dir=out_dir)
    return RewardStageOutput(metrics, training, eval_metrics)
