"""Each kind of bad input gives exit status 2 and a `file:line: field ...` message; good input gives 0."""

import json

import pytest
from conftest import run_cli

from rlhf_helpers.data_loading import DataValidationError, load_records, validate_rows

GOOD = {"prompt": "Where is my order #123?", "response": "It ships today."}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def validate(path, kind="sft"):
    result = run_cli("validate", str(path), "--kind", kind, "--preset", "")
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    "bad_row, field, message",
    [
        ({"prompt": "hi"}, "response", "missing field"),
        ({"prompt": "hi", "response": "   "}, "response", "empty text"),
        ({"prompt": 7, "response": "x"}, "prompt", "expected text, got int"),
        ({"prompt": "hi", "response": None}, "response", "missing value"),
    ],
)
def test_field_errors_name_file_line_and_field(tmp_path, bad_row, field, message):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, GOOD | {"prompt": "other"}, bad_row])
    code, err = validate(path)
    assert code == 2
    assert f"{path}:3: field '{field}': {message}" in err


def test_malformed_json_line(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, '{"prompt": "a", "response": }'])
    code, err = validate(path)
    assert code == 2 and f"{path}:2: malformed JSON line" in err


def test_broken_csv_quoting(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,response\n"a","b"\n"c","d\n"e,f\n')
    code, err = validate(path)
    assert code == 2 and f"{path}:3: broken CSV quoting" in err


def test_csv_rows_spanning_lines_report_their_first_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,response\n"a","multi\nline"\n"c",""\n')
    code, err = validate(path)
    assert code == 2 and f"{path}:4: field 'response': empty text" in err


def test_undecodable_bytes_name_the_field(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "ok", "response": "caf\xe9 latin-1"}\n')
    code, err = validate(path)
    assert code == 2 and f"{path}:2: field 'response': contains bytes that are not valid UTF-8" in err


def test_chosen_equal_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "same", "rejected": "same "}])
    code, err = validate(path, "preferences")
    assert code == 2 and f"{path}:1: field 'rejected': chosen and rejected are identical" in err


def test_json_array_reports_the_line_each_object_starts_on(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": "a",\n   "chosen": "b"}\n]\n')
    code, err = validate(path, "preferences")
    assert code == 2 and f"{path}:3: field 'rejected': missing field" in err


def test_malformed_json_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": \n]\n')
    code, err = validate(path, "preferences")
    assert code == 2 and f"{path}:4: malformed JSON" in err


def test_duplicates_and_over_long_texts_are_counted_not_fatal(tmp_path):
    long_prompt = "please help " * 200
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, {"prompt": long_prompt, "response": "ok"}])
    result = run_cli("validate", str(path), "--kind", "sft", "--preset", "tiny")
    assert result.returncode == 0, result.stderr
    assert "1 duplicates, 1 over-long texts" in result.stdout
    assert f"{path}:2: duplicate of line 1 (warning)" in result.stderr
    assert f"{path}:3: field 'prompt':" in result.stderr and "longer than the preset's 96" in result.stderr


def test_valid_file_exits_zero_with_one_line_summary():
    result = run_cli("validate", "data/preferences.jsonl", "--kind", "preferences", "--preset", "")
    assert result.returncode == 0
    expected = "data/preferences.jsonl: valid: 1575 preferences rows, 0 duplicates, 0 over-long texts"
    assert result.stdout.strip().splitlines() == [expected]


def test_missing_file_is_bad_input(tmp_path):
    code, err = validate(tmp_path / "nope.jsonl")
    assert code == 2 and "nope.jsonl" in err


def test_seed_format_and_aliases_normalise_to_standard_columns(tmp_path):
    path = write_jsonl(tmp_path / "seed.jsonl", [{"prompt": "p", "human_answer": "good", "machine_answer": "bad"}])
    ds = load_records(path, "preferences")
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds[0] == {"prompt": "p", "chosen": "good", "rejected": "bad"}


def test_saved_datasets_folder_and_csv_load_the_same(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "response": f"r{i}", "issue": "late"} for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    (tmp_path / "d.csv").write_text("prompt,response,issue\n" + "".join(f"p{i},r{i},late\n" for i in range(3)))
    assert load_records(tmp_path / "saved", "sft").to_list() == rows
    assert load_records(tmp_path / "d.csv", "sft").to_list() == rows


