"""Run the course's notebooks headless, in order: ``python -m cnhelpers.course`` (``make course``).

Each notebook runs in a fresh kernel with the notebooks folder as its working directory. One line per
notebook says how long it took and whether it passed, or which cell failed and why.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def course_notebooks(folder: Path) -> list[Path]:
    """The course's notebooks in order: ``NN_name.ipynb`` (and ``NNb_name.ipynb``) files of ``folder``, by name."""
    return sorted(p for p in folder.glob("[0-9][0-9]*_*.ipynb"))


def _first_error(nb) -> str:
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"code cell {index}: {output.get('ename')}: {output.get('evalue')}"
    return "unknown cell"


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
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
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
