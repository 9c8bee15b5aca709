"""benchmarks/beyond_ppo_seeds.json (notebook 08's head-to-head table) against the code: made by the current
DPO/RLOO/GRPO/best-of-N code (its digest), complete (every method at seeds 0, 1, 2; best-of-N at N = 2, 4, 8, 16) and
self-consistent (summaries, win rates, intervals, best-of-N's analytic KL). Reads files only: no training."""

import importlib.util
import json
import statistics

import pytest

from rlhf_helpers.config import REPO_ROOT
from rlhf_helpers.online_math import best_of_n_kl


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bps():
    return load("beyond_ppo_seeds")


@pytest.fixture(scope="module")
def entry():
    return json.loads((REPO_ROOT / "benchmarks" / "beyond_ppo_seeds.json").read_text())["defaults"]


def test_the_stored_sweep_is_current_and_complete(bps, entry):
    stale = "the beyond-PPO code changed: run python benchmarks/beyond_ppo_seeds.py"
    assert entry["code_sha256"] == bps.code_digest(), stale
    assert entry["preset"] == "tiny" and entry["seeds"] == [0, 1, 2] and entry["ns"] == [2, 4, 8, 16]
    assert bps.missing_runs(entry) == []
    assert set(entry["runs"]) == {"dpo", "rloo", "grpo", "best-of-2", "best-of-4", "best-of-8", "best-of-16"}


def test_the_stored_numbers_are_consistent(bps, entry):
    for name, runs in entry["runs"].items():
        wins = [r["win_rate_vs_sft"] for r in runs.values()]
        assert entry["summary"][name]["win_rate_vs_sft"]["mean"] == pytest.approx(statistics.fmean(wins))
        assert entry["summary"][name]["win_rate_vs_sft"]["min"] == min(wins)
        for r in runs.values():
            assert r["wins"] + r["ties"] + r["losses"] == r["n_eval"] == 250
            assert r["win_rate_vs_sft"] == pytest.approx((r["wins"] + 0.5 * r["ties"]) / r["n_eval"])
            assert 0.0 <= r["ci_low"] <= r["win_rate_vs_sft"] <= r["ci_high"] <= 1.0
            if name.startswith("best-of-"):
                assert r["kl_to_sft"] == pytest.approx(best_of_n_kl(int(name.rsplit("-", 1)[1])), abs=1e-12)
    table = bps.head_to_head(entry, bps.ppo_rows())
    assert list(table.index) == ["ppo", "dpo", "rloo", "grpo", "best-of-2", "best-of-4", "best-of-8", "best-of-16"]
    assert table.loc["dpo", "win_rate_mean"] == pytest.approx(entry["summary"]["dpo"]["win_rate_vs_sft"]["mean"])


def test_missing_runs(bps):
    assert len(bps.missing_runs({})) == 3 * (3 + 4)
    partial = {"runs": {"dpo": {"0": {}, "1": {}, "2": {}}}}
    assert "dpo@1" not in bps.missing_runs(partial) and "rloo@1" in bps.missing_runs(partial)


def test_the_readme_states_the_stored_numbers(bps, entry):
    """README's "Beyond PPO" paragraph copies each method's mean (min-max) gold win rate and mean KL from the file."""
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("**Beyond PPO")
    paragraph = readme[start : readme.index("\n\n", start)]
    table = bps.head_to_head(entry, bps.ppo_rows())
    for method, r in table.iterrows():
        stated = f"{r.win_rate_mean:.3f} ({r.win_rate_min:.3f}–{r.win_rate_max:.3f}) at {r.kl_to_sft:.2f} nats"
        assert stated in paragraph, (method, stated)
