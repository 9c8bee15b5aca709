"""Judger: agreement with the course labels, position consistency, speed, and that every criterion
really measures something (hand-written replies, not the generator's sentences)."""

import json
import time

import numpy as np
import pytest
from conftest import REPO, run_cli

from rlhf_helpers import embeddings
from rlhf_helpers.data_loading import load_records
from rlhf_helpers.data_prep import split_by_prompt
from rlhf_helpers.judger import (
    BUILTIN_CRITERIA,
    GOLD_WEIGHTS,
    Judge,
    JudgeConfig,
    RewardModelCriterion,
    agreement_report,
    bradley_terry_probability,
    cohen_kappa,
    concise,
    facts,
    gold_judge,
    judge_with_reward_model,
    label_pairs,
    label_seed_rows,
    next_step,
    parse_facts,
    polite,
    position_consistency,
    relevance,
    rubric_columns,
    sigmoid,
    win_rate,
)

PREFS = REPO / "data" / "preferences.jsonl"
SEED = REPO / "data" / "seed_format.jsonl"

# A ticket that is not in the course data, in the course's prompt format.
PROMPT = (
    "Reply to the customer. Customer: Dana. Order: #31415. Product: navy duvet cover. "
    "Message: I paid $58 for the navy duvet cover three weeks ago and it never turned up."
)


def _one(fn, reply: str, prompt: str = PROMPT) -> float:
    return float(fn([prompt], [reply])[0])


@pytest.fixture(scope="module")
def pref_val():
    """The course's validation preference pairs (the split notebook 01 makes: 10% of prompts)."""
    return split_by_prompt(load_records(PREFS, "preferences"), 0.1, seed=0)[1]


# --------------------------------------------------------------------------- acceptance numbers


def test_agreement_with_the_course_labels(pref_val):
    judge = gold_judge()
    report = agreement_report(
        judge, pref_val["prompt"], pref_val["chosen"], pref_val["rejected"], seed=0, rubric=rubric_columns(pref_val)
    )
    print({k: report[k] for k in ("n", "agreement", "kappa", "tie_rate", "criterion_agreement")})
    assert report["n"] >= 100
    assert report["agreement"] >= 0.90
    assert report["kappa"] >= 0.80
    # both classes occur in the random A/B presentation, so kappa is meaningful
    assert min(sum(row.values()) for row in report["confusion"].values()) >= report["n"] // 4
    for criterion, value in report["criterion_agreement"].items():
        assert value >= 0.85, (criterion, value)


def test_position_consistency_is_perfect_for_the_deterministic_criteria(pref_val):
    n = 80
    prompts, chosen, rejected = pref_val["prompt"][:n], pref_val["chosen"][:n], pref_val["rejected"][:n]
    # a tie on purpose: the same reply on both sides must stay a tie when swapped
    chosen = [*chosen, rejected[0]]
    rejected, prompts = [*rejected, rejected[0]], [*prompts, prompts[0]]
    result = position_consistency(gold_judge(), prompts, chosen, rejected)
    assert result["position_consistency"] == 1.0
    assert result["max_probability_gap"] <= 1e-9
    assert result["first_position_preferred"] == pytest.approx(0.5, abs=0.01)  # 1 tie in 81 pairs


def test_scores_1000_responses_within_30_seconds():
    rows = [json.loads(line) for line in PREFS.read_text().splitlines()]
    pairs = {}
    for row in rows:
        for side in ("chosen", "rejected"):
            pairs.setdefault(row[side], row["prompt"])
    responses = list(pairs)[:1000]
    prompts = [pairs[r] for r in responses]
    assert len(set(responses)) == 1000
    judge = gold_judge()
    judge.score(prompts[:2], responses[:2])  # the one-time model load
    embeddings.clear_cache()  # time the encoder on all 1000 replies, not a cache
    start = time.perf_counter()
    scores = judge.score(prompts, responses)
    seconds = time.perf_counter() - start
    print(f"scored 1000 responses in {seconds:.1f} s")
    assert scores.total.shape == (1000,)
    assert seconds <= 30


# --------------------------------------------------------------------------- each criterion is real


def test_no_criterion_returns_a_constant(pref_val):
    prompts = pref_val["prompt"][:60] * 2
    replies = pref_val["chosen"][:60] + pref_val["rejected"][:60]
    scores = gold_judge().score(prompts, replies)
    for name, values in scores.breakdown.items():
        assert len(np.unique(np.round(values, 6))) >= 3, name
        assert values.min() >= 0 and values.max() <= 1, name


def test_relevance_separates_on_topic_from_off_topic():
    good = "Hi Dana, sorry your navy duvet cover never arrived; we have posted a new one that reaches you by Friday."
    bad = "Our spring catalogue has new garden chairs and outdoor string lights, now twenty percent off."
    assert _one(relevance, good) > _one(relevance, bad) + 0.2


