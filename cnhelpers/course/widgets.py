"""Widgets that read well without a kernel: each is shown with a *static form* beside it.

A notebook output can hold several forms of one thing; every viewer picks the best it can render. A live
JupyterLab or Colab renders the widget (``application/vnd.jupyter.widget-view+json``). Without a kernel the
widget can't come alive: JupyterLab, for a notebook it does not trust (any notebook it did not run itself), and
``jupyter nbconvert --to html``, for a widget whose state the notebook does not store, render the next form,
``image/png``, and a code host shows that picture too. So the picture is the widget's figure at its default
value and the text says what the widget is, never a raw ``VBox(children=...`` repr.

Figures that change are redrawn by setting an ``ipywidgets.Image``'s value, not through an IPython display
handle: a reloaded page finds the widget again and keeps redrawing; it forgets display handles.
"""

from __future__ import annotations

import base64

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class WithStaticForm:
    """``widget`` shown with a static form: ``picture`` (PNG bytes, or None) and ``text``.

    Display it (the last line of a cell, or ``display(...)``). Attributes other than ``widget``, ``picture`` and
    ``text`` are the widget's (``children``, ``observe``...).
    """

    def __init__(self, widget, picture: bytes | None = None, text: str = ""):
        self.widget, self.picture, self.text = widget, picture, text

    def __getattr__(self, name):
        if name.startswith("_"):  # not the widget's display hooks (ipywidgets 7's _ipython_display_): ours
            raise AttributeError(name)
        return getattr(self.__dict__["widget"], name)

    def __repr__(self):
        return self.text or repr(self.widget)

    def _repr_mimebundle_(self, include=None, exclude=None):
        """The widget's view (ipywidgets 7 and 8 both use view version 2.0), its picture and its text."""
        bundle = {WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id},
                  "text/plain": self.text or type(self.widget).__name__}
        if self.picture is not None:
            bundle["image/png"] = base64.b64encode(self.picture).decode("ascii")
        return bundle


def round_log_values(low: float, high: float) -> list[float]:
    """The 1-2-5 values from ``low`` to ``high`` (both included when they are such values): 0.1, 0.2, 0.5, 1, ...

    Steps for a slider over several orders of magnitude that shows round numbers.
    """
    values, decade = [], 10.0 ** int(f"{low:e}".split("e")[1])
    while decade <= high:
        values += [round(m * decade, 12) for m in (1, 2, 5) if low <= round(m * decade, 12) <= high]
        decade *= 10
    return values


def log_slider(values, value: float, description: str = "", **kwargs):
    """A ``SelectionSlider`` over ``values`` (e.g. :func:`round_log_values`), its readout the value as written
    (``5``, not ``5.01``): evenly spaced steps over a log range, each a round number."""
    import ipywidgets as widgets

    return widgets.SelectionSlider(options=[(f"{v:g}", v) for v in values], value=value, description=description,
                                   **kwargs)
