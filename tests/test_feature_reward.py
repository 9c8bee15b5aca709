"""The frozen-encoder reward model (rlhf_helpers/feature_reward.py): the Bradley–Terry fit against a hand
solution, the one-standard-error selection, save/reload through the reward interface, and the defaults that
make it the reward model of the course on your own data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf_helpers import feature_reward


def test_bradley_terry_fit_solves_the_penalised_likelihood_by_hand():
    """One feature, one pair with difference d = 1, C = 1: sklearn minimises w^2/2 + C * 2 * log(1 + e^-w) over the
    symmetrised rows (d -> 1, -d -> 0), so the optimum solves w = 2 (1 - sigmoid(w)) = 2 / (1 + e^w)."""
    w = feature_reward.fit_bradley_terry(np.array([[1.0]]), l2_c=1.0)[0]
    lo, hi = 0.0, 2.0  # bisection on g(w) = w - 2 / (1 + e^w), increasing in w
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid - 2 / (1 + np.exp(mid)) < 0 else (lo, mid)
    assert w == pytest.approx(lo, abs=1e-4)  # 0.7388
    # the fit is symmetric: the same pair stated the other way round flips the weight
    assert feature_reward.fit_bradley_terry(np.array([[-1.0]]), l2_c=1.0)[0] == pytest.approx(-w, abs=1e-6)


def test_clustered_standard_error_by_hand():
    """Two clusters of two: m = 2.5, S - n m = -2 and +2, so sqrt(2 / 1 * 8) / 4 = 1; one row per cluster gives the
    usual standard error of a mean, std(ddof=1) / sqrt(n)."""
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert feature_reward.clustered_standard_error(values, [[0, 1], [2, 3]]) == pytest.approx(1.0)
    singles = feature_reward.clustered_standard_error(values, [[0], [1], [2], [3]])
    assert singles == pytest.approx(values.std(ddof=1) / 2)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        feature_reward.select_head(["p"] * 3, ["a b"] * 3, ["a"] * 3)


def test_gold_judge_is_the_two_feature_head_fitted_on_every_gold_prompt(monkeypatch):
    """The gold judge reuses this module: its first head is the penalised Bradley-Terry fit (C = gold_judge.L2_C)
    of the standardised two-feature differences of every pair, as before the refactor."""
    from rlhf_helpers import gold_judge

    prompts, chosen, rejected = _length_pairs(8)

    def features(prompts, responses, feature_set="cos_length", encoder=None):
        return np.array([[float(r.split()[0].split("=")[1]), np.log1p(len(r.split()))] for r in responses])

    monkeypatch.setattr(feature_reward, "features", features)
    model = gold_judge.train_gold_model(prompts, chosen, rejected, seed=3)
    x_c, x_r = features(prompts, chosen), features(prompts, rejected)
    both = np.vstack([x_c, x_r])
    diff = (x_c - both.mean(axis=0)) / (both.std(axis=0) + 1e-6) - (x_r - both.mean(axis=0)) / (both.std(axis=0) + 1e-6)
    assert np.allclose(model.weights[0], feature_reward.fit_bradley_terry(diff, gold_judge.L2_C), atol=1e-8)
    assert model.weights.shape == (gold_judge.N_MODELS, 2) and model.feature_set == "cos_length" and model.l2_c == 1.0


@pytest.fixture
def fake_features(monkeypatch):
    """features() without MiniLM: [cos, log length] from the text ("cos=0.3 ..."), plus 384 noise columns for the
    bigger feature sets. Preferences below depend on length only, so the noise columns can only overfit."""

    def features(prompts, responses, feature_set="cos_length", encoder=None):
        base = np.array([[float(r.split()[0].split("=")[1]), np.log1p(len(r.split()))] for r in responses])
        if feature_set == "cos_length":
            return base
        noise = [np.random.default_rng(sum(map(ord, p + r))).normal(size=384) for p, r in zip(prompts, responses)]
        return np.hstack([base, np.array(noise)])

    monkeypatch.setattr(feature_reward, "features", features)


def _length_pairs(n_prompts: int, per_prompt: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected = [], [], []
    for p in range(n_prompts):
        for _ in range(per_prompt):
            short, long_ = sorted(rng.choice(np.arange(2, 30), 2, replace=False))
            prompts.append(f"prompt {p}")
            chosen.append(f"cos={rng.uniform(0, 1):.2f} " + "w " * long_)
            rejected.append(f"cos={rng.uniform(0, 1):.2f} " + "w " * short)
    return prompts, chosen, rejected


def test_selection_picks_the_simplest_candidate_within_one_standard_error(fake_features):
    prompts, chosen, rejected = _length_pairs(20)
    rows = feature_reward.select_head(prompts, chosen, rejected)
    assert [(r["feature_set"], r["l2_c"]) for r in rows] == list(feature_reward.CANDIDATES)
    assert sum(r["chosen"] for r in rows) == 1 and rows[0]["chosen"], rows  # length explains it: two features win
    best = max(rows, key=lambda r: r["log_likelihood"])
    assert rows[0]["log_likelihood"] >= best["log_likelihood"] - best["log_likelihood_se"]
    assert rows[0]["accuracy"] > 0.9 and all(r["n"] == len(prompts) for r in rows)


def test_selection_rule_prefers_a_clearly_better_complex_candidate(monkeypatch):
    """The rule picks a complex candidate when its log-likelihood beats the simplest by more than one s.e."""
    prompts, chosen, rejected = _length_pairs(12)

    def features(prompts, responses, feature_set="cos_length", encoder=None):  # only the big set sees length
        length = np.log1p([len(r.split()) for r in responses])[:, None]
        cos = np.array([[float(r.split()[0].split("=")[1])] for r in responses])
        return np.hstack([cos, cos * 0]) if feature_set == "cos_length" else np.hstack([cos, length])

    monkeypatch.setattr(feature_reward, "features", features)
    rows = feature_reward.select_head(
        prompts, chosen, rejected, candidates=[("cos_length", 1.0), ("cos_length_reply", 1.0)]
    )
    assert rows[1]["chosen"] and not rows[0]["chosen"], rows
    model = feature_reward.train_feature_reward_model(prompts, chosen, rejected)
    assert model.feature_set != "cos_length" and model.selection and len(model.weights) == feature_reward.N_MODELS


def test_few_prompts_skip_the_selection(fake_features):
    prompts, chosen, rejected = _length_pairs(feature_reward.MIN_PROMPTS_FOR_SELECTION - 1)
    model = feature_reward.train_feature_reward_model(prompts, chosen, rejected)
    assert (model.feature_set, model.l2_c) == feature_reward.CANDIDATES[0] and model.selection == []
    again = feature_reward.FeatureRewardModel.from_json(json.loads(json.dumps(model.to_json())))
    assert np.allclose(again.score(prompts, chosen), model.score(prompts, chosen))
    assert np.mean(np.array(model.score(prompts, chosen)) > np.array(model.score(prompts, rejected))) > 0.9


def test_frozen_encoder_reward_model_trains_saves_and_reloads(tmp_path):
    """The real thing on MiniLM: reward_defaults('minilm') is frozen, trains in seconds through the reward
    interface, reloads to the same scores, and a fine-tune stays one flag away."""
    from datasets import Dataset

    from rlhf_helpers.reward import FrozenEncoderRewardModel, load_reward_model, reward_defaults, train_reward_model

    cfg = reward_defaults("minilm")
    assert cfg.frozen_backbone and cfg.max_train_pairs is None
    tuned = reward_defaults("minilm", frozen_backbone=False)
    assert not tuned.frozen_backbone and not tuned.use_lora and tuned.head_learning_rate == 1e-3
    assert not reward_defaults("tiny").frozen_backbone
    topics = [
        "a tram strike in Zürich",
        "a flood in Kraków",
        "a robot café in Ōsaka",
        "a marathon in São Paulo",
        "a volcano near Reykjavík",
        "an ice storm in Montréal",
        "a heat wave in Málaga",
        "peace talks in Genève",
    ]
    rows = []
    for t in topics:
        article = f"News: {t}. " * 20
        rows.append({"prompt": article, "chosen": f"The report covers {t} in detail.", "rejected": "Cats are nice."})
        rows.append({"prompt": article, "chosen": f"{t} made the news.", "rejected": "The weather was nice today."})
    result = train_reward_model(cfg, Dataset.from_list(rows))
    rm = result.reward_model
    assert isinstance(rm, FrozenEncoderRewardModel) and rm.model is None
    assert result.log_history == rm.head.selection and sum(r["chosen"] for r in rm.head.selection) == 1
    prompts = [r["prompt"] for r in rows]
    good, bad = rm.score(prompts, [r["chosen"] for r in rows]), rm.score(prompts, [r["rejected"] for r in rows])
    assert np.mean(np.array(good) > np.array(bad)) == 1.0
    again = load_reward_model(rm.save(tmp_path / "rm"))
    assert isinstance(again, FrozenEncoderRewardModel) and again.cfg == cfg
    assert np.allclose(again.score(prompts, [r["chosen"] for r in rows]), good)


def test_the_reward_backbone_follows_the_data_folder(tmp_path, monkeypatch):
    from rlhf_helpers.reward import default_reward_backbone

    monkeypatch.delenv("RLHF_DATA_DIR", raising=False)
    assert default_reward_backbone("tiny") == "tiny" and default_reward_backbone("tiny-causal") == "tiny-causal"
    monkeypatch.setenv("RLHF_DATA_DIR", str(tmp_path))
    assert default_reward_backbone("tiny") == "minilm"


def test_ppos_prerequisites_train_the_reward_model_of_the_data_folder(tmp_path, monkeypatch):
    """``ppo``/``evaluate``/beyond-PPO run before any ``reward`` stage train notebook 03's reward model for the data
    folder: the frozen MiniLM head on your data, the preset's own on the course data."""
    import rlhf_helpers.reward as reward
    import rlhf_helpers.sft as sft
    from rlhf_helpers.ppo_stage import ensure_prerequisites

    monkeypatch.setenv("RLHF_ARTIFACTS", str(tmp_path / "artifacts"))
    trained = []
    monkeypatch.setattr(sft, "run_sft_stage", lambda cfg, progress=True: None)
    monkeypatch.setattr(reward, "run_reward_stage", lambda cfg, progress=True: trained.append(cfg.backbone))
    monkeypatch.delenv("RLHF_DATA_DIR", raising=False)
    ensure_prerequisites("tiny", progress=False)
    monkeypatch.setenv("RLHF_DATA_DIR", str(tmp_path / "my_data"))
    ensure_prerequisites("tiny", progress=False)
    assert trained == ["tiny", "minilm"]
