"""PPO: hand-computed cases for masks, whitening, KL and GAE; a learning test with a synthetic
reward; exact resume; EOS-only replies; the NaN guard; reference = SFT adapter (KL starts at 0)."""

import math

import pytest
import torch

from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference
from rlhf_helpers.ppo_math import (
    entropy_from_logits,
    gae,
    gather_logprobs,
    kl_k1,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    response_mask,
)


def test_response_mask_trains_the_first_token_and_stops_after_eos():
    responses = torch.tensor([[5, 6, 1, 0, 0], [1, 0, 0, 0, 0], [5, 6, 7, 8, 9], [1, 1, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    assert torch.equal(response_mask(responses, eos_token_id=1), expected)


def test_masked_whiten_uses_only_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    # mean 2, unbiased variance 1 -> (x - 2) / 1 on the masked entries
    assert torch.allclose(w[0, :3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-4)
    assert masked_mean(w, mask).abs() < 1e-6


def test_kl_k1_is_the_log_ratio():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5]))
    assert torch.allclose(kl_k1(logp, ref), torch.tensor([math.log(2), -math.log(2)]))


def test_gae_matches_a_hand_computed_case():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])  # the 9 sits after the reply's end: masked out
    values = torch.tensor([[0.5, 0.4, 0.3, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.5
    d2 = 1.0 + 0 - 0.3  # last real token bootstraps from 0
    d1 = 0.0 + gamma * 0.3 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret[0, :3], torch.tensor([a0 + 0.5, a1 + 0.4, a2 + 0.3]), atol=1e-6)


def test_per_token_rewards_put_the_score_on_the_last_reply_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # second reply: EOS only
    r = per_token_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, 2.0 - 0.15], [-1.0 - 0.25, 0.0, 0.0]]))
    # summed over tokens: r(x, y) - beta * sum KL  (paper eq. 2)
    assert torch.allclose(r.sum(1), torch.tensor([2.0 - 0.5 * 0.6, -1.0 - 0.5 * 0.5]))


def test_token_logprob_its_gradient_and_entropy_match_a_hand_computed_case():
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # softmax = [1/4, 3/4]
    logprob = gather_logprobs(logits, torch.tensor([1]))
    assert torch.allclose(logprob, torch.tensor([math.log(0.75)]))
    logprob.sum().backward()  # d/dz [z_y - logsumexp(z)] = onehot(y) - softmax(z)
    assert torch.allclose(logits.grad, torch.tensor([[-0.25, 0.25]]))
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(entropy_from_logits(logits.detach()), torch.tensor([entropy]))


