"""Beyond PPO, the equations (``dpo_math``, ``online_math``): hand-computed cases for every function, the gradients
that explain each method, and the same numbers as trl 1.16's DPOTrainer, GRPOTrainer and RLOOTrainer on a tiny random
LlamaForCausalLM (seconds on a CPU)."""

import math

import pytest
import torch

from rlhf_helpers.dpo_math import (
    causal_reply_logprobs,
    dpo_logits,
    dpo_loss,
    dpo_metrics,
    implicit_rewards,
    ipo_loss,
    reply_logprobs,
)
from rlhf_helpers.online_math import (
    aggregate_token_loss,
    best_of_n_kl,
    best_of_n_select,
    grpo_advantages,
    grpo_per_token_loss,
    kl_k3,
    rloo_advantages,
    rloo_policy_loss,
    rloo_rewards,
)
from rlhf_helpers.ppo_math import gather_logprobs

# ---------------------------------------------------------------------------------------------------------------- DPO
# Two pairs, beta = 0.5 (log-probs summed over each reply):
#   pair 1: log pi(y_w) = -2, log pi_ref(y_w) = -3 (+1);  log pi(y_l) = -4, log pi_ref(y_l) = -3 (-1);  h = +2
#   pair 2: log pi(y_w) = -5, log pi_ref(y_w) = -4 (-1);  log pi(y_l) = -6, log pi_ref(y_l) = -6 ( 0);  h = -1
PI_C, PI_R = torch.tensor([-2.0, -5.0]), torch.tensor([-4.0, -6.0])
REF_C, REF_R = torch.tensor([-3.0, -4.0]), torch.tensor([-3.0, -6.0])
BETA = 0.5


def test_reply_logprobs_sum_the_reply_tokens_and_ignore_padding_even_at_minus_infinity():
    # softmax([0, log 3]) = [1/4, 3/4] and softmax([log 3, 0]) = [3/4, 1/4]: the two reply tokens have p = 3/4 each;
    # the third position is padding whose token has p = 0 (log-prob -inf): it must add 0, not NaN, to value and grad
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, -math.inf]]], requires_grad=True)
    tokens = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[1, 1, 0]])
    logp = reply_logprobs(logits, tokens, mask)
    assert torch.allclose(logp, torch.tensor([2 * math.log(0.75)]))
    logp.sum().backward()  # onehot(y) - softmax on the reply tokens, 0 on the padding
    assert torch.allclose(logits.grad, torch.tensor([[[-0.25, 0.25], [0.25, -0.25], [0.0, 0.0]]]))


def test_causal_reply_logprobs_shift_by_one():
    # prompt [0], reply [1, 0], padding [0]: the logits at position t predict token t + 1, so the reply's tokens are
    # scored by positions 0 and 1: p(1) = 3/4 under softmax([0, log 3]), p(0) = 1/2 under softmax([0, 0]);
    # positions 2 and 3 (predicting the padding, and past the end) must not count, whatever their logits
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0], [-5.0, 5.0]]])
    input_ids = torch.tensor([[0, 1, 0, 0]])
    reply_mask = torch.tensor([[0, 1, 1, 0]])
    expected = math.log(0.75) + math.log(0.5)
    assert torch.allclose(causal_reply_logprobs(logits, input_ids, reply_mask), torch.tensor([expected]))


def test_dpo_loss_matches_a_hand_computed_case():
    assert torch.allclose(dpo_logits(PI_C, PI_R, REF_C, REF_R), torch.tensor([2.0, -1.0]))
    # -log sigmoid(x) = log(1 + e^-x): beta h = 1 -> log(1 + e^-1) = 0.3132617,
    #                                  beta h = -0.5 -> log(1 + e^0.5) = 0.9740770
    expected = (0.3132617 + 0.9740770) / 2
    assert dpo_loss(PI_C, PI_R, REF_C, REF_R, beta=BETA).item() == pytest.approx(expected, abs=1e-6)


