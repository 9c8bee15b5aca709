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


def test_stale_notebooks_finds_outputs_that_do_not_belong_to_their_cells(tmp_path):
    cell = {"cell_type": "code", "execution_count": 1, "source": "x = 1", "metadata": {}, "outputs": []}
    nb = clean_executed({"metadata": {}, "cells": [cell]}, "tiny", 0)
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    assert stale_notebooks(tmp_path) == []
    nb["cells"][0]["source"] = "x = 2"  # edited after the run
    (tmp_path / "a.ipynb").write_text(json.dumps(nb))
    assert stale_notebooks(tmp_path) == ["a.ipynb"]
