"""Reward models on a frozen sentence encoder: a Bradley–Terry head on a few features, chosen by cross-validation.

Why not fine-tune? A real preference set is small and noisy: 425 human comparisons of CNN/DM summaries leave
~300 training pairs about ~30 articles, with each summary repeated in up to 12 pairs. Fine-tuning all-MiniLM-L6-v2
(22M parameters) on them memorises them (training loss 0.69 -> 0.3) and scores 0.58-0.61 on held-out articles,
below "the longer summary wins" (0.64-0.71 on the same folds; benchmarks/README.md). A linear head on *frozen*
mean-pooled embeddings has a few parameters, trains in seconds and cannot memorise a summary.

Features of a (prompt x, reply y) pair, from the encoder's L2-normalised embeddings e_x, e_y:

* ``cos_length``:  [cos(e_x, e_y), log(1 + words in y)] -- is the reply about (and faithful to) its prompt, and
  how long is it (labellers of summaries prefer longer ones; a model blind to length misses a real preference);
* ``cos_length_reply``:  those two and e_y (384 more): what the reply says, whatever the prompt;
* ``cos_length_product``:  those two and e_x * e_y (element-wise): which of the prompt's directions the reply covers.

The reward r(x, y) = w . standardise(features(x, y)) is fitted by L2-regularised logistic regression on the
differences of chosen and rejected features (the Bradley–Terry likelihood: P(c > r) = sigmoid(r_c - r_r)),
symmetrised so no side is favoured. Which feature set and which L2 strength? The data decides, by grouped
cross-validation on the *training* pairs (:func:`select_head`: folds by prompt, so pairs about one article
never sit on both sides), with the one-standard-error rule: the simplest candidate whose held-out
log-likelihood is within one standard error of the best one's. Why the rule? ~30 articles make the estimates
noisy, and measured on CNN/DM (5 outer folds) picking the plain best chose 384-feature heads on noise and lost
0.10 of accuracy on one fold. The
final model is an ensemble of :data:`N_MODELS` heads, each fitted on a bootstrap resample of the prompts (Coste
et al. 2023: ensembles are harder to over-optimise). The encoder reads a text's first 256 word pieces: a long
article is judged by its start.

The same machinery, with ``cos_length`` fixed, is the domain-free gold judge of :mod:`rlhf_helpers.gold_judge`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Heads in an ensemble (bootstrap resamples of the prompts).
N_MODELS = 5
#: The candidates :func:`select_head` compares: (feature set, inverse L2 strength C on standardised features).
#: Two features need only a weak penalty (there to keep the fit finite when one feature separates the pairs);
#: 386 need a strong one, and which is right depends on how many pairs there are.
CANDIDATES: tuple[tuple[str, float], ...] = (
    ("cos_length", 1.0),
    ("cos_length_reply", 0.003),
    ("cos_length_reply", 0.03),
    ("cos_length_product", 0.003),
    ("cos_length_product", 0.03),
)
FEATURE_SETS = ("cos_length", "cos_length_reply", "cos_length_product")
#: Fewer prompts than this and there is nothing to cross-validate on: the two-feature head is used.
MIN_PROMPTS_FOR_SELECTION = 6
_WORDS = re.compile(r"\w+")


def features(
    prompts: Sequence[str], responses: Sequence[str], feature_set: str = "cos_length", encoder: str | None = None
) -> np.ndarray:
    """The (n x d) feature matrix of (prompt, reply) pairs (module docstring); ``encoder`` a sentence-encoder
    path or name (default: the packaged all-MiniLM-L6-v2)."""
    from rlhf_helpers.embeddings import encode

    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise ValueError(f"need one prompt per response, got {len(prompts)} prompts and {len(responses)} responses")
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose one of {', '.join(FEATURE_SETS)}")
    e_x, e_y = encode(prompts, path=encoder), encode(responses, path=encoder)
    cos = (e_x * e_y).sum(axis=1)
    length = np.log1p([len(_WORDS.findall(r)) for r in responses])
    columns = [cos[:, None], length[:, None]]
    if feature_set == "cos_length_reply":
        columns.append(e_y)
    elif feature_set == "cos_length_product":
        columns.append(e_x * e_y)
    return np.hstack(columns).astype(np.float64)


@dataclass
class FeatureRewardModel:
    """An ensemble of linear Bradley–Terry heads on frozen-encoder features; ``score`` returns raw rewards."""

    mean: np.ndarray  # feature standardisation
    std: np.ndarray
    weights: np.ndarray  # (N_MODELS, n_features)
    scale: float  # spread (std) of the ensemble reward on the training replies
    digest: str  # what it was trained on (data, seed, version)
    n_train: int
    feature_set: str = "cos_length"
    l2_c: float = 1.0
    encoder: str | None = None  # None: the packaged all-MiniLM-L6-v2
    selection: list[dict] = field(default_factory=list)  # select_head's table, when it chose

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Every head's reward, (N_MODELS x n): their spread says how sure the ensemble is."""
        x = (features(prompts, responses, self.feature_set, self.encoder) - self.mean) / self.std
        return self.weights @ x.T

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None) -> list[float]:
        """The ensemble's mean reward per (prompt, reply): the interface of the reward models (``batch_size`` is
        accepted for that interface; the encoder batches by itself)."""
        if not len(responses):
            return []
        return self.rewards(prompts, responses).mean(axis=0).tolist()

    def to_json(self) -> dict:
        """Everything needed to score again, as plain JSON types (the model is a few hundred numbers)."""
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weights": self.weights.tolist(),
            "scale": self.scale,
            "digest": self.digest,
            "n_train": self.n_train,
            "feature_set": self.feature_set,
            "l2_c": self.l2_c,
            "encoder": self.encoder,
            "selection": self.selection,
        }

    @classmethod
    def from_json(cls, d: dict) -> FeatureRewardModel:
        """The inverse of :meth:`to_json`; files of the gold judge written before the feature sets existed load as
        the two-feature head they are."""
        return cls(
            np.asarray(d["mean"]),
            np.asarray(d["std"]),
            np.asarray(d["weights"]),
            d["scale"],
            d["digest"],
            d["n_train"],
            d.get("feature_set", "cos_length"),
            d.get("l2_c", 1.0),
            d.get("encoder"),
            d.get("selection", []),
        )