def test_facts_rewards_correct_facts_and_punishes_wrong_ones():
    good = "Dear Dana, about order #31415: your navy duvet cover has been reshipped and the $58 is safe."
    vaguer = "Dear Dana, thanks for flagging this; it has been reshipped."
    wrong_order = "Dear Dana, about order #31451: your navy duvet cover has been reshipped."
    wrong_colour = "Dear Dana, about order #31415: your pink duvet cover has been reshipped."
    wrong_amount = "Dear Dana, about order #31415: we refunded $85 for the navy duvet cover."
    wrong_name = "Dear Maria, about order #31415: your navy duvet cover has been reshipped."
    assert _one(facts, good) == 1.0
    assert _one(facts, good) > _one(facts, vaguer) > 0
    for bad in (wrong_order, wrong_colour, wrong_amount, wrong_name):
        assert _one(facts, bad) == 0.0, bad
    # facts also come from free text, not only from the course's "Field: value" layout
    free = "Hello, my name is Ola. Order #55210 (a green lamp, $35) is missing."
    assert parse_facts(free).orders == {"55210"} and parse_facts(free).amounts == {35.0}
    assert _one(facts, "Hi Ola, order #55210 is on its way.", free) > _one(facts, "Hi Ola, order #55201 ships.", free)


def test_next_step_prefers_a_concrete_action_over_vague_promises_and_deflections():
    concrete = "We've re-sent the parcel by express post, so expect it in 2-3 working days."
    promised = "We will send you another cover."
    vague = "Someone from our team will be in touch about this eventually."
    deflect = "You'd be better off calling the delivery company yourself."
    scores = [_one(next_step, r) for r in (concrete, promised, vague, deflect)]
    assert scores[0] == 1.0 and scores[3] == 0.0
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4, scores


def test_concise_punishes_filler_repetition_and_padding():
    good = "Hi Dana, sorry the cover hasn't arrived. A replacement leaves our warehouse today. Thanks!"
    filler = (
        "Hi Dana, sorry the cover hasn't arrived. Rest assured that your satisfaction means everything to us. "
        "A replacement leaves our warehouse today."
    )
    repeated = filler + " A replacement is leaving our warehouse today. Please don't hesitate to reach out."
    padded = good + (  # on-topic-ish but unneeded detail: 90 words where 20 do the job
        " The cover is a soft cotton blend that many shoppers love. It comes in several sizes and washes well at"
        " forty degrees, keeping its shape for years. Our warehouse team packs every order carefully with recycled"
        " paper and ships from two sites in the north. Parcels usually travel with a tracked service, and most"
        " customers receive them within a few days of ordering, although busy seasons can add a little time."
        " Duvet covers are among our most popular items this year."
    )
    assert _one(concise, good) == 1.0
    assert _one(concise, good) > _one(concise, filler) > _one(concise, repeated)
    assert len(padded.split()) > 90 and _one(concise, good) > _one(concise, padded) + 0.2
    assert _one(concise, "Ok.") < _one(concise, good)  # too short to say what is needed


def test_polite_rewards_warmth_and_punishes_blame():
    warm = "Good morning Dana, I'm so sorry for the trouble. We appreciate your patience while the new cover ships."
    curt = "Order 31415. New cover ships Friday."
    rude = "Order 31415. Honestly, this is your own fault for not tracking the parcel."
    assert _one(polite, warm) == 1.0
    assert _one(polite, warm) > _one(polite, curt) > _one(polite, rude)


class _KeywordRewardModel:
    """Stands in for the trained reward model: +2 per 'sorry', -3 per 'fault' (raw, unbounded)."""

    def score(self, prompts, responses):
        return [2.0 * r.lower().count("sorry") - 3.0 * r.lower().count("fault") for r in responses]


def test_reward_model_criterion_maps_raw_scores_through_a_sigmoid():
    crit = RewardModelCriterion(_KeywordRewardModel())
    values = crit([PROMPT] * 3, ["So sorry, Dana.", "Noted.", "Your fault."])
    assert np.allclose(values, sigmoid(np.array([2.0, 0.0, -3.0])))
    assert values[0] > values[1] > values[2]
    with pytest.raises(TypeError):
        RewardModelCriterion(object())


def test_gold_judge_is_independent_of_the_reward_model():
    assert "reward_model" not in gold_judge().active
    assert set(gold_judge().active) == set(GOLD_WEIGHTS) == set(BUILTIN_CRITERIA)
    with_rm = judge_with_reward_model(_KeywordRewardModel())
    assert "reward_model" in with_rm.active
    s = with_rm.score([PROMPT, PROMPT], ["Sorry, Dana: order #31415 is on its way today.", "Your fault."])
    assert s.breakdown["reward_model"][0] > s.breakdown["reward_model"][1]