def test_dpo_gradient_weights_each_pair_by_sigmoid_of_minus_beta_h():
    """d L / d log pi(y_w) = -beta * sigmoid(-beta h) / n_pairs, and +that for y_l: a pair already ordered by the
    implicit reward gets a small weight (pair 1: sigmoid(-1) = 0.2689414), a wrongly ordered one a large one
    (pair 2: sigmoid(0.5) = 0.6224593). The reference gets no gradient: it is a constant."""
    pi_c, pi_r = PI_C.clone().requires_grad_(), PI_R.clone().requires_grad_()
    dpo_loss(pi_c, pi_r, REF_C, REF_R, beta=BETA).backward()
    weight = torch.tensor([0.2689414, 0.6224593])
    assert torch.allclose(pi_c.grad, -BETA * weight / 2, atol=1e-6)
    assert torch.allclose(pi_r.grad, BETA * weight / 2, atol=1e-6)


def test_cdpo_label_smoothing_adds_eps_beta_h_and_stops_at_a_finite_margin():
    # -(1 - eps) log s(x) - eps log s(-x) = -log s(x) + eps * x, since log s(x) - log s(-x) = x; mean beta h = 0.25
    expected = (0.3132617 + 0.9740770) / 2 + 0.1 * 0.25
    loss = dpo_loss(PI_C, PI_R, REF_C, REF_R, beta=BETA, label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # its minimum: d/dx = -(1 - eps) s(-x) + eps s(x) = 0 at beta h = log((1 - eps) / eps) = log 9 (DPO: never)
    beta_h = torch.tensor([math.log(9.0)], requires_grad=True)
    dpo_loss(beta_h / BETA, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=BETA, label_smoothing=0.1).backward()
    assert abs(beta_h.grad.item()) < 1e-6
    with pytest.raises(ValueError):
        dpo_loss(PI_C, PI_R, REF_C, REF_R, label_smoothing=0.5)


def test_ipo_loss_regresses_the_per_token_margin_onto_one_over_two_beta():
    # pair 1 with |y_w| = 2, |y_l| = 4 tokens: (+1)/2 - (-1)/4 = 0.75; target 1 / (2 * 0.5) = 1 -> (0.75 - 1)^2 = 0.0625
    lengths_c, lengths_r = torch.tensor([2.0]), torch.tensor([4.0])
    pi_c = PI_C[:1].clone().requires_grad_()
    loss = ipo_loss(pi_c, PI_R[:1], REF_C[:1], REF_R[:1], lengths_c, lengths_r, beta=BETA)
    assert loss.item() == pytest.approx(0.0625)
    loss.backward()  # 2 * (0.75 - 1) * (1 / |y_w|) = -0.25: below the target, IPO still raises y_w's log-prob ...
    assert pi_c.grad.item() == pytest.approx(-0.25)
    # ... and above it lowers it again (DPO's loss would keep pushing): margin 2 per token vs target 1 -> (2 - 1)^2
    over = ipo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), torch.ones(1),
                    torch.ones(1), beta=BETA)  # fmt: skip
    assert over.item() == pytest.approx(1.0)


def test_implicit_rewards_and_the_metrics_trl_logs():
    rewards = implicit_rewards(PI_C.clone().requires_grad_(), REF_C, BETA)
    assert torch.allclose(rewards, torch.tensor([0.5, -0.5])) and not rewards.requires_grad
    metrics = dpo_metrics(PI_C, PI_R, REF_C, REF_R, BETA)
    # chosen 0.5 * (+1, -1) = (0.5, -0.5); rejected 0.5 * (-1, 0) = (-0.5, 0); margins (1, -0.5); ordered: pair 1 only
    expected = {"rewards/chosen": 0.0, "rewards/rejected": -0.25, "rewards/margins": 0.25, "rewards/accuracies": 0.5,
                "logps/chosen": -3.5, "logps/rejected": -5.0}  # fmt: skip
    assert metrics == pytest.approx(expected)
    # at the start (pi = pi_ref) every implicit reward is 0: a tie, which counts as wrong
    assert dpo_metrics(REF_C, REF_R, REF_C, REF_R, BETA)["rewards/accuracies"] == 0.0


# ------------------------------------------------------------------------------------------ against trl 1.16's trainers
WORDS = "<pad> </s> <unk> the order is late where my parcel sorry we will refund it today no idea ask someone else"


