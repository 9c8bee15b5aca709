"""Several processes, one result: the few rules a stage follows under ``accelerate launch``.

``accelerate launch --num_processes N -m rlhf_helpers sft ...`` starts N copies of the command (one
per GPU, or N CPU processes with ``--cpu``). Training is data-parallel (DDP): every process holds
the model, trains on its share of each batch, and gradients are averaged, so all copies stay equal.
Everything else must happen once:

* files (data splits, the tiny base model's cache, saved models, metrics, plots) are written by the
  main process only; the others wait for it (``main_process_first``, ``on_main_process``);
* evaluation that only feeds the metrics runs on the main process, and its result is sent to all.

Without ``accelerate launch`` there is one process, which is the main one: every helper below is
then a plain call, so notebooks and ``python -m rlhf_helpers`` work unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def process_state():
    """accelerate's ``PartialState``: process index and count, ``wait_for_everyone`` (a shared singleton).

    ``cpu`` as ``TrainingArguments(use_cpu=...)`` will set it: with ``accelerate launch --cpu``, or on
    a machine without a GPU, the processes form a CPU (gloo) group."""
    import os

    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":  # fail now rather than hang later
        raise ValueError(
            "DeepSpeed ZeRO-3 is not supported: it splits every weight across the processes, but the stages "
            "evaluate and save on the main process alone. Use configs/accelerate/deepspeed_zero2.yaml or ddp.yaml"
        )
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def num_processes() -> int:
    return process_state().num_processes


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (it may write caches and data files); the others run it
    once it is done (and then only read). Never put collective work such as training in this block."""
    with process_state().main_process_first():
        yield


def on_main_process(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on the main process only; every process returns its result (pickled
    and broadcast). The other processes wait meanwhile, so files ``fn`` writes exist afterwards."""
    state = process_state()
    result = [fn(*args, **kwargs) if state.is_main_process else None]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(result, from_process=0)
    return result[0]


def mean_over_processes(stats: dict[str, float]) -> dict[str, float]:
    """Each number averaged over the processes: the same dict on all of them (one process: unchanged)."""
    import torch
    from accelerate.utils import reduce

    values = torch.tensor(list(stats.values()), dtype=torch.float64, device=process_state().device)
    return dict(zip(stats, reduce(values, "mean").tolist()))


def ddp_accelerator(**kwargs):
    """An ``accelerate.Accelerator`` for our own training loop (PPO): one process, or DDP under
    ``accelerate launch``. DeepSpeed and FSDP configurations are for the Trainer-based stages."""
    from accelerate import Accelerator, DistributedType

    process_state()  # first, so that CPU processes form a group even without `accelerate launch --cpu`
    accelerator = Accelerator(**kwargs)
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ValueError(
            f"PPO runs in one process or under DDP, not {accelerator.distributed_type.value}: launch it with "
            "configs/accelerate/ddp.yaml (DeepSpeed configs are for the sft and reward stages)"
        )
    return accelerator
