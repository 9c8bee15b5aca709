"""SFT stage: what it records, adapter reload/merge, label masking.

The acceptance thresholds of the default run (ROUGE-L at least 0.35 and at least twice the base's) are asserted by
notebook 02's sanity-check cell, which nbval runs with the defaults in the same suite; training those defaults a second
time here cost several minutes of the suite's budget, so this module trains a short run (2 epochs)."""

import json

import pytest
from conftest import run_cli

from rlhf_helpers.generation import DecodeSettings, generate_responses
from rlhf_helpers.metrics import DEBIAN_WORDNET


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    import os

    from rlhf_helpers.sft import run_sft_stage, sft_defaults

    folder = tmp_path_factory.mktemp("sft")
    old = os.environ.get("RLHF_ARTIFACTS")
    os.environ["RLHF_ARTIFACTS"] = str(folder / "artifacts")
    try:
        yield run_sft_stage(sft_defaults("tiny", num_epochs=2), out_dir=folder / "out", progress=False), folder / "out"
    finally:
        if old is None:
            os.environ.pop("RLHF_ARTIFACTS")
        else:
            os.environ["RLHF_ARTIFACTS"] = old


def test_sft_improves_on_the_base_and_records_its_metrics(sft_run):
    out, folder = sft_run
    m = out.metrics
    assert m["rougeL"] > m["rougeL_before"], m
    saved = json.loads((folder / "metrics.json").read_text())
    for key in ("rougeL", "rougeL_before", "bleu", "meteor", "train_seconds", "trainable_params"):
        assert key in saved
    assert 0 < saved["trainable_params"] < saved["total_params"]
    if (DEBIAN_WORDNET / "data.noun").exists():
        assert saved["meteor"] is not None and saved["meteor"] > saved["meteor_before"]


def test_reloaded_and_merged_adapters_reproduce_the_generations(sft_run):
    from rlhf_helpers.sft import load_sft

    out, folder = sft_run
    settings = DecodeSettings(max_new_tokens=out.result.config.max_target_length)
    for merge in (False, True):
        model, tok, cfg = load_sft(folder / "adapter", merge=merge)
        assert cfg == out.result.config
        replies = generate_responses(model, tok, out.prompts[:12], settings, max_source_length=cfg.max_source_length)
        assert replies == out.replies_after[:12]


def test_missing_adapter_says_how_to_make_one(tmp_path):
    from rlhf_helpers.sft import load_sft

    with pytest.raises(FileNotFoundError, match="python -m rlhf_helpers sft"):
        load_sft(tmp_path)


def test_labels_are_padded_with_minus_100_and_prompts_never_enter_the_loss():
    import datasets
    from transformers import DataCollatorForSeq2Seq

    from rlhf_helpers.presets import load_tokenizer
    from rlhf_helpers.sft import sft_defaults, tokenize_pairs

    tok = load_tokenizer("tiny")
    ds = datasets.Dataset.from_list([{"prompt": "Where is it?", "response": "It ships today."},
                                     {"prompt": "Hi", "response": "Hello there, how can I help you today?"}])
    enc = tokenize_pairs(ds, tok, sft_defaults("tiny"))
    batch = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)([enc[0], enc[1]])
    short, long = batch["labels"]
    n_short = len(tok("It ships today.")["input_ids"])
    assert short[:n_short].tolist() == tok("It ships today.")["input_ids"]  # ends with EOS (id 1)
    assert (short[n_short:] == -100).all() and (long != -100).all()
    assert batch["attention_mask"][1].sum() == len(tok("Hi")["input_ids"])


def test_sft_cli_writes_metrics_and_adapter(tmp_path):
    out = tmp_path / "cli"
    result = run_cli("sft", "--preset", "tiny", "--out", str(out), "--epochs", "1", "--quiet",
                     env={"RLHF_ARTIFACTS": str(tmp_path / "artifacts")})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"rougeL", "rougeL_before", "bleu", "meteor", "train_seconds", "trainable_params"} <= set(metrics)
    assert (out / "adapter" / "adapter_config.json").exists()
    assert "ROUGE-L" in result.stdout


def test_sft_cli_offline_hub_preset_exits_2(tmp_path):
    result = run_cli("sft", "--preset", "flan-t5-base", "--out", str(tmp_path))
    assert result.returncode == 2 and "RLHF_PRESET=tiny" in result.stderr
