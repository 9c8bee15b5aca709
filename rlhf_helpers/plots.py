"""Small figures the notebooks show where a picture reads faster than a table. Each takes plain numbers (the
stage's metrics), returns the matplotlib figure and leaves saving to :func:`rlhf_helpers.report.save_figure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

CRITERIA = ("facts", "next_step", "concise", "polite")


def grouped_bars(
    values: Mapping[str, Mapping[str, float]], title: str = "", ylabel: str = "", figsize=(6.5, 3), fmt: str = "%.2f"
):
    """One group of bars per key of the inner mappings, one colour per outer key (e.g. before/after SFT)."""
    import matplotlib.pyplot as plt
    import numpy as np

    series = list(values)
    groups = list(next(iter(values.values())))
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=figsize)
    for i, name in enumerate(series):
        heights = [values[name][g] for g in groups]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
        ax.bar_label(bars, fmt=fmt, fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.set(title=title, ylabel=ylabel)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sft_metrics(
    metrics: Mapping[str, float], names: Sequence[str] = ("rouge1", "rouge2", "rougeL", "bleu", "meteor")
):
    """Notebook 02: each text metric of the held-out replies before and after SFT."""
    values = {"before SFT": {n: metrics[f"{n}_before"] for n in names}, "after SFT": {n: metrics[n] for n in names}}
    return grouped_bars(values, "held-out replies against the references", "score")


def plot_criterion_accuracy(metrics: Mapping[str, float], criteria: Sequence[str] = CRITERIA):
    """Notebook 03: held-out reward-model accuracy on the pairs that differ on each criterion, next to the
    overall accuracy and the "longer wins" baseline."""
    import matplotlib.pyplot as plt

    rows = {"all pairs": metrics["accuracy"], "longer wins": metrics["length_baseline_accuracy"]}
    rows.update({c: metrics[f"accuracy_{c}"] for c in criteria if f"accuracy_{c}" in metrics})
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    colors = ["tab:blue", "0.6"] + ["tab:green"] * (len(rows) - 2)
    bars = ax.bar(list(rows), list(rows.values()), color=colors)
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=1)
    ax.axhline(0.5, color="tab:red", lw=1, ls="--")
    ax.set(ylim=(0, 1.1), ylabel="held-out accuracy", title="reward model: pairs that differ on each criterion")
    fig.tight_layout()
    return fig


def plot_criterion_scores(breakdowns: Mapping[str, Mapping[str, Sequence[float]]]):
    """Notebook 06: the gold judge's mean score per criterion for each policy ({policy: {criterion: scores}})."""
    import numpy as np

    values = {name: {c: float(np.mean(s)) for c, s in parts.items()} for name, parts in breakdowns.items()}
    return grouped_bars(values, "gold judge, per criterion (held-out prompts)", "mean criterion score", (7.5, 3))


def plot_agreement(confusion: Mapping[str, Mapping[str, int]], name_1: str, name_2: str, title: str = ""):
    """Notebook 07: a confusion matrix of two labellers' A/B/tie labels as a heatmap, with its counts."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(confusion)
    counts = np.array([[confusion[a].get(b, 0) for b in labels] for a in labels])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel=name_2, ylabel=name_1, title=title)
    fig.tight_layout()
    return fig


def plot_choice_counts(records: Mapping[str, Sequence[str]], choices: Sequence[str] = ("left", "right", "tie", "skip")):
    """Notebook 07: how often each annotator clicked left, right, tie or skip ({annotator: [choice per record]}).
    Without position bias, left and right are about equally frequent."""
    values = {name: {c: sum(x == c for x in clicked) for c in choices} for name, clicked in records.items()}
    return grouped_bars(values, "what the annotators clicked", "pairs", (5.5, 2.8), fmt="%d")


def plot_win_rate_vs_kl(
    points: Mapping[str, Sequence[tuple[float, float]]],
    curve: Mapping[int, Sequence[tuple[float, float]]] | None = None,
    curve_label: str = "best-of-N",
    title: str = "gold win rate over SFT against KL to SFT",
):
    """Notebook 08: a frontier plot. ``points``: {method: [(kl, win rate) per seed]}, each seed a small dot and the
    method's mean (of KL and of win rate over its seeds) a large marker; ``curve``: {N: [(kl, win rate) per seed]},
    best-of-N's seeds as dots and a line through its mean at each N, each labelled with its N. KL on a log axis
    (best-of-N's is a fraction of a nat, a trained policy's can be tens); 0.5 = as good as SFT (dashed)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, runs) in enumerate(points.items()):
        kl, win = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
        color = colors[i % len(colors)]
        ax.scatter(kl, win, s=18, color=color, alpha=0.55)
        ax.scatter([kl.mean()], [win.mean()], s=110, color=color, edgecolor="black", marker="D", label=name, zorder=3)
    if curve:
        ns = sorted(curve)
        means = [(np.mean([r[0] for r in curve[n]]), np.mean([r[1] for r in curve[n]])) for n in ns]
        for n in ns:
            ax.scatter([r[0] for r in curve[n]], [r[1] for r in curve[n]], s=14, color="0.45", alpha=0.6)
        ax.plot([m[0] for m in means], [m[1] for m in means], "o-", color="0.2", label=curve_label, zorder=2)
        for n, (x, y) in zip(ns, means):
            ax.annotate(f"N={n}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7)
    ax.axhline(0.5, color="tab:red", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set(xlabel="KL to SFT, nats per reply (log scale)", ylabel="gold-judge win rate over SFT", title=title,
           ylim=(min(0.0, ax.get_ylim()[0]), 1.05))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
