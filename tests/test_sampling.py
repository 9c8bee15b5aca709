"""Our KV-cached sampling loop (``rlhf_helpers.sampling``) against transformers' ``generate``: the same tokens at the
same seed (and the same random numbers drawn), for both architectures, with and without min_new_tokens, with
temperature/top-k/top-p and greedy; and its log-probs, entropies and values equal to the teacher-forced pass that
PPO used to run after ``generate``."""

import pytest
import torch

from rlhf_helpers.policy import policy_for
from rlhf_helpers.ppo import ValueHead, trimmed_rows
from rlhf_helpers.ppo_math import entropy_from_logits, gather_logprobs, response_mask
from rlhf_helpers.sampling import sample_replies, stop_and_pad_ids

PROMPTS = [
    "Reply to the customer. Message: my order never arrived and I need it by Friday.",
    "Hi, can you reset my password?",
    "Summarize: the meeting moved to Friday because the room was booked.",
    "Thanks for the quick delivery!",
] * 2  # different lengths: T5 pads right, the causal policy left

SETTINGS = [
    dict(do_sample=True, max_new_tokens=20),
    dict(do_sample=True, max_new_tokens=12, min_new_tokens=12),  # EOS banned to the end (the step benchmark's)
    dict(do_sample=True, max_new_tokens=20, min_new_tokens=3, temperature=0.7, top_k=20, top_p=0.9),
    dict(do_sample=False, max_new_tokens=20),
]


@pytest.fixture(scope="module", params=["tiny", "tiny-causal"])
def lora_policy(request):
    """The preset's pretrained base with a LoRA adapter whose B matrices are random (so the adapter changes the
    logits): the model PPO samples from."""
    from peft import LoraConfig, get_peft_model

    from rlhf_helpers import presets

    model, tok = presets.load_base(request.param)
    targets = ["q", "v"] if model.config.is_encoder_decoder else ["q_proj", "v_proj"]
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    model.eval()
    return policy_for(model, tok, max_source_length=64)


def hf_generate(policy, batch, settings: dict) -> torch.Tensor:
    """transformers' ``generate`` with the same settings, reply tokens only."""
    kwargs = dict(settings)
    if kwargs["do_sample"]:
        kwargs.setdefault("top_k", 0)  # generate's default is 50; our loop's 0 (no cut), as PPO passes it
    with torch.no_grad():
        if policy.is_encoder_decoder:
            out = policy.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **kwargs)
            return out[:, 1:]
        out = policy.model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            pad_token_id=policy.tokenizer.pad_token_id, **kwargs,
        )
        return out[:, batch.input_ids.shape[1] :]


@pytest.mark.parametrize("settings", SETTINGS, ids=["sample", "min-new-tokens", "temperature-top-k-top-p", "greedy"])
def test_the_loop_samples_generates_tokens_at_the_same_seed(lora_policy, settings):
    batch = lora_policy.tokenize(PROMPTS, "cpu")
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected = hf_generate(lora_policy, batch, settings)
        after_generate = torch.rand(3)
        torch.manual_seed(seed)
        ours = lora_policy.generate(lora_policy.run_encoder(batch), **settings)  # T5: on a reused encoder output
        assert ours.shape == expected.shape and torch.equal(ours, expected), (seed, settings)
        assert torch.equal(torch.rand(3), after_generate), "the loop drew a different number of random numbers"
        if settings.get("min_new_tokens") == settings["max_new_tokens"]:
            assert ours.shape[1] == settings["max_new_tokens"]


def test_the_loops_logprobs_entropy_and_values_are_the_teacher_forced_passes(lora_policy):
    """What PPO's rollout keeps from the loop equals what the separate old-log-prob/value pass computed."""
    torch.manual_seed(0)
    value_head = ValueHead(lora_policy.model.config.hidden_size)
    torch.nn.init.normal_(value_head.net[2].weight)  # not the zero init: the values must differ by position
    batch = lora_policy.encode(PROMPTS, "cpu")
    for temperature in (1.0, 0.7):
        torch.manual_seed(1)
        s = sample_replies(lora_policy, batch, max_new_tokens=20, temperature=temperature, logprobs=True,
                           value_head=value_head)
        with torch.no_grad():
            logits, hidden = lora_policy.forward(batch, s.tokens, temperature)
            values = value_head(hidden)
        mask = response_mask(s.tokens, lora_policy.tokenizer.eos_token_id).bool()
        assert s.logprobs.shape == s.entropy.shape == s.values.shape == s.tokens.shape
        torch.testing.assert_close(s.logprobs[mask], gather_logprobs(logits, s.tokens)[mask], atol=1e-4, rtol=0)
        torch.testing.assert_close(s.entropy[mask], entropy_from_logits(logits)[mask], atol=1e-4, rtol=0)
        torch.testing.assert_close(s.values[mask], values[mask], atol=1e-4, rtol=0)


def test_rows_past_their_eos_get_padding_and_the_loop_stops_when_all_ended(lora_policy):
    batch = lora_policy.encode(PROMPTS, "cpu")
    eos, pad = stop_and_pad_ids(lora_policy.model, lora_policy.tokenizer)
    for seed in range(3):
        torch.manual_seed(seed)
        s = sample_replies(lora_policy, batch, max_new_tokens=40, temperature=0.7)
        is_eos = s.tokens == eos[0]
        ended = is_eos.any(dim=1)
        assert ended.any(), "some replies end"
        first = is_eos.int().argmax(dim=1)
        for row in ended.nonzero().flatten().tolist():
            assert (s.tokens[row, first[row] + 1 :] == pad).all()
        # the loop runs until every row has ended, or to max_new_tokens
        assert s.tokens.shape[1] == (int(first.max()) + 1 if ended.all() else 40)


