"""Environment check for notebook 00: is every package there, recent enough, and importable?

Prints one [OK]/[FAIL] line per package, like rasbt's ``python_environment_check.py``, so a
learner sees at a glance what to fix before anything long runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module, metadata

from packaging.version import Version

#: distribution name -> (import name, minimum version). Mirrors pyproject.toml's lower bounds.
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "2.4"),
    "transformers": ("transformers", "5.0"),
    "tokenizers": ("tokenizers", "0.22"),
    "peft": ("peft", "0.17"),
    "trl": ("trl", "1.0"),
    "datasets": ("datasets", "3.0"),
    "accelerate": ("accelerate", "1.0"),
    "evaluate": ("evaluate", "0.4"),
    "rouge-score": ("rouge_score", "0.1.2"),
    "sacrebleu": ("sacrebleu", "2.4"),
    "nltk": ("nltk", "3.9"),
    "matplotlib": ("matplotlib", "3.8"),
    "ipywidgets": ("ipywidgets", "8.1"),
    "tqdm": ("tqdm", "4.66"),
}


@dataclass
class PackageStatus:
    name: str
    required: str
    installed: str | None
    ok: bool
    note: str = ""

    def __str__(self) -> str:
        mark = "[OK]  " if self.ok else "[FAIL]"
        have = self.installed or "not installed"
        return f"{mark} {self.name:<13} {have:<14} (needs >= {self.required}) {self.note}".rstrip()


def check_packages(requirements: dict[str, tuple[str, str]] = REQUIREMENTS) -> list[PackageStatus]:
    rows = []
    for dist, (module, minimum) in requirements.items():
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            rows.append(PackageStatus(dist, minimum, None, False, "pip install -e '.[dev]'"))
            continue
        ok = Version(installed) >= Version(minimum)
        note = "" if ok else "too old: upgrade it"
        if ok:
            try:
                import_module(module)
            except Exception as e:  # installed but broken (e.g. a CUDA wheel without drivers)
                ok, note = False, f"import failed: {type(e).__name__}: {e}"
        rows.append(PackageStatus(dist, minimum, installed, ok, note))
    return rows