@pytest.fixture(scope="module")
def tiny_causal(tmp_path_factory):
    """A word-level tokenizer (pad 0, EOS 1, no chat template, no BOS) and a tiny random LlamaForCausalLM saved to
    disk (GRPO and RLOO build their reference from the path). initializer_range 0.3 instead of 0.02 makes the
    log-ratios between two such models of order 1, so the losses are far from their values at pi = pi_ref."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = WORDS.split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1,
        initializer_range=0.3,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-causal")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)

    def make(seed: int):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)

    return tokenizer, make, path


PAIRS = {
    "prompt": ["where is my parcel", "the order is late", "where is my order"],
    "chosen": [" sorry we will refund it today", " sorry", " it is late sorry"],
    "rejected": [" no idea", " ask someone else today", " no"],
}


def trl_dpo_batch_loss(tiny_causal, tmp_path, **config):
    """trl 1.16's DPOTrainer on PAIRS with policy seed 0 and a *different* reference (seed 1): its loss and metrics
    on one batch (``compute_loss``, trl/trainer/dpo_trainer.py:1682), and the batch it read. bf16=False: trl 1.x's
    configs default to bf16 = True even on a CPU (trl/trainer/base_config.py:108), and its log-prob passes run under
    bf16 autocast then (GRPO's policy log-probs moved by up to 0.05 nats here); the equations are compared in fp32."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, make, _ = tiny_causal
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", bf16=False, **config)
    trainer = DPOTrainer(make(0), ref_model=make(1), args=args, train_dataset=Dataset.from_dict(PAIRS),
                         processing_class=tokenizer)  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(trainer.model, batch)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return trainer, batch, loss, metrics


def our_logps(trainer, batch):
    """Summed reply log-probs of policy and reference from their ordinary forward (full logits), chosen rows first."""
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    policy = causal_reply_logprobs(trainer.model(**kwargs).logits, batch["input_ids"], batch["completion_mask"])
    with torch.no_grad():
        ref_logits = trainer.ref_model(**kwargs).logits
    ref = causal_reply_logprobs(ref_logits, batch["input_ids"], batch["completion_mask"])
    return (*policy.chunk(2), *ref.chunk(2))


def test_our_dpo_loss_and_metrics_equal_trls_dpo_trainer(tiny_causal, tmp_path):
    trainer, batch, trl_loss, trl_metrics = trl_dpo_batch_loss(tiny_causal, tmp_path, per_device_train_batch_size=3)
    assert batch["input_ids"].shape[0] == 6  # 3 chosen rows, then 3 rejected rows
    assert batch["completion_mask"][:, -1].tolist() != [1] * 6  # ragged replies: the padding is really masked
    pi_c, pi_r, ref_c, ref_r = our_logps(trainer, batch)
    ours = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=trainer.beta)
    assert abs(ours.item() - math.log(2)) > 0.05  # far from the value at pi = pi_ref
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    assert dpo_metrics(pi_c, pi_r, ref_c, ref_r, trainer.beta) == pytest.approx(
        {name: trl_metrics[name] for name in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                              "rewards/accuracies", "logps/chosen", "logps/rejected")},
        rel=1e-5, abs=1e-6,
    )  # fmt: skip
    # and the same gradient: trl's fused LM head against our full logits
    (trl_grad,) = torch.autograd.grad(trl_loss, trainer.model.lm_head.weight)
    (our_grad,) = torch.autograd.grad(ours, trainer.model.lm_head.weight)
    assert torch.allclose(our_grad, trl_grad, rtol=1e-4, atol=1e-7)


def test_our_ipo_loss_equals_trls_with_its_per_token_averaging(tiny_causal, tmp_path):
    trainer, batch, trl_loss, _ = trl_dpo_batch_loss(
        tiny_causal, tmp_path, per_device_train_batch_size=3, loss_type=["ipo"], beta=0.5
    )
    pi_c, pi_r, ref_c, ref_r = our_logps(trainer, batch)
    len_c, len_r = batch["completion_mask"].sum(1).chunk(2)  # reply tokens, EOS included
    ours = ipo_loss(pi_c, pi_r, ref_c, ref_r, len_c, len_r, beta=0.5)
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    unaveraged = ipo_loss(pi_c, pi_r, ref_c, ref_r, torch.ones(3), torch.ones(3), beta=0.5)
    assert abs(unaveraged.item() - trl_loss.item()) > 1e-2  # the averaging matters on these replies


