"""Run the course's notebooks headless, in order: ``python -m cnhelpers.course.runner`` (``make course``).

Each notebook runs in a fresh kernel with the notebooks folder as its working directory. One line per
notebook says how long it took and whether it passed, or which cell failed and why.

The executed copy keeps each widget's *static form* instead of the widget (:func:`static_widget_outputs`): a
stored notebook has no kernel, so its widgets can never come alive again, and every viewer (a code host,
JupyterLab without a kernel, ``jupyter nbconvert --to html`` offline) then shows what the widget showed at the
end of the run: a slider's value, its picture. Progress bars are dropped (:func:`drop_progress_bars`): a finished
bar says nothing a reader needs, and its timings are one machine's noise.

``--in-place`` (``make outputs``) also records how long each notebook took in ``notebooks/runtimes.json`` and
writes that one measurement into the notebook's ``**Runtime.**`` line and its row of ``notebooks/README.md``
(:func:`sync_runtime_notes`), so the three never disagree (``tests/test_notebook_notes.py``).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import re
import resource
import shutil
import sys
import time
from pathlib import Path

from .widgets import WIDGET_VIEW

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: A progress bar's text: tqdm's ``42%|████      | 42/100``, its rate, its ``[00:01<00:02`` times.
PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\|\s*\d+/\d+|\d+(?:\.\d+)?\s*(?:it/s|s/it)\b|\[\d+:\d+<[\d:?]+")


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


def widget_static_form(model_id: str, state: dict) -> dict:
    """What the widget ``model_id`` showed at the end of the run, as a mime bundle, from the widget ``state``
    nbclient saved: nothing for a tqdm bar; a slider's ``description: value``; an HTML or Label widget's
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
                and kinds[1] in ("FloatProgressModel", "IntProgressModel"):  # a tqdm bar: nothing to keep
            return
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
                form = widget_static_form(data[WIDGET_VIEW].get("model_id", ""), state)
                static = form or {k: v for k, v in static.items() if not PROGRESS_BAR.search(str(v))}
            output["data"] = static
            changed += 1
    nb.metadata.pop("widgets", None)
    drop_progress_bars(nb)
    return changed


def drop_progress_bars(nb) -> int:
    """Remove progress-bar text from ``nb``'s outputs (a tqdm line written to a stream, a bar's text form) and
    the outputs left empty; returns how many outputs were removed or shortened."""
    changed = 0
    for cell in nb.cells:
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = "".join(output.get("text", ""))
                lines = [line for line in re.split(r"(?<=\n)", text) if not PROGRESS_BAR.search(line)]
                lines = [line.rsplit("\r", 1)[-1] for line in lines]
                if "".join(lines) != text:
                    changed += 1
                    output["text"] = "".join(lines)
                if not output["text"].strip():
                    continue
            elif "data" in output:
                data = output["data"]
                if not data or (set(data) <= {"text/plain", "text/html"}
                                and all(PROGRESS_BAR.search("".join(v)) for v in data.values())):
                    changed += 1
                    continue
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
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


#: A stored notebook must stay under this size to read well on a code host (``tests/test_stored_notebooks.py``).
MAX_NOTEBOOK_BYTES = 500_000


def palette_png(data: str) -> str:
    """A base64 PNG re-encoded with 256 colours, undithered (flat plot colours stay flat): about half the bytes of a
    full-colour figure, each pixel within a few levels of its colour. Returns ``data`` when that is not smaller."""
    import io

    from PIL import Image

    try:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        picture.load()
    except Exception:  # not a PNG PIL reads: keep it as it is
        return data
    if picture.mode == "P":
        return data
    buffer = io.BytesIO()
    picture.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller + "\n" if len(smaller) < len(data.replace("\n", "")) else data


def fit_stored_size(nb, limit: int = int(MAX_NOTEBOOK_BYTES * 0.9)) -> int:
    """When ``nb`` written out would reach ``limit`` bytes, re-encode its largest PNGs with :func:`palette_png`, largest
    first, until it fits (or none is left); returns how many were re-encoded."""
    import nbformat

    pictures = sorted((output["data"] for cell in nb.cells for output in cell.get("outputs", [])
                       if "image/png" in output.get("data", {})), key=lambda data: -len(data["image/png"]))
    changed = 0
    for data in pictures:
        if len(nbformat.writes(nb)) < limit:
            break
        smaller = palette_png(data["image/png"])
        changed += smaller is not data["image/png"]
        data["image/png"] = smaller
    return changed


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
    fit_stored_size(nb)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_path)
    return passed, seconds, message


#: Where ``--in-place`` records each notebook's run time (in the notebooks' folder, committed with them).
RUNTIMES = "runtimes.json"
RUNTIME_LINE = re.compile(r"^\*\*Runtime\.\*\*.*$", re.M)
#: A notebook's row of notebooks/README.md's table, its last cell: ``| about 10 s ... |``.
README_RUNTIME = re.compile(r"(\|\s*)about [\d.,]+ (?:s|min)\b")


def runtime_phrase(seconds: float) -> str:
    """A run time as the course's notes give it: to 5 s under a minute, to half a minute under ten, else minutes."""
    if seconds < 57.5:
        return f"{max(5, 5 * round(seconds / 5))} s"
    minutes = seconds / 60
    return f"{round(minutes * 2) / 2:g} min" if minutes < 9.75 else f"{round(minutes)} min"


