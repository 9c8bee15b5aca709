import json
import re

import nbformat
from conftest import REPO, run_cli

from rlhf_helpers.colab import BRANCH, REPOSITORY, badge_markdown, colab_url
from rlhf_helpers.runner import course_notebooks


def test_every_notebook_has_a_badge_that_points_at_itself():
    notebooks = course_notebooks()
    assert [p.name for p in notebooks][:2] == ["00_setup.ipynb", "01_dataset_prep.ipynb"]
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        urls = re.findall(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", nb.cells[0].source)
        assert urls == [colab_url(path)], path.name
        assert badge_markdown(path) in nb.cells[0].source
        relative = urls[0].split(f"/github/{REPOSITORY}/blob/{BRANCH}/", 1)[1]
        assert (REPO / relative).is_file()


def test_every_notebook_states_objectives_runtime_and_has_sanity_checks():
    for path in course_notebooks():
        nb = nbformat.read(path, as_version=4)
        assert "**You will learn**" in nb.cells[0].source and "**Expected runtime:**" in nb.cells[0].source
        assert 'if "google.colab" in sys.modules' in nb.cells[1].source  # install only inside Colab
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert 'PRESET = select_preset(os.environ.get("RLHF_PRESET"' in code  # artifacts keyed by the preset
        assert "# Sanity check" in code and "assert " in code
        assert any("## Solutions" in c.source for c in nb.cells if c.cell_type == "markdown")


def test_run_executes_notebooks_and_writes_summary(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", "--out", str(out), "--only", "00_setup", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [n["name"] for n in summary["notebooks"]] == ["00_setup"]
    assert summary["notebooks"][0]["status"] == "ok" and summary["notebooks"][0]["seconds"] > 0
    assert summary["metrics"]["setup"]["preset"] == "tiny"
    report = (out / "summary.md").read_text()  # the readable run report next to summary.json
    assert "| 00_setup | ok |" in report and "### setup" in report and "| preset | tiny |" in report
    assert summary["figures"] == [] and "No figures were saved." in report
    executed = nbformat.read(out / "00_setup.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


def test_run_reports_a_failing_notebook_and_exits_non_zero(tmp_path, monkeypatch):
    from rlhf_helpers import runner

    bad = tmp_path / "nbs"
    bad.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("assert 1 == 2, 'broken stage'")]
    nbformat.write(nb, bad / "00_broken.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", bad)
    monkeypatch.setattr(runner, "course_notebooks", lambda folder=bad: sorted(bad.glob("*.ipynb")))
    import pytest

    with pytest.raises(RuntimeError, match="00_broken failed"):
        runner.run_course(tmp_path / "out", progress=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["notebooks"][0]["status"] == "failed" and "broken stage" in summary["notebooks"][0]["error"]
    report = (tmp_path / "out" / "summary.md").read_text()
    assert "| 00_broken | failed |" in report and "broken stage" in report
