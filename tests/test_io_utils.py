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


def test_atomic_write_dir_replaces_whole_or_not_at_all(tmp_path):
    from rlhf_helpers.io_utils import atomic_write_dir

    target = tmp_path / "model"
    atomic_write_dir(target, lambda d: (d / "weights.bin").write_text("v1"))

    def crash(d):
        (d / "weights.bin").write_text("half of v2")
        raise RuntimeError("killed while saving")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, crash)
    assert (target / "weights.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left
    atomic_write_dir(target, lambda d: (d / "weights.bin").write_text("v2"))
    assert (target / "weights.bin").read_text() == "v2"
    atomic_write_dir(target, lambda d: (d / "weights.bin").write_text("v3"), keep_existing=True)
    assert (target / "weights.bin").read_text() == "v2"  # a cache entry that exists is kept
