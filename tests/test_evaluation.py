"""Evaluation stage: bootstrap intervals on hand-made outcomes, verdicts identical to the judger's,
the labelling export round trip, the run report, figures, KL points on a tiny policy (KL 0 for the
SFT policy itself, caching, de-duplicated checkpoints, the beta-sweep fallback) and the CLI's errors."""

import json
import math

import numpy as np
import pytest
from conftest import run_cli

from rlhf_helpers.evaluation import (
    KLPoint,
    PolicyComparison,
    bootstrap_ci,
    gold_peak,
    gold_verdicts,
    label_pairs_from,
    pairwise_win_rate,
    win_outcomes,
)
from rlhf_helpers.judger import Judge, JudgeConfig, win_rate


def word_count_judge(tie_margin=0.02):
    """A judge without the MiniLM model: longer replies (up to 10 words) score higher."""
    return Judge(
        JudgeConfig(weights={"words": 1.0}, tie_margin=tie_margin),
        {"words": lambda prompts, replies: np.array([min(len(r.split()), 10) / 10 for r in replies])},
    )


# --------------------------------------------------------------------------- win rates and intervals


def test_bootstrap_of_all_wins_all_losses_and_all_ties_is_a_point():
    assert bootstrap_ci(np.ones(30)) == (1.0, 1.0)
    assert bootstrap_ci(np.zeros(30)) == (0.0, 0.0)
    assert bootstrap_ci(win_outcomes(["tie"] * 30)) == (0.5, 0.5)


def test_bootstrap_matches_the_normal_approximation_for_a_known_proportion():
    outcomes = np.array([1.0] * 120 + [0.0] * 280)  # p = 0.3, n = 400
    low, high = bootstrap_ci(outcomes, n_boot=4000, seed=1)
    half_width = 1.96 * math.sqrt(0.3 * 0.7 / 400)  # 0.0449
    assert low == pytest.approx(0.3 - half_width, abs=0.01) and high == pytest.approx(0.3 + half_width, abs=0.01)
    assert low < 0.3 < high
    narrower = bootstrap_ci(outcomes, n_boot=4000, seed=1, level=0.5)
    assert low < narrower[0] < 0.3 < narrower[1] < high


def test_bootstrap_is_seeded_and_handles_empty_input():
    outcomes = np.random.default_rng(0).random(50)  # continuous values: the quantiles depend on the draws
    assert bootstrap_ci(outcomes, seed=3) == bootstrap_ci(outcomes, seed=3)
    assert bootstrap_ci(outcomes, seed=3) != bootstrap_ci(outcomes, seed=4)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(outcomes, level=1.5)


def test_win_outcomes_count_ties_half_and_reject_unknown_verdicts():
    assert win_outcomes(["A", "B", "tie"]).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="unknown verdicts"):
        win_outcomes(["A", "left"])
    w = pairwise_win_rate(["A", "A", "tie", "B"], "ppo", "sft")
    assert (w.rate, w.wins, w.ties, w.losses, w.n) == (0.625, 2, 1, 1, 4)
    assert w.ci_low <= w.rate <= w.ci_high
    assert "PPO over SFT: 0.625" in str(w)


def test_verdicts_from_single_scores_equal_the_judgers_win_rate():
    judge = word_count_judge()
    prompts = [f"p{i}" for i in range(8)]
    a = ["one two three", "x", "a b c d e", "same length", "one", "a b", "long reply here now", "q"]
    b = ["one two", "x y z", "a b c d e", "same words", "one two", "a", "short", "q r s t"]
    v = gold_verdicts(judge.score(prompts, a).total, judge.score(prompts, b).total, judge)
    reference = win_rate(prompts, a, b, judge)
    assert list(v) == list(reference.verdicts["verdict"])
    assert pairwise_win_rate(v).rate == pytest.approx(reference.rate)
    assert (pairwise_win_rate(v).wins, pairwise_win_rate(v).ties) == (reference.wins, reference.ties)


# --------------------------------------------------------------------------- pairs for labelling


