"""The decoder-only policy interface on a small random Llama: left padding changes nothing (positions count real
tokens), the reply's log-probs sit where they predict the reply and are those of generate's sampling distribution,
masks come from the first EOS even when pad == EOS, and PPO runs through the same trainer."""

import pytest
import torch

from rlhf_helpers.policy import REPLY_CUE, CausalPolicy, left_padded_positions, policy_for, prompt_text
from rlhf_helpers.ppo_math import gather_logprobs, response_mask


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rlhf_helpers.tiny_model import tiny_tokenizer_dir

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())


def random_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


PROMPTS = ["Reply to the customer. Message: where is my lamp?", "Hi. Where?"]  # different lengths: padding


def test_positions_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert left_padded_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_prompt_text_uses_the_cue_without_a_chat_template(tokenizer):
    assert prompt_text(tokenizer, "Hi.") == "Hi." + REPLY_CUE


def test_left_padding_changes_no_logit_and_logits_are_only_at_reply_positions(tokenizer):
    """Row 2 is left-padded in the batch; its reply's logits must equal those of the same row run alone, and the
    logits must be those of column P - 1 + t of an ordinary full forward (the positions that predict token t)."""
    model = random_llama(len(tokenizer))
    policy = CausalPolicy(model, tokenizer, max_source_length=64)
    batch = policy.tokenize(PROMPTS, "cpu")
    assert batch.attention_mask[1, 0] == 0 and batch.attention_mask[0].all()  # row 2 is left-padded
    responses = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 1]])
    with torch.no_grad():
        logits, hidden = policy.forward(batch, responses, temperature=0.5)
        assert logits.shape[:2] == responses.shape and hidden.shape[:2] == responses.shape
        alone = policy.tokenize(PROMPTS[1:], "cpu")
        logits_alone, _ = policy.forward(alone, responses[1:], temperature=0.5)
        assert torch.allclose(logits[1], logits_alone[0], atol=1e-5)
        full = model(input_ids=torch.cat([alone.input_ids, responses[1:]], 1)).logits
        P = alone.input_ids.shape[1]
        assert torch.allclose(logits_alone[0], full[0, P - 1 : P - 1 + 4] / 0.5, atol=1e-5)


def test_rollout_logprobs_are_generates_sampling_distribution_and_masks_stop_at_the_first_eos(tokenizer):
    """pad == EOS here (as in many causal tokenizers): the mask still ends at the first EOS, and the log-probs of the
    sampled tokens equal generate's own processed scores (softmax(z / T))."""
    model = random_llama(len(tokenizer))
    policy = CausalPolicy(model, tokenizer, max_source_length=64)
    batch = policy.tokenize(PROMPTS, "cpu")
    torch.manual_seed(0)
    out = model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=True, temperature=0.7, top_k=0,
        max_new_tokens=12, pad_token_id=tokenizer.eos_token_id, output_scores=True, return_dict_in_generate=True,
    )
    responses = out.sequences[:, batch.input_ids.shape[1] :]
    torch.manual_seed(0)
    again = policy.generate(batch, do_sample=True, temperature=0.7, top_k=0, max_new_tokens=12)
    processed = torch.stack(out.scores, dim=1)
    with torch.no_grad():
        logits, _ = policy.forward(batch, responses, temperature=0.7)
    mask = response_mask(responses, tokenizer.eos_token_id).bool()
    assert torch.equal(again[mask], responses[mask])  # same reply (padded after EOS its own way)
    ours = gather_logprobs(logits, responses)
    sampled = processed.log_softmax(-1).gather(2, responses.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ours[mask], sampled[mask], atol=1e-4)
    eos_pad = torch.tensor([[5, 1, 1, 1], [5, 6, 7, 8]])  # pad == eos: the mask is not ids != pad
    assert response_mask(eos_pad, 1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_ppo_runs_a_step_on_a_causal_policy_with_a_reference_adapter(tokenizer):
    """The same PPOTrainer on a decoder-only model: a LoRA policy and reference adapter, KL 0 at the start, a value per
    reply position from the same value head, and a finite step."""
    from peft import LoraConfig, get_peft_model

    from rlhf_helpers.ppo import PPOConfig, PPOTrainer

    model = random_llama(len(tokenizer))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora, adapter_name="policy")
    model.add_adapter("reference", lora)
    reference = {k.replace("policy", "reference"): v for k, v in model.state_dict().items() if "lora_" in k}
    model.load_state_dict(reference, strict=False)  # reference = policy's initial weights, as an SFT copy would be
    model.set_adapter("policy")
    cfg = PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6, checkpoint_every=0, seed=0)
    trainer = PPOTrainer(model, tokenizer, lambda p, r: [float(len(x)) for x in r], PROMPTS * 4, cfg, 64)
    assert isinstance(trainer.policy, CausalPolicy) and not trainer.train_encoder
    ro = trainer.rollout(trainer._prompts_for_step(0))
    assert torch.allclose(ro["logprobs"], ro["ref_logprobs"])
    assert ro["values"].shape == ro["responses"].shape
    record = trainer.step()
    assert all(v == v for k, v in record.items() if isinstance(v, float) and k != "explained_variance"), record


def test_policy_for_picks_the_architecture(tokenizer):
    assert isinstance(policy_for(random_llama(len(tokenizer)), tokenizer), CausalPolicy)
