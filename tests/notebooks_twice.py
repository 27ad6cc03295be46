"""Each notebook doubled, for nbval: Run All twice in one fresh kernel, both runs against the stored outputs.

    python tests/notebooks_twice.py --out build/twice [--skip 05_] [--only NAME] [notebooks/]   (make test-notebooks)
    python tests/notebooks_twice.py --once --short --out build/colab-notebooks --skip 05_   (make test-colab-notebooks)

A learner runs a notebook again without restarting: a second Run All must not find the first one's
checkpoints and resume, skip work because a variable exists, or print other figures. This writes each
notebook *doubled* into ``--out``: its cells, a markdown cell that marks the second run, then the same cells
again, each copy with the stored outputs (a fresh kernel's, ``make outputs``). nbval runs the doubled notebook
top to bottom in one fresh kernel, so one execution checks both things: the first run against the stored
outputs (a fresh kernel, as every CI run did before), and the second run, in the kernel the first one left,
against the same outputs. nbval names a failing cell by its index among the code cells: an index past the
notebook's own count of code cells is the second run's.

The second run is there for what the first one leaves in the kernel and in ``build/`` (the second copy runs in the
same folder, so it meets the first one's outputs, checkpoints and data), so it is left out where nothing is left
that a second run could meet (``RUN_ONCE``, each with its reason; such a notebook is written once), and it runs
at a smaller size where the notebook has a knob for it (``SHORT_RUN``: values for the second copy's
``parameters`` cell; the first copy keeps the stored run's, but for the few values ``FIRST_RUN`` sizes down where
no checked cell depends on them). A notebook run once runs at the ``SHORT_RUN`` size
too where it has one: its checked cells must then not depend on the size, as a second copy's do not. Every
other notebook, a new one included, is doubled whole.

``--once --short`` writes each notebook once, with the ``SHORT_RUN`` values in its ``parameters`` cell: Colab's
leg runs those (its own build folder, so it need not wait for this leg), because what it checks is that each
notebook's code runs and prints the same on Colab's library versions, which the short run shows as well as the
stored one (the doubled notebooks' second copies pass against the same stored outputs).

``checked_outputs`` gives the text of the checked cells (tagged ``nbval-check-output``), as nbval compares
them, to compare two copies of a notebook by hand (for instance before and after ``make outputs``).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

CHECK_TAG = "nbval-check-output"
PARAMETERS_TAG = "parameters"
#: The markdown cell between the two runs of a doubled notebook.
SECOND_RUN_MARKER = "## Second Run All, in the same kernel (tests/notebooks_twice.py)"

#: Notebooks run once, and why a second Run All in the same kernel cannot meet anything of the first.
RUN_ONCE = {
    "04b_measuring_memory": "its measuring runs in a process of its own (benchmarks/memory_ladder.py), and the "
                            "kernel only reads that run's JSON and the committed results",
}
#: A smaller run for the second copy of a doubled notebook (its ``parameters`` cell's values): it meets the first
#: run's state as a full one would. The same values are the browser leg's (tests_browser/conftest.py): the smallest
#: that still show every widget. Step counts in checked outputs are masked (tests/short_run_sanitize.cfg).
SHORT_RUN = {
    "03_training_loop": {"MAX_TRAIN_STEPS": 4, "HAND_STEPS": 4},
    "06_inference": {"NUM_INFERENCE_STEPS": 4, "NUM_EVALUATION_OUTLINES": 2, "NUM_BREAKDOWN_OUTLINES": 8},
    "07_sdxl": {"MAX_TRAIN_STEPS": 4},
    "08_diffusion_transformers": {"SD3_TRAIN_STEPS": 2, "FLUX_TRAIN_STEPS": 2},
    "09_your_own_controlnet": {"TRAIN_STEPS": 4},
    # run once: two of the ladder's rungs, side by side, instead of every rung (tests/test_memory.py runs rungs
    # 1, 6, 7 and 8 and compares side by side with one at a time; make outputs runs every rung)
    "04b_measuring_memory": {"LADDER_RUNGS": "7,8"},
}


#: Values for the *first* copy where the stored run's are larger than anything checked needs: the cells they size
#: print no checked output (their figures are ``make outputs``' run, compared loosely), so the first run still
#: checks every checked cell against the stored outputs. 06: its evaluation and breakdown tables, whose 16 and 64
#: outlines at 20 steps took 67 s of test-notebooks' 643 s (2026-12-05); its second copy runs them at these sizes.
#: 03 and 09: their training runs at the second copy's 4 steps (they ran 40 and 20, CN_PROFILE_OVERRIDES in make
#: test-notebooks until 2026-12-05: 03's main run took 56 s there against 26 s at 4 steps, and every checked cell of
#: 03 passes at 4 steps in the second copy, with step counts and checkpoint names masked; neither size reads every
#: example, so both run the uncached path) and 03's hand-written loop at 4 (20 stored: its cell's check, the same
#: weights as train()'s, holds at any length).
FIRST_RUN = {
    "03_training_loop": {"MAX_TRAIN_STEPS": 4, "HAND_STEPS": 4},
    "06_inference": {"NUM_EVALUATION_OUTLINES": 2, "NUM_BREAKDOWN_OUTLINES": 8},
    "09_your_own_controlnet": {"TRAIN_STEPS": 4},
}


def set_parameters(nb, values: dict, note: str = "tests/notebooks_twice.py"):
    """Set ``values`` in the notebook's ``parameters`` cell (as papermill would); each name must be set there."""
    cell = next((c for c in nb.cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError(f"no cell tagged {PARAMETERS_TAG!r} to set {', '.join(values)} in")
    lines = cell.source.splitlines(keepends=True)
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line)]
        if not found:
            raise ValueError(f"the parameters cell sets no {name}")
        lines[found[0]] = f"{name} = {value!r}  # set by {note}\n"
    cell.source = "".join(lines)


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


