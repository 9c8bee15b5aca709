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
    on one batch (``compute_loss``, trl/trainer/dpo_trainer.py:1682), and the batch it read."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, make, _ = tiny_causal
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", **config)
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
