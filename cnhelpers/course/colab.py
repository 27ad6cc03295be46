"""The notebooks' Colab set-up cell, written once: ``python -m cnhelpers.course.colab`` puts it into every notebook.

On Colab (and only there) the cell clones the course and installs it, in lines the learner sees; then one import
line, :func:`on_colab`, adds the ``memory`` extra (bitsandbytes' 8-bit Adam) when the runtime has a GPU and moves
into ``notebooks/`` (a failed clone stops there with the reason). Elsewhere the cell only imports.
A fork changes :data:`REPOSITORY` and runs ``python -m cnhelpers.course.colab``; ``tests/test_course.py`` checks that
every notebook's cell and every Colab badge of the README use it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: The course's repository: the Colab cell clones it, the README's badges open its notebooks.
REPOSITORY = "https://github.com/cn-course/controlnet-course"
#: Where the Colab cell puts the course.
COLAB_CHECKOUT = "/content/controlnet-course"
#: The first line of the cell, by which it is found.
MARKER = "# On Colab: fetch the course and its helper package (elsewhere, `make setup` has done this)."


def colab_cell() -> str:
    """The source of the notebooks' Colab set-up cell: what touches the learner's runtime (the clone and the
    install) stays visible; the rest is :func:`on_colab`, one import line."""
    return f'''{MARKER}
import sys
if "google.colab" in sys.modules:
    !test -d {COLAB_CHECKOUT} || git clone -q --depth 1 {REPOSITORY} {COLAB_CHECKOUT}
    %pip install -q -e {COLAB_CHECKOUT}
    sys.path.insert(0, "{COLAB_CHECKOUT}")
from cnhelpers.course.colab import on_colab; on_colab()  # noqa: E402, E702  Colab: GPU extras, cd notebooks/'''


def on_colab(checkout: str = COLAB_CHECKOUT) -> bool:
    """On Colab (and only there): install the ``memory`` extra (bitsandbytes' 8-bit Adam) when the runtime has a
    GPU, and move into the course's ``notebooks/``. Elsewhere nothing. Returns whether it ran on Colab.

    Importing this module imports :mod:`cnhelpers` first, which quiets bitsandbytes' warning about a CPU kernel.
    """
    if "google.colab" not in sys.modules:
        return False
    import os
    import subprocess

    import torch

    if not os.path.isdir(f"{checkout}/notebooks"):
        raise SystemExit(f"error: {checkout} has no notebooks/: the clone of {REPOSITORY} failed (see the line "
                         "above); check the address (cnhelpers.course.colab.REPOSITORY in a fork) and that the "
                         "runtime is online, then run this cell again.")
    if torch.cuda.is_available():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{checkout}[memory]"], check=True)
    os.chdir(f"{checkout}/notebooks")
    return True


def is_colab_cell(cell: dict) -> bool:
    """True for a notebook's Colab set-up cell (a code cell that acts only under ``google.colab``)."""
    return cell["cell_type"] == "code" and '"google.colab" in sys.modules' in "".join(cell["source"])


def sync_colab_cells(paths) -> list[Path]:
    """Make the Colab cell of each notebook in ``paths`` :func:`colab_cell`; return the notebooks changed."""
    changed = []
    for path in map(Path, paths):
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            if is_colab_cell(cell) and "".join(cell["source"]) != colab_cell():
                cell["source"] = colab_cell().splitlines(keepends=True)
                changed.append(path)
        if changed and changed[-1] == path:
            path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return changed


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "notebooks")
    for path in sync_colab_cells(sorted(folder.glob("*.ipynb"))):
        print(f"updated {path.name}")
