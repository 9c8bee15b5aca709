"""Scale-out: training stages under `accelerate launch` with 2 CPU processes (DDP over gloo), on the tiny
preset. Each result must be written once (by the main process), leave no temp folders, and load."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "accelerate"


def accelerate_launch(*args: str, artifacts: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file configs/accelerate/ddp_cpu_2proc.yaml ARGS`` on the CPU, even
    on a machine with GPUs, with a private artifacts folder."""
    env = {**os.environ, "RLHF_ARTIFACTS": str(artifacts), "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp_cpu_2proc.yaml")]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def leftovers(folder: Path) -> list[Path]:
    """Temp files and folders of the atomic writers (``.name-xxxx``, ``.name.xxxx.tmp``)."""
    return [p for p in folder.rglob(".*")]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """`python -m rlhf_helpers sft` on 2 processes, 1 epoch.

    On a fresh cache the launched main process builds the tiny base while the other waits. torchrun
    sets OMP_NUM_THREADS=1, but the build runs on ``tiny_model.BUILD_THREADS`` threads, so the base is
    the one every later test and notebook would have built (checked: bit-identical weights)."""
    root = tmp_path_factory.mktemp("accelerate")
    out = root / "artifacts" / "sft"
    result = accelerate_launch(
        "-m", "rlhf_helpers", "sft", "--preset", "tiny", "--out", str(out), "--epochs", "1", "--quiet",
        artifacts=root / "artifacts",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out, result


def test_sft_under_accelerate_saves_once_and_loads(sft_run):
    from rlhf_helpers.generation import DecodeSettings, generate_responses
    from rlhf_helpers.sft import load_sft

    root, out, result = sft_run
    assert result.stdout.count("SFT done") == 1, result.stdout  # one report, from the main process
    assert [p.parent for p in root.rglob("adapter_config.json")] == [out / "adapter"]
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "metrics.json"]
    assert sorted(p.name for p in (root / "artifacts" / "metrics").iterdir()) == ["sft.json"]
    assert leftovers(root) == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["adapter_dir"] == str(out / "adapter")
    assert metrics["rougeL"] > metrics["rougeL_before"]

    model, tokenizer, cfg = load_sft(out / "adapter")
    replies = generate_responses(
        model, tokenizer, ["Reply to the customer. Customer: Ana. Order: #12345. Product: red mug. Message: Hi"],
        DecodeSettings(max_new_tokens=24), max_source_length=cfg.max_source_length,
    )  # fmt: skip
    assert replies[0].strip()


def test_ppo_trainer_under_ddp_keeps_processes_in_step(sft_run, tmp_path):
    """Our PPOTrainer on 2 processes (tests/ddp_ppo_worker.py, 3 small steps): each process samples its own
    prompts, the weights stay identical (DDP averages gradients), logged stats and beta are the same on both,
    a NaN loss on one process makes both skip, NaN rewards on one leave the shared score statistics finite on both;
    checkpoints are written once and load in one process."""
    root, out, _ = sft_run
    result = accelerate_launch(
        str(REPO / "tests" / "ddp_ppo_worker.py"), str(out / "adapter"), str(tmp_path), artifacts=root / "artifacts"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads((tmp_path / "report.json").read_text())
    assert [s["rank"] for s in seen] == [0, 1] and all(s["world"] == 2 for s in seen)
    first, second = seen
    assert first["prompts_step0"] != second["prompts_step0"]
    assert first["params_after"] != first["params_before"]  # it trained...
    assert first["params_after"] == second["params_after"]  # ...in step
    assert json.dumps(first["history"]) == json.dumps(second["history"]) and first["beta"] == second["beta"]
    assert first["skipped"] == second["skipped"] > 0
    assert first["skipped_replies"] == second["skipped_replies"] == 8  # process 1's batch at step 1, seen by both
    assert first["score_stats"] == second["score_stats"] and math.isfinite(first["score_stats"]["mean"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "final", "report.json"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00002"]
    assert leftovers(tmp_path) == []

    from transformers import AutoTokenizer

    from rlhf_helpers.ppo import PPOConfig, PPOTrainer, load_policy_and_reference
    from rlhf_helpers.presets import model_path

    model = load_policy_and_reference(out / "adapter", model_path("tiny"))
    trainer = PPOTrainer(model, AutoTokenizer.from_pretrained(out / "adapter"), None, ["x"], PPOConfig())
    trainer.load_checkpoint(tmp_path / "final")
    assert trainer.step_idx == 3 and len(trainer.history) == 3
    assert sum(p.double().sum().item() for p in trainer.params) == pytest.approx(first["params_after"], rel=1e-9)


@pytest.mark.parametrize("name", ["ddp.yaml", "ddp_cpu_2proc.yaml", "deepspeed_zero2.yaml"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert raw["mixed_precision"] in ("no", "bf16")  # never fp16 for T5
    config = load_config_from_file(str(CONFIGS / name))
    assert config.num_processes >= 2 and config.distributed_type.value in ("MULTI_GPU", "DEEPSPEED")
    if config.distributed_type.value == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2 and config.mixed_precision == "bf16"


def test_deepspeed_zero3_is_refused_with_a_message(monkeypatch):
    from rlhf_helpers.distributed import process_state

    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ValueError, match="ZeRO-3 is not supported"):
        process_state()
