"""The course on a learner's own data folder: file discovery, the long-input policy, the tiny base built
from that corpus (and the course's base left bit-identical), notebook 00's pretraining check, the
domain-free gold judge, clear errors on bad input, and every CLI stage run end to end on a small,
real-shaped folder (long texts, unicode, one file in CSV)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from rlhf_helpers.config import on_course_data

TOPICS = [
    ("Zürich", "tram strike", "trams stopped for two days"),
    ("Kraków", "river flood", "the river rose three metres"),
    ("Ōsaka", "robot café", "robots served coffee to guests"),
    ("São Paulo", "marathon", "forty thousand runners took part"),
    ("Reykjavík", "volcano", "a volcano erupted near the town"),
    ("Montréal", "ice storm", "power failed in many homes"),
    ("Málaga", "heat wave", "temperatures reached 44 degrees"),
    ("Tromsø", "northern lights", "tourists watched the aurora"),
    ("Genève", "peace talks", "delegates signed a ceasefire"),
    ("Dubrovnik", "film shoot", "a film crew closed the old town"),
    ("Île-de-France", "rail works", "trains were replaced by buses"),
    ("Cádiz", "fishing ban", "boats stayed in the harbour"),
    ("Düsseldorf", "trade fair", "exhibitors showed new machines"),
    ("Łódź", "textile museum", "a museum of weaving opened"),
    ("Göteborg", "ferry strike", "ferries to Denmark were cancelled"),
    ("Niño Bay", "coral survey", "divers counted bleached corals"),
]
FILLER = "Officials said more details would follow later in the week, and residents were asked to stay informed. "


def _article(city: str, topic: str, fact: str, rng: random.Random) -> str:
    body = [f"In {city}, a {topic} made headlines this week: {fact}."]
    while sum(len(s) for s in body) < 2500:  # thousands of characters, like a news article
        extra = [FILLER, f"Reporters described the {topic} in detail. ", "« Nobody expected it », one said — 😮. "]
        body.append(rng.choice(extra))
    return "".join(body) + "\nTL;DR:"


def write_custom_folder(folder: Path, seed: int = 0) -> Path:
    """A small, real-shaped data folder: SFT as CSV (named ``my_sft.csv``), preferences as JSONL with
    an extra ``article_id`` column, eval as JSONL with a ``references`` list, long unicode articles."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "my_sft.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "response"])
        for _ in range(3):
            for city, topic, fact in TOPICS:
                w.writerow([_article(city, topic, fact, rng), f"A {topic} in {city}: {fact}."])
    with open(folder / "news_preferences.jsonl", "w", encoding="utf-8") as f:
        for i, (city, topic, fact) in enumerate(TOPICS):
            article = _article(city, topic, fact, rng)
            good = f"{city}: {fact} during the {topic}."
            pairs = [(good, f"Something happened in {city}."), (good, "The weather was nice and people went shopping.")]
            pairs.append((f"{good} {FILLER}", f"Something happened in {city}."))
            for chosen, rejected in pairs:
                row = {"prompt": article, "chosen": chosen, "rejected": rejected, "article_id": f"a{i}"}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(folder / "eval.jsonl", "w", encoding="utf-8") as f:
        for city, topic, fact in TOPICS[:10]:
            ref = f"The {topic} in {city}: {fact}."
            row = {"prompt": _article(city, topic, fact, rng), "reference": ref, "references": [ref] * 3}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return folder