def fit_bradley_terry(diff: np.ndarray, l2_c: float, seed: int = 0) -> np.ndarray:
    """Weights w maximising sum_d log sigmoid(w . d) - ||w||^2 / (4C) over the rows d of ``diff`` (chosen minus
    rejected features): sklearn's logistic regression without intercept on the symmetrised rows (d -> 1, -d -> 0),
    which minimises ||w||^2 / 2 + C * sum over both copies of the log-loss, i.e. each pair's loss counted twice."""
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([diff, -diff])
    y = np.r_[np.ones(len(diff)), np.zeros(len(diff))]
    model = LogisticRegression(C=l2_c, fit_intercept=False, max_iter=5000, random_state=seed)
    model.fit(x, y)
    return model.coef_[0]


def _standardised_diff(x_c: np.ndarray, x_r: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """chosen - rejected features standardised with the mean and std of ``rows`` only (the training rows of a fold:
    statistics of held-out rows would leak into the fit), and that mean and std."""
    both = np.vstack([x_c[rows], x_r[rows]])
    mean, std = both.mean(axis=0), both.std(axis=0) + 1e-6
    return (x_c - mean) / std - (x_r - mean) / std, mean, std


def _prompt_groups(prompts: Sequence[str]) -> tuple[list[str], dict[str, list[int]]]:
    groups = sorted(set(prompts))
    index: dict[str, list[int]] = {p: [] for p in groups}
    for i, p in enumerate(prompts):
        index[p].append(i)
    return groups, index


def select_head(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    candidates: Sequence[tuple[str, float]] = CANDIDATES,
    folds: int = 5,
    seed: int = 0,
    encoder: str | None = None,
) -> list[dict]:
    """Grouped k-fold cross-validation of every (feature set, C) candidate on the training pairs.

    Returns one row per candidate, in the order given (simplest first): held-out ``log_likelihood`` (mean log
    P(chosen wins) over the folds' pairs), its cluster-robust standard error ``log_likelihood_se`` (clustered by
    prompt: pairs about one prompt are not independent) and ``accuracy``, and ``chosen`` True on the winner: the
    first candidate whose log-likelihood is within one standard error of the best's. Folds split the prompts,
    never a prompt's pairs."""
    prompts, chosen, rejected = list(prompts), list(chosen), list(rejected)
    groups, index = _prompt_groups(prompts)
    if len(groups) < 2:
        raise ValueError(f"cross-validation needs pairs about at least 2 prompts, got {len(groups)}")
    order = np.random.default_rng(seed).permutation(len(groups))
    k = min(folds, len(groups))
    fold_of = {groups[g]: j % k for j, g in enumerate(order)}
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows = []
    for feature_set, l2_c in candidates:
        if feature_set not in cache:
            cache[feature_set] = (
                features(prompts, chosen, feature_set, encoder),
                features(prompts, rejected, feature_set, encoder),
            )
        x_c, x_r = cache[feature_set]
        pair_loglik, pair_hit = np.zeros(len(prompts)), np.zeros(len(prompts))
        for fold in range(k):
            test = np.array([fold_of[p] == fold for p in prompts])
            diff, _, _ = _standardised_diff(x_c, x_r, ~test)
            w = fit_bradley_terry(diff[~test], l2_c, seed)
            margin = diff[test] @ w
            pair_loglik[test] = -np.logaddexp(0.0, -margin)
            pair_hit[test] = margin > 0
        mean = float(pair_loglik.mean())
        rows.append(
            {
                "feature_set": feature_set,
                "l2_c": l2_c,
                "log_likelihood": mean,
                "log_likelihood_se": clustered_standard_error(pair_loglik, [index[g] for g in groups]),
                "accuracy": float(pair_hit.mean()),
                "n": len(prompts),
            }
        )
    best = max(rows, key=lambda row: row["log_likelihood"])
    pick = next(
        i for i, row in enumerate(rows) if row["log_likelihood"] >= best["log_likelihood"] - best["log_likelihood_se"]
    )
    for i, row in enumerate(rows):
        row["chosen"] = i == pick
    return rows


def clustered_standard_error(values: np.ndarray, clusters: Sequence[Sequence[int]]) -> float:
    """Standard error of ``values.mean()`` when the rows of one cluster are not independent (cluster-robust, with
    the small-sample factor G / (G - 1)): sqrt(G / (G - 1) * sum_g (S_g - n_g * m)^2) / N, where S_g is the sum
    of cluster g's values, n_g its size, m the overall mean and N the number of values."""
    values = np.asarray(values, dtype=float)
    m, g = values.mean(), len(clusters)
    deviations = np.array([values[list(c)].sum() - len(c) * m for c in clusters])
    return float(np.sqrt(g / (g - 1) * (deviations**2).sum()) / len(values))


def train_feature_reward_model(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    seed: int = 0,
    digest: str = "",
    feature_set: str | None = None,
    l2_c: float = 1.0,
    encoder: str | None = None,
    n_models: int = N_MODELS,
) -> FeatureRewardModel:
    """Fit the ensemble on (prompt, chosen, rejected) pairs; ``feature_set=None`` lets :func:`select_head` choose
    the feature set and C (given a ``feature_set``, ``l2_c`` is used as is). Each head is fitted on a bootstrap
    resample of the prompts (pairs about one prompt stay together), the first on all of them."""
    prompts, chosen, rejected = list(prompts), list(chosen), list(rejected)
    if not prompts:
        raise ValueError("a feature reward model needs preference pairs to train on")
    groups, index = _prompt_groups(prompts)
    selection: list[dict] = []
    if feature_set is None:
        if len(groups) >= MIN_PROMPTS_FOR_SELECTION:
            selection = select_head(prompts, chosen, rejected, seed=seed, encoder=encoder)
            pick = next(row for row in selection if row["chosen"])
            feature_set, l2_c = pick["feature_set"], pick["l2_c"]
        else:
            feature_set, l2_c = CANDIDATES[0]
    x_c = features(prompts, chosen, feature_set, encoder)
    x_r = features(prompts, rejected, feature_set, encoder)
    diff, mean, std = _standardised_diff(x_c, x_r, np.arange(len(prompts)))
    rng = np.random.default_rng(seed)
    heads = []
    for k in range(n_models):
        picks = rng.choice(len(groups), len(groups), replace=True) if k else np.arange(len(groups))
        rows = [i for g in picks for i in index[groups[g]]]
        heads.append(fit_bradley_terry(diff[rows], l2_c, seed + k))
    weights = np.stack(heads)
    train_rewards = (weights @ ((np.vstack([x_c, x_r]) - mean) / std).T).mean(axis=0)
    scale = float(train_rewards.std()) or 1.0
    return FeatureRewardModel(mean, std, weights, scale, digest, len(prompts), feature_set, l2_c, encoder, selection)
