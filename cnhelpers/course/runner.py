"""Run the course's notebooks headless, in order: ``python -m cnhelpers.course.runner`` (``make course``).

Each notebook runs in a fresh kernel with the notebooks folder as its working directory. One line per
notebook says how long it took and whether it passed, or which cell failed and why.

The executed copy keeps each widget's *static form* instead of the widget (:func:`static_widget_outputs`): a
stored notebook has no kernel, so its widgets can never come alive again, and every viewer (a code host,
JupyterLab without a kernel, ``jupyter nbconvert --to html`` offline) then shows what the widget showed at the
end of the run: a progress bar's last line, a slider's value, its picture.
"""

from __future__ import annotations

import argparse
import base64
import html
import re
import sys
import time
from pathlib import Path

from .widgets import WIDGET_VIEW

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_BLOCKS = " ▏▎▍▌▋▊▉█"


def course_notebooks(folder: Path) -> list[Path]:
    """The course's notebooks in order: ``NN_name.ipynb`` (and ``NNb_name.ipynb``) files of ``folder``, by name."""
    return sorted(p for p in folder.glob("[0-9][0-9]*_*.ipynb"))


def _first_error(nb) -> str:
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"code cell {index}: {output.get('ename')}: {output.get('evalue')}"
    return "unknown cell"


def _children(state: dict, model: dict) -> list[dict]:
    ids = [c.removeprefix("IPY_MODEL_") for c in model["state"].get("children", [])]
    return [state[i] for i in ids if i in state]


def _plain(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup or "")).replace("\u200b", "").strip()


def _bar_text(left: str, progress: dict, right: str) -> str:
    """tqdm's text line from its notebook widget: ``Steps: 100%|██████████| 1200/1200 [03:56<00:00, ...]``."""
    maximum = progress["state"].get("max") or 1
    eighths = round(8 * 10 * min(max(progress["state"].get("value", 0) / maximum, 0), 1))
    bar = "█" * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")
    return f"{html.unescape(left)}|{bar:<10}|{html.unescape(right)}".replace("\u2007", " ").strip()


def widget_static_form(model_id: str, state: dict) -> dict:
    """What the widget ``model_id`` showed at the end of the run, as a mime bundle, from the widget ``state``
    nbclient saved: a tqdm bar's last text line; a slider's ``description: value``; an HTML or Label widget's
    text; a box's parts, one per line; its picture (``image/png``) when it holds exactly one PNG Image widget.
    An empty dict when the state does not have the widget."""
    if model_id not in state:
        return {}
    lines, pictures = [], []

    def visit(model):
        name, values = model["model_name"], model["state"]
        children = _children(state, model)
        kinds = [child["model_name"] for child in children]
        if name == "HBoxModel" and len(kinds) == 3 and kinds[0] == kinds[2] == "HTMLModel" \
                and kinds[1] in ("FloatProgressModel", "IntProgressModel"):  # a tqdm bar
            lines.append(_bar_text(children[0]["state"].get("value", ""), children[1],
                                   children[2]["state"].get("value", "")))
        elif children:
            for child in children:
                visit(child)
        elif name == "ImageModel":
            data = [b["data"] for b in model.get("buffers", []) if b.get("path") == ["value"]]
            if data and values.get("format", "png") == "png":
                pictures.append(data[0])
        elif name in ("HTMLModel", "LabelModel", "HTMLMathModel"):
            if _plain(values.get("value", "")):
                lines.append(_plain(values.get("value", "")))
        elif "value" in values or "index" in values:  # sliders and other controls
            value = values.get("value")
            if "_options_labels" in values and values.get("index") is not None:
                value = values["_options_labels"][values["index"]]
            lines.append(f"{_plain(values.get('description', '')) or name.removesuffix('Model')}: {value}")

    visit(state[model_id])
    bundle = {"text/plain": "\n".join(lines)} if lines else {}
    if len(pictures) == 1:
        bundle["image/png"] = pictures[0]
    return bundle