def doubled(nb, second_run_parameters: dict | None = None, first_run_parameters: dict | None = None):
    """``nb`` with its cells twice, a marker between; the copies keep the stored outputs and get ids of their own.
    ``second_run_parameters``: values for the second copy's ``parameters`` cell; ``first_run_parameters``: for
    the first copy's (:data:`FIRST_RUN`)."""
    twice = copy.deepcopy(nb)
    if first_run_parameters:
        set_parameters(twice, first_run_parameters, "tests/notebooks_twice.py: FIRST_RUN")
    marker = nbformat.v4.new_markdown_cell(SECOND_RUN_MARKER)
    second_nb = copy.deepcopy(nb)
    if second_run_parameters:
        set_parameters(second_nb, second_run_parameters, "tests/notebooks_twice.py: a short second run")
    second = second_nb.cells
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
    parser.add_argument("--once", action="store_true", help="write each notebook once, not doubled")
    parser.add_argument("--short", action="store_true",
                        help="with --once: the SHORT_RUN values in each notebook's parameters cell")
    args = parser.parse_args(argv)
    if args.short and not args.once:
        parser.error("--short goes with --once (a doubled notebook's second copy is already short)")
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
        nb = nbformat.read(path, as_version=4)
        if args.once:
            if args.short and path.stem in SHORT_RUN:
                set_parameters(nb, SHORT_RUN[path.stem], "tests/notebooks_twice.py --short")
        elif path.stem not in RUN_ONCE:
            nb = doubled(nb, SHORT_RUN.get(path.stem), FIRST_RUN.get(path.stem))
        elif path.stem in SHORT_RUN:
            set_parameters(nb, SHORT_RUN[path.stem], "tests/notebooks_twice.py: run once, short")
        nbformat.validate(nb)
        nbformat.write(nb, args.out / path.name)
    if args.once:
        short = [p.stem for p in paths if args.short and p.stem in SHORT_RUN]
        print(f"{len(paths)} notebooks into {args.out}, once each; short: {', '.join(short) or 'none'}")
        return 0
    twice = [p.stem + (" (short second run)" if p.stem in SHORT_RUN else "") for p in paths if p.stem not in RUN_ONCE]
    once = [p.stem + (" (short)" if p.stem in SHORT_RUN else "") for p in paths if p.stem in RUN_ONCE]
    print(f"{len(paths)} notebooks into {args.out}: doubled {', '.join(twice) or 'none'}; "
          f"once {', '.join(once) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