def hand_comparison():
    prompts = ["Order 1 is late", "Refund please", "Where is my parcel", "Wrong colour", "Order 1 is late"]
    sft = ["Sorry, we will check.", "Refund is on the way now for you.", "", "Same reply", "Sorry, we will check."]
    ppo = [
        "Sorry, order 1 ships today, tracking follows.",
        "Refund.",
        "It is near.",
        "Same reply",
        "Sorry, order 1 ships today, tracking follows.",
    ]
    judge = word_count_judge()
    gold = {"sft": judge.score(prompts, sft).total.tolist(), "ppo": judge.score(prompts, ppo).total.tolist()}
    empty = {p: [] for p in ("base", "sft", "ppo")}
    comparison = PolicyComparison(
        prompts, prompts, {"base": sft, "sft": sft, "ppo": ppo}, empty, {**gold, "base": gold["sft"]}, {}, {}, {}
    )
    return comparison, judge


def test_exported_pairs_round_trip_through_the_labelling_reader(artifacts):
    from rlhf_helpers.evaluation import export_label_pairs
    from rlhf_helpers.labeling import PAIRS_FILE, gold_labels, labeling_dir, load_pairs_to_label, read_pairs

    comparison, judge = hand_comparison()
    path, n = export_label_pairs(comparison, judge=judge)
    assert path == labeling_dir() / PAIRS_FILE and n == 2  # empty reply, identical replies and the repeat left out
    pairs = read_pairs(path)
    assert [(p.prompt, p.response_a, p.response_b) for p in pairs] == [
        ("Order 1 is late", "Sorry, we will check.", "Sorry, order 1 ships today, tracking follows."),
        ("Refund please", "Refund is on the way now for you.", "Refund."),
    ]
    assert pairs == label_pairs_from(comparison, judge)  # ids and texts survive the file
    assert all(p.source["model_a"] == "sft" and p.source["model_b"] == "ppo" for p in pairs)
    assert gold_labels(pairs) == {pairs[0].pair_id: "B", pairs[1].pair_id: "A"}  # the judge prefers the longer one
    assert [p.pair_id for p in load_pairs_to_label()] == [p.pair_id for p in pairs]  # what notebook 07 loads
    row = json.loads(path.read_text().splitlines()[0])
    assert set(row) >= {"pair_id", "prompt", "response_a", "response_b", "gold"}


# --------------------------------------------------------------------------- run report and figures


def test_summary_markdown_has_runtimes_stage_tables_and_figure_links():
    from rlhf_helpers.report import render_summary_markdown

    summary = {
        "preset": "tiny",
        "seed": 0,
        "notebooks": [
            {"name": "00_setup", "status": "ok", "seconds": 12.5},
            {"name": "06_evaluation", "status": "failed", "seconds": 3.0, "error": "AssertionError: gold fell"},
        ],
        "total_seconds": 15.5,
        "metrics": {
            "setup": {"preset": "tiny", "torch": "2.13"},
            "evaluation": {
                "win_rates": {"ppo_vs_sft": {"win_rate": 0.61234, "ci_low": 0.55, "ci_high": 0.67}},
                "win_rate_ppo_vs_sft_ci": [0.55, 0.67],
                "overoptimisation": {
                    "points": [{"label": "SFT", "kl": 0.0}, {"label": "step 2", "kl": 1.0}, {"label": "x"}]
                },
                "history": [{"step": i} for i in range(30)],
                "note": "a | b",
                "meteor": None,
            },
        },
        "figures": ["artifacts/figures/evaluation_win_rates.png", "artifacts/figures/evaluation_overoptimisation.png"],
    }
    md = render_summary_markdown(summary)
    assert md.startswith("# Course run summary")
    assert "| 00_setup | ok | 12.5 |" in md and "| 06_evaluation | failed | 3 |" in md
    assert "| **total** | | **15.5** |" in md and "AssertionError: gold fell" in md
    assert "### setup" in md and "### evaluation" in md and "| torch | 2.13 |" in md
    assert "| win_rates.ppo_vs_sft.win_rate | 0.6123 |" in md
    assert "| win_rate_ppo_vs_sft_ci | [0.55, 0.67] |" in md
    assert "| overoptimisation.points | (3 rows, table below) |" in md
    assert "evaluation: `overoptimisation.points`" in md and "| label | kl |" in md and "| step 2 | 1 |" in md
    assert "| history | (30 items, see summary.json) |" in md
    assert "| note | a \\| b |" in md and "| meteor | — |" in md
    assert "- [evaluation_win_rates](artifacts/figures/evaluation_win_rates.png)" in md
    assert "![evaluation_overoptimisation](artifacts/figures/evaluation_overoptimisation.png)" in md
    assert md == render_summary_markdown(json.loads(json.dumps(summary)))  # pure: same dict, same text
    assert "No figures were saved." in render_summary_markdown({**summary, "figures": []})


