"""Every training stage on a decoder-only model, through the command line a learner uses, at small step counts.

``tests/test_course_tiny_causal.py`` runs the whole course on ``tiny-causal`` (every notebook, real step counts: about
20 minutes on a 2-core CPU, so it is marked ``slow`` and left out of the default suite; ``make test ARGS="-m slow"``
runs it). This test keeps the default suite honest about decoder-only models in a minute or two: SFT, the reward
model, PPO, RLOO, GRPO, DPO and best-of-N each run on ``tiny-causal`` through the CLI, read the artifacts of the stage
before them, and write a ``metrics.json`` whose numbers are finite and in range."""

import json
import math
import shutil

import pytest
from conftest import run_cli


@pytest.fixture(scope="module")
def causal_artifacts(tmp_path_factory):
    """SFT and the reward model on tiny-causal, short runs, in a private artifacts folder."""
    art = tmp_path_factory.mktemp("causal_cli") / "artifacts"
    env = {"RLHF_ARTIFACTS": str(art)}
    sft = run_cli("sft", "--preset", "tiny-causal", "--out", str(art / "tiny-causal" / "sft"), "--epochs", "0.3",
                  "--quiet", env=env)
    assert sft.returncode == 0, sft.stderr[-3000:]
    reward = run_cli("reward", "--backbone", "tiny-causal", "--out", str(art / "reward_cli"), "--epochs", "0.3",
                     "--quiet", env=env)
    assert reward.returncode == 0, reward.stderr[-3000:]
    # the reward command saves its model in OUT/model; the policy stages read <artifacts>/<preset>/reward
    shutil.copytree(art / "reward_cli" / "model", art / "tiny-causal" / "reward")
    return art, env


def _weights_stamp(art):
    """When the SFT adapter and the reward model the policy stages must reuse were last written."""
    files = [art / "tiny-causal" / "sft" / "adapter" / "adapter_model.safetensors",
             *sorted((art / "tiny-causal" / "reward").glob("*.safetensors"))]
    return [(f.name, f.stat().st_mtime_ns) for f in files]


def test_sft_and_reward_model_write_their_metrics(causal_artifacts):
    art, _ = causal_artifacts
    sft = json.loads((art / "tiny-causal" / "sft" / "metrics.json").read_text())
    assert sft["preset"] == "tiny-causal" and 0 <= sft["rougeL"] <= 1, sft
    assert json.loads((art / "tiny-causal" / "sft" / "adapter" / "base_model.json").read_text())
    rm = json.loads((art / "reward_cli" / "metrics.json").read_text())
    assert 0 <= rm["accuracy"] <= 1 and 0 <= rm["length_baseline_accuracy"] <= 1, rm
    assert not (art / "sft").exists(), "a tiny-causal stage wrote where the tiny preset's artifacts live"


@pytest.mark.parametrize(
    "command, extra",
    [
        ("ppo", ["--steps", "2", "--batch-size", "8"]),
        ("rloo", ["--steps", "2", "--k", "2"]),
        ("grpo", ["--steps", "2", "--k", "2"]),
        ("dpo", ["--steps", "2"]),
        ("best-of-n", ["--n", "2"]),
    ],
)
def test_policy_stage_runs_on_tiny_causal(causal_artifacts, tmp_path, command, extra):
    art, env = causal_artifacts
    out = tmp_path / command
    before = _weights_stamp(art)
    result = run_cli(command, "--preset", "tiny-causal", "--out", str(out), "--quiet", *extra, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _weights_stamp(art) == before, "the stage trained its own SFT adapter or reward model instead of reusing"
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["win_rate_vs_sft"] <= 1 and m["n_eval"] > 0, m
    kl = m.get("kl_to_sft", m.get("kl_end"))
    assert kl is not None and math.isfinite(kl), m
    if command != "best-of-n":
        assert m["steps"] == 2, m
    else:
        assert kl == pytest.approx(math.log(2) - 1 / 2)
