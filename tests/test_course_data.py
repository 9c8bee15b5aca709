import json

from rlhf_helpers.config import data_dir
from rlhf_helpers.course_data import CRITERIA, DATA_FILES, generate_course_dataset, make_response, write_course_dataset
from rlhf_helpers.io_utils import read_jsonl


def test_committed_files_are_exactly_what_the_seed_generates(tmp_path):
    sizes = write_course_dataset(tmp_path, seed=0)
    for name in DATA_FILES.values():
        assert (tmp_path / name).read_bytes() == (data_dir() / name).read_bytes(), name
    assert sizes["sft"] >= 1000 and sizes["preferences"] >= 1000 and sizes["eval"] >= 200 and sizes["seed_format"] > 0


def test_another_seed_gives_other_data():
    a, b = generate_course_dataset(seed=0, n_sft=20), generate_course_dataset(seed=1, n_sft=20)
    assert [r["prompt"] for r in a.sft] != [r["prompt"] for r in b.sft]


def test_eval_prompts_never_appear_in_training_data():
    train = {r["prompt"] for r in read_jsonl(data_dir() / "sft.jsonl")}
    train |= {r["prompt"] for r in read_jsonl(data_dir() / "preferences.jsonl")}
    evaluation = [r["prompt"] for r in read_jsonl(data_dir() / "eval.jsonl")]
    assert len(set(evaluation)) == len(evaluation) >= 200
    assert not train & set(evaluation)


def test_every_pair_is_decided_by_the_rubric_and_all_criteria_vary():
    rows = read_jsonl(data_dir() / "preferences.jsonl")
    for row in rows:
        chosen = sum(row[f"chosen_{c}"] for c in CRITERIA)
        rejected = sum(row[f"rejected_{c}"] for c in CRITERIA)
        assert chosen > rejected
        assert row["decided_by"] == ",".join(c for c in CRITERIA if row[f"chosen_{c}"] != row[f"rejected_{c}"])
    for c in CRITERIA:
        assert {row[f"rejected_{c}"] for row in rows} == {0, 1, 2}, c
    longer_wins = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows) / len(rows)
    assert 0.35 < longer_wins < 0.65


def test_rubric_scores_match_the_text():
    import random

    from rlhf_helpers.course_data import DEFLECTIONS, FILLER, RUDE_LINES, _make_ticket

    rng = random.Random(3)
    ticket = _make_ticket(rng, "12345")
    good = make_response(rng, ticket)
    assert "#12345" in good.text and ticket.product in good.text and ticket.name in good.text
    wrong = make_response(rng, ticket, {"facts": 0, "next_step": 2, "concise": 2, "polite": 2})
    assert "#12345" not in wrong.text or ticket.product not in wrong.text
    rude = make_response(rng, ticket, {"facts": 2, "next_step": 0, "concise": 0, "polite": 0})
    assert any(line in rude.text for line in RUDE_LINES)
    assert any(line in rude.text for line in DEFLECTIONS)
    assert sum(rude.text.count(f) for f in FILLER) >= 1
    sentences = rude.text.split(". ")
    assert len(sentences) > len(set(sentences))  # the repeated sentence


def test_seed_format_rows_are_real_pairs():
    for row in read_jsonl(data_dir() / "seed_format.jsonl"):
        assert set(row) == {"prompt", "human_answer", "machine_answer"}
        assert row["human_answer"] != row["machine_answer"]
    json.dumps(row)


def test_demonstration_habits_leave_other_splits_alone():
    """``demo_flaw_rates`` makes SFT demonstrations vague or padded (the committed data: 70% filler),
    and how often must not change the other splits."""
    import rlhf_helpers.course_data as cd
    from rlhf_helpers.judger import gold_judge

    rates = {"next_step": 0.6, "concise": 0.3}
    sizes = dict(seed=0, n_sft=300, n_pref_prompts=30, n_eval=30, n_seed_format=10)
    flawed = cd.generate_course_dataset(**sizes, demo_flaw_rates=rates)
    vague = sum(any(v in r["response"] for v in cd.VAGUE_STEPS) for r in flawed.sft) / 300
    filler = sum(any(f in r["response"] for f in cd.FILLER) for r in flawed.sft) / 300
    assert abs(vague - rates["next_step"]) < 0.1 and abs(filler - rates["concise"]) < 0.1
    for row in flawed.sft:  # every demonstration still greets the ticket's customer
        name = row["prompt"].split("Customer: ")[1].split(".")[0]
        assert row["response"].split(",")[0].endswith(name), row
    judge = gold_judge()
    ref = judge.score([r["prompt"] for r in flawed.eval], [r["reference"] for r in flawed.eval]).total
    demo = judge.score([r["prompt"] for r in flawed.sft], [r["response"] for r in flawed.sft]).total
    assert demo.mean() < ref.mean()  # the gold judge sees the habits

    clean = cd.generate_course_dataset(**sizes, demo_flaw_rates={})
    assert not any(any(v in r["response"] for v in cd.VAGUE_STEPS + cd.FILLER) for r in clean.sft)
    assert [r["prompt"] for r in clean.sft] == [r["prompt"] for r in flawed.sft]
    assert (clean.preferences, clean.eval, clean.seed_format) == (flawed.preferences, flawed.eval, flawed.seed_format)


def test_committed_demonstrations_carry_the_teams_filler_habit():
    import rlhf_helpers.course_data as cd

    rows = read_jsonl(data_dir() / "sft.jsonl")
    filler = sum(any(f in r["response"] for f in cd.FILLER) for r in rows) / len(rows)
    assert abs(filler - cd.DEFAULT_DEMO_FLAW_RATES["concise"]) < 0.05
    assert not any(any(v in r["response"] for v in cd.VAGUE_STEPS + cd.DEFLECTIONS) for r in rows)
