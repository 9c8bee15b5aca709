"""The labelling widget driven from Python: ``button.click()`` runs the same callbacks a browser click
does (the browser test covers the rest of the way), and every click must be in the annotator's file."""

from __future__ import annotations

import json

import ipywidgets as W
import pytest

from rlhf_helpers.labeling import LabelingSession, Pair, Shown, display_order, replay
from rlhf_helpers.labeling_widget import labeling_ui


def make_pairs(n: int) -> list[Pair]:
    return [Pair(f"w{i}", f"prompt {i}", f"reply {i} one", f"reply {i} two") for i in range(n)]


def events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_without_an_annotator_nothing_can_be_labelled(tmp_path):
    ui = labeling_ui(make_pairs(3), folder=tmp_path)
    assert ui.session is None and all(b.disabled for b in ui.buttons.values()) and ui.undo_button.disabled
    assert "annotator id" in ui.prompt_html.value
    ui.buttons["left"].click()  # a click that slipped through is refused, not recorded
    assert "annotator id first" in ui.status.value and list(tmp_path.iterdir()) == []


def test_clicks_are_written_with_the_recorded_order_and_progress_follows(tmp_path):
    pairs = make_pairs(4)
    ui = labeling_ui(pairs, folder=tmp_path, annotator="ada")
    shown = Shown(pairs[0], 0, display_order("w0", 0))
    assert shown.left in ui.left_html.value and shown.right in ui.right_html.value
    assert pairs[0].prompt in ui.prompt_html.value and "1 of 4" in ui.prompt_html.value

    ui.buttons["left"].click()
    ui.buttons["right"].click()
    ui.buttons["tie"].click()
    log = tmp_path / "ada.jsonl"
    written = events(log)
    assert [e["choice"] for e in written] == ["left", "right", "tie"]
    for event, pair in zip(written, pairs):
        expected = Shown(pair, 0, display_order(pair.pair_id, 0)).to_label(event["choice"])
        assert event["pair_id"] == pair.pair_id and event["label"] == expected and event["annotator"] == "ada"
    assert ui.progress.value == 3 and ui.progress.max == 4
    assert "3/4" in ui.counts.value and "A 1 · B 1 · tie 1 · skip 0" in ui.counts.value
    assert "saved" in ui.status.value

    ui.undo_button.click()
    assert events(log)[-1]["event"] == "undo" and ui.progress.value == 2
    assert pairs[2].prompt in ui.prompt_html.value  # the withdrawn pair is shown again
    ui.buttons["skip"].click()
    ui.buttons["left"].click()
    assert "All pairs are labelled" in ui.prompt_html.value
    assert all(b.disabled for b in ui.buttons.values()) and not ui.undo_button.disabled
    assert {k: r["label"] for k, r in replay(log).labels.items()}["w2"] == "skip"


def test_changing_the_annotator_switches_files_and_resumes(tmp_path):
    pairs = make_pairs(5)
    ui = labeling_ui(pairs, folder=tmp_path, annotator="ada")
    ui.buttons["left"].click()
    ui.buttons["left"].click()
    ui.annotator_field.value = "bob"  # what pressing Enter in the text field does
    assert ui.session.path == tmp_path / "bob.jsonl" and ui.progress.value == 0
    ui.buttons["tie"].click()
    again = labeling_ui(pairs, folder=tmp_path, annotator="ada")  # a new kernel, the same annotator
    assert again.progress.value == 2 and "resumed" in again.status.value
    assert pairs[2].prompt in again.prompt_html.value
    assert LabelingSession(pairs, "bob", tmp_path).labels == {"w0": "tie"}


def test_a_bad_annotator_id_is_refused_with_a_message(tmp_path):
    ui = labeling_ui(make_pairs(2), folder=tmp_path / "s", annotator="../escape")
    assert ui.session is None and "cannot open" in ui.status.value
    assert all(b.disabled for b in ui.buttons.values())
    assert not (tmp_path / "escape.jsonl").exists() and not (tmp_path / "s").exists()


def test_a_failed_write_is_reported_and_the_pair_stays(tmp_path, monkeypatch):
    pairs = make_pairs(2)
    ui = labeling_ui(pairs, folder=tmp_path, annotator="ada")

    def full_disk(record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ui.session, "_append", full_disk)
    ui.buttons["left"].click()
    assert "not saved" in ui.status.value and "No space left" in ui.status.value
    assert ui.progress.value == 0 and pairs[0].prompt in ui.prompt_html.value and ui.session.labels == {}


def test_texts_are_escaped_and_controls_have_stable_css_classes(tmp_path):
    pairs = [Pair("x", "<b>prompt</b>", "<script>alert(1)</script>", "fine & dandy")]
    ui = labeling_ui(pairs, folder=tmp_path, annotator="ada")
    html = ui.left_html.value + ui.right_html.value + ui.prompt_html.value
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp; dandy" in html
    classes = {css for b in [*ui.buttons.values(), ui.undo_button] for css in b._dom_classes}
    assert {"rlhf-label-a", "rlhf-label-b", "rlhf-label-tie", "rlhf-label-skip", "rlhf-undo"} <= classes
    assert "rlhf-annotator" in ui.annotator_field._dom_classes and isinstance(ui.progress, W.IntProgress)
    assert ui._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"] == ui.box.model_id


@pytest.mark.parametrize("choice", ["left", "right"])
def test_the_screen_side_not_the_pair_letter_decides(tmp_path, choice):
    """Whatever the order, clicking a side stores the response that was on that side as the winner."""
    pairs = make_pairs(30)
    ui = labeling_ui(pairs, folder=tmp_path, annotator="ada")
    for pair in pairs:
        shown_text = ui.left_html.value if choice == "left" else ui.right_html.value
        ui.buttons[choice].click()
        label = LabelingSession(pairs, "ada", tmp_path).labels[pair.pair_id]
        winner = pair.response_a if label == "A" else pair.response_b
        assert winner in shown_text