def busy(entry: dict) -> bool:
    """Whether other work shared the machine when the entry was measured (its wall time then runs long).

    The load is read as the notebook ends, so it counts the notebook's own kernel, whose torch threads keep up to
    every core busy: busy means more than one core's worth of load beyond that (notebook 03's training alone
    reads 2.0 to 2.1 on 2 cores)."""
    return entry.get("load", 0) > entry.get("cores", 2) + 1


def runtime_line(entry: dict) -> str:
    """A notebook's ``**Runtime.**`` line, from its entry of ``runtimes.json``."""
    line = (f"**Runtime.** About {runtime_phrase(entry['seconds'])} on a 2-core CPU with the `tiny` profile "
            f"(`make outputs`, {entry['date']}; every notebook's: `notebooks/{RUNTIMES}`).")
    if busy(entry) and entry.get("cpu_seconds") is not None:
        line += (f" Measured on a busy machine (load {entry['load']:g} on {entry.get('cores', 2)} cores), where its "
                 f"kernel computed for about {runtime_phrase(entry['cpu_seconds'])}: on an idle one it takes less.")
    return line


def readme_phrase(entry: dict) -> str:
    """A notebook's run time as notebooks/README.md's table gives it."""
    return f"about {runtime_phrase(entry['seconds'])}" + (" (busy machine)" if busy(entry) else "")


def read_runtimes(folder: Path) -> dict:
    path = Path(folder) / RUNTIMES
    return json.loads(path.read_text()) if path.exists() else {}


def record_runtime(folder: Path, name: str, seconds: float, date: str | None = None,
                   cpu_seconds: float | None = None, load: float | None = None, cores: int | None = None) -> dict:
    """Record ``name``'s run time in ``folder``/runtimes.json (read again just before writing: another run may
    have recorded its own); returns the entry."""
    import os

    entry = {"seconds": round(seconds, 1), "date": date or datetime.datetime.now(datetime.UTC).date().isoformat(),
             "load": round(os.getloadavg()[0] if load is None else load, 1),  # a busy machine's wall times run long
             "cores": cores or os.cpu_count()}
    if cpu_seconds is not None:  # the kernel's and its subprocesses' CPU time: what the notebook computed
        entry["cpu_seconds"] = round(cpu_seconds, 1)
    runtimes = read_runtimes(folder)
    runtimes[name] = entry
    (Path(folder) / RUNTIMES).write_text(json.dumps(dict(sorted(runtimes.items())), indent=1) + "\n")
    return entry


def sync_runtime_notes(folder: Path, names=None) -> list[str]:
    """Write each recorded run time (of ``names``, else all) into its notebook's ``**Runtime.**`` line and its row
    of ``folder``/README.md; returns what changed. A notebook without such a line, or a README without its row,
    is left as it is (the test names it)."""
    import nbformat

    runtimes, changed = read_runtimes(folder), []
    readme = Path(folder) / "README.md"
    table = readme.read_text() if readme.exists() else ""
    for name, entry in runtimes.items():
        path = Path(folder) / name
        if (names is not None and name not in names) or not path.exists():
            continue
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown" and RUNTIME_LINE.search(cell.source):
                source = RUNTIME_LINE.sub(lambda _: runtime_line(entry), cell.source, count=1)
                if source != cell.source:
                    cell.source = source
                    nbformat.write(nb, path)
                    changed.append(name)
                break
        rows = table.splitlines(keepends=True)
        for index, row in enumerate(rows):
            if row.startswith("|") and f"]({name})" in row:
                cells = row.rstrip("\n").split("|")
                cells[-2] = README_RUNTIME.sub(lambda m: f"{m[1]}{readme_phrase(entry)}",
                                               "|" + cells[-2].replace(" (busy machine)", ""), count=1)[1:]
                rows[index] = "|".join(cells) + ("\n" if row.endswith("\n") else "")
        if "".join(rows) != table:
            table = "".join(rows)
            readme.write_text(table)
            changed.append(f"README.md ({name})")
    return changed


#: Where ``--in-place`` executes a notebook before it replaces the stored one (only a run that passed does).
IN_PLACE_RUNS = Path("build/in-place")


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
        # --in-place runs into IN_PLACE_RUNS first: a run that fails (or is stopped) leaves the stored notebook
        # as it was, and its executed copy, error and all, there to read
        out_path = IN_PLACE_RUNS / path.name if args.in_place else args.out / path.name
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        passed, seconds, message = run_notebook(path, out_path, args.timeout)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel has exited: its CPU time is counted
        cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        failures += not passed and not message.startswith("skipped")
        if args.in_place and not passed and out_path.is_file():
            message += f" (the stored notebook is unchanged; this run's copy: {out_path})"
        print(f"{path.name:<32} {seconds:7.1f} s  {message}", flush=True)
        if passed and args.in_place:  # the stored outputs and the runtime notes come from this one run
            shutil.copyfile(out_path, path)
            record_runtime(args.notebooks, path.name, seconds, cpu_seconds=cpu_seconds)
            sync_runtime_notes(args.notebooks, [path.name])
    print(f"{len(notebooks)} notebooks, {failures} failed, {time.perf_counter() - total:.0f} s in all"
          + ("" if args.in_place else f"; executed copies in {args.out}/"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
