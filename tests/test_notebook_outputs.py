"""`make notebooks` stores the reference run's outputs in notebooks/, cleaned, with a stamp of the cell sources they
came from: `notebook_outputs.stale_notebooks` tells when stored outputs no longer belong to their cells)."""

import json

from rlhf_helpers.notebook_outputs import MAX_TEXT_CHARS, clean_executed, source_digest, stale_notebooks


def test_the_stamp_follows_the_cells_and_cleaning_drops_what_changes_every_run():
    nb = {
        "metadata": {"widgets": {"state": {}}},
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# t"},
            {"cell_type": "code", "execution_count": 1, "source": "print(1)",
             "metadata": {"execution": {"iopub.status.idle": "2026-12-01T00:00:00Z"}},
             "outputs": [{"output_type": "stream", "name": "stdout", "text": "x" * (MAX_TEXT_CHARS + 10)},
                         {"output_type": "display_data", "metadata": {},
                          "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m"}}}]},
        ],
    }
    cleaned = clean_executed(nb, "tiny", 0)
    assert cleaned["metadata"]["rlhf_course"] == {"preset": "tiny", "seed": 0, "sources_sha256": source_digest(nb)}
    assert "widgets" not in cleaned["metadata"] and "execution" not in cleaned["cells"][1]["metadata"]
    outputs = cleaned["cells"][1]["outputs"]
    assert len(outputs) == 1 and outputs[0]["text"].startswith("x" * MAX_TEXT_CHARS) and "cut" in outputs[0]["text"]
    edited = json.loads(json.dumps(cleaned))
    edited["cells"][1]["source"] = "print(2)"
    assert source_digest(edited) != cleaned["metadata"]["rlhf_course"]["sources_sha256"]


def test_cleaning_cuts_this_machines_folders_from_outputs_only(tmp_path):
    from rlhf_helpers.notebook_outputs import machine_paths

    run = tmp_path / "runs" / "reference"
    paths = machine_paths(run)
    out_prefix, repo_prefix = list(paths)[:2]
    assert paths[out_prefix] == paths[repo_prefix] == "" and "~/" in paths.values()
    text = f"saved to {out_prefix}artifacts/sft/adapter; data in {repo_prefix}data/x.jsonl"
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "execution_count": 1, "metadata": {},
                                     "source": f"open('{repo_prefix}data')",
                                     "outputs": [{"output_type": "stream", "name": "stdout", "text": text},
                                                 {"output_type": "execute_result", "metadata": {}, "execution_count": 1,
                                                  "data": {"text/plain": f"'{out_prefix}ünï'"}}]}]}
    cell = clean_executed(nb, "tiny", 0, strip_paths=paths)["cells"][0]
    assert cell["outputs"][0]["text"] == "saved to artifacts/sft/adapter; data in data/x.jsonl"
    assert cell["outputs"][1]["data"]["text/plain"] == "'ünï'"
    assert cell["source"] == nb["cells"][0]["source"]  # the cells themselves are left as written


def test_stale_notebooks_finds_outputs_that_do_not_belong_to_their_cells(tmp_path):
    cell = {"cell_type": "code", "execution_count": 1, "source": "x = 1", "metadata": {}, "outputs": []}
    nb = clean_executed({"metadata": {}, "cells": [cell]}, "tiny", 0)
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    assert stale_notebooks(tmp_path) == []
    nb["cells"][0]["source"] = "x = 2"  # edited after the run
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    assert stale_notebooks(tmp_path) == ["a.ipynb"]


def test_every_committed_notebook_holds_the_outputs_of_its_current_cells():
    """The repository's notebooks carry the reference run's outputs (`make notebooks`), stamped with the cell sources
    they came from: editing a cell without refreshing fails here."""
    from rlhf_helpers.config import REPO_ROOT
    from rlhf_helpers.runner import NOTEBOOK_DIR, course_notebooks

    stale = stale_notebooks(NOTEBOOK_DIR)
    assert not stale, f"outputs older than the cells (or missing) in {stale}: run `make notebooks`"
    for path in course_notebooks():
        nb = json.loads(path.read_text())
        assert nb["metadata"]["rlhf_course"]["preset"] == "tiny", path.name
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name
        assert all("execution" not in c.get("metadata", {}) for c in nb["cells"]), path.name  # no timestamps
        outputs = json.dumps([c.get("outputs", []) for c in nb["cells"]])
        for machine_path in (str(REPO_ROOT), "/home/", "/Users/", "/root/", "/tmp/", "site-packages/"):
            assert machine_path not in outputs, f"a machine path ({machine_path}) in the outputs of {path.name}"


def test_refresh_writes_nothing_when_a_notebook_changed_during_the_run(tmp_path, monkeypatch):
    """The run takes minutes; a cell edited meanwhile must not be overwritten by the older executed copy."""
    import rlhf_helpers.runner as runner
    from rlhf_helpers.notebook_outputs import refresh_outputs

    notebooks, out = tmp_path / "notebooks", tmp_path / "run"
    notebooks.mkdir()
    out.mkdir()

    def notebook(source):
        return {"metadata": {}, "nbformat": 4, "nbformat_minor": 5,
                "cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "source": source,
                           "outputs": []}]}

    for name in ("00_a", "01_b"):
        (notebooks / f"{name}.ipynb").write_text(json.dumps(notebook("print(1)")))
        (out / f"{name}.ipynb").write_text(json.dumps(notebook("print(1)")))
    monkeypatch.setattr(runner, "run_course", lambda out, preset: {"notebooks": [{"name": "00_a"}, {"name": "01_b"}]})

    (notebooks / "01_b.ipynb").write_text(json.dumps(notebook("print(2)")))  # edited while the course ran
    try:
        refresh_outputs(out, notebooks)
    except RuntimeError as e:
        assert "01_b.ipynb" in str(e) and "nothing was written" in str(e)
    else:
        raise AssertionError("refresh_outputs overwrote an edited notebook")
    assert "rlhf_course" not in json.loads((notebooks / "00_a.ipynb").read_text())["metadata"]  # untouched too

    (notebooks / "01_b.ipynb").write_text(json.dumps(notebook("print(1)")))
    assert [p.name for p in refresh_outputs(out, notebooks)] == ["00_a.ipynb", "01_b.ipynb"]
    assert not stale_notebooks(notebooks)


def test_a_home_of_root_does_not_turn_urls_into_home_paths(tmp_path, monkeypatch):
    from rlhf_helpers.notebook_outputs import machine_paths

    monkeypatch.setenv("HOME", "/")
    paths = machine_paths(tmp_path)
    assert "~/" not in paths.values() and all(k.strip("/") for k in paths)
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "source": "",
                                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "https://x.org"}]}]}
    assert clean_executed(nb, "tiny", 0, strip_paths=paths)["cells"][0]["outputs"][0]["text"] == "https://x.org"
