"""PPO: hand-computed cases for every equation of ppo_math (masks, whitening, KL, GAE, the clipped losses and
their clip fractions, the KL controller, the running score statistics); a learning test with a synthetic reward;
exact resume; EOS-only replies; the NaN guards; reference = SFT adapter (KL starts at 0, is measured at beta = 0,
sees its own encoder output); log-probs of the sampling distribution; dropout off whatever mode the model is in."""

import math

import pytest
import torch

from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference
from rlhf_helpers.ppo_math import (
    AdaptiveKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    gather_logprobs,
    has_eos,
    kl_k1,
    logprobs_and_entropy,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_clip_fraction,
    response_mask,
)


def test_response_mask_trains_the_first_token_and_stops_after_eos():
    responses = torch.tensor([[5, 6, 1, 0, 0], [1, 0, 0, 0, 0], [5, 6, 7, 8, 9], [1, 1, 0, 0, 0]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    assert torch.equal(response_mask(responses, eos_token_id=1), expected)


def test_any_eos_id_of_several_ends_a_reply():
    """A generation config may list two EOS ids (Qwen2.5's does): a reply ends at the first of either."""
    responses = torch.tensor([[5, 7, 3, 1], [5, 1, 7, 0], [5, 6, 4, 3]])
    assert response_mask(responses, [1, 7]).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert response_mask(responses, 1).tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert has_eos(responses, [1, 7]).tolist() == [True, True, False]
    assert has_eos(responses, 7).tolist() == [True, True, False] and has_eos(responses, 9).tolist() == [False] * 3
    import numpy as np

    assert has_eos(responses, np.int64(1)).tolist() == has_eos(responses, torch.tensor([1])).tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="EOS"):
        response_mask(responses, None)


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


def test_logsumexp_clamps_only_terms_that_cannot_change_an_fp32_sum():
    from rlhf_helpers.ppo_math import EXP_FLOOR, logsumexp

    # log(e^0 + e^log 3) = log 4; a term at -1000 (exp underflows, clamped to exp(-80)) changes nothing
    z = torch.tensor([[0.0, math.log(3.0), -1000.0], [5.0, 5.0, 5.0]])
    assert torch.allclose(logsumexp(z), torch.tensor([math.log(4.0), 5.0 + math.log(3.0)]))
    assert logsumexp(z)[0] == logsumexp(z[:, :2])[0]
    assert math.exp(EXP_FLOOR) < 2e-35  # far below the fp32 spacing near 1 (1.2e-7), even 32k of them (6e-31)


def test_token_logprob_its_gradient_and_entropy_match_a_hand_computed_case():
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # softmax = [1/4, 3/4]
    logprob = gather_logprobs(logits, torch.tensor([1]))
    assert torch.allclose(logprob, torch.tensor([math.log(0.75)]))
    logprob.sum().backward()  # d/dz [z_y - logsumexp(z)] = onehot(y) - softmax(z)
    assert torch.allclose(logits.grad, torch.tensor([[-0.25, 0.25]]))
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(entropy_from_logits(logits.detach()), torch.tensor([entropy]))


@pytest.mark.parametrize("vocab", [7, 32128])  # 32128: Flan-T5's vocabulary
@pytest.mark.parametrize("scale", [3.0, 25.0])  # 25: a random-init T5's logits, where thousands of exp() underflow
def test_token_logprob_equals_autograds_log_softmax_chain(vocab, scale):
    """The hand-written backward saves memory and the clamped logsumexp time; neither may change training beyond
    float rounding."""
    g = torch.Generator().manual_seed(vocab)
    logits = (scale * torch.randn(4, 6, vocab, generator=g)).requires_grad_()
    tokens = torch.randint(vocab, (4, 6), generator=g)
    upstream = torch.randn(4, 6, generator=g)
    chain = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    (grad_chain,) = torch.autograd.grad(chain, logits, upstream)
    ours = gather_logprobs(logits, tokens)
    (grad_ours,) = torch.autograd.grad(ours, logits, upstream)
    torch.testing.assert_close(ours, chain, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad_ours, grad_chain, atol=1e-7, rtol=1e-5)
    expected_entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits.detach()), expected_entropy.detach(), atol=1e-4, rtol=1e-5)
    assert torch.allclose(ours, torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    # the rollout's reply-by-reply version gives the same numbers as the whole batch
    with torch.no_grad():
        logprobs, entropy = logprobs_and_entropy(logits, tokens)
        assert torch.equal(logprobs, gather_logprobs(logits, tokens))
        assert torch.equal(entropy, entropy_from_logits(logits))
        assert logprobs_and_entropy(logits, tokens, entropy=False)[1] is None


def test_clipped_policy_loss_and_its_gradient_match_a_hand_computed_case():
    """eps = 0.2; ratios 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, +1, -1. Per token, max(-A r, -A clip(r)):
    -1.2 (clipped: r moved past 1 + eps the way A pushes it), 1.5, -0.5, 0.8 (clipped); the mean is 0.15.
    The gradient d loss / d log pi = -A r / 4 flows only through the two unclipped tokens."""
    old = torch.log(torch.full((1, 4), 0.4))
    new = (old + torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, ratio = clipped_policy_loss(new, old, adv, torch.ones(1, 4), cliprange=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert torch.allclose(ratio, torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    loss.backward()
    assert torch.allclose(new.grad, torch.tensor([[0.0, 1.5 / 4, -0.5 / 4, 0.0]]), atol=1e-6)
    # the clip fraction counts the tokens whose gradient was stopped: 2 of 4, not the 4 whose ratio left the range
    assert policy_clip_fraction(ratio, adv, torch.ones(1, 4), 0.2).item() == 0.5
    # ... and only masked tokens: the third and fourth are padding here
    assert policy_clip_fraction(ratio, adv, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), 0.2).item() == 0.5
    ratio_in_range = torch.tensor([[1.1, 0.9, 1.5]])
    assert policy_clip_fraction(ratio_in_range, torch.tensor([[1.0, -1.0, -1.0]]), torch.ones(1, 3), 0.2).item() == 0


def test_clipped_value_loss_matches_a_hand_computed_case():
    """eps_v = 0.2, returns 0. Token 0: V = 1 from V_old = 0.5, V_clip = 0.7: max(1, 0.49) = 1 (unclipped term wins).
    Token 1: V = 0 from 0.5, V_clip = 0.3: max(0, 0.09) = 0.09 (the clip stops its gradient).
    Loss 0.5 * (1 + 0.09) / 2 = 0.2725; clip fraction 1/2."""
    values = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, clipfrac = clipped_value_loss(values, torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2), torch.ones(1, 2), 0.2)
    assert loss.item() == pytest.approx(0.2725, abs=1e-6) and clipfrac.item() == 0.5
    loss.backward()
    assert torch.allclose(values.grad, torch.tensor([[0.5, 0.0]]))  # 0.5 * 2 (V - R) / 2 for token 0; none for 1


def test_adaptive_kl_controller_matches_a_hand_computed_case():
    ctl = AdaptiveKLController(beta=0.1, target=2.0, horizon=100)
    ctl.update(kl=3.0, n_steps=10)  # error = clip(3/2 - 1, -0.2, 0.2) = 0.2: beta * (1 + 0.2 * 10/100)
    assert ctl.beta == pytest.approx(0.102)
    ctl.update(kl=1.8, n_steps=10)  # error = -0.1: beta * (1 - 0.1 * 0.1)
    assert ctl.beta == pytest.approx(0.102 * 0.99)
    ctl.update(kl=0.0, n_steps=100)  # error clipped at -0.2: beta * 0.8
    assert ctl.beta == pytest.approx(0.102 * 0.99 * 0.8)


def test_running_moments_match_a_hand_computed_case_and_skip_non_finite_scores():
    stats = RunningMoments()
    stats.update(torch.tensor([1.0, 2.0, 3.0]))
    stats.update(torch.tensor([4.0, 5.0]))
    # all five scores: mean 3, population variance (4 + 1 + 0 + 1 + 4) / 5 = 2 (the prior's weight is 1e-4)
    assert stats.mean == pytest.approx(3.0, abs=1e-3) and stats.var == pytest.approx(2.0, abs=1e-3)
    assert stats.count == pytest.approx(5.0, abs=1e-3) and stats.std == pytest.approx(math.sqrt(2.0), abs=1e-3)
    before = dict(vars(stats))
    stats.update(torch.tensor([float("nan"), float("inf")]))  # nothing finite: unchanged
    assert vars(stats) == before
    with_nan, without = RunningMoments(), RunningMoments()
    with_nan.update(torch.tensor([1.0, float("nan"), 3.0]))
    without.update(torch.tensor([1.0, 3.0]))
    assert vars(with_nan) == vars(without)


def test_whitening_a_near_constant_batch_does_not_amplify_its_noise():
    x = torch.tensor([[1.0, 1.0 + 1e-6, 1.0 - 1e-6, 1.0]])
    w = masked_whiten(x, torch.ones(1, 4))
    noise = (x - x.mean()).abs().max()  # ~1e-6 (float32 rounds 1 - 1e-6 to 1 - 1.0133e-6)
    assert w.abs().max() <= 100 * noise * (1 + 1e-4)  # at most 1 / min_std = 100-fold; without the floor ~1.2
    healthy = torch.tensor([[0.5, -1.0, 2.0, 0.1]])  # std ~1.3: whitened as before
    mean, std = healthy.mean(), healthy.std()
    assert torch.allclose(masked_whiten(healthy, torch.ones(1, 4)), (healthy - mean) / std, atol=1e-6)


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
    # the sampling loop's log-probs (KV-cached) and the reference's (one teacher-forced pass): equal to float rounding
    torch.testing.assert_close(ro["logprobs"], ro["ref_logprobs"], atol=1e-4, rtol=0)
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
    """Every reply is EOS alone (the sampling loop's first logits pushed to EOS, with min_new_tokens = 0): a valid
    one-token reply, and the step stays finite."""
    trainer = make_trainer(sft_adapter, hello_reward, min_new_tokens=0)
    eos, real_start = trainer.tokenizer.eos_token_id, trainer.policy.start_decoding

    def eos_first(batch, hidden=False):
        logits, h, state = real_start(batch, hidden)
        logits = logits.clone()
        logits[:, eos] = 1e4
        return logits, h, state

    monkeypatch.setattr(trainer.policy, "start_decoding", eos_first)
    record = trainer.step()
    assert record["response_length"] == 1.0 and record["eos_fraction"] == 1.0
    assert math.isfinite(record["pg_loss"]) and math.isfinite(record["vf_loss"])


def test_a_second_eos_id_of_the_generation_config_ends_replies_as_the_first_does(sft_adapter, monkeypatch):
    """With two EOS ids in the generation config, a reply that ends with the second one is an ended reply (mask,
    no missing-EOS penalty), as the sampling loop, like ``generate``, stops there. Half the rows are pushed to the
    second id at their first token; the others run on, so the batch is wider than one column."""
    from transformers import AutoTokenizer

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.presets import model_path

    base = load_policy_and_reference(sft_adapter, model_path("tiny"))
    tok = AutoTokenizer.from_pretrained(sft_adapter)
    second = tok.convert_tokens_to_ids("\u2581Hello")  # an ordinary word, made an EOS id here
    assert second not in (tok.unk_token_id, tok.eos_token_id)
    base.generation_config.eos_token_id = [tok.eos_token_id, second]  # before the trainer is built
    prompts = list(load_split("sft_train")["prompt"][:200])
    cfg = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=24, checkpoint_every=0,
                    min_new_tokens=0, normalize_scores=False, missing_eos_penalty=2.0)
    trainer = PPOTrainer(base, tok, lambda p, r: [0.0] * len(r), prompts, cfg)
    assert trainer.eos_ids == [tok.eos_token_id, second]
    real_start = trainer.policy.start_decoding

    def second_eos_first_in_even_rows(batch, hidden=False):
        logits, h, state = real_start(batch, hidden)
        logits = logits.clone()
        logits[::2, second] = 1e4
        return logits, h, state

    monkeypatch.setattr(trainer.policy, "start_decoding", second_eos_first_in_even_rows)
    ro = trainer.rollout(trainer._prompts_for_step(0))
    assert ro["responses"].shape[1] > 1 and ro["responses"][::2, 0].eq(second).all()
    assert ro["mask"][::2].sum(dim=1).eq(1).all() and ro["has_eos"][::2].all()
    assert ro["scores"][::2].eq(0).all()  # ended: no missing-EOS penalty
    assert torch.equal(ro["mask"], response_mask(ro["responses"], [tok.eos_token_id, second]))
    assert not torch.equal(ro["mask"], response_mask(ro["responses"], tok.eos_token_id))  # the old count differs


def test_missing_eos_is_penalised(sft_adapter):
    trainer = make_trainer(
        sft_adapter, lambda p, r: [0.0] * len(r), max_new_tokens=3, normalize_scores=False, missing_eos_penalty=2.0
    )
    ro = trainer.rollout(trainer._prompts_for_step(0))
    expected = torch.where(ro["has_eos"], torch.tensor(0.0), torch.tensor(-2.0))
    assert torch.equal(ro["scores"], expected) and (~ro["has_eos"]).any()


def test_non_finite_loss_skips_the_batch_with_a_warning(sft_adapter):
    """A NaN inside the model (here a poisoned value head) makes the loss non-finite: the mini-batch is skipped."""
    trainer = make_trainer(sft_adapter, hello_reward)
    with torch.no_grad():
        trainer.value_head.net[2].bias.fill_(float("nan"))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.warns(UserWarning, match="non-finite loss"):
        trainer.step()
    assert trainer.skipped_batches > 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def hello_after_nan(nan_steps: set[int], rows: slice = slice(None)):
    """hello_reward, but NaN for ``rows`` of the replies at the given steps (a reward model that failed once)."""
    calls = {"n": 0}

    def reward(prompts, replies):
        scores = hello_reward(prompts, replies)
        if calls["n"] in nan_steps:
            scores[rows] = [float("nan")] * len(scores[rows])
        calls["n"] += 1
        return scores

    return reward


def test_logprobs_are_of_the_sampling_distribution(sft_adapter):
    """Replies are drawn from softmax(z / T); the rollout's log-probs must be those of that distribution
    (``generate``'s own processed scores), not of the untempered policy softmax(z)."""
    temperature = 0.5
    trainer = make_trainer(sft_adapter, hello_reward, temperature=temperature, max_new_tokens=8)
    prompts = trainer._prompts_for_step(0)
    batch = trainer.policy.encode(prompts, trainer.device)
    torch.manual_seed(0)
    kwargs = dict(encoder_outputs=batch.encoder_out, attention_mask=batch.attention_mask, do_sample=True, top_k=0)
    kwargs.update(temperature=temperature, min_new_tokens=trainer.cfg.min_new_tokens, max_new_tokens=8)
    gen = trainer.model.generate(**kwargs, output_scores=True, return_dict_in_generate=True)
    responses = gen.sequences[:, 1:]
    processed = torch.stack(gen.scores, dim=1)  # what sampling used: z / T
    # from t = 1 on: at t = 0 generate also bans EOS (min_new_tokens = 1), which PPO log-probs leave out (as in trl)
    mask = response_mask(responses, trainer.tokenizer.eos_token_id).bool()[:, 1:]
    torch.manual_seed(0)
    ro = trainer.rollout(prompts)  # our sampling loop: generate's replies at the same seed
    assert torch.equal(ro["responses"], responses)
    sampled = processed.log_softmax(-1).gather(2, responses.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ro["logprobs"][:, 1:][mask], sampled[:, 1:][mask], atol=1e-4)
    untempered = (processed * temperature).log_softmax(-1).gather(2, responses.unsqueeze(-1)).squeeze(-1)
    assert not torch.allclose(ro["logprobs"][:, 1:][mask], untempered[:, 1:][mask], atol=1e-2)
    torch.testing.assert_close(ro["ref_logprobs"], ro["logprobs"], atol=1e-4, rtol=0)  # before any update: pi = SFT


def test_the_update_pass_uses_the_rollouts_temperature(sft_adapter):
    """With a zero learning rate the policy never moves, so every mini-batch's new log-probs must equal the rollout's
    old ones: no ratio is clipped and approx-KL is 0. A pass that forgot (or added) the division would show here."""
    trainer = make_trainer(sft_adapter, hello_reward, temperature=0.5, learning_rate=0.0)
    record = trainer.step()
    assert record["approx_kl"] < 1e-8 and record["clipfrac"] == 0.0, record
    # the step's time, phase by phase: the four phases are inside the step and cover most of it
    phases = [record[f"seconds_{k}"] for k in ("sample", "score", "reference", "update")]
    assert all(t >= 0 for t in phases) and 0.5 * record["seconds"] <= sum(phases) <= record["seconds"], record


def test_kl_to_sft_is_measured_when_its_penalty_is_zero(sft_adapter):
    """beta = 0 removes the penalty, not the measurement: the reference pass still runs and the logged KL moves."""
    trainer = make_trainer(sft_adapter, hello_reward, init_kl_coef=0.0, adaptive_kl=False, learning_rate=3e-3)
    history = [trainer.step() for _ in range(3)]
    assert abs(history[0]["kl"]) < 1e-3 and trainer.kl_ctl.beta == 0.0  # 0 to float rounding
    assert all(abs(h["kl"]) > 1e-3 for h in history[1:]), [h["kl"] for h in history]
    ro = trainer.rollout(trainer._prompts_for_step(3))
    assert not torch.allclose(ro["logprobs"], ro["ref_logprobs"])


def test_with_a_trained_encoder_the_reference_sees_its_own_sft_encoder_output(sft_adapter):
    """train_encoder=True: once the policy's encoder LoRA has moved, the reference log-probs must still be pi_SFT's,
    computed from the SFT adapter's own encoder output — not from the policy's."""
    trainer = make_trainer(sft_adapter, hello_reward, train_encoder=True)
    with torch.no_grad():  # move only the policy adapter's encoder LoRA
        for name, p in trainer.model.named_parameters():
            if ".encoder." in name and "lora_B.policy" in name:
                p.add_(0.5 * torch.randn_like(p))
    prompts = trainer._prompts_for_step(0)
    torch.manual_seed(0)
    ro = trainer.rollout(prompts)
    trainer.model.set_adapter("reference")
    with torch.no_grad():
        sft_batch = trainer.policy.run_encoder(ro["batch"])  # the encoder under the reference (SFT) adapter
        logits, _ = trainer.policy.forward(sft_batch, ro["responses"], trainer.cfg.temperature)
    trainer._use_adapter("policy")
    expected = gather_logprobs(logits, ro["responses"])
    assert torch.allclose(ro["ref_logprobs"], expected, atol=1e-5)
    assert not torch.allclose(ro["logprobs"], ro["ref_logprobs"], atol=1e-3)  # the encoders differ


def test_dropout_is_off_in_every_pass_whatever_mode_the_model_was_loaded_in(sft_adapter):
    """A model loaded another way (T5 and LoRA dropout 0.3, left in train mode): the trainer itself must switch dropout
    off, so with a zero learning rate the ratio is exactly 1 and the reference equals the policy."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.presets import model_path

    base = AutoModelForSeq2SeqLM.from_pretrained(model_path("tiny"), dropout_rate=0.3)
    model = PeftModel.from_pretrained(base, sft_adapter, adapter_name="policy", is_trainable=True)
    model.load_adapter(sft_adapter, adapter_name="reference", is_trainable=False)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3  # LoRA's dropout too
    model.set_adapter("policy")
    model.train()
    prompts = list(load_split("sft_train")["prompt"][:200])
    cfg = PPOConfig(batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=24, learning_rate=0.0)
    trainer = PPOTrainer(model, AutoTokenizer.from_pretrained(sft_adapter), hello_reward, prompts, cfg)
    ro = trainer.rollout(trainer._prompts_for_step(0))
    torch.testing.assert_close(ro["logprobs"], ro["ref_logprobs"], atol=1e-4, rtol=0)
    record = trainer.step()
    assert record["approx_kl"] < 1e-8 and record["clipfrac"] == 0.0 and abs(record["kl"]) < 1e-3, record


def test_one_nan_batch_of_scores_does_not_poison_training(sft_adapter):
    """The reward model returns NaN for a whole batch once: those replies are left out (with a warning), the score
    statistics stay finite, and the next steps train normally."""
    trainer = make_trainer(sft_adapter, hello_after_nan({0}), learning_rate=3e-3)
    with pytest.warns(UserWarning, match="non-finite reward"):
        trainer.step()
    assert trainer.skipped_replies == 16 and trainer.score_stats.count == pytest.approx(1e-4)
    before = [p.detach().clone() for p in trainer.params]
    later = [trainer.step() for _ in range(2)]
    assert math.isfinite(trainer.score_stats.mean) and trainer.skipped_batches == 0
    assert all(math.isfinite(h["pg_loss"]) and math.isfinite(h["reward"]) for h in later)
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.params))  # it trained


def test_one_nan_score_leaves_out_that_reply_only(sft_adapter):
    trainer = make_trainer(sft_adapter, hello_after_nan({0}, rows=slice(0, 1)))
    with pytest.warns(UserWarning, match="1 non-finite reward"):
        record = trainer.step()
    assert trainer.score_stats.count == pytest.approx(15 + 1e-4)  # the 15 finite scores
    assert trainer.skipped_batches == 0 and math.isfinite(record["pg_loss"]) and math.isfinite(record["reward"])


def test_rollout_changes_no_trainer_state(sft_adapter):
    """Evaluation samples with ``rollout`` too: it must not move the score statistics (or anything else)."""
    trainer = make_trainer(sft_adapter, hello_reward)
    trainer.step()
    before = (dict(vars(trainer.score_stats)), trainer.kl_ctl.beta, trainer.step_idx, len(trainer.history))
    trainer.rollout(trainer._prompts_for_step(5))
    assert (dict(vars(trainer.score_stats)), trainer.kl_ctl.beta, trainer.step_idx, len(trainer.history)) == before


def test_no_weight_decay_towards_the_base_model(sft_adapter):
    """AdamW's decay would pull the LoRA weights to 0 — the bare base model, not the SFT policy the KL anchors to."""
    trainer = make_trainer(sft_adapter, hello_reward)
    assert all(group["weight_decay"] == 0.0 for group in trainer.optimizer.param_groups)


def test_the_three_seed_results_are_current_and_meet_the_course_targets():
    """benchmarks/ppo_seeds.json holds the defaults' gold win rate over SFT for PPO seeds 0, 1, 2
    (notebook 05 prints it).
    It must come from the current PPO code (its digest: a behaviour change means re-running the script) and meet the
    course's targets: mean >= 0.75, no seed below 0.60, KL to SFT within the stated bound."""
    import importlib.util
    import json

    from rlhf_helpers.config import REPO_ROOT
    from rlhf_helpers.ppo_stage import KL_BOUND

    spec = importlib.util.spec_from_file_location("ppo_seeds", REPO_ROOT / "benchmarks" / "ppo_seeds.py")
    ppo_seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ppo_seeds)
    results = json.loads((REPO_ROOT / "benchmarks" / "ppo_seeds.json").read_text())
    defaults = results["defaults"]
    assert defaults["code_sha256"] == ppo_seeds.code_digest(), "PPO code changed: run python benchmarks/ppo_seeds.py"
    assert defaults["seeds"] == [0, 1, 2] and defaults["overrides"] == {} and defaults["preset"] == "tiny"
    wins = [run["win_rate_vs_sft"] for run in defaults["runs"].values()]
    assert defaults["summary"]["win_rate_vs_sft"]["mean"] == pytest.approx(sum(wins) / 3)
    assert sum(wins) / 3 >= 0.75 and min(wins) >= 0.60, wins
    assert all(run["kl_end"] <= KL_BOUND for run in defaults["runs"].values())
