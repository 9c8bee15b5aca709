"""The labelling UI: plain ipywidgets 8 over :mod:`rlhf_helpers.labeling`.

Why so thin? Everything that matters (order randomisation, the crash-safe log, resume, undo) lives
in the core module and is unit-tested there; this file only draws the current pair and forwards
clicks. No custom JavaScript, so it works wherever core widgets do: JupyterLab 4, Notebook 7, VS
Code and Colab.

On screen the two responses are called **A** (left) and **B** (right). These are *screen* sides:
the core maps them to the pair's ``response_a``/``response_b`` with the recorded display order.
Every control has a stable CSS class (``rlhf-label-a``, ``rlhf-undo``, ...) so a browser test (and
a curious learner's stylesheet) can find it.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from pathlib import Path

import ipywidgets as W

from rlhf_helpers.labeling import LabelingSession, Pair, check_annotator, load_pairs_to_label, session_dir

#: screen choice -> (button text, CSS class, button style)
BUTTONS = {
    "left": ("A is better", "rlhf-label-a", "info"),
    "right": ("B is better", "rlhf-label-b", "info"),
    "tie": ("Tie", "rlhf-label-tie", ""),
    "skip": ("Skip", "rlhf-label-skip", ""),
}
_BOX = "white-space: pre-wrap; line-height: 1.4; border: 1px solid #bbb; border-radius: 4px; padding: 6px 8px"


def _panel(title: str, text: str) -> str:
    return f'<div style="{_BOX}"><b>{html.escape(title)}</b><br>{html.escape(text)}</div>'


class LabelingWidget:
    """Prompt, the two responses side by side, A / B / Tie / Skip / Undo, a progress bar and the
    running counts. Type an annotator id (and press Enter) to open or resume that annotator's log.

    ``widget.box`` is the ipywidgets container; the object itself displays as that container.
    """

    def __init__(
        self,
        pairs: Iterable[Pair] | None = None,
        session: str = "default",
        annotator: str = "",
        folder: str | os.PathLike | None = None,
        seed: int | None = None,
    ):
        self.pairs = list(load_pairs_to_label() if pairs is None else pairs)
        self.folder = Path(folder) if folder is not None else session_dir(session)
        self.seed = seed
        self.session: LabelingSession | None = None

        self.annotator_field = W.Text(
            value="",
            description="annotator",
            placeholder="your id, then Enter",
            continuous_update=False,  # the value arrives on Enter (or leaving the field), not per key
        )
        self.annotator_field.add_class("rlhf-annotator")
        self.annotator_field.observe(self._on_annotator, names="value")
        self.prompt_html = W.HTML()
        self.prompt_html.add_class("rlhf-prompt")
        half = W.Layout(width="50%")
        self.left_html, self.right_html = W.HTML(layout=half), W.HTML(layout=half)
        self.left_html.add_class("rlhf-left")
        self.right_html.add_class("rlhf-right")
        self.buttons: dict[str, W.Button] = {}
        for choice, (text, css, style) in BUTTONS.items():
            button = W.Button(description=text, button_style=style, tooltip=f"record: {choice}")
            button.add_class(css)
            button.on_click(lambda _b, c=choice: self._on_choice(c))
            self.buttons[choice] = button
        self.undo_button = W.Button(description="Undo", icon="undo", tooltip="withdraw the last label")
        self.undo_button.add_class("rlhf-undo")
        self.undo_button.on_click(lambda _b: self._on_undo())
        self.progress = W.IntProgress(min=0, max=max(1, len(self.pairs)), value=0, description="progress")
        self.progress.add_class("rlhf-progress")
        self.counts = W.HTML()
        self.counts.add_class("rlhf-counts")
        self.status = W.HTML()
        self.status.add_class("rlhf-status")
        self.box = W.VBox(
            [
                W.HBox([self.annotator_field, self.progress, self.counts]),
                self.prompt_html,
                W.HBox([self.left_html, self.right_html]),
                W.HBox([*self.buttons.values(), self.undo_button]),
                self.status,
            ]
        )
        self.box.add_class("rlhf-labeling")
        if annotator:
            self.annotator_field.value = annotator  # opens the session through _on_annotator
        else:
            self.refresh()

    # ------------------------------------------------------------------ events

    def _on_annotator(self, change: dict) -> None:
        name = str(change["new"]).strip()
        if not name:
            self.session = None
            self.refresh()
            return
        try:
            check_annotator(name)
            self.session = LabelingSession(self.pairs, name, self.folder, self.seed)
        except (ValueError, OSError) as e:
            self.session = None
            self.refresh()
            self._say(f"cannot open a session: {e}", error=True)
            return
        self.refresh()
        done = self.session.progress().done
        self._say(f"{'resumed' if done else 'started'} {self.session.path} ({done} already labelled)")

    def _on_choice(self, choice: str) -> None:
        if self.session is None:
            self._say("type your annotator id first", error=True)
            return
        try:
            record = self.session.choose(choice)
        except (OSError, RuntimeError, ValueError) as e:  # e.g. a full disk: the label was not recorded
            self._say(f"not saved: {e}", error=True)
            return
        self.refresh()
        self._say(f"saved: {BUTTONS[choice][0].lower()} ({record['seconds']:.1f} s)")

    def _on_undo(self) -> None:
        if self.session is None:
            return
        try:
            undone = self.session.undo()
        except OSError as e:
            self._say(f"undo not saved: {e}", error=True)
            return
        self.refresh()
        self._say("nothing to undo" if undone is None else "undone: the pair is shown again")

    # ------------------------------------------------------------------ drawing

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#b00020" if error else "#555"
        self.status.value = f'<span style="color: {colour}">{html.escape(text)}</span>'

    def refresh(self) -> None:
        """Redraw from the session's state (the single source of truth)."""
        shown = self.session.current() if self.session else None
        if self.session is None:
            self.prompt_html.value = "<i>Type your annotator id above and press Enter to start or resume.</i>"
            self.left_html.value = self.right_html.value = ""
            self.progress.value = 0
            self.counts.value = ""
        else:
            progress = self.session.progress()
            self.progress.value = progress.done
            self.counts.value = (
                f"{progress.done}/{progress.total} &nbsp; A {progress.choices['left']} · "
                f"B {progress.choices['right']} · tie {progress.choices['tie']} · skip {progress.choices['skip']}"
            )
            if shown is None:
                self.prompt_html.value = "<b>All pairs are labelled. Thank you!</b> (Undo still works.)"
                self.left_html.value = self.right_html.value = ""
            else:
                self.prompt_html.value = _panel(f"Prompt ({shown.position + 1} of {progress.total})", shown.pair.prompt)
                self.left_html.value = _panel("A", shown.left)
                self.right_html.value = _panel("B", shown.right)
        for button in self.buttons.values():
            button.disabled = shown is None
        self.undo_button.disabled = self.session is None or not self.session.labels

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)


def labeling_ui(
    pairs: Iterable[Pair] | None = None,
    session: str = "default",
    annotator: str = "",
    folder: str | os.PathLike | None = None,
) -> LabelingWidget:
    """The labelling widget for a notebook cell: ``labeling_ui(session="week3", annotator="ada")``."""
    return LabelingWidget(pairs, session=session, annotator=annotator, folder=folder)