def test_our_cdpo_equals_trls_aot_loss_on_one_pair(tiny_causal, tmp_path):
    """trl 1.16's "sigmoid" loss ignores label_smoothing; its "aot" loss sorts the pairs' log-ratios over the batch
    and then applies cDPO's formula, which for one pair per batch is cDPO itself."""
    trainer, batch, trl_loss, _ = trl_dpo_batch_loss(
        tiny_causal, tmp_path, per_device_train_batch_size=1, loss_type=["aot"], label_smoothing=0.2
    )
    pi_c, pi_r, ref_c, ref_r = our_logps(trainer, batch)
    ours = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=trainer.beta, label_smoothing=0.2)
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    assert abs(dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=trainer.beta).item() - trl_loss.item()) > 1e-3


# ------------------------------------------------------------------------------------------------------ RLOO and GRPO
# Two prompts, k = 3 replies each, prompt-major: prompt 0 scored (1, 2, 6), prompt 1 scored (0, 0, 3)
REWARDS = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
NAN = float("nan")


def test_rloo_advantages_use_the_other_replies_to_the_same_prompt():
    # prompt 0: 1 - (2 + 6)/2 = -3, 2 - (1 + 6)/2 = -1.5, 6 - (1 + 2)/2 = 4.5; prompt 1: -1.5, -1.5, 3 - 0 = 3
    expected = torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    assert torch.allclose(rloo_advantages(REWARDS, k=3), expected)
    # = k / (k - 1) * (r - group mean): prompt 0's mean is 3, 1.5 * (1 - 3) = -3
    assert torch.allclose(rloo_advantages(REWARDS, k=3).view(2, 3).sum(1), torch.zeros(2))
    # sample-major data read as prompt-major gives other baselines: the layout is part of the contract
    assert not torch.allclose(rloo_advantages(REWARDS.view(2, 3).T.reshape(-1), k=3), expected.view(2, 3).T.reshape(-1))
    # whitened over the batch (trl's normalize_advantages): mean 0, Bessel variance (9+2.25+20.25+2.25+2.25+9)/5 = 9
    assert torch.allclose(rloo_advantages(REWARDS, k=3, normalize=True), expected / (3.0 + 1e-4))
    assert torch.equal(rloo_advantages(REWARDS, k=1), torch.zeros(6))  # no other reply, no baseline
    with pytest.raises(ValueError):
        rloo_advantages(REWARDS, k=4)


def test_rloo_leaves_an_unscorable_reply_out_of_its_siblings_baselines():
    # (1, NaN, 3, 5): three finite siblings, sum 9 -> 1 - (9 - 1)/2 = -3, NaN -> 0, 3 - (9 - 3)/2 = 0, 5 - (9 - 5)/2 = 3
    assert torch.allclose(rloo_advantages(torch.tensor([1.0, NAN, 3.0, 5.0]), k=4), torch.tensor([-3.0, 0, 0, 3.0]))
    # one finite reply in a group: no baseline for it either -> 0
    assert torch.equal(rloo_advantages(torch.tensor([NAN, 2.0]), k=2), torch.zeros(2))


def test_rloo_rewards_subtract_beta_times_the_summed_k1_of_the_reply():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # reply 0: k1 = 0.5 - 1 (the 3rd token is padding) = -0.5 -> 2 + 0.1 * 0.5 = 2.05;  reply 1: k1 = 3 -> 1 - 0.3
    rewards = rloo_rewards(torch.tensor([2.0, 1.0]), logprobs, ref, mask, beta=0.1)
    assert torch.allclose(rewards, torch.tensor([2.05, 0.7]))


def test_rloo_policy_loss_clips_the_sequence_ratio_and_is_reinforce_on_policy():
    # ratios 1 (A = +1), 2 (A = -1), 2 (A = +1), eps 0.2:
    #   -1 * 1 = -1;  max(-(-1) * 2, -(-1) * 1.2) = 2 (not clipped: the ratio went the way A < 0 does not push);
    #   max(-2, -1.2) = -1.2 (clipped)  ->  mean (-1 + 2 - 1.2) / 3
    old = torch.tensor([-1.0, -2.0 - math.log(2.0), -3.0 - math.log(2.0)])
    logprobs = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, 1.0])
    loss, ratio = rloo_policy_loss(logprobs, old, advantages)
    assert loss.item() == pytest.approx((-1 + 2 - 1.2) / 3) and torch.allclose(ratio, torch.tensor([1.0, 2.0, 2.0]))
    loss.backward()  # d(-A rho)/d log pi = -A rho on the unclipped replies, 0 on the clipped one
    assert torch.allclose(logprobs.grad, torch.tensor([-1.0, 2.0, 0.0]) / 3)
    high, _ = rloo_policy_loss(logprobs, old, advantages, epsilon_high=1.5)  # clip(2, 0.8, 2.5) = 2: no clip
    assert high.item() == pytest.approx((-1 + 2 - 2) / 3)
    # on the rollout's policy (rho = 1) the gradient is plain REINFORCE: -A / n per reply
    on_policy = logprobs.detach().clone().requires_grad_()
    rloo_policy_loss(on_policy, on_policy.detach(), advantages)[0].backward()
    assert torch.allclose(on_policy.grad, -advantages / 3)


