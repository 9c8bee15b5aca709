"""A domain-free gold judge for your own data: an independent reward model trained on held-out human labels.

Why not the rubric judge? :func:`rlhf_helpers.judger.gold_judge` scores the course's support replies
(facts, next step, concision, politeness): on news summaries or dialogue summaries it measures nothing.
What does every preference data set offer? Human labels. So on custom data the gold judge is learnt from
them, in the set-up of Gao et al. (2022, *Scaling laws for reward model overoptimization*): the
preference prompts are split in two (:func:`rlhf_helpers.data_prep.prepare_splits`, by prompt, so no
article sits on both sides); the proxy reward model that PPO optimises trains on one half
(``pref_train``), the gold model on the other (``pref_gold``). The gold judge is a Bradley-Terry head on
frozen all-MiniLM-L6-v2 sentence embeddings (pretrained on a billion sentence pairs;
:mod:`rlhf_helpers.feature_reward`). On custom data the proxy is one too (:func:`rlhf_helpers.reward.
default_reward_backbone`: a fine-tuned network learnt less than "longer wins" from a few hundred noisy labels), so
proxy and gold share the encoder and differ in their labels (as in Gao et al., whose gold and proxy are reward
models of one family): the gold verdict says whether the proxy's gains hold for labels it never saw, not for a
judge with other blind spots. It is an ensemble of :data:`N_MODELS` heads, each fitted on a bootstrap
resample of the gold prompts (Coste et al. 2023: ensembles are harder to over-optimise), and it is
measured against the human labels it never saw (the proxy's half and the validation pairs): agreement,
Cohen's kappa, both A/B orders (:func:`gold_judge_report`).

Features of a (prompt, reply) pair, x = [cos(e_x, e_y), log(1 + words in y)]: how close the reply's MiniLM
embedding is to the prompt's (is it about this prompt, does it say what the prompt says), and the reply's
length (labellers of summaries prefer longer ones: 66% of the CNN/DM pairs, and a gold judge that could not
see length would miss a real preference). Why only two? A real comparison set is small: the CNN/DM example
leaves 127 gold pairs about 12 articles, and a head on the full embeddings (770 features: the reply's
embedding, its product with the prompt's, the cosine, the length) fitted them and agreed with the unseen
human labels on 0.51 of pairs, where these two agree on 0.73 (and length alone on 0.66). We compared those
feature sets on the same held-out pairs the report below measures, so read its number as slightly
optimistic. MiniLM reads the first 256 word pieces of a text: a long article is judged by its start.

The reward r(x, y) = w . standardise(features) is fitted by L2-regularised logistic regression on the
differences of chosen and rejected features (the Bradley-Terry likelihood), symmetrised so no side is
favoured. As a judge criterion it returns sigmoid(r / s), s the spread of r on the training replies, so
it plugs into :class:`rlhf_helpers.judger.Judge` like any criterion (scores in [0, 1], ties, win rates).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlhf_helpers import feature_reward
from rlhf_helpers.config import artifacts_dir, course_seed
from rlhf_helpers.feature_reward import FeatureRewardModel, train_feature_reward_model
from rlhf_helpers.io_utils import atomic_write_json, read_json
from rlhf_helpers.judger import Comparison, Judge, JudgeConfig, agreement_report, position_consistency, sigmoid

#: Bump when the features or the fit change, so cached gold models are not reused.
GOLD_VERSION = 2
#: Heads in the ensemble (bootstrap resamples of the gold prompts).
N_MODELS = feature_reward.N_MODELS
#: Inverse L2 strength of the logistic regression (sklearn's ``C``) on standardised features: two features,
#: so a weak penalty (only there to keep the fit finite when one feature separates the pairs perfectly).
L2_C = 1.0
CRITERION = "gold_reward_model"


def features(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """The (n x 2) feature matrix of (prompt, reply) pairs: MiniLM cosine and log word count (module docstring)."""
    return feature_reward.features(prompts, responses, "cos_length")


#: The gold model is a :class:`rlhf_helpers.feature_reward.FeatureRewardModel` on the two features, C = L2_C.
GoldRewardModel = FeatureRewardModel


def train_gold_model(
    prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], seed: int = 0, digest: str = ""
) -> GoldRewardModel:
    """Fit the ensemble on (prompt, chosen, rejected) pairs; each head on a bootstrap resample of the prompts
    (pairs about one prompt stay together, so a head never sees half of an article's pairs)."""
    if not list(prompts):
        raise ValueError("the gold judge needs preference pairs to train on")
    return train_feature_reward_model(
        prompts, chosen, rejected, seed=seed, digest=digest, feature_set="cos_length", l2_c=L2_C, n_models=N_MODELS
    )


def gold_dir() -> Path:
    """``<artifacts>/gold_judge``: the cached gold models and their reports."""
    return artifacts_dir() / "gold_judge"


def _split_digest(ds, seed: int) -> str:
    h = hashlib.sha256(json.dumps({"v": GOLD_VERSION, "seed": seed, "n": N_MODELS, "C": L2_C}).encode())
    for p, c, r in zip(ds["prompt"], ds["chosen"], ds["rejected"], strict=True):
        h.update(f"{p}\0{c}\0{r}\0".encode())
    return h.hexdigest()[:16]


def load_or_train_gold_model(seed: int | None = None) -> GoldRewardModel:
    """The gold model of the current data folder: trained on the ``pref_gold`` split (written by notebook 01 /
    :func:`rlhf_helpers.data_prep.prepare_splits` on custom data) and cached under :func:`gold_dir`, keyed
    by the split's content and the seed (a few seconds to train: MiniLM embeddings and 5 linear fits)."""
    from rlhf_helpers.data_prep import load_split

    seed = course_seed() if seed is None else seed
    ds = load_split("pref_gold")
    digest = _split_digest(ds, seed)
    path = gold_dir() / f"gold_model_{digest}.json"
    if path.exists():
        return GoldRewardModel.from_json(read_json(path))
    model = train_gold_model(ds["prompt"], ds["chosen"], ds["rejected"], seed=seed, digest=digest)
    atomic_write_json(path, model.to_json())
    return model


class GoldRewardCriterion:
    """The gold model as a judge criterion: sigmoid(r / s), in [0, 1]."""

    __name__ = CRITERION

    def __init__(self, model: GoldRewardModel):
        self.model = model

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return sigmoid(np.asarray(self.model.score(prompts, responses), dtype=float) / self.model.scale)


class HeldOutGoldJudge(Judge):
    """A :class:`Judge` with one criterion, the held-out gold reward model. Its ``repr`` names the model's
    digest, so caches keyed by ``repr(judge)`` (notebook 06) never mix two gold models."""

    def __init__(self, model: GoldRewardModel, config: JudgeConfig | None = None):
        config = config or JudgeConfig(weights={CRITERION: 1.0})
        super().__init__(config, {CRITERION: GoldRewardCriterion(model)})
        self.model = model

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"HeldOutGoldJudge(model={self.model.digest}, trained on {self.model.n_train} pairs, "
            f"temperature={cfg.temperature}, tie_margin={cfg.tie_margin})"
        )


