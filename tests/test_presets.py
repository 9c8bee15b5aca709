import dataclasses
import time

import pytest
import torch

from rlhf_helpers import presets
from rlhf_helpers.tiny_model import TinyRecipe, build_tiny, corpus_texts, train_tokenizer

SMALL = TinyRecipe(
    pretrain_steps=4, batch_size=4, d_model=32, d_kv=8, num_heads=2, d_ff=64, num_layers=1, num_decoder_layers=1
)


def test_same_seed_gives_identical_weights_and_other_seed_does_not(tmp_path):
    from transformers import T5ForConditionalGeneration

    build_tiny(tmp_path / "a", SMALL, progress=False)
    build_tiny(tmp_path / "b", SMALL, progress=False)
    build_tiny(tmp_path / "c", dataclasses.replace(SMALL, seed=1), progress=False)
    a, b, c = (T5ForConditionalGeneration.from_pretrained(tmp_path / x).state_dict() for x in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_build_runs_on_fixed_threads_and_restores_the_callers(tmp_path, monkeypatch):
    """Float sums depend on how work is split across threads: a build on 1 thread (torchrun's
    OMP_NUM_THREADS=1) gave other weights than on 2, so every build uses BUILD_THREADS."""
    from rlhf_helpers import tiny_model

    seen = []
    real_pretrain = tiny_model.pretrain

    def recording_pretrain(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_pretrain(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "pretrain", recording_pretrain)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_tiny(tmp_path / "one", SMALL, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [tiny_model.BUILD_THREADS]


def test_tokenizer_has_flan_t5_layout():
    tok = train_tokenizer(corpus_texts(), 2000)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 100
    ids = tok("Order #40912 arrived.")["input_ids"]
    assert ids[-1] == 1 and tok.unk_token_id not in ids
    assert tok.tokenize("#40912")[-5:] == ["4", "0", "9", "1", "2"]  # digit by digit


def test_tiny_preset_is_cached_and_reloads(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    path = presets.model_path("tiny")  # built once per cache, reused by every test and notebook
    assert presets.model_path("tiny") == path
    model = T5ForConditionalGeneration.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(tok).__name__ == "T5Tokenizer"
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 10_000_000
    model.save_pretrained(tmp_path / "copy")
    again = T5ForConditionalGeneration.from_pretrained(tmp_path / "copy")
    x = tok("Reply to the customer.", return_tensors="pt")
    assert torch.equal(model.generate(**x, max_new_tokens=5), again.generate(**x, max_new_tokens=5))


@pytest.mark.parametrize("name", ["flan-t5-small", "flan-t5-base", "flan-t5-large"])
def test_hub_presets_fail_fast_and_name_the_tiny_preset_when_offline(name, monkeypatch):
    start = time.perf_counter()
    with pytest.raises(presets.PresetUnavailableError, match="RLHF_PRESET=tiny"):
        presets.model_path(name)
    assert time.perf_counter() - start < 10


def test_unreachable_hub_without_offline_flag_also_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(presets, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(presets.PresetUnavailableError, match="cannot be reached"):
        presets.model_path("flan-t5-base")


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="tiny, flan-t5-small"):
        presets.get_preset("gpt-5")


def test_env_variable_picks_the_preset(monkeypatch):
    monkeypatch.setenv("RLHF_PRESET", "flan-t5-base")
    assert presets.get_preset().hub_name == "google/flan-t5-base"