def test_stop_and_pad_ids_follow_generate():
    class Cfg:
        eos_token_id, pad_token_id = [2, 7], None

    class Model:
        generation_config = Cfg()

    assert stop_and_pad_ids(Model()) == ([2, 7], 2)  # no pad anywhere: the first EOS, as generate
    assert stop_and_pad_ids(Model(), pad_token_id=0) == ([2, 7], 0)
    Cfg.eos_token_id = None
    with pytest.raises(ValueError, match="EOS"):
        stop_and_pad_ids(Model())


def test_trimmed_rows_cut_after_the_mini_batchs_longest_reply():
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float)
    values = torch.arange(15.0).view(3, 5)
    m, v = trimmed_rows(torch.tensor([1, 0]), mask, values)
    assert m.tolist() == [[1, 1, 1], [1, 1, 0]] and v.tolist() == [[5, 6, 7], [0, 1, 2]]
    m, v = trimmed_rows(torch.tensor([2]), mask, values)
    assert v.shape == (1, 5)
    m, _ = trimmed_rows(torch.tensor([0]), torch.zeros(3, 5), values)  # a row left out (mask 0): one column kept
    assert m.shape == (1, 1)


class BoostEOS:
    """A logits processor for ``generate`` that makes EOS the likeliest token (unless banned: -inf stays -inf)."""

    def __init__(self, eos: list[int]):
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.eos] += 50.0
        return scores


def boost_eos_in_the_loop(policy, eos: list[int], monkeypatch):
    """The same +50 on EOS in our loop, added to the logits the policy returns (before the loop's processors)."""
    for name in ("start_decoding", "continue_decoding"):
        real = getattr(policy, name)

        def boosted(*args, _real=real, **kwargs):
            logits, hidden, state = _real(*args, **kwargs)
            logits = logits.clone()
            logits[:, eos] += 50.0
            return logits, hidden, state

        monkeypatch.setattr(policy, name, boosted)


@pytest.mark.parametrize("min_new_tokens", [0, 1, 5])
def test_min_new_tokens_counts_as_generate_counts_when_eos_is_the_likeliest_token(lora_policy, min_new_tokens,
                                                                                   monkeypatch):
    """EOS pushed to the top at every step: EOS is banned for the first min_new_tokens tokens, so every reply is exactly
    min_new_tokens + 1 tokens long, EOS last, and generate (with the same push) draws the same tokens. An off-by-one
    in the min-length ban shows here."""
    from transformers import LogitsProcessorList

    batch = lora_policy.tokenize(PROMPTS, "cpu")
    eos, _ = stop_and_pad_ids(lora_policy.model, lora_policy.tokenizer)
    settings = dict(do_sample=True, max_new_tokens=12, min_new_tokens=min_new_tokens)
    torch.manual_seed(0)
    kwargs = dict(settings, logits_processor=LogitsProcessorList([BoostEOS(eos)]))
    expected = hf_generate(lora_policy, batch, kwargs)
    boost_eos_in_the_loop(lora_policy, eos, monkeypatch)
    torch.manual_seed(0)
    ours = lora_policy.generate(batch, **settings)
    assert torch.equal(ours, expected)
    assert ours.shape[1] == min_new_tokens + 1 and (ours[:, -1] == eos[0]).all()
    assert not (ours[:, :-1] == eos[0]).any()


def test_every_eos_id_of_the_generation_config_ends_a_reply_as_in_generate(lora_policy):
    """A model with two EOS ids (as Qwen's generation config lists): the loop stops a row on either, like generate."""
    cfg = lora_policy.model.generation_config
    saved = cfg.eos_token_id
    batch = lora_policy.tokenize(PROMPTS, "cpu")
    torch.manual_seed(0)
    common = sample_replies(lora_policy, batch, max_new_tokens=20).tokens[:, :3].flatten().tolist()
    second = max(set(common) - {saved}, key=common.count)  # a token the model often samples early: a second EOS
    try:
        cfg.eos_token_id = [saved, second]
        for seed in (0, 1):
            torch.manual_seed(seed)
            expected = hf_generate(lora_policy, batch, dict(do_sample=True, max_new_tokens=20))
            torch.manual_seed(seed)
            ours = lora_policy.generate(batch, do_sample=True, max_new_tokens=20)
            assert torch.equal(ours, expected)
            assert (ours == second).any()  # the second id did end replies
    finally:
        cfg.eos_token_id = saved


def test_the_min_length_ban_is_built_on_the_logits_device():
    from rlhf_helpers.sampling import logits_processors

    procs = logits_processors([1], 2, True, 1.0, 0, 1.0, device="meta")  # no GPU here: the meta device stands in
    assert procs[0].eos_token_id.device.type == "meta"


def test_generation_settings_the_loop_leaves_out_are_named_in_a_warning():
    from rlhf_helpers import presets
    from rlhf_helpers.sampling import ignored_generation_settings

    model, tok = presets.load_base("tiny")
    policy = policy_for(model, tok, max_source_length=64)
    assert ignored_generation_settings(model) == []
    model.generation_config.repetition_penalty = 1.2
    assert ignored_generation_settings(model) == ["repetition_penalty"]
    with pytest.warns(UserWarning, match="repetition_penalty"):
        sample_replies(policy, policy.encode(PROMPTS[:2], "cpu"), max_new_tokens=4)
