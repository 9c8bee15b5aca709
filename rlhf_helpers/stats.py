"""Small statistics shared by the stages: the percentile bootstrap of a mean over prompts (or pairs).

Its own module so that the reward stage (accuracy intervals) and the evaluation stage (win-rate intervals) use the
same interval without the reward model importing the whole evaluation stage."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rlhf_helpers.config import course_seed

#: Bootstrap replicates per interval: enough for stable 2.5% / 97.5% quantiles at course sizes.
N_BOOTSTRAP = 2000


def bootstrap_means(outcomes: Sequence[float], n_boot: int = N_BOOTSTRAP, seed: int | None = None) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the mean: resample the n prompts with replacement and
    average, w*_b = (1/n) sum_j o_{i_j} with i_1..i_n drawn uniformly from 1..n. Resampling *prompts*
    is the point: the prompts are the random sample, the policies are fixed. Seeded (default: the
    course seed), so the replicates and the interval built from them are reproducible."""
    x = np.asarray(outcomes, dtype=float)
    if x.ndim != 1:
        raise ValueError("outcomes must be one number per prompt")
    if len(x) == 0:
        return np.full(n_boot, math.nan)
    rng = np.random.default_rng(course_seed() if seed is None else seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(x))  # bounded memory for large n
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        means[start : start + size] = x[rng.integers(0, len(x), size=(size, len(x)))].mean(axis=1)
    return means


def bootstrap_ci(
    outcomes: Sequence[float], n_boot: int = N_BOOTSTRAP, level: float = 0.95, seed: int | None = None
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``outcomes`` (one number per prompt):
    the (1 - level)/2 and (1 + level)/2 quantiles of :func:`bootstrap_means`' replicates. No normal
    approximation, so it stays inside [0, 1] and is exact in the degenerate cases (all wins: [1, 1])."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    means = bootstrap_means(outcomes, n_boot, seed)
    if np.isnan(means).any():
        return (math.nan, math.nan)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def over_seeds(runs: dict[str, dict], keys) -> dict[str, dict[str, float]]:
    """Mean, min and max of each metric in ``keys`` over the runs (one per seed) that all record it: how the course
    reports a noisy RL result (never one lucky draw). ``runs`` maps a seed to that run's metrics."""
    import statistics

    return {
        key: {
            "mean": statistics.fmean(r[key] for r in runs.values()),
            "min": min(r[key] for r in runs.values()),
            "max": max(r[key] for r in runs.values()),
        }
        for key in keys
        if all(key in r for r in runs.values())
    }