def test_save_figure_writes_a_png_atomically(artifacts):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlhf_helpers.report import figures_dir, save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, "a_curve")
    plt.close(fig)
    assert path == figures_dir() / "a_curve.png" == artifacts / "figures" / "a_curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in figures_dir().iterdir()] == ["a_curve.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="plain file name"):
        save_figure(fig, "../escape")


# --------------------------------------------------------------------------- over-optimisation points


def point(label, kl, gold, proxy=0.0):
    return KLPoint(label, "checkpoint", 0, kl, 0.0, proxy, 0.0, gold, 0.0, 10)


def test_gold_peak_and_sqrt_kl():
    points = [point("SFT", 0.0, 0.50), point("a", 1.0, 0.58), point("b", 4.0, 0.61), point("c", 9.0, 0.55)]
    assert gold_peak(points).label == "b" and gold_peak(points).sqrt_kl == 2.0
    assert point("noisy", -0.01, 0.5).sqrt_kl == 0.0  # k1 is unbiased, not non-negative: shown as 0
    assert gold_peak([point("x", 1.0, 0.5), point("y", 4.0, 0.5)]).label == "x"  # a tie goes to the smaller KL
    with pytest.raises(ValueError):
        gold_peak([])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An SFT adapter (fresh LoRA on the tiny base, saved like notebook 02's) and a fake PPO run folder
    with checkpoints at steps 2 and 4 (random LoRA weights) whose final checkpoint is step 4."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference
    from rlhf_helpers.presets import load_tokenizer, model_path

    root = tmp_path_factory.mktemp("eval_run")
    base = AutoModelForSeq2SeqLM.from_pretrained(model_path("tiny"))
    torch.manual_seed(0)
    sft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], init_lora_weights=False))
    sft.save_pretrained(root / "sft")
    tokenizer = load_tokenizer("tiny")
    cfg = PPOConfig(batch_size=8, mini_batch_size=4, max_new_tokens=12, temperature=0.7, checkpoint_every=2)
    trainer = PPOTrainer(load_policy_and_reference(root / "sft", model_path("tiny")), tokenizer, None, [], cfg)
    for step in (2, 4):
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if ".policy." in name and "lora_B" in name:
                    p.add_(0.3 * torch.randn_like(p))
        trainer.step_idx = step
        trainer.save_checkpoint(root / "ppo" / "checkpoints" / f"step_{step:05d}")
    trainer.save_checkpoint(root / "ppo" / "final")
    return root, cfg, tokenizer


def reward_by_length(prompts, replies):
    return [float(len(r)) for r in replies]


def tiny_policies(root, cfg, tokenizer):
    from rlhf_helpers.evaluation import Policies
    from rlhf_helpers.ppo import PPOTrainer, load_policy_and_reference
    from rlhf_helpers.presets import model_path

    trainer = PPOTrainer(
        load_policy_and_reference(root / "sft", model_path("tiny")), tokenizer, reward_by_length, [], cfg
    )
    fake_reward = type("FakeRM", (), {"score": staticmethod(reward_by_length)})()
    digests = {"base": "b", "sft": "s", "reward": "r", "ppo": "p"}
    sft_file = str(root / "sft" / "adapter_model.safetensors")
    return Policies(trainer, "tiny", root / "sft", root, root / "ppo", fake_reward, cfg, sft_file, digests)