@pytest.mark.parametrize("vocab", [7, 32128])  # 32128: Flan-T5's vocabulary
def test_token_logprob_equals_autograds_log_softmax_chain_to_the_last_bit(vocab):
    """The hand-written backward saves memory; it must not change a single number of training."""
    g = torch.Generator().manual_seed(vocab)
    logits = (3 * torch.randn(4, 6, vocab, generator=g)).requires_grad_()
    tokens = torch.randint(vocab, (4, 6), generator=g)
    upstream = torch.randn(4, 6, generator=g)
    chain = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    (grad_chain,) = torch.autograd.grad(chain, logits, upstream)
    ours = gather_logprobs(logits, tokens)
    (grad_ours,) = torch.autograd.grad(ours, logits, upstream)
    assert torch.equal(ours, chain) and torch.equal(grad_ours, grad_chain)
    assert torch.allclose(ours, torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    # the rollout's reply-by-reply version gives the same numbers as the whole batch
    with torch.no_grad():
        logprobs, entropy = logprobs_and_entropy(logits, tokens)
        assert torch.equal(logprobs, gather_logprobs(logits, tokens))
        assert torch.equal(entropy, entropy_from_logits(logits))
        assert logprobs_and_entropy(logits, tokens, entropy=False)[1] is None


# --------------------------------------------------------------------------- with a real tiny policy


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A quickly trained SFT adapter (2 epochs) on the tiny preset."""
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.sft import save_sft, sft_defaults, train_sft

    result = train_sft(sft_defaults("tiny", num_epochs=2), load_split("sft_train"), None, progress=False)
    return save_sft(result, tmp_path_factory.mktemp("sft"))


def make_trainer(adapter, reward_fn, **cfg):
    from transformers import AutoTokenizer

    from rlhf_helpers.presets import model_path

    model = load_policy_and_reference(adapter, model_path("tiny"))
    tok = AutoTokenizer.from_pretrained(adapter)
    from rlhf_helpers.data_prep import load_split

    prompts = list(load_split("sft_train")["prompt"][:200])
    defaults = dict(batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=24, checkpoint_every=0)
    return PPOTrainer(model, tok, reward_fn, prompts, PPOConfig(**{**defaults, **cfg}))


def hello_reward(prompts, replies):
    """Synthetic reward: 1 when the reply opens with "Hello" (the SFT policy mixes Hi/Hello)."""
    return [1.0 if r.startswith("Hello") else 0.0 for r in replies]


def test_reference_is_the_sft_adapter_so_kl_starts_at_zero(sft_adapter):
    trainer = make_trainer(sft_adapter, hello_reward)
    ro = trainer.rollout(trainer._prompts_for_step(0))
    assert torch.allclose(ro["logprobs"], ro["ref_logprobs"])
    assert ro["mask"][:, 0].eq(1).all()  # the first generated token is always trained


def test_ppo_learns_a_synthetic_reward(sft_adapter):
    trainer = make_trainer(sft_adapter, hello_reward, learning_rate=3e-3, init_kl_coef=0.01, normalize_scores=False)
    history = [trainer.step() for _ in range(12)]
    start = history[0]["reward"]  # step 0's replies are sampled before any update: the SFT policy's reward
    end = sum(h["reward"] for h in history[-3:]) / 3
    assert end >= start + 0.3 and end >= 0.8, [round(h["reward"], 2) for h in history]
    assert all(math.isfinite(h["kl"]) for h in history)


def test_resume_continues_as_if_never_interrupted(sft_adapter, tmp_path):
    straight = make_trainer(sft_adapter, hello_reward)
    for _ in range(4):
        straight.step()
    first = make_trainer(sft_adapter, hello_reward)
    first.step()
    first.step()
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = make_trainer(sft_adapter, hello_reward)
    resumed.load_checkpoint(tmp_path / "ckpt")
    resumed.step()
    resumed.step()
    keys = ("reward", "kl", "pg_loss", "vf_loss", "entropy", "beta", "response_length")
    for a, b in zip(straight.history, resumed.history):
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in keys), (a, b)
    assert len(resumed.history) == 4
    head_a, head_b = straight.value_head.state_dict(), resumed.value_head.state_dict()
    assert all(torch.allclose(head_a[k], head_b[k], atol=1e-6) for k in head_a)


def test_eos_only_replies_do_not_crash(sft_adapter, monkeypatch):
    trainer = make_trainer(sft_adapter, hello_reward)
    eos, start = trainer.tokenizer.eos_token_id, trainer.model.config.decoder_start_token_id

    def only_eos(**kwargs):
        n = kwargs["attention_mask"].shape[0]
        return torch.tensor([[start, eos, 0, 0]] * n)

    monkeypatch.setattr(trainer.model, "generate", only_eos)
    record = trainer.step()
    assert record["response_length"] == 1.0 and record["eos_fraction"] == 1.0
    assert math.isfinite(record["pg_loss"]) and math.isfinite(record["vf_loss"])


def test_missing_eos_is_penalised(sft_adapter):
    trainer = make_trainer(
        sft_adapter, lambda p, r: [0.0] * len(r), max_new_tokens=3, normalize_scores=False, missing_eos_penalty=2.0
    )
    ro = trainer.rollout(trainer._prompts_for_step(0))
    expected = torch.where(ro["has_eos"], torch.tensor(0.0), torch.tensor(-2.0))
    assert torch.equal(ro["scores"], expected) and (~ro["has_eos"]).any()


def test_non_finite_loss_skips_the_batch_with_a_warning(sft_adapter):
    trainer = make_trainer(sft_adapter, lambda p, r: [float("nan")] * len(r), normalize_scores=False)
    before = [p.detach().clone() for p in trainer.params]
    with pytest.warns(UserWarning, match="non-finite loss"):
        trainer.step()
    assert trainer.skipped_batches > 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.params))


@pytest.mark.parametrize("tempered", [True, False])
def test_logprobs_are_of_the_sampling_distribution_only_when_tempered(sft_adapter, monkeypatch, tempered):
    """Replies are drawn from softmax(z / T). With ``tempered_logprobs`` the rollout's log-probs are those of that
    distribution (``generate``'s own processed scores); without, those of the untempered policy, softmax(z)."""
    temperature = 0.5
    trainer = make_trainer(sft_adapter, hello_reward, temperature=temperature, tempered_logprobs=tempered)
    prompts = trainer._prompts_for_step(0)
    batch, encoder_out = trainer._encode(prompts)
    torch.manual_seed(0)
    kwargs = dict(encoder_outputs=encoder_out, attention_mask=batch.attention_mask, do_sample=True, top_k=0)
    kwargs.update(temperature=temperature, min_new_tokens=trainer.cfg.min_new_tokens, max_new_tokens=8)
    gen = trainer.model.generate(**kwargs, output_scores=True, return_dict_in_generate=True)
    responses = gen.sequences[:, 1:]
    processed = torch.stack(gen.scores, dim=1)  # what sampling used: z / T
    # from t = 1 on: at t = 0 generate also bans EOS (min_new_tokens = 1), which PPO log-probs leave out (as in trl)
    mask = response_mask(responses, trainer.tokenizer.eos_token_id).bool()[:, 1:]
    monkeypatch.setattr(trainer.model, "generate", lambda **_: gen.sequences)
    ro = trainer.rollout(prompts)
    scale = 1.0 if tempered else temperature  # untempered: softmax(z) = softmax(T * processed)
    expected = (processed * scale).log_softmax(-1).gather(2, responses.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ro["logprobs"][:, 1:][mask], expected[:, 1:][mask], atol=1e-4)
    sampled = processed.log_softmax(-1).gather(2, responses.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ro["logprobs"][:, 1:][mask], sampled[:, 1:][mask], atol=1e-4) == tempered
    assert torch.allclose(ro["ref_logprobs"], ro["logprobs"])  # before any update policy = reference, either way


@pytest.mark.parametrize("tempered", [True, False])
def test_the_update_pass_uses_the_rollouts_temperature(sft_adapter, tempered):
    """With a zero learning rate the policy never moves, so every mini-batch's new log-probs must equal the rollout's
    old ones: no ratio is clipped and approx-KL is 0. A pass that forgot (or added) the division would show here."""
    trainer = make_trainer(sft_adapter, hello_reward, temperature=0.5, tempered_logprobs=tempered, learning_rate=0.0)
    record = trainer.step()
    assert record["approx_kl"] < 1e-8 and record["clipfrac"] == 0.0, record
