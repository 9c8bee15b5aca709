"""End to end in a real browser: JupyterLab 4 on 127.0.0.1, notebook 07 opened in Debian's Chromium
driven by Playwright, "Run All Cells" from the menu, clicks on the widget's buttons, then the labels
checked on disk; then "Restart Kernel and Run All Cells" and the same annotator resumes where they stopped.

Why a browser at all? The Python-level widget test proves the callbacks; only a browser proves that
JupyterLab renders the widgets, that clicks travel through the comm to the kernel, and that the notebook
runs as a learner would run it. Skipped only where Chromium or Playwright is missing; in CI (``CI`` set)
a missing browser is a failure, because ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

from rlhf_helpers.labeling import Pair, Shown, display_order, replay, write_pairs

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = REPO / "notebooks" / "07_preference_labeling.ipynb"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOTAL_SECONDS = 85  # the whole test, server start to last check (it takes ~30 s on a 2-core CPU)
SESSION, ANNOTATOR = "browser-session", "ada"
#: Requests to our own server on 127.0.0.1 never go through a proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (Debian package 'chromium'; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright; .ci/run installs it)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module", autouse=True)
def _require_browser():
    reason = _missing()
    if reason and os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    if reason:
        pytest.skip(reason)


class Deadline:
    """Every wait gets what is left of the test's total budget, so a hang fails in bounded time."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def ms(self, at_most: float = 40) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the browser test ran out of its time budget")
        return 1000 * min(left, at_most)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pairs() -> list[Pair]:
    return [
        Pair(f"bp{i}", f"Browser prompt {i}: where is order #{1000 + i}?", f"Reply {i}-a.", f"Reply {i}-b.")
        for i in range(5)
    ]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 with a private root, config and artifacts folder; always stopped."""
    root, home, artifacts = tmp_path / "root", tmp_path / "jupyter", tmp_path / "artifacts"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    write_pairs(_pairs(), artifacts / "labeling" / "pairs_to_label.jsonl")  # as notebook 06 would
    settings = home / "settings" / "@jupyterlab"
    # No news prompt (it would make a request and could cover a button) and every cell kept in the DOM.
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "RLHF_ARTIFACTS": str(artifacts),  # the kernel inherits it: labels land in this test's folder
        "RLHF_SEED": "0",
        "RLHF_LABEL_SESSION": SESSION,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "TQDM_DISABLE": "1",
    }
    env.pop("RLHF_ANNOTATOR", None)
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            "--ServerApp.open_browser=False", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # up to ~30 s
            if server.poll() is not None:
                pytest.fail(
                    f"JupyterLab exited with {server.returncode}:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}"
                )
            try:
                HTTP.open(f"{base}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("JupyterLab did not answer within 30 s")
        # The notebook's kernel, started as a session before the page opens: JupyterLab attaches to it
        # instead of racing its kernel-choice dialog against the kernel specs still loading.
        body = {"path": NOTEBOOK.name, "type": "notebook", "name": NOTEBOOK.name, "kernel": {"name": "python3"}}
        req = urllib.request.Request(
            f"{base}/api/sessions?token={token}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        HTTP.open(req, timeout=30).close()
        yield {"base": base, "token": token, "artifacts": artifacts, "log": tmp_path / "jupyter.log"}
    finally:
        _stop_server(server, base, token)
        log.close()


def _stop_server(server: subprocess.Popen, base: str, token: str) -> None:
    """Shut the kernels down through the API (they run in their own process groups), then the server."""
    try:
        with HTTP.open(f"{base}/api/kernels?token={token}", timeout=5) as r:
            kernels = json.load(r)
        for kernel in kernels:
            req = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
            HTTP.open(req, timeout=10).close()
    except OSError:
        pass
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def _menu(page, deadline: Deadline, menu: str, item: str) -> None:
    page.get_by_role("menuitem", name=menu, exact=True).click(timeout=deadline.ms(10))
    page.get_by_role("menuitem", name=item, exact=True).click(timeout=deadline.ms(10))


def _wait_idle(page, deadline: Deadline) -> None:
    """The status bar says what a person reads: the kernel's name and that it is idle."""
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=deadline.ms())


def _wait_text(page, deadline: Deadline, selector: str, text: str) -> None:
    page.locator(selector).filter(has_text=text).first.wait_for(timeout=deadline.ms(20))


def _wait_file(path: Path, deadline: Deadline) -> None:
    while not path.exists():
        deadline.ms()
        time.sleep(0.2)


