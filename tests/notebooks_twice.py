"""Each notebook doubled, for nbval: Run All twice in one fresh kernel, both runs against the stored outputs.

    python tests/notebooks_twice.py --out build/twice [--skip 05_] [--only NAME] [notebooks/]   (make test-notebooks)

A learner runs a notebook again without restarting: a second Run All must not find the first one's
checkpoints and resume, skip work because a variable exists, or print other figures. This writes each
notebook *doubled* into ``--out``: its cells, a markdown cell that marks the second run, then the same cells
again, each copy with the stored outputs (a fresh kernel's, ``make outputs``). nbval runs the doubled notebook
top to bottom in one fresh kernel, so one execution checks both things: the first run against the stored
outputs (a fresh kernel, as every CI run did before), and the second run, in the kernel the first one left,
against the same outputs. nbval names a failing cell by its index among the code cells: an index past the
notebook's own count of code cells is the second run's.

``checked_outputs`` gives the text of the checked cells (tagged ``nbval-check-output``), as nbval compares
them, to compare two copies of a notebook by hand (for instance before and after ``make outputs``).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

CHECK_TAG = "nbval-check-output"
#: The markdown cell between the two runs of a doubled notebook.
SECOND_RUN_MARKER = "## Second Run All, in the same kernel (tests/notebooks_twice.py)"


def checked_outputs(nb) -> dict[int, str]:
    """The text of each checked cell's outputs (streams and text/plain, as nbval compares them), by cell index."""
    found = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or CHECK_TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":  # one stream, however many messages it came in (as nbval)
                if parts and parts[-1].startswith(f"[{output['name']}] "):
                    parts[-1] += output["text"]
                else:
                    parts.append(f"[{output['name']}] {output['text']}")
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(f"[{output['output_type']}] {output['data']['text/plain']}")
            elif output.get("output_type") == "error":
                parts.append(f"[error] {output['ename']}: {output['evalue']}")
        found[index] = "".join(parts)
    return found


def doubled(nb):
    """``nb`` with its cells twice, a marker between; the copies keep the stored outputs and get ids of their own."""
    twice = copy.deepcopy(nb)
    marker = nbformat.v4.new_markdown_cell(SECOND_RUN_MARKER)
    second = copy.deepcopy(nb.cells)
    for cell in second:
        if "id" in cell:  # cell ids must be unique within a notebook (nbformat 4.5)
            cell["id"] = f"{cell['id']}-2"[:64]
    twice.cells = list(twice.cells) + [marker] + second
    return twice


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "notebooks")
    parser.add_argument("--out", type=Path, required=True, help="folder for the doubled notebooks (emptied first)")
    parser.add_argument("--only", default="", help="only notebooks whose name contains this")
    parser.add_argument("--skip", action="append", default=[], help="leave out notebooks whose name contains this")
    args = parser.parse_args(argv)
    paths = [p for p in sorted(args.folder.glob("[0-9][0-9]*_*.ipynb"))
             if args.only in p.name and not any(s in p.name for s in args.skip)]
    if not paths:
        print(f"notebooks_twice: no notebook in {args.folder} matches --only {args.only!r} and --skip {args.skip}",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*.ipynb"):  # a notebook renamed or skipped since the last run must not linger
        stale.unlink()
    for path in paths:
        twice = doubled(nbformat.read(path, as_version=4))
        nbformat.validate(twice)
        nbformat.write(twice, args.out / path.name)
    print(f"{len(paths)} notebooks doubled into {args.out}: {', '.join(p.stem for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
