"""The stored notebooks read right without a kernel: on a code host, in JupyterLab with no kernel, in
``jupyter nbconvert --to html`` offline. No raw widget repr, no progress bar stuck below 100 % beside a finished
run, no stderr box, no machine path, one picture per figure, under 500 KB, in the course's kernel."""

import base64
import json
import re
from pathlib import Path

import nbformat
import pytest

from cnhelpers.course.runner import (
    MAX_NOTEBOOK_BYTES,
    WIDGET_STATE,
    WIDGET_VIEW,
    course_notebooks,
    fit_stored_size,
    run_notebook,
    static_widget_outputs,
)

pytestmark = pytest.mark.colab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MAX_BYTES = MAX_NOTEBOOK_BYTES
#: ``Name(children=`` ... ``Name(value=`` ...: the repr ipywidgets gives a widget, unreadable as an output.
RAW_WIDGET = re.compile(r"^[A-Z]\w*\((children|value|description|layout|options|index|min|max)=", re.M)
BAR = re.compile(r"(\d+)%\|")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(root|work|tmp|home|check|Users|content)/")
#: Stored before the runner kept widgets' static forms; their owners regenerate them (make outputs).
PENDING: dict[str, str] = {}


def _texts(output) -> list[str]:
    data = output.get("data", {})
    return ["".join(output.get("text", "")), "".join(data.get("text/plain", "")), "".join(data.get("text/html", ""))]


def stored_problems(path: Path) -> list[str]:
    """Everything in a stored notebook that reads wrong without a kernel, one line each."""
    nb = json.loads(path.read_text())
    problems = []
    if path.stat().st_size >= MAX_BYTES:
        problems.append(f"{path.stat().st_size // 1000} KB, over {MAX_BYTES // 1000} KB")
    if "widgets" in nb["metadata"]:
        problems.append("saved widget state (nbconvert then renders widgets from a CDN, blank offline)")
    expected = ("cn-flax", "ControlNet course, Flax (.venv-flax)") if path.name == "05_flax_tpu.ipynb" else \
        ("cn-course", "ControlNet course (.venv)")
    kernelspec = nb["metadata"].get("kernelspec", {})
    if (kernelspec.get("name"), kernelspec.get("display_name")) != expected:
        problems.append(f"kernelspec {kernelspec.get('name')!r}, not {expected[0]!r}")
    for index, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            where = f"cell {index}"
            data = output.get("data", {})
            if output.get("name") == "stderr":
                problems.append(f"{where}: a stderr stream: {''.join(output['text'])[:80]!r}")
            if WIDGET_VIEW in data:
                problems.append(f"{where}: a widget view without its static form")
            if len([mime for mime in data if mime.startswith("image/")]) > 1:
                problems.append(f"{where}: one picture stored as {sorted(m for m in data if m.startswith('image/'))}")
            for text in _texts(output):
                if RAW_WIDGET.search(text) and not any(mime.startswith("image/") for mime in data):
                    problems.append(f"{where}: a raw widget repr {text[:60]!r}")
                for percent in BAR.findall(text):
                    if int(percent) < 100:
                        problems.append(f"{where}: a progress bar at {percent} %")
                if MACHINE_PATH.search(text):
                    problems.append(f"{where}: a machine path: {MACHINE_PATH.search(text).group(0)!r}")
    return problems


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=[pytest.mark.xfail(strict=True, reason=PENDING[p.name])] if p.name in PENDING
                 else []) for p in course_notebooks(NOTEBOOKS)])
def test_a_stored_notebook_reads_right_without_a_kernel(path):
    assert stored_problems(path) == []


def test_the_makefile_installs_the_kernel_the_notebooks_name():
    makefile = (ROOT / "Makefile").read_text()
    assert "KERNEL := cn-course" in makefile and '--name $(KERNEL) --display-name "ControlNet course (.venv)"' in makefile


def test_nbconvert_to_html_shows_each_widgets_picture_not_a_blank(tmp_path):
    """Offline HTML: every stored picture is embedded, and nothing waits for the widget manager of a CDN."""
    from nbconvert import HTMLExporter

    path = NOTEBOOKS / "06_inference.ipynb"
    nb = nbformat.read(path, as_version=4)
    pictures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": path.stem, "path": str(NOTEBOOKS)}})
    assert WIDGET_VIEW not in body and WIDGET_STATE not in body
    assert body.count('src="data:image/png;base64,') == pictures > 0
    slider = [o["data"]["image/png"] for c in nb.cells for o in c.get("outputs", [])
              if "a slider in a running notebook" in o.get("data", {}).get("text/plain", "")]
    assert len(slider) == 1 and slider[0].strip() in body  # the slider's figure, at its default value


def _state(models: dict) -> dict:
    return {model_id: {"model_name": name, "state": state, **extra} for model_id, (name, state, extra) in models.items()}


