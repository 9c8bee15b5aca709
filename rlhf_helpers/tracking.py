"""TensorBoard for every training stage, when you ask for it: ``report_to="tensorboard"``.

The notebooks' inline plots stay the default (``report_to="none"``). Asked for, each training run writes
one folder of TensorBoard event files,

    <artifacts>/tensorboard/<stage>/<date>_<time>        (root: env RLHF_TENSORBOARD_DIR)

so ``tensorboard --logdir artifacts/tensorboard`` shows the SFT, reward-model and PPO runs side by side,
live while they train. How to ask:

* SFT and reward model: ``sft_defaults(PRESET, report_to="tensorboard")``,
  ``reward_defaults(PRESET, report_to="tensorboard")`` in a CONFIG cell, or ``--report-to tensorboard`` on
  the ``sft`` and ``reward`` commands. transformers' own ``TensorBoardCallback`` writes the Trainer's logs:
  ``train/loss``, ``train/learning_rate``, ``train/grad_norm``, ``eval/loss`` (notebook 02's validation
  loss), ``eval/accuracy`` (notebook 03's held-out accuracy during training), ...
* PPO: ``with ppo_tensorboard(): ppo = run_ppo_stage(PRESET, cfg)``, or ``--report-to tensorboard`` on the
  ``ppo`` command. Every record of ``PPOTrainer.history`` goes in as scalars named as notebook 05 names
  them, under ``ppo/``: ``ppo/reward``, ``ppo/kl``, ``ppo/entropy``, ``ppo/response_length``,
  ``ppo/clipfrac``, ``ppo/approx_kl``, ``ppo/vf_loss``, ``ppo/explained_variance``, ``ppo/beta``, ...
  (:func:`write_history` writes a finished run's history the same way).

Why a context manager for PPO, not a ``PPOConfig`` field like the other stages? ``benchmarks/ppo_seeds.json``
records a digest of the PPO code's syntax tree (``ppo.py``, ``ppo_math.py``, ``ppo_stage.py``) and a test
requires it to match: a logging switch inside that code would mark the measured seeds stale although no
number changes. The context manager wraps ``PPOTrainer.step`` for its duration instead, and restores it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

#: The accepted ``report_to`` values.
REPORT_TO = ("none", "tensorboard")
INSTALL_HINT = 'pip install tensorboard (or pip install -e ".[tensorboard]")'


def check_report_to(report_to: str | None) -> bool:
    """True when TensorBoard is asked for; ``ValueError`` for an unknown value or a missing package."""
    if report_to in (None, "none"):
        return False
    if report_to != "tensorboard":
        raise ValueError(f"report_to={report_to!r}: choose one of {', '.join(REPORT_TO)}")
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"report_to='tensorboard' needs the tensorboard package: {INSTALL_HINT}")
    return True


def tensorboard_root() -> Path:
    """Where every run's event files go: env ``RLHF_TENSORBOARD_DIR``, else ``<artifacts>/tensorboard``."""
    from rlhf_helpers.config import artifacts_dir

    root = os.environ.get("RLHF_TENSORBOARD_DIR")
    return Path(root).expanduser() if root else artifacts_dir() / "tensorboard"


def new_run_dir(stage: str) -> Path:
    """A fresh ``<root>/<stage>/<date>_<time>`` folder name (not created), one per training run."""
    base = tensorboard_root() / stage / time.strftime("%Y-%m-%d_%H-%M-%S")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}_{n}")
    return folder


def _announce(stage: str, folder: Path) -> None:
    from rlhf_helpers.distributed import is_main_process

    if is_main_process():
        print(f"TensorBoard: {stage} logs in {folder} (view: tensorboard --logdir {folder.parent.parent})", flush=True)


def add_tensorboard(trainer, report_to: str | None, stage: str) -> Path | None:
    """Give a transformers ``Trainer`` a ``TensorBoardCallback`` writing to :func:`new_run_dir` when
    ``report_to == "tensorboard"``; returns that folder (None when not asked). The stages' Trainers run in a
    scratch ``output_dir`` that is deleted afterwards, so the callback must not write under it (its default)."""
    if not check_report_to(report_to):
        return None
    from transformers.integrations import TensorBoardCallback

    folder = new_run_dir(stage)
    callback = TensorBoardCallback()
    callback.logging_dir = str(folder)  # read when training begins (on the main process only)
    trainer.add_callback(callback)
    _announce(stage, folder)
    return folder


def write_scalars(writer, record: dict, prefix: str = "ppo", step: int | None = None) -> None:
    """Every number of one history record as ``<prefix>/<key>`` at ``record["step"]`` (or ``step``)."""
    at = record.get("step", step) if step is None else step
    for key, value in record.items():
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(f"{prefix}/{key}", value, at)


def _summary_writer(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


@contextmanager
def ppo_tensorboard(report_to: str | None = "tensorboard", log_dir: str | Path | None = None) -> Iterator[Path | None]:
    """While active, every ``PPOTrainer.step`` writes its record to TensorBoard (main process only), under
    ``ppo/``, in ``log_dir`` (default :func:`new_run_dir("ppo")`); yields that folder. ``report_to="none"``:
    does nothing and yields None, so callers can pass a flag through."""
    if not check_report_to(report_to):
        yield None
        return
    from rlhf_helpers.ppo import PPOTrainer

    folder = Path(log_dir) if log_dir else new_run_dir("ppo")
    original = PPOTrainer.step
    writer = None

    @functools.wraps(original)
    def step(self, *args, **kwargs):
        nonlocal writer
        record = original(self, *args, **kwargs)
        if getattr(self, "rank", 0) == 0:
            if writer is None:
                writer = _summary_writer(folder)
                if is_dataclass(self.cfg):
                    writer.add_text("ppo/config", json.dumps(asdict(self.cfg), indent=1, default=str))
            write_scalars(writer, record, "ppo")
            writer.flush()  # live: TensorBoard shows each step as it ends
        return record

    PPOTrainer.step = step
    _announce("ppo", folder)
    try:
        yield folder
    finally:
        PPOTrainer.step = original
        if writer is not None:
            writer.close()


def write_history(history: list[dict], log_dir: str | Path | None = None, prefix: str = "ppo") -> Path:
    """Write a finished run's history (``trainer.history`` or its ``history.json``) to TensorBoard."""
    check_report_to("tensorboard")
    folder = Path(log_dir) if log_dir else new_run_dir(prefix)
    writer = _summary_writer(folder)
    try:
        for i, record in enumerate(history):
            write_scalars(writer, record, prefix, step=record.get("step", i))
    finally:
        writer.close()
    print(f"TensorBoard: {len(history)} {prefix} records in {folder}", file=sys.stdout, flush=True)
    return folder
