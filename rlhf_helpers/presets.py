"""Model presets: one name picks the base model and the defaults every stage uses.

``tiny`` is built locally (see :mod:`rlhf_helpers.tiny_model`) and is the default, so the course
runs offline on a laptop. The ``flan-t5-*`` presets load Google's checkpoints from the Hugging Face
hub through *the same code*: the same classes, tokenizer API, LoRA targets and training loops.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rlhf_helpers.config import preset_name


class PresetUnavailableError(RuntimeError):
    """The preset's weights cannot be had here (no hub access and no local copy)."""


@dataclass(frozen=True)
class Preset:
    """A base model plus the sizes that suit it. ``hub_name`` is None for the locally built tiny model."""

    name: str
    hub_name: str | None
    max_source_length: int
    max_target_length: int
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", None, 96, 64, "1.5M-parameter T5 pretrained locally on the course data (offline, CPU)"),
    "flan-t5-small": Preset("flan-t5-small", "google/flan-t5-small", 512, 128, "77M parameters; CPU or any GPU"),
    "flan-t5-base": Preset("flan-t5-base", "google/flan-t5-base", 512, 128, "248M parameters; a free Colab T4"),
    "flan-t5-large": Preset("flan-t5-large", "google/flan-t5-large", 512, 128, "783M parameters; a 16 GB+ GPU"),
}


def get_preset(name: str | None = None) -> Preset:
    """The preset called ``name`` (default: env ``RLHF_PRESET`` or ``tiny``), with a clear error."""
    name = name or preset_name()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub answers a TCP connection within ``timeout`` seconds.

    Checked before any download so that an offline machine fails in seconds with a useful
    message instead of retrying for minutes inside ``from_pretrained``.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _locally_cached(hub_name: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_name, local_files_only=True))
    except Exception:  # not in the local HF cache (the exception type varies across versions)
        return None


def model_path(name: str | None = None, progress: bool = True) -> str:
    """A path or hub id that ``from_pretrained`` can load for this preset.

    ``tiny`` is built (about a minute on 2 CPU cores) the first time and cached under
    ``RLHF_CACHE``. Hub presets use the local HF cache when present; otherwise the hub must be
    reachable, else :class:`PresetUnavailableError` says what to do.
    """
    preset = get_preset(name)
    if preset.hub_name is None:
        from rlhf_helpers.tiny_model import tiny_model_dir

        return str(tiny_model_dir(progress=progress))
    cached = _locally_cached(preset.hub_name)
    if cached is not None:
        return str(cached)
    if not hub_reachable():
        raise PresetUnavailableError(
            f"preset {preset.name!r} needs {preset.hub_name} from the Hugging Face hub, which cannot be reached "
            "from this machine (offline, blocked, or HF_HUB_OFFLINE=1) and is not in the local HF cache. "
            "Use the offline preset instead: RLHF_PRESET=tiny (or --preset tiny), or download the model "
            "on a connected machine first."
        )
    return preset.hub_name


def load_tokenizer(name: str | None = None):
    """The preset's tokenizer alone (for ``tiny`` this does not need the model to be built)."""
    from transformers import AutoTokenizer

    if get_preset(name).hub_name is None:
        from rlhf_helpers.tiny_model import tiny_tokenizer_dir

        return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    return AutoTokenizer.from_pretrained(model_path(name))


def load_seq2seq(name: str | None = None):
    """(model, tokenizer) for the preset: a ``T5ForConditionalGeneration`` and its tokenizer."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = model_path(name)
    return AutoModelForSeq2SeqLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def describe(name: str | None = None) -> str:
    """One line for notebooks: which preset, which device."""
    from rlhf_helpers.config import device_name

    preset = get_preset(name)
    return f"preset: {preset.name} ({preset.description}) | device: {device_name()}"
