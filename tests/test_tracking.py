"""TensorBoard when asked (rlhf_helpers.tracking): a short SFT, reward-model and PPO run each write an event file
with the scalars the notebooks plot; the default writes nothing; the CLI's --report-to reaches every stage."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from rlhf_helpers import tracking  # noqa: E402


def scalar_tags(folder: Path) -> dict[str, int]:
    """{tag: number of points} of the event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    counts: dict[str, int] = {}
    for run in {f.parent for f in files}:
        acc = EventAccumulator(str(run))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            counts[tag] = counts.get(tag, 0) + len(acc.Scalars(tag))
    return counts


@pytest.fixture
def tb_root(tmp_path, monkeypatch, artifacts):
    root = tmp_path / "tb"
    monkeypatch.setenv("RLHF_TENSORBOARD_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def small_sft(tmp_path_factory):
    """A 1-epoch SFT adapter on 32 training rows of the tiny preset, logged to TensorBoard."""
    import os

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.sft import save_sft, sft_defaults, train_sft

    tmp = tmp_path_factory.mktemp("tb_sft")
    old = {k: os.environ.get(k) for k in ("RLHF_ARTIFACTS", "RLHF_TENSORBOARD_DIR")}
    os.environ.update(RLHF_ARTIFACTS=str(tmp / "artifacts"), RLHF_TENSORBOARD_DIR=str(tmp / "tb"))
    try:
        cfg = sft_defaults("tiny", num_epochs=1, batch_size=8, report_to="tensorboard")
        train, val = load_split("sft_train").select(range(32)), load_split("sft_val").select(range(16))
        result = train_sft(cfg, train, val, progress=False)
        adapter = save_sft(result, tmp / "sft")
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return adapter, tmp / "tb"


def test_sft_report_to_tensorboard_writes_train_and_validation_loss(small_sft):
    _, root = small_sft
    runs = list((root / "sft").iterdir())
    assert len(runs) == 1  # <root>/sft/<date>_<time>
    tags = scalar_tags(root / "sft")
    assert tags["train/loss"] >= 1 and tags["eval/loss"] == 1  # notebook 02's train and validation curves


def test_reward_report_to_tensorboard_writes_loss_and_held_out_accuracy(tb_root):
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.reward import reward_defaults, train_reward_model

    cfg = reward_defaults("tiny", num_epochs=1, max_train_pairs=16, batch_size=8, report_to="tensorboard")
    train_reward_model(cfg, load_split("pref_train"), load_split("pref_val").select(range(16)), progress=False)
    tags = scalar_tags(tb_root / "reward")
    assert tags["train/loss"] >= 1 and tags["eval/accuracy"] >= 1  # notebook 03's accuracy during training


def test_default_report_to_writes_nothing(tb_root):
    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.reward import RewardConfig, reward_defaults, train_reward_model
    from rlhf_helpers.sft import SFTConfig

    assert SFTConfig().report_to == "none" and RewardConfig().report_to == "none"
    cfg = reward_defaults("tiny", num_epochs=1, max_train_pairs=16, batch_size=16)
    train_reward_model(cfg, load_split("pref_train"), None, progress=False)
    assert not tb_root.exists()


def test_ppo_tensorboard_writes_every_history_record_under_ppo(small_sft, tmp_path):
    from transformers import AutoTokenizer

    from rlhf_helpers.data_prep import load_split
    from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference
    from rlhf_helpers.presets import model_path

    adapter, _ = small_sft
    original = PPOTrainer.step
    trainer = PPOTrainer(
        load_policy_and_reference(adapter, model_path("tiny")),
        AutoTokenizer.from_pretrained(adapter),
        lambda prompts, replies: [float(len(r) % 3) for r in replies],
        list(load_split("sft_train")["prompt"][:16]),
        PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6, checkpoint_every=0),
    )
    with tracking.ppo_tensorboard(log_dir=tmp_path / "ppo") as folder:
        assert folder == tmp_path / "ppo" and PPOTrainer.step is not original
        trainer.train(steps=2, progress=False)
    assert PPOTrainer.step is original  # restored
    trainer.step()  # outside the block: not logged
    tags = scalar_tags(folder)
    for name in ("reward", "kl", "entropy", "response_length", "clipfrac", "approx_kl", "vf_loss",
                 "explained_variance", "seconds", "beta", "pg_loss"):
        assert tags[f"ppo/{name}"] == 2, name  # notebook 05's panels, one point per step
    assert "ppo/step" not in tags
    assert set(tags) == {f"ppo/{k}" for k in trainer.history[0] if k != "step"}

    with tracking.ppo_tensorboard("none") as nothing:  # a flag passed through: no-op
        assert nothing is None and PPOTrainer.step is original

    again = tracking.write_history(trainer.history, tmp_path / "from_history")
    assert scalar_tags(again)["ppo/reward"] == 3


def test_report_to_is_checked(monkeypatch):
    import importlib.util

    assert tracking.check_report_to("none") is False and tracking.check_report_to(None) is False
    assert tracking.check_report_to("tensorboard") is True
    with pytest.raises(ValueError, match="choose one of none, tensorboard"):
        tracking.check_report_to("wandb")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs the tensorboard package: pip install tensorboard"):
        tracking.check_report_to("tensorboard")


def test_run_dirs_are_per_stage_and_never_reused(tb_root):
    first = tracking.new_run_dir("sft")
    assert first.parent == tb_root / "sft"
    first.mkdir(parents=True)
    assert tracking.new_run_dir("sft") != first


class Captured(Exception):
    pass


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_cli_report_to_reaches_each_stage(stage, monkeypatch, tmp_path, capsys):
    import rlhf_helpers.ppo_stage
    import rlhf_helpers.reward
    import rlhf_helpers.sft
    from rlhf_helpers import cli
    from rlhf_helpers.ppo import PPOTrainer

    seen = {}

    def fake_stage(*args, **kwargs):
        cfg = next((a for a in args if hasattr(a, "preset") or hasattr(a, "backbone")), None)
        seen["report_to"] = getattr(cfg, "report_to", None)
        seen["ppo_logged"] = getattr(PPOTrainer.step, "__wrapped__", None) is not None
        raise ValueError("captured")

    target = {"sft": rlhf_helpers.sft, "reward": rlhf_helpers.reward, "ppo": rlhf_helpers.ppo_stage}[stage]
    monkeypatch.setattr(target, f"run_{stage}_stage", fake_stage)
    monkeypatch.setenv("RLHF_TENSORBOARD_DIR", str(tmp_path / "tb"))
    assert cli.main([stage, "--report-to", "tensorboard", "--out", str(tmp_path / "o")]) == 2
    assert seen == ({"report_to": None, "ppo_logged": True} if stage == "ppo"
                    else {"report_to": "tensorboard", "ppo_logged": False})
    assert cli.main([stage, "--out", str(tmp_path / "o")]) == 2
    assert seen["report_to"] in (None, "none") and not seen["ppo_logged"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, "--report-to", "wandb"])
    assert exit_info.value.code == 2 and "choose one of none, tensorboard" in capsys.readouterr().err