def test_grpo_advantages_divide_by_the_bessel_corrected_group_std_plus_1e4():
    # prompt 0: mean 3, deviations (-2, -1, 3), variance (4 + 1 + 9) / (3 - 1) = 7;
    # prompt 1: mean 1, deviations (-1, -1, 2), variance (1 + 1 + 4) / 2 = 3
    deviations = torch.tensor([-2.0, -1.0, 3.0, -1.0, -1.0, 2.0])
    std = torch.tensor([math.sqrt(7)] * 3 + [math.sqrt(3)] * 3)
    assert torch.allclose(grpo_advantages(REWARDS, k=3), deviations / (std + 1e-4))
    # "batch": the batch's std, mean 2, squares 1 + 0 + 16 + 4 + 4 + 1 = 26, / 5 -> sqrt(5.2); "none": no division
    assert torch.allclose(grpo_advantages(REWARDS, 3, "batch"), deviations / (math.sqrt(5.2) + 1e-4))
    assert torch.allclose(grpo_advantages(REWARDS, 3, "none"), deviations)
    # = RLOO's advantage * (k - 1) / k, before the division
    assert torch.allclose(grpo_advantages(REWARDS, 3, "none"), rloo_advantages(REWARDS, 3) * 2 / 3)
    with pytest.raises(ValueError):
        grpo_advantages(REWARDS, 3, "global")


def test_grpo_advantages_are_zero_without_a_signal_and_skip_unscorable_replies():
    assert torch.equal(grpo_advantages(torch.tensor([5.0, 5.0, 5.0]), k=3), torch.zeros(3))  # 0 / (0 + 1e-4)
    assert torch.equal(grpo_advantages(torch.tensor([1.0, 2.0]), k=1), torch.zeros(2))
    # (1, NaN, 3): mean 2 and std sqrt(((-1)^2 + 1^2) / 1) = sqrt(2) of the finite two; the NaN reply gets 0
    one = 1 / (math.sqrt(2) + 1e-4)
    assert torch.allclose(grpo_advantages(torch.tensor([1.0, NAN, 3.0]), k=3), torch.tensor([-one, 0.0, one]))


def test_kl_k3_is_positive_unbiased_and_has_the_stated_gradient():
    logp = torch.log(torch.tensor([0.5, 0.25])).requires_grad_()
    ref = torch.log(torch.tensor([0.25, 0.5]))
    # r = pi_ref/pi = 1/2: 1/2 + log 2 - 1 = 0.1931472;  r = 2: 2 - log 2 - 1 = 0.3068528 (k1 would be +-log 2)
    k3 = kl_k3(logp, ref)
    assert torch.allclose(k3, torch.tensor([0.1931472, 0.3068528]))
    k3.sum().backward()  # 1 - r
    assert torch.allclose(logp.grad, torch.tensor([0.5, -1.0]))
    # E_pi[k3] = KL(pi || pi_ref): pi = (1/2, 1/2), pi_ref = (1/4, 3/4):
    # k3 = 0.1931472 and 3/2 - log(3/2) - 1 = 0.0945349, mean 0.1438410 = 1/2 log 2 + 1/2 log(2/3)
    pi, pi_ref = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    assert (pi * kl_k3(pi.log(), pi_ref.log())).sum().item() == pytest.approx(0.1438410, abs=1e-6)


def grpo_case():
    """Two replies of 2 tokens, the second of length 1; A = +1, -1; ratios (1, 1.5) and (0.5, 1.5); eps 0.2:
    reply 0: -min(1, 1) = -1, -min(1.5, 1.2) = -1.2 (clipped);  reply 1: -min(-0.5, -0.8) = 0.8 (clipped),
    -min(-1.5, -1.2) = 1.5 (not clipped, but padding)."""
    logprobs = torch.log(torch.full((2, 2), 0.5))
    ratio = torch.tensor([[1.0, 1.5], [0.5, 1.5]])
    return logprobs, logprobs - ratio.log(), torch.tensor([1.0, -1.0]), torch.tensor([[1, 1], [1, 0]])