def test_hub_dataset_name_offline_gives_a_clear_error():
    with pytest.raises(FileNotFoundError, match="hub dataset"):
        load_records("someone/some-dataset", "sft")


def test_load_records_raises_with_every_problem_listed(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "", "response": "x"}, {"prompt": "a"}])
    with pytest.raises(DataValidationError) as info:
        load_records(path, "sft")
    assert len(info.value.report.errors) == 2
    assert f"{path}:1: field 'prompt': empty text" in str(info.value)


def test_validation_writes_nothing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    validate_rows(path, "sft")
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]


def test_own_data_folder_needs_only_the_three_training_files(tmp_path):
    """A learner's RLHF_DATA_DIR holds sft/preferences/eval; the seed-format file is optional."""
    import shutil

    from rlhf_helpers.config import data_dir
    from rlhf_helpers.data_prep import load_course_data

    for name in ("sft.jsonl", "preferences.jsonl", "eval.jsonl"):
        shutil.copy(data_dir() / name, tmp_path / name)
    data = load_course_data(tmp_path)
    assert set(data) == {"sft", "preferences", "eval"}
    assert len(data["sft"]) > 0 and len(data["eval"]) > 0
    assert "seed_format" in load_course_data()  # the course folder still has it


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "", "empty file: no data rows"),
        ("blank.jsonl", "\n  \n\t\n", "no data rows: the file holds only blank lines"),
        ("blank.csv", "\n\n", "no data rows: the file holds only blank lines"),
        ("header.csv", "prompt,chosen,rejected\n", "no data rows: the file holds only a header line"),
        ("list.json", "[]\n", "no data rows (an empty list)"),
        ("wrapped.json", '{"data": []}', "no data rows (an empty list)"),
    ],
)
def test_a_file_without_data_rows_is_invalid(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    code, err = validate(path, "preferences")
    assert code == 2
    assert f"{path}: {message}" in err and f"{path}: INVALID (1 errors): 0 preferences rows" in err
    with pytest.raises(DataValidationError, match="no data rows"):
        load_records(path, "preferences")


def pairs(n):
    return [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def test_too_few_pairs_to_train_on_is_a_warning_for_validate(tmp_path):
    """A small preference file is a fine held-out set: validate passes it, with a warning."""
    from rlhf_helpers.data_loading import MIN_TRAINING_PAIRS

    path = write_jsonl(tmp_path / "few.jsonl", pairs(5))
    result = run_cli("validate", str(path), "--kind", "preferences", "--preset", "")
    assert result.returncode == 0
    assert f"{path}: only 5 pairs: enough to evaluate a reward model on, too few to train one on " in result.stderr
    assert f"(at least {MIN_TRAINING_PAIRS}) (warning)" in result.stderr
    enough = write_jsonl(tmp_path / "enough.jsonl", pairs(MIN_TRAINING_PAIRS))
    report, _ = validate_rows(enough, "preferences")
    assert report.ok and not report.warnings


def test_too_few_pairs_to_train_on_is_invalid_for_training(tmp_path):
    from rlhf_helpers.data_loading import MIN_TRAINING_PAIRS, load_training_pairs

    few = write_jsonl(tmp_path / "few.jsonl", pairs(MIN_TRAINING_PAIRS - 1))
    with pytest.raises(DataValidationError, match=f"only {MIN_TRAINING_PAIRS - 1} preference pairs"):
        load_training_pairs(few)
    assert len(load_training_pairs(write_jsonl(tmp_path / "ok.jsonl", pairs(MIN_TRAINING_PAIRS)))) == 16

    out = tmp_path / "o"
    result = run_cli("reward", "--train", str(few), "--eval", str(few), "--out", str(out), "--quiet",
                     env={"RLHF_ARTIFACTS": str(tmp_path / "a")})
    assert result.returncode == 2, result.stderr[-2000:]
    assert (f"{few}: only {MIN_TRAINING_PAIRS - 1} preference pairs, too few to train a reward model on: at least "
            f"{MIN_TRAINING_PAIRS} are needed") in result.stderr
    assert not (out / "metrics.json").exists()


def test_reward_cli_empty_training_file_exits_2(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cli("reward", "--train", str(empty), "--out", str(tmp_path / "o"), "--quiet",
                     env={"RLHF_ARTIFACTS": str(tmp_path / "a")})
    assert result.returncode == 2 and f"{empty}: empty file: no data rows" in result.stderr