def heldout_gold_judge(seed: int | None = None) -> HeldOutGoldJudge:
    """The domain-free gold judge of the current data folder (see the module docstring)."""
    return HeldOutGoldJudge(load_or_train_gold_model(seed))


def compare(prompts: Sequence[str], replies_a: Sequence[str], replies_b: Sequence[str]) -> Comparison:
    """Judge pairs with the domain-free gold judge: scores, P(A better), verdicts 'A' / 'B' / 'tie'
    (the same call and result as :meth:`rlhf_helpers.judger.Judge.compare` of the rubric judge)."""
    return heldout_gold_judge().compare(prompts, replies_a, replies_b)


def _interval(hits: np.ndarray, seed: int, n_boot: int = 2000) -> list[float]:
    """95% percentile-bootstrap interval of a mean of 0/1 outcomes."""
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), (n_boot, len(hits)))].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def gold_judge_report(judge: Judge | None = None, seed: int | None = None) -> dict:
    """How well the gold judge agrees with the human labels it never saw: the proxy half (``pref_train``)
    and the validation pairs (``pref_val``). ``agreement`` (judge prefers the human's choice; a tie is a
    miss) with a 95% bootstrap interval, the same with every pair shown the other way round
    (``agreement_swapped``: a position bias would make them differ), Cohen's ``kappa`` in a seeded random
    order, the position-consistency check, and the length baseline ("longer wins") on the same pairs."""
    from rlhf_helpers.data_prep import load_split

    seed = course_seed() if seed is None else seed
    judge = judge or heldout_gold_judge(seed)
    held = [load_split("pref_train"), load_split("pref_val")]
    prompts = [p for ds in held for p in ds["prompt"]]
    chosen = [c for ds in held for c in ds["chosen"]]
    rejected = [r for ds in held for r in ds["rejected"]]
    report = agreement_report(judge, prompts, chosen, rejected, seed=seed)
    swapped = judge.compare(prompts, rejected, chosen)
    direct_hits = (judge.compare(prompts, chosen, rejected).verdict == "A").astype(float)
    position = position_consistency(judge, prompts, chosen, rejected)
    longer = np.array([len(c) > len(r) for c, r in zip(chosen, rejected, strict=True)], dtype=float)
    return {
        "n": report["n"],
        "n_prompts": len(set(prompts)),
        "n_train": getattr(getattr(judge, "model", None), "n_train", None),
        "agreement": report["agreement"],
        "agreement_ci": _interval(direct_hits, seed),
        "agreement_swapped": float((swapped.verdict == "B").mean()),
        "kappa": report["kappa"],
        "tie_rate": report["tie_rate"],
        "confusion": report["confusion"],
        "position_consistency": position["position_consistency"],
        "length_baseline": float(longer.mean()),
    }