def test_grpo_per_token_loss_matches_a_hand_computed_case():
    logprobs, old, advantages, _ = grpo_case()
    loss, ratio = grpo_per_token_loss(logprobs, old, advantages)
    assert torch.allclose(loss, torch.tensor([[-1.0, -1.2], [0.8, 1.5]]))
    assert torch.allclose(ratio, torch.tensor([[1.0, 1.5], [0.5, 1.5]]))
    # + beta * rho * k3 with pi_ref = 1/4 everywhere: k3 = 0.1931472 (above); without the correction + beta * k3
    ref = torch.log(torch.full((2, 2), 0.25))
    with_kl, _ = grpo_per_token_loss(logprobs, old, advantages, ref, beta=0.1)
    assert torch.allclose(with_kl - loss, 0.1 * ratio * 0.1931472)
    plain, _ = grpo_per_token_loss(logprobs, old, advantages, ref, beta=0.1, bias_correction_kl=False)
    assert torch.allclose(plain - loss, torch.full((2, 2), 0.1 * 0.1931472))
    # delta = 1.3 caps the unclipped ratio too: reply 1's second token -min(-1.3, -1.2) = 1.3
    capped, _ = grpo_per_token_loss(logprobs, old, advantages, delta=1.3)
    assert capped[1, 1].item() == pytest.approx(1.3)
    with pytest.raises(ValueError):
        grpo_per_token_loss(logprobs, old, advantages, beta=0.1)


def test_loss_aggregations_match_hand_computed_cases():
    logprobs, old, advantages, mask = grpo_case()
    loss, _ = grpo_per_token_loss(logprobs, old, advantages)  # [[-1, -1.2], [0.8, (1.5)]]
    assert aggregate_token_loss(loss, mask, "grpo").item() == pytest.approx((-1.1 + 0.8) / 2)  # reply means, mean
    assert aggregate_token_loss(loss, mask, "bnpo").item() == pytest.approx(-1.4 / 3)  # token mean
    assert aggregate_token_loss(loss, mask).item() == pytest.approx(-1.4 / 3)  # "dapo", one batch: the same
    assert aggregate_token_loss(loss, mask, "dapo", num_items=7).item() == pytest.approx(-1.4 / 7)  # 7 in all
    assert aggregate_token_loss(loss, mask, "dr_grpo", max_completion_length=4).item() == pytest.approx(-1.4 / 8)
    with pytest.raises(ValueError):
        aggregate_token_loss(loss, mask, "dr_grpo")


def test_grpo_gradients_show_the_length_bias_of_grpo_and_the_reverse_kl_of_the_bias_correction():
    _, _, advantages, mask = grpo_case()
    for loss_type, expected in [("grpo", [[-1 / 4, -1 / 4], [1 / 2, 0]]), ("dapo", [[-1 / 3, -1 / 3], [1 / 3, 0]])]:
        logprobs = torch.log(torch.full((2, 2), 0.5)).requires_grad_()  # on-policy: rho = 1
        loss, _ = grpo_per_token_loss(logprobs, logprobs.detach(), advantages)
        aggregate_token_loss(loss, mask, loss_type).backward()
        # "grpo": -A / |o_i| / G, so the one-token reply's token weighs twice as much; "dapo": -A / all tokens
        assert torch.allclose(logprobs.grad, torch.tensor(expected)), loss_type
    # the KL term alone on-policy (A = 0, beta = 1, pi = 1/2, pi_ref = 1/4): with the correction its gradient is
    # k1 = log(pi/pi_ref) = log 2; without it 1 - pi_ref/pi = 1/2
    for correction, expected in [(True, math.log(2.0)), (False, 0.5)]:
        logprobs = torch.log(torch.tensor([[0.5]])).requires_grad_()
        loss, _ = grpo_per_token_loss(logprobs, logprobs.detach(), torch.zeros(1), torch.log(torch.tensor([[0.25]])),
                                      beta=1.0, bias_correction_kl=correction)  # fmt: skip
        loss.sum().backward()
        assert logprobs.grad.item() == pytest.approx(expected), correction


