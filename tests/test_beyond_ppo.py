"""Beyond PPO (issue 20): the DPO/IPO, RLOO, GRPO and best-of-N trainers and their command-line stages.

DPO at step 0 (policy == reference): loss log 2, accuracy 0; DPO raises the margin on a handful of pairs, on the tiny
T5 and on a random causal Llama through CausalPolicy (whose summed reply log-probs equal those of one full forward);
replies end with EOS as SFT trained them; RLOO and GRPO learn a synthetic reward in a few steps with k replies per
prompt in prompt-major order and no value head trained; best-of-N keeps the argmax and reports log N - (N-1)/N;
one CLI smoke test per command."""

import json
import math

import pytest
import torch
from conftest import run_cli

from rlhf_helpers.dpo import DPOConfig, DPOTrainer, pad_replies, reply_token_ids
from rlhf_helpers.online_math import best_of_n_kl
from rlhf_helpers.online_rl import GRPOTrainer, OnlineRLConfig, RLOOTrainer, online_defaults
from rlhf_helpers.ppo import load_policy_and_reference


@pytest.fixture(scope="module")
def artifacts_root(tmp_path_factory):
    """One private artifacts folder for this module (the CLI subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLHF_ARTIFACTS", str(folder))
        yield folder


@pytest.fixture(scope="module")
def sft_adapter(artifacts_root):
    """A quickly trained SFT adapter (2 epochs) on the tiny preset, saved where the stages look for it."""
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.sft import default_sft_dir, save_sft, sft_defaults, train_sft

    result = train_sft(sft_defaults("tiny", num_epochs=2), load_split("sft_train"), None, progress=False)
    return save_sft(result, default_sft_dir())


@pytest.fixture(scope="module")
def pairs(artifacts_root):
    from rlhf_helpers.data_prep import load_split

    return list(load_split("pref_train").select(range(64)))


def tiny_model(adapter):
    from transformers import AutoTokenizer

    from rlhf_helpers.presets import model_path

    return load_policy_and_reference(adapter, model_path("tiny")), AutoTokenizer.from_pretrained(adapter)


def hello_reward(prompts, replies):
    """Synthetic reward: 1 when the reply opens with "Hello" (the SFT policy mixes Hi/Hello), as in test_ppo."""
    return [1.0 if r.startswith("Hello") else 0.0 for r in replies]


# --------------------------------------------------------------------------- DPO


def test_replies_end_with_exactly_one_eos_as_sft_trained_them(sft_adapter):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_adapter)
    eos = tok.eos_token_id
    labels = tok(text_target=["Hello there, thanks."])["input_ids"][0]  # what SFT trained on (T5 appends EOS)
    assert reply_token_ids(tok, ["Hello there, thanks."], 64, causal=False)[0] == labels
    long = reply_token_ids(tok, ["word " * 100], 10, causal=False)[0]
    assert len(long) == 10 and long[-1] == eos and eos not in long[:-1]
    causal = reply_token_ids(tok, ["Hello."], 64, causal=True)[0]
    assert causal[-1] == eos and causal.count(eos) == 1
    ids, mask = pad_replies([[5, 1], [5, 6, 7, 1]], 0, "cpu")
    assert ids.tolist() == [[5, 1, 0, 0], [5, 6, 7, 1]] and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_dpo_at_step_zero_has_loss_log_2_and_accuracy_0(sft_adapter, pairs):
    model, tok = tiny_model(sft_adapter)
    trainer = DPOTrainer(model, tok, pairs, DPOConfig(batch_size=8, learning_rate=1e-3))
    record = trainer.step()
    assert record["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert record["rewards/accuracies"] == 0.0 and record["rewards/margins"] == 0.0
    assert record["rewards/chosen"] == 0.0 and record["rewards/rejected"] == 0.0
    assert record["logps/chosen"] < 0 and record["logps/rejected"] < 0
    ipo = DPOTrainer(*tiny_model(sft_adapter), pairs, DPOConfig(batch_size=8, loss_type="ipo", beta=0.1))
    assert ipo.step()["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-6)  # (h - 1/(2 beta))^2 at h = 0


def test_dpo_raises_the_chosen_vs_rejected_margin_on_a_handful_of_pairs(sft_adapter, pairs):
    model, tok = tiny_model(sft_adapter)
    few = pairs[:4]
    trainer = DPOTrainer(model, tok, few, DPOConfig(batch_size=4, learning_rate=3e-3, beta=0.1))
    history = [trainer.step() for _ in range(8)]
    with torch.no_grad():
        lp = trainer.sequence_logprobs(few)
    margins = (lp["chosen"] - lp["ref_chosen"]) - (lp["rejected"] - lp["ref_rejected"])
    assert (margins > 0).all(), margins
    assert history[-1]["rewards/margins"] > history[0]["rewards/margins"] + 0.2, [h["rewards/margins"] for h in history]
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    # the reference never moved: its log-probs are still the SFT adapter's
    assert torch.allclose(lp["ref_chosen"], trainer.sequence_logprobs(few)["ref_chosen"].detach())


def test_dpo_is_deterministic_from_the_seed(sft_adapter, pairs):
    runs = []
    for _ in range(2):
        trainer = DPOTrainer(*tiny_model(sft_adapter), pairs, DPOConfig(batch_size=8, learning_rate=1e-3, seed=3))
        runs.append([trainer.step()["loss"] for _ in range(3)])
    assert runs[0] == runs[1]
    assert trainer.pairs_for_step(0) != DPOTrainer(*tiny_model(sft_adapter), pairs, DPOConfig(seed=4)).pairs_for_step(0)


def test_dpo_kl_to_sft_is_zero_before_training_and_positive_after(sft_adapter, pairs):
    model, tok = tiny_model(sft_adapter)
    trainer = DPOTrainer(model, tok, pairs, DPOConfig(batch_size=8, learning_rate=3e-3, kl_max_new_tokens=16))
    prompts = [p["prompt"] for p in pairs[:8]]
    assert trainer.kl_to_reference(prompts) == pytest.approx(0.0, abs=1e-6)
    for _ in range(3):
        trainer.step()
    assert trainer.kl_to_reference(prompts) > 0.0


def random_causal_with_reference(tokenizer):
    from peft import LoraConfig, get_peft_model
    from test_causal_policy import random_llama

    model = random_llama(len(tokenizer))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora, adapter_name="policy")
    model.add_adapter("reference", lora)
    reference = {k.replace("policy", "reference"): v for k, v in model.state_dict().items() if "lora_" in k}
    model.load_state_dict(reference, strict=False)  # reference = policy's initial weights, as an SFT copy would be
    model.set_adapter("policy")
    return model


def test_dpo_on_a_random_causal_llama_through_causal_policy():
    """Decoder-only: left-padded prompts, replies after the cue with their EOS. The summed reply log-probs equal those
    of one plain forward over prompt + reply (dpo_math.causal_reply_logprobs); step 0: loss log 2; the margin rises."""
    from transformers import AutoTokenizer

    from rlhf_helpers.dpo_math import causal_reply_logprobs
    from rlhf_helpers.policy import CausalPolicy
    from rlhf_helpers.tiny_model import tiny_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    model = random_causal_with_reference(tok)
    few = [
        {"prompt": "Reply to the customer. Message: where is my lamp?", "chosen": "It ships today.",
         "rejected": "We value you. Please check our help pages."},
        {"prompt": "Hi. Where?", "chosen": "Hello, here.", "rejected": "Customer satisfaction is important to us."},
    ]
    trainer = DPOTrainer(model, tok, few, DPOConfig(batch_size=2, learning_rate=1e-2, max_target_length=32), 64)
    assert isinstance(trainer.policy, CausalPolicy)
    with torch.no_grad():
        lp = trainer.sequence_logprobs(few)
        policy = trainer.policy
        for i, pair in enumerate(few):  # each row alone, no padding: one full forward over prompt + reply
            prompt_ids = policy.tokenize([pair["prompt"]], "cpu").input_ids
            reply = torch.tensor([reply_token_ids(tok, [pair["chosen"]], 32, causal=True)[0]])
            ids = torch.cat([prompt_ids, reply], 1)
            mask = torch.cat([torch.zeros_like(prompt_ids), torch.ones_like(reply)], 1)
            full = causal_reply_logprobs(model(input_ids=ids).logits, ids, mask)
            assert torch.allclose(lp["chosen"][i], full[0], atol=1e-4)
    first = trainer.step()
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["rewards/accuracies"] == 0.0
    history = [trainer.step() for _ in range(6)]
    assert history[-1]["rewards/margins"] > 0.1 and history[-1]["loss"] < math.log(2), history[-1]


# --------------------------------------------------------------------------- RLOO, GRPO


def make_online(cls, adapter, reward_fn, **cfg):
    from rlhf_helpers.data_prep import load_split

    model, tok = tiny_model(adapter)
    prompts = list(load_split("sft_train")["prompt"][:200])
    defaults = dict(batch_size=16, mini_batch_size=8, ppo_epochs=2, max_new_tokens=24, checkpoint_every=0, k=4)
    return cls(model, tok, reward_fn, prompts, OnlineRLConfig(**{**defaults, **cfg}))


def test_online_prompts_are_prompt_major_and_no_value_head_is_trained(sft_adapter):
    trainer = make_online(GRPOTrainer, sft_adapter, hello_reward)
    prompts = trainer._prompts_for_step(0)
    assert len(prompts) == 16 and all(len(set(prompts[i : i + 4])) == 1 for i in range(0, 16, 4))
    value_params = {id(p) for p in trainer.value_head.parameters()}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not value_params & optimised and optimised
    ro = trainer.rollout(prompts)
    # reference = SFT adapter: KL 0 at the start (to float rounding: sampling loop vs teacher-forced pass)
    torch.testing.assert_close(ro["logprobs"], ro["ref_logprobs"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="multiple of k"):
        make_online(RLOOTrainer, sft_adapter, hello_reward, batch_size=10, k=4)
    assert online_defaults("rloo", k=2).batch_size == 16  # the prompts per step (8) stay; k replies to each


@pytest.mark.parametrize("cls", [RLOOTrainer, GRPOTrainer])
def test_critic_free_methods_learn_a_synthetic_reward(sft_adapter, cls):
    trainer = make_online(cls, sft_adapter, hello_reward, learning_rate=3e-3, beta=0.01)
    history = [trainer.step() for _ in range(10)]
    start = history[0]["reward"]  # step 0's replies are sampled before any update: the SFT policy's reward
    end = sum(h["reward"] for h in history[-3:]) / 3
    assert end >= start + 0.3 and end >= 0.8, [round(h["reward"], 2) for h in history]
    assert abs(history[0]["kl"]) < 1e-3 and all(math.isfinite(h["kl"]) and math.isfinite(h["loss"]) for h in history)


# --------------------------------------------------------------------------- best-of-N


def test_best_of_n_keeps_the_argmax_and_reports_its_kl(sft_adapter):
    from rlhf_helpers.best_of_n import best_of_n

    model, tok = tiny_model(sft_adapter)
    model.set_adapter("reference")
    prompts = ["Reply to the customer. Message: where is my order?", "Reply to the customer. Message: refund please"]
    result = best_of_n(model, tok, lambda p, r: [float(len(x)) for x in r], prompts, n=4, max_new_tokens=24,
                       missing_eos_penalty=0.0, seed=0)
    assert result.kl == pytest.approx(math.log(4) - 3 / 4) == pytest.approx(best_of_n_kl(4))
    for p in range(2):
        scores = result.all_scores[p]
        assert len(scores) == 4 and result.scores[p] == max(scores)
        assert result.index[p] == scores.index(max(scores))  # ties: the first
        assert result.replies[p] == result.all_replies[p][result.index[p]]
        assert result.scores[p] == float(len(result.replies[p]))
    again = best_of_n(model, tok, lambda p, r: [float(len(x)) for x in r], prompts, n=4, max_new_tokens=24,
                      missing_eos_penalty=0.0, seed=0)
    assert again.all_replies == result.all_replies  # deterministic from the seed


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def stage_artifacts(artifacts_root, sft_adapter):
    """PPO's prerequisites in the module's artifacts folder: the SFT adapter above and a quickly trained reward
    model (1 epoch on 200 pairs), so the stages do not train their defaults."""
    from rlhf_helpers.reward import default_reward_dir, reward_defaults, run_reward_stage

    run_reward_stage(reward_defaults("tiny", num_epochs=1, max_train_pairs=200), progress=False)  # -> default dir
    assert (default_reward_dir() / "reward_config.json").exists()  # where the stages look: they must not retrain it
    return artifacts_root


@pytest.mark.parametrize(
    "command, extra",
    [("dpo", ["--steps", "2"]), ("rloo", ["--steps", "2", "--k", "2"]), ("grpo", ["--steps", "2", "--k", "2"]),
     ("best-of-n", ["--n", "2"])],
)
def test_cli_smoke(stage_artifacts, tmp_path, command, extra):
    out = tmp_path / command
    result = run_cli(command, "--preset", "tiny", "--out", str(out), "--seed", "1", "--quiet", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["win_rate_vs_sft"] <= 1.0 and m["n_eval"] > 0
    assert math.isfinite(m["kl_to_sft"]) and m["train_seconds"] >= 0 and m["peak_memory_mb"] > 0
    if command != "best-of-n":
        assert m["steps"] == 2 and m["config"]["seed"] == 1
    else:
        assert m["kl_to_sft"] == pytest.approx(best_of_n_kl(2))
    assert "win rate vs SFT" in result.stdout


def test_cli_bad_input_exits_2(artifacts_root, tmp_path):
    for args in (["rloo", "--k", "0"], ["dpo", "--steps", "-1"], ["best-of-n", "--n", "0"], ["grpo", "--preset", "x"]):
        result = run_cli(*args, "--out", str(tmp_path / "o"), "--quiet")
        assert result.returncode == 2, (args, result.stderr[-2000:])