PROMPTS = [
    "Customer: Ana. Order number: 1234. Message: my parcel is late.",
    "Customer: Bo. Product: red mug. Message: it arrived broken.",
    "Customer: Cy. Order number: 9876. Message: please cancel my order.",
    "Customer: Di. Message: how do I change my address?",
] * 3


def test_kl_of_the_sft_policy_is_zero_and_grows_with_the_perturbation(tiny_run):
    from rlhf_helpers.evaluation import _adapter_file, sample_kl_point

    root, cfg, tokenizer = tiny_run
    policies = tiny_policies(root, cfg, tokenizer)
    judge = word_count_judge()
    sft_point, replies = sample_kl_point(policies.trainer, PROMPTS, judge, "SFT", batch_size=5)
    assert abs(sft_point.kl) < 1e-3 and sft_point.n == len(PROMPTS) == len(replies)
    assert sft_point.proxy_score == pytest.approx(np.mean(reward_by_length(PROMPTS, replies)))
    assert sft_point.gold_score == pytest.approx(judge.score(PROMPTS, replies).total.mean())
    again, _ = sample_kl_point(policies.trainer, PROMPTS, judge, "SFT", batch_size=5)
    assert again == sft_point  # seeded sampling: the same replies every time
    policies.use_weights(_adapter_file(root / "ppo" / "final"))
    far, _ = sample_kl_point(policies.trainer, PROMPTS, judge, "final", batch_size=5)
    assert far.kl > 0.1 and far.kl_sem > 0


def test_points_use_every_checkpoint_once_and_are_cached(tiny_run, artifacts):
    from rlhf_helpers.evaluation import evaluation_dir, overoptimisation_points

    root, cfg, tokenizer = tiny_run
    judge = word_count_judge()
    points = overoptimisation_points(tiny_policies(root, cfg, tokenizer), PROMPTS, judge, min_points=3, progress=False)
    # step 4's checkpoint and the final policy hold the same weights: one point
    assert [p.label for p in points] == ["SFT", "step 2", "step 4"]
    assert [p.source for p in points] == ["sft", "checkpoint", "checkpoint"]
    assert abs(points[0].kl) < 1e-3 and points[1].kl > 1e-3 and points[2].kl > 1e-3
    assert points[2].checkpoint.endswith("checkpoints/step_00004")
    cached = sorted(evaluation_dir().glob("kl_point_*.json"))
    assert len(cached) == 3
    mtimes = [p.stat().st_mtime_ns for p in cached]
    again = overoptimisation_points(tiny_policies(root, cfg, tokenizer), PROMPTS, judge, min_points=3, progress=False)
    assert again == points and [p.stat().st_mtime_ns for p in cached] == mtimes  # read back, not recomputed


def test_too_few_checkpoints_add_short_beta_sweep_runs(tiny_run, artifacts, monkeypatch):
    from rlhf_helpers import evaluation, ppo_stage

    root, cfg, tokenizer = tiny_run
    monkeypatch.setattr(evaluation, "SWEEP_STEPS", 1)
    monkeypatch.setattr(evaluation, "SWEEP_BETAS", (0.5, 0.0))
    defaults = ppo_stage.ppo_defaults  # the course's settings, with small batches: this tests the plumbing
    small = dict(batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=12)
    monkeypatch.setattr(ppo_stage, "ppo_defaults", lambda preset, **kw: defaults(preset, **{**kw, **small}))
    policies = tiny_policies(root, cfg, tokenizer)
    points = evaluation.overoptimisation_points(policies, PROMPTS, word_count_judge(), min_points=5, progress=False)
    sweeps = [p for p in points if p.source == "sweep"]
    assert len(points) == 5 and sorted(p.beta for p in sweeps) == [0.0, 0.5]
    finals = sorted((evaluation.evaluation_dir() / "sweep").glob("beta_*/final/ppo_state.pt"))
    assert len(finals) == 2
    mtimes = [p.stat().st_mtime_ns for p in finals]
    evaluation.overoptimisation_points(policies, PROMPTS, word_count_judge(), min_points=5, progress=False)
    assert [p.stat().st_mtime_ns for p in finals] == mtimes  # trained once, then reused


