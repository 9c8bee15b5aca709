"""The whole course on a decoder-only model: ``python -m rlhf_helpers run --preset tiny-causal`` executes every
notebook (their sanity-check cells assert each stage's results) and reports every stage's metrics.

nbval runs the notebooks on the default ``tiny`` preset; this test runs them all again on ``tiny-causal``, headless
through the same runner a learner uses, so a decoder-only regression in any notebook fails it.

About 20 minutes on a 2-core CPU, more than the whole default suite may take, so it is marked ``slow`` and runs with
``make test ARGS="-m slow"`` (before a release, or after touching a notebook's decoder-only path).
``tests/test_cli_tiny_causal.py`` keeps every decoder-only stage in the default suite, at small step counts."""

import json

import pytest
from conftest import run_cli

from rlhf_helpers.runner import course_notebooks


@pytest.mark.slow
def test_the_whole_course_runs_on_tiny_causal(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", "--preset", "tiny-causal", "--out", str(out), timeout=3000)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    failed = [n for n in summary.get("notebooks", []) if n["status"] != "ok"]
    assert result.returncode == 0 and not failed, (failed, result.stderr[-3000:])
    assert [n["name"] for n in summary["notebooks"]] == [p.stem for p in course_notebooks()]
    metrics = summary["metrics"]
    assert metrics["setup"]["preset"] == "tiny-causal"
    assert metrics["sft"]["rougeL"] > 2 * metrics["sft"]["rougeL_before"], metrics["sft"]
    assert metrics["reward"]["accuracy"] > metrics["reward"]["length_baseline_accuracy"], metrics["reward"]
    assert metrics["ppo"]["kl_end"] < metrics["ppo"]["kl_bound"], metrics["ppo"]
    # the artifacts are keyed by preset: nothing of the tiny-causal run lands where the tiny preset's would
    assert (out / "artifacts" / "tiny-causal" / "sft" / "adapter").is_dir()
    assert not (out / "artifacts" / "sft").exists()