@pytest.fixture
def custom(tmp_path, monkeypatch):
    """A custom data folder made current (RLHF_DATA_DIR), with private artifacts and cache."""
    folder = write_custom_folder(tmp_path / "mydata")
    monkeypatch.setenv("RLHF_DATA_DIR", str(folder))
    monkeypatch.setenv("RLHF_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    return folder


def test_on_course_data_follows_the_data_folder(custom, monkeypatch):
    assert not on_course_data()
    monkeypatch.delenv("RLHF_DATA_DIR")
    assert on_course_data()


def test_data_files_are_found_by_kind_in_any_format(custom):
    from rlhf_helpers.data_prep import find_data_files, load_course_data

    files = find_data_files()
    assert {k: p.name for k, p in files.items()} == {
        "sft": "my_sft.csv",
        "preferences": "news_preferences.jsonl",
        "eval": "eval.jsonl",
    }
    data = load_course_data()
    assert len(data["sft"]) == 3 * len(TOPICS) and "article_id" in data["preferences"].column_names
    assert "Zürich" in data["sft"][0]["prompt"] and len(data["sft"][0]["prompt"]) > 2500


def test_data_folder_errors_name_the_folder_and_the_problem(tmp_path):
    from rlhf_helpers.data_prep import find_data_files

    folder = write_custom_folder(tmp_path / "d")
    (folder / "eval.jsonl").rename(folder / "notes.jsonl")
    with pytest.raises(FileNotFoundError, match=r"no eval file.*notes\.jsonl"):
        find_data_files(folder)
    (folder / "notes.jsonl").rename(folder / "eval.jsonl")
    (folder / "old_sft.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    with pytest.raises(ValueError, match=r"more than one sft file \(my_sft\.csv, old_sft\.jsonl\)"):
        find_data_files(folder)


def test_bad_row_stops_a_stage_naming_file_line_and_field(custom, tmp_path):
    rows = list(csv.reader(open(custom / "my_sft.csv", encoding="utf-8")))
    rows[2][1] = "   "  # data row 2: after the header and row 1, whose article spans two physical lines
    line = 3 + sum(value.count("\n") for value in rows[1])
    assert line == 4
    with open(custom / "my_sft.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    result = run_cli("sft", "--data", str(custom), "--out", str(tmp_path / "sft"), "--quiet")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{custom / 'my_sft.csv'}:{line}: field 'response': empty text" in result.stderr
    missing = run_cli("run", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr


def test_splits_hold_out_a_gold_half_by_prompt(custom):
    from rlhf_helpers.data_prep import load_split, prepare_splits

    stats = prepare_splits()
    gold, proxy, val = (set(load_split(n)["prompt"]) for n in ("pref_gold", "pref_train", "pref_val"))
    assert gold and proxy and val
    assert not (gold & proxy) and not (gold & val) and not (proxy & val)
    assert stats["prompt_overlap_gold_proxy"] == stats["prompt_overlap_gold_val"] == 0
    assert stats["n_pref_gold"] + stats["n_pref_train"] + stats["n_pref_val"] == 3 * len(TOPICS)


def test_course_base_is_unchanged_and_custom_base_has_its_own_key(custom, monkeypatch):
    from rlhf_helpers import tiny_model as t

    texts = t.corpus_texts()
    first = next(csv.DictReader(open(custom / "my_sft.csv", encoding="utf-8")))
    assert len(first["prompt"]) > t.CORPUS_CHARS  # the long-input policy has something to cut
    assert max(len(x) for x in texts) <= t.CORPUS_CHARS
    clipped = t.clip_text(first["prompt"], t.PROMPT_CHARS)
    assert len(clipped) <= t.PROMPT_CHARS and first["prompt"].startswith(clipped) and not clipped.endswith(" ")
    assert t.pretraining_documents()[0] == f"{clipped} {first['response']}"
    assert t.recipe_for_data() == t.CUSTOM_RECIPE
    custom_key = t.recipe_key(t.recipe_for_data(), texts)
    monkeypatch.delenv("RLHF_DATA_DIR")
    assert t.recipe_for_data() == t.TinyRecipe()
    # The course base's cache key before this feature existed (recipe + corpus hash): the clipping policy
    # must not change one byte of the course corpus, so the course's base stays bit-identical.
    course_key = t.recipe_key(t.TinyRecipe(), t.corpus_texts())
    assert course_key == "c465fd319b99"
    assert custom_key != course_key


def test_demo_sentence_comes_from_the_data_loaded(custom, monkeypatch):
    from rlhf_helpers.tiny_model import demo_sentence

    text = demo_sentence()
    assert text == "A tram strike in Zürich: trams stopped for two days."
    monkeypatch.delenv("RLHF_DATA_DIR")
    assert demo_sentence().startswith("Hello Sofia")


def test_pretraining_check_is_relative_to_the_corpus(custom):
    from rlhf_helpers.tiny_model import pretraining_documents, pretraining_problems, train_tokenizer, unigram_loss

    docs = pretraining_documents()
    tokenizer = train_tokenizer(docs, 300)
    unigram = unigram_loss(tokenizer, docs, 96)
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    counts = np.bincount(np.concatenate([np.array(x[:95]) for x in ids]))
    p = counts[counts > 0] / counts.sum()
    assert unigram == pytest.approx(float(-(p * np.log(p)).sum()))
    learnt = {"pretrain_loss_first": 6.65, "pretrain_loss_last": unigram - 1.0}
    assert pretraining_problems(learnt, unigram) == []
    # the tester's run: 6.65 -> 4.08 did not halve the loss, yet is a fine base if below the unigram loss
    assert pretraining_problems({"pretrain_loss_first": 6.65, "pretrain_loss_last": 4.08}, 5.0) == []
    flat = {"pretrain_loss_first": unigram + 0.1, "pretrain_loss_last": unigram - 0.1}
    problems = pretraining_problems(flat, unigram)
    assert len(problems) == 2 and "barely fell" in problems[0] and "context" in problems[1]
    assert pretraining_problems({"pretrain_loss_first": 7.0, "pretrain_loss_last": float("nan")}, unigram)


def test_gold_judge_learns_held_out_human_preferences(custom):
    from rlhf_helpers.gold_judge import GoldRewardModel, HeldOutGoldJudge, train_gold_model
    from rlhf_helpers.judger import gold_judge, position_consistency

    rows = [json.loads(line) for line in open(custom / "news_preferences.jsonl", encoding="utf-8")]
    train, held = rows[: len(rows) // 2], rows[len(rows) // 2 :]  # different articles on each side
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    model = train_gold_model([r["prompt"] for r in train], [r["chosen"] for r in train], [r["rejected"] for r in train])
    judge = HeldOutGoldJudge(model)
    prompts, chosen, rejected = ([r[k] for r in held] for k in ("prompt", "chosen", "rejected"))
    verdicts = judge.compare(prompts, chosen, rejected).verdict
    assert (verdicts == "A").mean() >= 0.8, verdicts  # the preference generalises to unseen articles
    assert position_consistency(judge, prompts, chosen, rejected)["position_consistency"] == 1.0
    again = GoldRewardModel.from_json(json.loads(json.dumps(model.to_json())))
    assert np.allclose(again.score(prompts, chosen), model.score(prompts, chosen))
    # the judge notebooks 04-06 call: held out on custom data, the rubric on the course data
    held_out = gold_judge()
    assert isinstance(held_out, HeldOutGoldJudge) and held_out.model.digest in repr(held_out)
    with pytest.raises(ValueError, match="rubric"):
        gold_judge(polite=2.0)


def test_gold_judge_report_measures_against_unseen_labels(custom):
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.gold_judge import gold_judge_report, heldout_gold_judge

    judge = heldout_gold_judge()
    report = gold_judge_report(judge)
    assert report["n"] == len(load_split("pref_train")) + len(load_split("pref_val"))
    assert report["n_train"] == len(load_split("pref_gold"))
    low, high = report["agreement_ci"]
    assert 0 <= low <= report["agreement"] <= high <= 1
    assert report["agreement"] == report["agreement_swapped"] and report["position_consistency"] == 1.0
    assert -1 <= report["kappa"] <= 1


def test_every_cli_stage_runs_on_a_custom_folder(custom, tmp_path, monkeypatch):
    """sft -> reward -> ppo -> evaluate through the command line on the custom folder, small step counts."""
    art = tmp_path / "artifacts"
    monkeypatch.setenv("RLHF_TINY_STEPS", "30")  # a real base build from this corpus, in seconds
    env = {"RLHF_TINY_STEPS": "30"}
    common = ["--data", str(custom), "--quiet"]
    sft = run_cli("sft", *common, "--out", str(art / "sft"), "--epochs", "1", env=env)
    assert sft.returncode == 0, sft.stderr[-3000:]
    sft_metrics = json.loads((art / "sft" / "metrics.json").read_text())
    assert sft_metrics["n_eval"] == 10 and sft_metrics["rougeL"] >= 0

    reward = run_cli("reward", *common, "--out", str(art / "reward"), "--epochs", "1", env=env)
    assert reward.returncode == 0, reward.stderr[-3000:]
    rm = json.loads((art / "reward" / "metrics.json").read_text())
    proxy_pairs = sum(1 for _ in open(art / "data" / "pref_train.jsonl"))
    assert rm["n_train"] == proxy_pairs < 3 * len(TOPICS)  # the proxy learns from its half only
    # on your data the reward model is the frozen MiniLM feature head (reward.default_reward_backbone)
    from rlhf_helpers.feature_reward import FEATURE_SETS

    assert rm["backbone"] == "minilm" and rm["frozen_backbone"] and rm["feature_set"] in FEATURE_SETS
    assert rm["accuracy"] > 0.5, rm  # the fixture's chosen summary is always the longer one: an easy preference

    ppo_args = ["--out", str(art / "ppo"), "--steps", "3", "--batch-size", "8", "--checkpoint-every", "1"]
    ppo = run_cli("ppo", *common, *ppo_args, env=env)
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    p = json.loads((art / "ppo" / "metrics.json").read_text())
    assert p["steps"] == 3 and np.isfinite(p["kl_end"]) and 0 <= p["win_rate_vs_sft"] <= 1
    assert list((art / "gold_judge").glob("gold_model_*.json")), "PPO's gold verdict did not use the held-out judge"

    ev = run_cli("evaluate", *common, "--out", str(art / "evaluation_cli"), "--ppo", str(art / "ppo"), env=env)
    assert ev.returncode == 0, ev.stderr[-3000:]
    m = json.loads((art / "evaluation_cli" / "metrics.json").read_text())
    assert m["n_eval"] == 10 and set(m["win_rates"]) == {"ppo_vs_sft", "ppo_vs_base", "sft_vs_base"}
    low, high = m["win_rate_ppo_vs_sft_ci"]
    assert 0 <= low <= high <= 1

    from rlhf_helpers.presets import model_path
    from rlhf_helpers.tiny_model import build_info

    info = build_info(model_path("tiny", progress=False))
    assert info["recipe"]["pretrain_steps"] == 30 and info["recipe"]["max_length"] == 96
    assert info["pretrain_loss_last"] < info["pretrain_loss_first"]
