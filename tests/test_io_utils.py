import pytest

from rlhf_helpers.io_utils import atomic_write_jsonl, atomic_write_text, read_jsonl


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.jsonl"
    atomic_write_text(target, "old\n")

    def rows():
        yield {"a": 1}
        raise RuntimeError("interrupted while producing rows")

    with pytest.raises(RuntimeError):
        atomic_write_jsonl(target, rows())
    assert target.read_text() == "old\n"  # the previous complete file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_jsonl_round_trip(tmp_path):
    rows = [{"prompt": "ü", "n": 1}, {"prompt": "b", "n": 2}]
    atomic_write_jsonl(tmp_path / "x.jsonl", rows)
    assert read_jsonl(tmp_path / "x.jsonl") == rows
    assert oct((tmp_path / "x.jsonl").stat().st_mode & 0o777) != oct(0o600)