# -------------------------------------------------------------------------------------------------------- best-of-N
def test_best_of_n_kl_matches_hand_computed_values_and_bounds_the_exact_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.6931472 - 0.5)  # log 2 - 1/2
    assert best_of_n_kl(4) == pytest.approx(1.3862944 - 0.75)  # log 4 - 3/4
    # exact KL for M equally likely replies with distinct scores: the best of 4 is the i-th lowest with probability
    # p_i = (i/M)^4 - ((i-1)/M)^4, KL = sum p_i log(p_i M); close to the formula for large M, and below it
    m = 1000
    i = torch.arange(1, m + 1, dtype=torch.float64)
    p = (i / m) ** 4 - ((i - 1) / m) ** 4
    exact = (p * (p * m).log()).sum().item()
    assert exact <= best_of_n_kl(4) and exact == pytest.approx(best_of_n_kl(4), abs=0.01)
    # with ties far below it: two equally likely replies, best of 4 is the better one with p = 15/16:
    # 15/16 log(15/8) + 1/16 log(1/8) = 0.4593558 < 0.6362944
    two = 15 / 16 * math.log(15 / 8) + 1 / 16 * math.log(1 / 8)
    assert two == pytest.approx(0.4593558, abs=1e-6) and two < best_of_n_kl(4)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_best_of_n_select_takes_the_first_of_tied_best_and_never_a_nan():
    scores = torch.tensor([1.0, 3.0, 3.0, 0.0, NAN, NAN, NAN, NAN, 2.0, NAN, 5.0, 5.0, NAN, -1.0, -2.0, -3.0])
    assert best_of_n_select(scores, n=4).tolist() == [1, 0, 2, 1]


# ---------------------------------------------------------------------------- against trl 1.16's GRPO and RLOO trainers
# 2 prompts x k = 4 replies, prompt-major as trl's RepeatSampler lays them out; None = unscorable (trl: NaN)
ONLINE_PROMPTS = [{"prompt": "where is my parcel"}] * 4 + [{"prompt": "the order is late"}] * 4
ONLINE_REWARDS = [1.0, 0.0, 2.0, 0.5, 3.0, 3.0, None, 1.0]


def fixed_rewards(completions, **kwargs):
    return list(ONLINE_REWARDS)


def online_trainer(trainer_cls, config_cls, tiny_causal, tmp_path, **config):
    """trl's GRPO or RLOO trainer on the tiny model, with its reference (built from the saved path, if beta != 0)
    moved away from the policy so that every KL term is non-zero."""
    from datasets import Dataset

    tokenizer, _, path = tiny_causal
    args = config_cls(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", bf16=False,
                      num_generations=4, per_device_train_batch_size=8, max_completion_length=6, **config)  # fmt: skip
    data = Dataset.from_dict({"prompt": ["where is my parcel", "the order is late"]})
    trainer = trainer_cls(str(path), reward_funcs=fixed_rewards, args=args, train_dataset=data,
                          processing_class=tokenizer)  # fmt: skip
    if trainer.ref_model is not None:  # beta = 0: trl loads none
        torch.manual_seed(1)
        with torch.no_grad():
            for p in trainer.ref_model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return trainer


def per_token_logprobs(model, out, grad=False):
    """log pi(y_t) of every completion token from the model's ordinary forward over prompt + completion."""
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.set_grad_enabled(grad):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    start = out["prompt_ids"].shape[1]
    return gather_logprobs(logits[:, start - 1 : -1], out["completion_ids"])


def test_our_grpo_advantages_equal_trls_grpo_trainer(tiny_causal, tmp_path):
    """trl computes them inside ``_generate_and_score_completions`` (trl/trainer/grpo_trainer.py:2763-2810)."""
    from trl import GRPOConfig, GRPOTrainer

    trainer = online_trainer(GRPOTrainer, GRPOConfig, tiny_causal, tmp_path)
    assert trainer.scale_rewards == "group" and trainer.loss_type == "dapo" and trainer.beta == 0.0  # trl's defaults
    rewards = torch.tensor([NAN if r is None else r for r in ONLINE_REWARDS])
    for scale in ("group", "batch", "none"):
        trainer.scale_rewards = scale
        out = trainer._generate_and_score_completions(ONLINE_PROMPTS)
        assert torch.allclose(out["advantages"], grpo_advantages(rewards, 4, scale), atol=1e-6), scale


