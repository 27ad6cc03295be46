"""Run All twice in one kernel, and compare with a fresh kernel: the checked outputs must not change.

    python tests/notebooks_twice.py [--only NAME] [notebooks/]      (make test-notebooks-twice)

A learner runs a notebook again without restarting: a second Run All must not find the first one's
checkpoints and resume, skip work because a variable exists, or print other figures. Each notebook runs
top to bottom twice in one kernel; the outputs of every cell tagged ``nbval-check-output`` (the stable facts
nbval checks) must equal, in both passes, the stored ones, which are a fresh kernel's (``make outputs``, and
nbval re-checks them in a fresh kernel in every CI run). A difference prints the notebook, the cell and the
first differing line, and the exit status is 1.

``--small NAME:CODE`` appends ``CODE`` to that notebook's ``parameters`` cell (notebook 03: fewer training
steps); its second run is then compared with its first, since the stored outputs are the full run's.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

CHECK_TAG = "nbval-check-output"


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


def first_difference(a: str, b: str) -> str:
    for line_a, line_b in zip(a.splitlines(), b.splitlines()):
        if line_a != line_b:
            return f"stored: {line_a[:160]!r}\n      now:    {line_b[:160]!r}"
    return f"stored has {len(a.splitlines())} lines, now {len(b.splitlines())}"


def run_twice(path: Path, timeout: int = 1800, parameters: str = "") -> list[str]:
    """Run ``path`` top to bottom twice in one fresh kernel; the differences from its stored checked outputs.

    With ``parameters`` (code appended to the ``parameters`` cell) the first run's outputs are the reference.
    """
    stored = nbformat.read(path, as_version=4)
    expected = None if parameters else checked_outputs(stored)
    nb = copy.deepcopy(stored)
    if parameters:
        cell = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
        if cell is None:
            return [f"{path.name}: no cell tagged 'parameters' to set {parameters!r} in"]
        cell.source += "\n" + parameters
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    problems = []
    with client.setup_kernel():
        for run in (1, 2):
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            except CellExecutionError as error:
                problems.append(f"{path.name}, run {run}: cell {index} failed: {str(error).strip().splitlines()[-1]}")
                break
            now = checked_outputs(nb)
            if expected is None:  # small parameters: the first run is the reference
                expected, reference = now, "the first run's"
                continue
            for index, text in expected.items():
                if now.get(index) != text:
                    problems.append(f"{path.name}, run {run} in one kernel: cell {index} differs from "
                                    f"{reference if parameters else 'the stored (fresh-kernel)'} output\n"
                                    f"      {first_difference(text, now.get(index, ''))}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path(__file__).resolve().parents[1] / "notebooks")
    parser.add_argument("--only", default="", help="only notebooks whose name contains this")
    parser.add_argument("--skip", action="append", default=[], help="leave out notebooks whose name contains this")
    parser.add_argument("--small", action="append", default=[], metavar="NAME:CODE",
                        help="append CODE to the parameters cell of notebooks whose name contains NAME")
    args = parser.parse_args(argv)
    small = dict(item.split(":", 1) for item in args.small)
    paths = [p for p in sorted(args.folder.glob("[0-9][0-9]*_*.ipynb"))
             if args.only in p.name and not any(s in p.name for s in args.skip)]
    problems = []
    for path in paths:
        started = time.perf_counter()
        parameters = next((code for name, code in small.items() if name in path.name), "")
        found = run_twice(path, parameters=parameters)
        problems += found
        print(f"{path.name:<32} {time.perf_counter() - started:6.1f} s  "
              f"{'same checked outputs in both runs' if not found else f'{len(found)} differences'}"
              + (f" (with {parameters!r})" if parameters else ""), flush=True)
    for problem in problems:
        print("  " + problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