def _start_annotating(page, deadline: Deadline, done: int, total: int) -> None:
    field = page.locator(".rlhf-annotator input")
    field.fill(ANNOTATOR, timeout=deadline.ms(10))
    field.press("Enter")  # continuous_update=False: the id reaches the kernel on Enter
    _wait_text(page, deadline, ".rlhf-counts", f"{done}/{total}")


def _click(page, deadline: Deadline, css: str, expect_done: int, total: int) -> None:
    page.locator(css).click(timeout=deadline.ms(10))
    _wait_text(page, deadline, ".rlhf-counts", f"{expect_done}/{total}")


def test_label_in_jupyterlab_with_chromium_then_restart_and_resume(lab, page, tmp_path):
    try:
        _label_restart_resume(lab, page)
    except Exception:  # keep what the browser showed, for diagnosis
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'failure.png'}; server log: {lab['log']}")
        raise


def _label_restart_resume(lab, page) -> None:
    deadline = Deadline(TOTAL_SECONDS)
    pairs, total = _pairs(), 5
    metrics = lab["artifacts"] / "metrics" / "labeling.json"
    log = lab["artifacts"] / "labeling" / "sessions" / SESSION / f"{ANNOTATOR}.jsonl"

    page.goto(f"{lab['base']}/lab/tree/{NOTEBOOK.name}?token={lab['token']}", timeout=deadline.ms())
    page.wait_for_selector(".jp-Notebook", timeout=deadline.ms())
    _wait_idle(page, deadline)
    _menu(page, deadline, "Run", "Run All Cells")
    page.wait_for_selector(".rlhf-labeling .rlhf-annotator input", timeout=deadline.ms(60))
    _wait_text(page, deadline, ".jp-OutputArea-output", "no labels yet")  # the last cell ran
    assert metrics.exists(), "the notebook did not get through its demo and record_metrics cells"
    assert json.loads(metrics.read_text())["pairs_from_policy"] is True  # it found notebook 06's file
    assert (
        page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        .filter(has_text="Traceback")
        .count()
        == 0
    )

    # The widget shows the first pair, in its recorded left/right order.
    _start_annotating(page, deadline, done=0, total=total)
    first = Shown(pairs[0], 0, display_order("bp0", seed=0))
    assert pairs[0].prompt in page.locator(".rlhf-prompt").inner_text()
    assert first.left in page.locator(".rlhf-left").inner_text()
    assert first.right in page.locator(".rlhf-right").inner_text()

    _click(page, deadline, ".rlhf-label-a", 1, total)  # pair 0: left is better
    _click(page, deadline, ".rlhf-label-b", 2, total)  # pair 1: right is better
    _click(page, deadline, ".rlhf-label-tie", 3, total)  # pair 2: tie ...
    _click(page, deadline, ".rlhf-undo", 2, total)  # ... withdrawn: pair 2 comes back
    assert pairs[2].prompt in page.locator(".rlhf-prompt").inner_text()
    _click(page, deadline, ".rlhf-label-skip", 3, total)  # pair 2: skip

    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["label", "label", "label", "undo", "label"]
    expected = {
        "bp0": Shown(pairs[0], 0, display_order("bp0", seed=0)).to_label("left"),
        "bp1": Shown(pairs[1], 1, display_order("bp1", seed=0)).to_label("right"),
        "bp2": "skip",
    }
    assert {pid: r["label"] for pid, r in replay(log).labels.items()} == expected
    assert [e["choice"] for e in events if e["event"] == "label"] == ["left", "right", "tie", "skip"]
    assert all(e["annotator"] == ANNOTATOR and e["seconds"] >= 0 for e in events if e["event"] == "label")

    # A kernel restart: everything re-runs, the same annotator continues at pair 4 of 5.
    metrics.unlink()
    _menu(page, deadline, "Kernel", "Restart Kernel and Run All Cells…")
    page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept").click(timeout=deadline.ms(10))
    _wait_file(metrics, deadline)
    _wait_text(page, deadline, ".jp-OutputArea-output", "preference pairs written")  # the last cell, re-run
    _start_annotating(page, deadline, done=3, total=total)
    assert pairs[3].prompt in page.locator(".rlhf-prompt").inner_text()
    _click(page, deadline, ".rlhf-label-b", 4, total)
    labels = replay(log).labels
    assert len(labels) == 4 and labels["bp3"]["label"] == Shown(pairs[3], 3, display_order("bp3", 0)).to_label("right")