def test_our_grpo_loss_equals_trls_for_each_aggregation(tiny_causal, tmp_path):
    """trl's loss (grpo_trainer.py:3020-3184) on one generation batch with beta = 0.04 and the reference moved away,
    old log-probs moved off-policy so that the clip and the KL's importance weight act, and ragged reply masks."""
    from trl import GRPOConfig, GRPOTrainer

    trainer = online_trainer(GRPOTrainer, GRPOConfig, tiny_causal, tmp_path, beta=0.04)
    out = trainer._generate_and_score_completions(ONLINE_PROMPTS)
    out["completion_mask"][[0, 3, 5], 3:] = 0  # three shorter replies (the model, random, never says EOS in 6 tokens)
    out["completion_mask"][6, 1:] = 0
    out["num_items_in_batch"] = out["completion_mask"].sum()
    mask = out["completion_mask"]
    logprobs = per_token_logprobs(trainer.model, out, grad=True)
    torch.manual_seed(2)
    out["old_per_token_logps"] = logprobs.detach() + 0.3 * torch.randn_like(logprobs)
    per_token, ratio = grpo_per_token_loss(
        logprobs, out["old_per_token_logps"], out["advantages"], out["ref_per_token_logps"], beta=trainer.beta
    )
    assert ((ratio - 1).abs() > 0.2)[mask.bool()].any()  # the clip acts on some tokens
    values = {}
    for loss_type in ("dapo", "grpo", "bnpo", "dr_grpo"):
        trainer.loss_type = loss_type
        trl_loss = trainer.compute_loss(trainer.model, out)
        ours = aggregate_token_loss(per_token, mask, loss_type, max_completion_length=6,
                                    num_items=out["num_items_in_batch"])  # fmt: skip
        assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7), loss_type
        values[loss_type] = ours.item()
        if loss_type == "dapo":  # the default: the same gradient too
            (trl_grad,) = torch.autograd.grad(trl_loss, trainer.model.lm_head.weight)
            (our_grad,) = torch.autograd.grad(ours, trainer.model.lm_head.weight, retain_graph=True)
            assert torch.allclose(our_grad, trl_grad, rtol=1e-4, atol=1e-7)
    assert abs(values["grpo"] - values["dapo"]) > 1e-4  # the ragged masks tell the aggregations apart


def test_our_rloo_advantages_and_loss_equal_trls_rloo_trainer(tiny_causal, tmp_path):
    """trl's RLOO (trl/trainer/rloo_trainer.py:1664-1699 and 1822-1833) with its default beta = 0.05: the KL-penalised
    reward, the leave-one-out advantages, and the clipped sequence-ratio loss with old log-probs moved off-policy."""
    from trl import RLOOConfig, RLOOTrainer

    trainer = online_trainer(RLOOTrainer, RLOOConfig, tiny_causal, tmp_path)
    assert trainer.beta == 0.05 and not trainer.normalize_advantages  # trl's defaults
    out = trainer._generate_and_score_completions(ONLINE_PROMPTS)
    mask = out["completion_mask"]
    old = per_token_logprobs(trainer.model, out)
    ref = per_token_logprobs(trainer.ref_model, out)
    assert torch.allclose(out["old_logps"], reply_logprobs_from_tokens(old, mask), atol=1e-5)
    scores = torch.tensor([NAN if r is None else r for r in ONLINE_REWARDS])
    advantages = rloo_advantages(rloo_rewards(scores, old, ref, mask, trainer.beta), k=4)
    assert torch.allclose(out["advantages"], advantages, atol=1e-5)
    assert (rloo_advantages(scores, k=4) - advantages).abs().max() > 1e-3  # the KL penalty is really in there

    torch.manual_seed(3)
    out["old_logps"] = out["old_logps"] + 0.3 * torch.randn_like(out["old_logps"])
    trl_loss = trainer.compute_loss(trainer.model, out)
    logprobs = reply_logprobs_from_tokens(per_token_logprobs(trainer.model, out, grad=True), mask)
    ours, ratio = rloo_policy_loss(logprobs, out["old_logps"], out["advantages"])
    assert ((ratio - 1).abs() > 0.2).any()  # the clip acts on some replies
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)


def reply_logprobs_from_tokens(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), per_token, 0.0).sum(-1)