def static_widget_outputs(nb) -> int:
    """Replace every widget output of ``nb`` by its static form, then drop the saved widget state.

    An output that already carries a picture (a :class:`cnhelpers.course.widgets.WithStaticForm` adds one) keeps it and its text; any
    other takes :func:`widget_static_form`. Returns how many outputs changed.
    """
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            static = {k: v for k, v in data.items() if k != WIDGET_VIEW}
            if not any(k.startswith("image/") for k in static):
                static.update(widget_static_form(data[WIDGET_VIEW].get("model_id", ""), state))
            output["data"] = static
            changed += 1
    nb.metadata.pop("widgets", None)
    return changed


def compact_png(data: str) -> str:
    """A base64 PNG re-encoded losslessly, smaller: RGB when no pixel is transparent, zlib at its best.

    matplotlib writes RGBA at zlib's default level; the pixels stay exactly the same. Returns ``data`` when
    re-encoding does not make it smaller."""
    import io

    from PIL import Image

    try:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        picture.load()
    except Exception:  # not a PNG PIL reads: keep it as it is
        return data
    if picture.mode == "RGBA" and picture.getchannel("A").getextrema() == (255, 255):
        picture = picture.convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller + "\n" if len(smaller) < len(data.replace("\n", "")) else data


def compact_pictures(nb) -> int:
    """Re-encode every stored PNG of ``nb`` with :func:`compact_png`; returns the bytes saved."""
    saved = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                before = len(data["image/png"])
                data["image/png"] = compact_png(data["image/png"])
                saved += before - len(data["image/png"])
    return saved


def _encrypted_kernels():
    """Configuration for kernel managers that provision CurveZMQ keys when the kernelspec supports them."""
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    config = Config()
    if "transport_encryption" in KernelManager.class_trait_names():  # jupyter_client >= 8.7
        config.KernelManager.transport_encryption = "auto"
    return config


def run_notebook(path: Path, out_path: Path, timeout: int = 1800) -> tuple[bool, float, str]:
    """Execute ``path`` in a fresh kernel, write the executed copy to ``out_path``.

    Returns ``(passed, seconds, message)``; the executed copy is written even when a cell fails, so
    its error can be read there.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        return False, 0.0, f"skipped: Jupyter kernel {kernel!r} is not installed (see README.md)"
    # The kernel's channels are CurveZMQ-encrypted (the manager provisions keys where the kernelspec says it takes
    # them, as ipykernel's does): a plain-TCP kernel prints ipykernel's "running over TCP without encryption"
    # warning before every notebook, between the runner's own lines.
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, config=_encrypted_kernels(),
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
        passed, message = True, "ok"
    except CellExecutionError:
        passed, message = False, f"FAILED at {_first_error(nb)}"
    except Exception as error:  # kernel died, timeout: still report and keep going
        passed, message = False, f"FAILED: {type(error).__name__}: {error}"
    seconds = time.perf_counter() - start
    static_widget_outputs(nb)
    compact_pictures(nb)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_path)
    return passed, seconds, message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="folder of the notebooks")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--out", type=Path, default=Path("build/course"), help="folder for executed copies")
    target.add_argument("--in-place", action="store_true", help="overwrite the notebooks (refresh outputs)")
    parser.add_argument("--only", default="", help="run only notebooks whose name contains this")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    notebooks = [p for p in course_notebooks(args.notebooks) if args.only in p.name]
    if not notebooks:
        print(f"no notebooks matching {args.only!r} in {args.notebooks}", file=sys.stderr)
        return 2
    failures = 0
    total = time.perf_counter()
    for path in notebooks:
        out_path = path if args.in_place else args.out / path.name
        passed, seconds, message = run_notebook(path, out_path, args.timeout)
        failures += not passed and not message.startswith("skipped")
        print(f"{path.name:<32} {seconds:7.1f} s  {message}", flush=True)
    print(f"{len(notebooks)} notebooks, {failures} failed, {time.perf_counter() - total:.0f} s in all"
          + ("" if args.in_place else f"; executed copies in {args.out}/"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