# --------------------------------------------------------------------------- the CLI


def test_evaluate_cli_rejects_bad_input_before_training_anything(tmp_path):
    env = {"RLHF_ARTIFACTS": str(tmp_path / "artifacts")}
    result = run_cli("evaluate", "--preset", "no-such-model", "--out", str(tmp_path / "out"), "--quiet", env=env)
    assert result.returncode == 2 and "unknown preset 'no-such-model'" in result.stderr

    final = tmp_path / "artifacts" / "ppo" / "final"
    final.mkdir(parents=True)
    (final / "ppo_config.json").write_text("{}")  # a save that was killed half-way
    result = run_cli("evaluate", "--out", str(tmp_path / "out"), "--quiet", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "incomplete PPO checkpoint" in result.stderr and "ppo_state.pt" in result.stderr

    result = run_cli("evaluate", "--ppo", str(tmp_path / "typo"), "--out", str(tmp_path / "out"), "--quiet", env=env)
    assert result.returncode == 2 and "no PPO checkpoint here" in result.stderr
    assert not (tmp_path / "artifacts" / "sft").exists() and not (tmp_path / "out" / "metrics.json").exists()


def test_over_seeds_summarises_by_hand_and_skips_metrics_a_run_lacks():
    from rlhf_helpers.stats import over_seeds

    runs = {"0": {"win": 0.5, "kl": 2.0}, "1": {"win": 0.8, "kl": 4.0}, "2": {"win": 0.2}}
    assert over_seeds(runs, ("win", "kl")) == {"win": {"mean": 0.5, "min": 0.2, "max": 0.8}}
    assert over_seeds({k: runs[k] for k in ("0", "1")}, ("kl",)) == {"kl": {"mean": 3.0, "min": 2.0, "max": 4.0}}


def test_the_stored_seed_summaries_are_what_over_seeds_computes_from_their_runs():
    """benchmarks/*_seeds.json keep each run and the summary: the summary is recomputable from the runs."""
    import importlib.util

    from conftest import REPO

    def module(name):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        return m

    ppo = module("ppo_seeds")
    stored = json.loads((REPO / "benchmarks" / "ppo_seeds.json").read_text())["defaults"]
    assert ppo.summarise(stored["runs"]) == stored["summary"]  # the same float operations: exactly
    beyond = module("beyond_ppo_seeds")
    entry = json.loads((REPO / "benchmarks" / "beyond_ppo_seeds.json").read_text())["defaults"]
    runs, summary = entry["runs"], entry["summary"]
    for name, seeds in runs.items():
        assert beyond.summarise(seeds) == summary[name], name


def test_the_over_optimisation_run_scores_with_its_proxy_and_restores_the_policies_after():
    """Inside the block every score comes from the proxy; afterwards (also after an error) the caller's object scores
    with the course's reward model again. The object itself is changed, not copied, so what it records as loaded
    (``use_weights`` skips a reload of the same file) stays true for the caller."""
    from types import SimpleNamespace

    from rlhf_helpers.evaluation import _scored_by

    course, proxy = SimpleNamespace(score=lambda p, r: [1.0]), SimpleNamespace(score=lambda p, r: [2.0])
    policies = SimpleNamespace(reward_model=course, digests={"sft": "s", "reward": "course"},
                               trainer=SimpleNamespace(reward_fn=course.score), loaded="sft")
    digests = policies.digests
    with pytest.raises(RuntimeError):
        with _scored_by(policies, proxy, "proxy"):
            assert policies.reward_model is proxy and policies.trainer.reward_fn([], []) == [2.0]
            assert policies.digests == {"sft": "s", "reward": "proxy"} and digests["reward"] == "course"
            policies.loaded = "checkpoint-60"  # what use_weights does inside the block
            raise RuntimeError("a failing measurement")
    assert policies.reward_model is course and policies.trainer.reward_fn is course.score
    assert policies.digests is digests and policies.loaded == "checkpoint-60"