# --------------------------------------------------------------------------- judge mechanics


def test_bradley_terry_probability_ties_and_weights():
    p = bradley_terry_probability(np.array([0.8, 0.5]), np.array([0.5, 0.8]), temperature=0.1)
    assert p[0] == pytest.approx(1 / (1 + np.exp(-3))) and p[0] + p[1] == pytest.approx(1.0)
    judge = Judge(JudgeConfig(weights={"polite": 1.0}, tie_margin=0.05))
    cmp = judge.compare([PROMPT] * 2, ["Hi Dana, sorry! Thanks.", "Hi Dana."], ["Your own fault.", "Hello Dana."])
    assert list(cmp.verdict) == ["A", "tie"]
    assert judge.with_weights(concise=1.0).active == {"polite": 1.0, "concise": 1.0}
    with pytest.raises(ValueError):
        Judge(JudgeConfig(weights={"no_such_criterion": 1.0}))


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items, two raters: 20 yes/yes, 15 no/no, 5 yes/no, 10 no/yes -> kappa = 0.4 (Wikipedia's example)
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_label_pairs_and_win_rate():
    good = "Hi Dana, sorry about order #31415. Your navy duvet cover was re-sent today and arrives by Friday. Thanks!"
    bad = "Not our problem. Ask the courier."
    labelled = label_pairs([PROMPT, PROMPT], [good, bad], [bad, good])
    assert [r["verdict"] for r in labelled] == ["A", "B"]
    assert labelled[0]["p_a"] > 0.9 and labelled[0]["a_facts"] > 0.9 and labelled[1]["b_facts"] > 0.9
    result = win_rate([PROMPT] * 3, [good, good, bad], [bad, good, good])
    assert (result.wins, result.ties, result.losses) == (1, 1, 1)
    assert result.rate == pytest.approx(0.5)
    assert list(result.verdicts["verdict"]) == ["A", "tie", "B"]


def test_encoder_is_padding_invariant_and_bf16_close_to_float32():
    short, long = "Where is my kettle?", "My blue kettle arrived broken, the lid is cracked and it leaks everywhere."
    embeddings.clear_cache()
    alone = embeddings.encode([short])[0]
    embeddings.clear_cache()
    batched = embeddings.encode([long, short])[1]
    assert float(alone @ batched) >= 0.999 and abs(np.linalg.norm(alone) - 1) < 1e-5
    if embeddings.compute_dtype() != "float32":
        exact = embeddings.encode([short, long], dtype="float32")
        approx = embeddings.encode([short, long])
        assert (exact * approx).sum(axis=1).min() >= 0.999


# --------------------------------------------------------------------------- AI feedback file and CLI


def test_seed_rows_become_a_valid_preference_file(tmp_path):
    rows = [json.loads(line) for line in SEED.read_text().splitlines()[:40]]
    out = tmp_path / "labelled.jsonl"
    summary = label_seed_rows(rows, out)
    assert summary.n_pairs == 40 and summary.n_written + summary.n_ties == 40
    assert summary.n_written >= 25  # most machine answers are degraded
    ds = load_records(out, "preferences")
    assert len(ds) == summary.n_written
    assert {"judge_probability", "judge_chosen_facts", "judge_rejected_polite", "chosen_from"} <= set(ds.column_names)
    assert min(ds["judge_probability"]) > 0.5
    assert summary.chosen_counts["human_answer"] >= summary.n_written - 2  # the human answer is reference quality


def test_cli_judge_writes_metrics_and_labelled_pairs(tmp_path, artifacts):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(PREFS.read_text().splitlines(keepends=True)[:30]))
    out = tmp_path / "judge"
    proc = run_cli("judge", "--pairs", str(pairs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("agreement", "kappa", "position_consistency", "n", "seconds"):
        assert key in metrics
    assert metrics["n"] == 30 and metrics["agreement"] >= 0.9 and metrics["position_consistency"] == 1.0
    assert len(load_records(out / "labelled_pairs.jsonl", "preferences")) == metrics["n_written"]
    assert (artifacts / "metrics" / "judger.json").exists()


def test_cli_judge_exits_2_on_a_bad_file(tmp_path, artifacts):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi", "chosen": "Hello"}\n{"prompt": "Hi", "chosen": "A", "rejected": "B"\nnot json\n')
    proc = run_cli("judge", "--pairs", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"{bad}:1: field 'rejected': missing field" in proc.stderr
    assert f"{bad}:2:" in proc.stderr and f"{bad}:3:" in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()
