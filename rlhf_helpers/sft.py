"""Stage 2, supervised fine-tuning (SFT) with LoRA: teach the base model to write support replies.

LoRA (Hu et al. 2021) freezes the pretrained weight W and learns a low-rank update:

    h = W x + (alpha / r) * B A x,    A: r x d_in,  B: d_out x r,  B initialised to 0

so training starts exactly at the base model and touches well under 1% of the parameters.

Two trainers, one stage, chosen by the preset's architecture:

* encoder-decoder (T5): transformers' ``Seq2SeqTrainer`` with a peft ``LoraConfig(task_type=SEQ_2_SEQ_LM)``
  (trl's ``SFTTrainer`` only handles decoder-only models). The prompt is the encoder's input, the reply the
  decoder's labels: nothing of the prompt can enter the loss.
* decoder-only (Llama, SmolLM2): trl's ``SFTTrainer`` with ``LoraConfig(task_type=CAUSAL_LM)`` on a
  prompt-completion dataset. Prompt and reply are one sequence here, so the loss must be restricted to the
  reply (``completion_only_loss``: labels -100 on the prompt's tokens), else the model would spend its capacity
  learning to write tickets. The prompt column is what the policy is given at generation and in PPO
  (:func:`rlhf_helpers.policy.prompt_text`: the chat template, or ``prompt + REPLY_CUE``), the completion the
  reply; trl appends the EOS to the completion once, so the model learns where a reply ends.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rlhf_helpers.config import artifacts_dir, course_seed, device_name, fast_cpu_math
from rlhf_helpers.distributed import main_process_first, num_processes, on_main_process
from rlhf_helpers.generation import DecodeSettings, generate_responses
from rlhf_helpers.io_utils import atomic_write_dir
from rlhf_helpers.metrics import text_metrics
from rlhf_helpers.presets import base_model_class, get_preset, is_causal, model_path
from rlhf_helpers.tracking import add_tensorboard


@dataclass
class SFTConfig:
    """Everything that defines an SFT run. :func:`sft_defaults` fills in per-preset defaults."""

    preset: str = "tiny"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])
    learning_rate: float = 3e-3
    num_epochs: float = 10
    batch_size: int = 16
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_source_length: int = 96
    max_target_length: int = 64
    eval_batch_size: int = 64
    report_to: str = "none"  # "tensorboard": the Trainer's curves too (rlhf_helpers.tracking)
    seed: int = 0
    # Stop after this many optimizer steps whatever num_epochs says (None: train every epoch). The CPU demo of a real
    # decoder-only model (smollm2-135m) uses it: one epoch of 1,087 replies would take about 45 minutes on 2 cores.
    max_steps: int | None = None
    # Recompute activations in the backward pass (less memory, ~30% more compute). Off: the course's models fit
    # (trl's SFTTrainer would turn it on by default).
    gradient_checkpointing: bool = False
    # Score (and validate on) only the first this many held-out prompts (None: all 250 and all validation replies).
    # The CPU demo of a real decoder-only model uses it: greedy replies of a 135M model to 250 prompts, before and
    # after training, took about 12 minutes on 2 shared cores, twice as long as its training.
    max_eval_examples: int | None = None


#: LoRA's default targets per architecture: the attention query and value projections, as in Hu et al. 2021
#: (T5 names them q, v; Llama-style models q_proj, v_proj).
LORA_TARGETS = {"seq2seq": ["q", "v"], "causal": ["q_proj", "v_proj"]}


def sft_defaults(preset: str = "tiny", **overrides) -> SFTConfig:
    """Sane defaults: a tiny model needs a high learning rate and many epochs; a pretrained one does not.

    A real decoder-only preset on a CPU gets a short demonstration run instead: 30 steps of 4 replies, prompts cut to
    128 and replies to 48 tokens, 32 held-out prompts scored. Measured for ``smollm2-135m`` on 2 cores shared with
    other jobs (load ~5): about 11 s per step (329 s for the 30), the whole stage in 8.5 minutes, ROUGE-L
    0.174 -> 0.242. On a GPU it trains like the hub models (2 epochs of batch 8)."""
    p = get_preset(preset)
    base = SFTConfig(
        preset=preset,
        seed=course_seed(),
        max_source_length=p.max_source_length,
        max_target_length=p.max_target_length,
        target_modules=list(LORA_TARGETS[p.architecture]),
    )
    if p.hub_name is None:  # tiny, tiny-causal: a weak base needs a wider adapter and a high learning rate
        base = replace(base, lora_r=32, lora_alpha=32)
    elif not p.is_causal:  # real Flan-T5
        base = replace(base, learning_rate=5e-4, num_epochs=3, batch_size=8, lora_dropout=0.05, eval_batch_size=16)
    else:  # a real decoder-only model (SmolLM2, Qwen2.5): the usual LoRA recipe for instruction-tuned models
        base = replace(
            base, learning_rate=2e-4, num_epochs=2, batch_size=8, lora_r=16, lora_alpha=32, lora_dropout=0.05,
            eval_batch_size=16,
        )
        from rlhf_helpers.config import device_name

        if device_name() == "cpu":
            base = replace(
                base, max_steps=30, batch_size=4, max_source_length=128, max_target_length=48, eval_batch_size=16,
                max_eval_examples=32,
            )
    return replace(base, **overrides)


def tokenize_pairs(ds, tokenizer, cfg: SFTConfig):
    """input_ids / attention_mask from the prompt, labels from the response (truncated)."""

    def encode(batch):
        enc = tokenizer(batch["prompt"], max_length=cfg.max_source_length, truncation=True)
        enc["labels"] = tokenizer(text_target=batch["response"], max_length=cfg.max_target_length, truncation=True)[
            "input_ids"
        ]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def lora_model(base_model, cfg: SFTConfig):
    """Wrap the base model with fresh LoRA adapters on ``cfg.target_modules`` (an encoder-decoder or a causal LM)."""
    from peft import LoraConfig, TaskType, get_peft_model

    from rlhf_helpers.policy import is_encoder_decoder

    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if is_encoder_decoder(base_model) else TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
    )
    return get_peft_model(base_model, config)


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def mixed_precision() -> dict:
    """bf16 on GPUs that support it. Not fp16: T5's activations overflow in fp16 (NaN losses)."""
    import torch

    return {"bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())}


@dataclass
class SFTResult:
    model: object
    tokenizer: object
    config: SFTConfig
    log_history: list[dict]
    train_seconds: float
    trainable_params: int
    total_params: int


def train_sft(cfg: SFTConfig, train_ds, val_ds=None, progress: bool = True) -> SFTResult:
    """Fine-tune the preset's base model with LoRA on ``train_ds`` (columns prompt, response).

    Validation loss is computed each epoch; pass ``val_ds=None`` to skip it. A decoder-only preset trains with
    trl's ``SFTTrainer`` (:func:`train_causal_sft`); an encoder-decoder with ``Seq2SeqTrainer``, below.
    """
    if is_causal(cfg.preset):
        return train_causal_sft(cfg, train_ds, val_ds, progress=progress)
    import torch
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )
    from transformers import set_seed as hf_set_seed

    fast_cpu_math()
    hf_set_seed(cfg.seed)
    path = model_path(cfg.preset)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = lora_model(AutoModelForSeq2SeqLM.from_pretrained(path), cfg)
    trainable, total = parameter_counts(model)

    train_tok = tokenize_pairs(train_ds, tokenizer, cfg)
    val_tok = tokenize_pairs(val_ds, tokenizer, cfg) if val_ds is not None else None
    # Pads labels with -100 so padding never counts in the loss; pads inputs to the batch's longest.
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    # batch_size is per process (the Trainer's convention): N processes take N batches per step.
    steps_per_epoch = max(len(train_tok) // (cfg.batch_size * num_processes()), 1)
    with tempfile.TemporaryDirectory() as scratch:
        args = Seq2SeqTrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.eval_batch_size,
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.num_epochs,
            warmup_steps=int(cfg.warmup_ratio * steps_per_epoch * cfg.num_epochs),
            weight_decay=cfg.weight_decay,
            lr_scheduler_type="linear",
            logging_steps=max(steps_per_epoch // 4, 1),
            eval_strategy="epoch" if val_tok is not None else "no",
            save_strategy="no",
            report_to=[],
            seed=cfg.seed,
            disable_tqdm=not progress,
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False,  # under DDP: every LoRA weight is used in every forward
            use_cpu=device_name() == "cpu",
            **mixed_precision(),
        )
        trainer = Seq2SeqTrainer(
            model=model,
            args=args,
            train_dataset=train_tok,
            eval_dataset=val_tok,
            data_collator=collator,
            processing_class=tokenizer,
        )
        use_compact_progress(trainer, progress, desc="SFT")
        add_tensorboard(trainer, cfg.report_to, "sft")
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    model.eval()
    torch.manual_seed(cfg.seed)
    return SFTResult(model, tokenizer, cfg, trainer.state.log_history, seconds, trainable, total)


def completion_text(tokenizer, response: str) -> str:
    """The reply as the completion that follows :func:`rlhf_helpers.policy.prompt_text`: behind a chat template's
    generation prompt (which ends in a newline) the reply itself; behind ``REPLY_CUE`` (no template) a space first,
    so the text reads ``... Reply: It ships`` as in the tiny-causal base's pretraining documents."""
    return response if getattr(tokenizer, "chat_template", None) else " " + response


def causal_sft_dataset(ds, tokenizer, cfg: SFTConfig):
    """trl's prompt-completion columns from (prompt, response) rows: ``prompt`` = the text the policy is given
    (:func:`rlhf_helpers.policy.prompt_text`), ``completion`` = the reply (trl appends the EOS).

    Lengths are cut here, as the other stages cut them, so trl never has to: a prompt keeps its last
    ``max_source_length`` tokens (where :class:`rlhf_helpers.policy.CausalPolicy` cuts it at generation: the cue or
    the chat template's generation prompt stays next to the reply), a reply its first ``max_target_length - 1``
    tokens, the EOS making the last (as T5's tokenizer truncates the seq2seq labels). trl's own truncation works on
    the joined sequence: ``keep_start`` would cut a long example's EOS, or drop it when the prompt alone fills the
    budget. Texts within the limits are passed as they are."""
    from rlhf_helpers.policy import prompt_text

    def clip(text: str, limit: int, keep_end: bool) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text
        return tokenizer.decode(ids[len(ids) - limit :] if keep_end else ids[:limit])

    def convert(row):
        prompt = clip(prompt_text(tokenizer, row["prompt"]), cfg.max_source_length, keep_end=True)
        reply = clip(row["response"], max(cfg.max_target_length - 1, 1), keep_end=False)
        return {"prompt": prompt, "completion": completion_text(tokenizer, reply)}

    return ds.map(convert, remove_columns=ds.column_names)


def causal_sft_trainer(cfg: SFTConfig, train_ds, val_ds, output_dir: str, progress: bool = True):
    """The ``SFTTrainer`` of a decoder-only preset (LoRA model, prepared datasets), not yet trained. Lengths are cut
    by :func:`causal_sft_dataset`, so trl's ``max_length`` is off."""
    from transformers import AutoTokenizer
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    path = model_path(cfg.preset)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = lora_model(base_model_class(cfg.preset).from_pretrained(path), cfg)
    steps_per_epoch = max(len(train_ds) // (cfg.batch_size * num_processes()), 1)
    total_steps = cfg.max_steps or int(steps_per_epoch * cfg.num_epochs)
    args = TrlSFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=int(cfg.warmup_ratio * total_steps),
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=max(min(steps_per_epoch, total_steps) // 4, 1),
        eval_strategy="epoch" if val_ds is not None and cfg.max_steps is None else "no",
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # under DDP: every LoRA weight is used in every forward
        use_cpu=device_name() == "cpu",
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        max_length=None,  # causal_sft_dataset cut the prompt and the reply already
        completion_only_loss=True,  # the loss on the reply only (trl's default for these columns, stated anyway)
        packing=False,
        **mixed_precision(),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=causal_sft_dataset(train_ds, tokenizer, cfg),
        eval_dataset=causal_sft_dataset(val_ds, tokenizer, cfg) if val_ds is not None else None,
        processing_class=tokenizer,
    )
    return trainer, model, tokenizer


def train_causal_sft(cfg: SFTConfig, train_ds, val_ds=None, progress: bool = True) -> SFTResult:
    """LoRA SFT of a decoder-only preset with trl's ``SFTTrainer`` (see :func:`causal_sft_trainer`). With
    ``cfg.max_steps`` set (the CPU demo), the validation loss is computed once, after training."""
    import torch
    from transformers import set_seed as hf_set_seed

    fast_cpu_math()
    hf_set_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as scratch:
        trainer, model, tokenizer = causal_sft_trainer(cfg, train_ds, val_ds, scratch, progress=progress)
        trainable, total = parameter_counts(model)
        use_compact_progress(trainer, progress, desc="SFT")
        add_tensorboard(trainer, cfg.report_to, "sft")
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        if val_ds is not None and cfg.max_steps is not None:
            metrics = trainer.evaluate()
            trainer.state.log_history.append({"epoch": trainer.state.epoch, "eval_loss": metrics["eval_loss"]})
    model.eval()
    torch.manual_seed(cfg.seed)
    return SFTResult(model, tokenizer, cfg, trainer.state.log_history, seconds, trainable, total)


class CompactProgress:
    """One tqdm bar with the latest loss, instead of the Trainer's printed dict per log step
    (which floods a notebook). Built lazily so transformers is only imported when training."""

    def __new__(cls, desc: str):
        from tqdm.auto import tqdm
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            bar = None

            def on_train_begin(self, args, state, control, **kwargs):  # one bar, not one per process
                self.bar = tqdm(total=state.max_steps, desc=desc, unit="step", disable=not state.is_world_process_zero)

            def on_step_end(self, args, state, control, **kwargs):
                self.bar.update(1)

            def on_log(self, args, state, control, logs=None, **kwargs):
                if self.bar is not None and logs:
                    shown = {k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "eval_loss")}
                    if shown:
                        self.bar.set_postfix(shown)

            def on_train_end(self, args, state, control, **kwargs):
                self.bar.close()

        return _Callback()


def use_compact_progress(trainer, progress: bool, desc: str) -> None:
    """Replace the Trainer's printing callbacks by :class:`CompactProgress` (or by nothing)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(CompactProgress(desc))


def loss_curves(log_history: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(epoch, loss) points for the training and validation loss from the Trainer's log."""
    train = [(h["epoch"], h["loss"]) for h in log_history if "loss" in h]
    val = [(h["epoch"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    return {"train": train, "validation": val}


def plot_loss_curves(log_history: list[dict]):
    import matplotlib.pyplot as plt

    curves = loss_curves(log_history)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o" if name == "validation" else None, label=name)
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="SFT loss")
    ax.legend()
    fig.tight_layout()
    return fig


def evaluate_generations(model, tokenizer, eval_ds, cfg: SFTConfig, progress: bool = False) -> tuple[dict, list[str]]:
    """Greedy replies to the held-out prompts and their ROUGE/BLEU/METEOR against the references."""
    replies = generate_responses(
        model,
        tokenizer,
        list(eval_ds["prompt"]),
        DecodeSettings(max_new_tokens=cfg.max_target_length),
        batch_size=cfg.eval_batch_size,
        max_source_length=cfg.max_source_length,
        progress=progress,
    )
    return text_metrics(replies, list(eval_ds["reference"])), replies


# --------------------------------------------------------------------------- saving and loading


def default_sft_dir() -> Path:
    return artifacts_dir() / "sft"


def save_sft(result: SFTResult, out_dir: str | Path | None = None) -> Path:
    """Save the LoRA adapter, the tokenizer and the run's config into ``out_dir/adapter``,
    atomically: a crash leaves either the previous adapter or the new one, never half of one."""

    def write(tmp: Path) -> None:
        result.model.save_pretrained(tmp)
        result.tokenizer.save_pretrained(tmp)
        (tmp / "sft_config.json").write_text(json.dumps(asdict(result.config), indent=2))
        (tmp / BASE_RECORD).write_text(json.dumps(base_record(result.config.preset), indent=2))

    return atomic_write_dir(Path(out_dir or default_sft_dir()) / "adapter", write)


#: The file next to a saved adapter that says which base model it was trained on.
BASE_RECORD = "base_model.json"


def base_record(preset: str) -> dict:
    """What an adapter belongs to: the preset, its architecture (which class loads the base) and the base folder's
    name (for a locally built base, its cache key: another recipe or corpus gives another name)."""
    return {
        "preset": preset,
        "architecture": get_preset(preset).architecture,
        "base": Path(model_path(preset, progress=False)).name,
    }


def _check_base(adapter_dir: Path, preset: str, base_path: str) -> str:
    """The architecture recorded with the adapter (older adapters have no record: the preset's), with a warning when
    the base it was trained on is not the one loaded now (a rebuilt tiny base: the adapter's numbers would not hold)."""
    record_file = adapter_dir / BASE_RECORD
    if not record_file.exists():
        return get_preset(preset).architecture
    record = json.loads(record_file.read_text())
    if record.get("base") and record["base"] != Path(base_path).name:
        import warnings

        warnings.warn(
            f"{adapter_dir}: this adapter was trained on base {record['base']}, but preset {preset!r} is now "
            f"{Path(base_path).name} (rebuilt with another recipe or data folder?): retrain it for sound results",
            stacklevel=3,
        )
    return record["architecture"]


def load_sft(adapter_dir: str | Path | None = None, merge: bool = False, trainable: bool = False):
    """(model, tokenizer, config) from a saved adapter: the preset's base model plus the adapter. The base's class
    (``AutoModelForSeq2SeqLM`` or ``AutoModelForCausalLM``) is the one recorded with the adapter.

    ``merge=True`` folds B A into W (a plain T5 or Llama model, faster to run, no peft needed afterwards).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    adapter_dir = Path(adapter_dir or default_sft_dir() / "adapter")
    if not (adapter_dir / "sft_config.json").exists():
        raise FileNotFoundError(
            f"{adapter_dir}: no saved SFT adapter here (run notebook 02 or `python -m rlhf_helpers sft`)"
        )
    cfg = SFTConfig(**json.loads((adapter_dir / "sft_config.json").read_text()))
    base_path = model_path(cfg.preset)
    architecture = _check_base(adapter_dir, cfg.preset, base_path)
    base = (AutoModelForCausalLM if architecture == "causal" else AutoModelForSeq2SeqLM).from_pretrained(base_path)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model, AutoTokenizer.from_pretrained(adapter_dir), cfg


def merge_sft(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Save base + adapter merged into one ordinary model folder (a ``T5ForConditionalGeneration`` or a causal LM)."""
    model, tokenizer, _ = load_sft(adapter_dir, merge=True)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------- the whole stage


@dataclass
class SFTStageOutput:
    metrics: dict
    result: SFTResult
    prompts: list[str]
    references: list[str]
    replies_before: list[str]
    replies_after: list[str]


def run_sft_stage(
    cfg: SFTConfig | None = None, out_dir: str | Path | None = None, progress: bool = True
) -> SFTStageOutput:
    """What notebook 02 and ``python -m rlhf_helpers sft`` do: score the base model on the held-out
    prompts, train, score again, save the adapter. Metrics are recorded as stage ``sft``."""
    from transformers import AutoTokenizer

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.report import record_metrics

    cfg = cfg or sft_defaults()
    # Under `accelerate launch` (see rlhf_helpers.distributed) every process trains, but the main process
    # alone writes the data splits and builds the tiny base (first), scores, saves and records (once).
    with main_process_first():
        train_ds, val_ds, eval_ds = load_split("sft_train"), load_split("sft_val"), load_split("eval")
        base_path = model_path(cfg.preset)
    if cfg.max_eval_examples:  # the first ones, in file order: the same prompts in every run
        val_ds = val_ds.select(range(min(cfg.max_eval_examples, len(val_ds))))
        eval_ds = eval_ds.select(range(min(cfg.max_eval_examples, len(eval_ds))))

    def score_base():
        base = base_model_class(cfg.preset).from_pretrained(base_path)
        return evaluate_generations(base, AutoTokenizer.from_pretrained(base_path), eval_ds, cfg)

    before, replies_before = on_main_process(score_base)
    result = train_sft(cfg, train_ds, val_ds, progress=progress)
    after, replies_after = on_main_process(evaluate_generations, result.model, result.tokenizer, eval_ds, cfg)
    adapter = on_main_process(save_sft, result, out_dir)
    curves = loss_curves(result.log_history)
    metrics = {
        **after,
        **{f"{k}_before": v for k, v in before.items()},
        "train_seconds": round(result.train_seconds, 1),
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "final_train_loss": curves["train"][-1][1] if curves["train"] else None,
        "final_val_loss": curves["validation"][-1][1] if curves["validation"] else None,
        "n_eval": len(eval_ds),
        "preset": cfg.preset,
        "num_processes": num_processes(),
        "adapter_dir": str(adapter),
    }
    on_main_process(record_metrics, "sft", metrics, out_dir=out_dir)
    return SFTStageOutput(
        metrics, result, list(eval_ds["prompt"]), list(eval_ds["reference"]), replies_before, replies_after
    )


def first_lora_layer(model):
    """The first LoRA-wrapped linear layer of a peft model (to look inside one)."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            return name, module
    raise ValueError("no LoRA layer in this model")