def test_a_finished_tqdm_bar_is_dropped():
    state = _state({
        "bar": ("HBoxModel", {"children": ["IPY_MODEL_left", "IPY_MODEL_progress", "IPY_MODEL_right"]}, {}),
        "left": ("HTMLModel", {"value": "Steps:\u2007100%"}, {}),
        "progress": ("FloatProgressModel", {"value": 1200, "max": 1200}, {}),
        "right": ("HTMLModel", {"value": "\u20071200/1200\u2007[03:56&lt;00:00,\u20075.08it/s]"}, {})})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={WIDGET_VIEW: {"model_id": "bar"}, "text/plain": "Steps:   0%|          | 0/1200"})])])
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": state}}
    assert static_widget_outputs(nb) == 1
    assert nb.cells[0].outputs == []  # a progress bar tells a reader of the stored notebook nothing
    assert "widgets" not in nb.metadata


def test_a_slider_and_its_picture_are_stored_as_their_value_and_png():
    png = base64.b64encode(b"\x89PNG fake").decode()
    state = _state({
        "box": ("VBoxModel", {"children": ["IPY_MODEL_slider", "IPY_MODEL_picture", "IPY_MODEL_note"]}, {}),
        "slider": ("SelectionSliderModel", {"description": "γ", "index": 2, "_options_labels": ["1", "2", "5"]}, {}),
        "picture": ("ImageModel", {"format": "png"}, {"buffers": [{"data": png, "encoding": "base64",
                                                                   "path": ["value"]}]}),
        "note": ("HTMLModel", {"value": "<b>rung 3</b> fits"}, {})})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={WIDGET_VIEW: {"model_id": "box"}, "text/plain": "VBox(children=(...))"})])])
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": state}}
    static_widget_outputs(nb)
    assert nb.cells[0].outputs[0]["data"] == {"text/plain": "γ: 5\nrung 3 fits", "image/png": png}


def test_the_runner_drops_a_finished_bar_and_keeps_a_widgets_picture(tmp_path):
    """End to end in a real kernel: a tqdm.auto bar (dropped), and a cnhelpers widget with its static form."""
    source = ("from tqdm.auto import tqdm\n"
              "for _ in tqdm(range(30), desc='Steps'):\n    pass\n")
    widget = ("import ipywidgets as widgets\nfrom cnhelpers.course.widgets import WithStaticForm\n"
              "WithStaticForm(widgets.IntSlider(value=3, description='n'), b'\\x89PNG fake', 'n = 3 (a slider)')")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell(widget)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "00_bars.ipynb"
    nbformat.write(nb, path)
    passed, _, message = run_notebook(path, path)
    assert passed, message
    stored = nbformat.read(path, as_version=4)
    assert stored.cells[0].outputs == []
    assert stored.cells[1].outputs[0]["data"] == {"text/plain": "n = 3 (a slider)",
                                                  "image/png": base64.b64encode(b"\x89PNG fake").decode()}
    assert "widgets" not in stored.metadata


def test_the_runner_recompresses_a_figure_without_changing_a_pixel():
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from cnhelpers.course.runner import compact_png

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.random.default_rng(0).random((16, 16)), interpolation="nearest")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    original = base64.b64encode(buffer.getvalue()).decode()
    smaller = compact_png(original)

    def pixels(data):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA"))

    assert len(smaller) < len(original) and np.array_equal(pixels(smaller), pixels(original))


def test_a_notebook_over_the_size_budget_has_its_largest_pictures_stored_with_256_colours():
    import io

    import numpy as np
    from PIL import Image

    def png(seed: int) -> str:  # a full-colour picture of 200 colours in 4x4 blocks, stored as RGB
        colours = np.random.default_rng(seed).integers(0, 256, (200, 3), dtype=np.uint8)
        blocks = np.random.default_rng(seed + 1).integers(0, 200, (50, 75))
        rgb = colours[blocks].repeat(4, axis=0).repeat(4, axis=1)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii") + "\n"

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": png(seed), "text/plain": "<Figure>"})]) for seed in range(3)])
    before = [cell.outputs[0]["data"]["image/png"] for cell in nb.cells]
    assert fit_stored_size(nb, limit=10 ** 7) == 0  # under its budget: nothing touched
    size = len(nbformat.writes(nb))
    assert fit_stored_size(nb, limit=size - 1) == 1  # one picture re-encoded is enough
    assert len(nbformat.writes(nb)) < size - 1
    after = [cell.outputs[0]["data"]["image/png"] for cell in nb.cells]
    changed = [i for i in range(3) if after[i] != before[i]]
    assert len(changed) == 1
    old, new = (np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), int)
                for data in (before[changed[0]], after[changed[0]]))
    assert Image.open(io.BytesIO(base64.b64decode(after[changed[0]]))).mode == "P"
    assert np.abs(old - new).mean() < 4  # the same figure, each pixel near its colour
