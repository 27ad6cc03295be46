"""Give one venv another's installed packages as hard links, so that two venvs of the same torch cost its disk once.

    python scripts/share_packages.py FROM_VENV TO_VENV torch torchvision

links every file of the named distributions and of everything they require (their markers evaluated for this
machine) from FROM_VENV's site-packages into TO_VENV's, dist-info included, so pip in TO_VENV sees them installed
and installs nothing more for them. A CUDA build of torch is about 5.3 GB; `make setup-colab` uses this to reuse
.venv's copy instead of writing a second one (a CI machine's disk can be short). Where a hard link cannot be made
(another file system), the file is copied. pip never writes into an installed file (it removes, then writes anew),
so upgrading or removing a package in one venv leaves the other's intact.

A distribution TO_VENV already has (any version: a new venv's own pip and setuptools) is left as it is: linking
another version's files over it would mix two versions in one folder (setuptools 84's files over a venv's 65 broke
`import setuptools`, and with it torch.compile's C++ builds). pip then settles the version as it would anyway.
"""
import argparse
import importlib.metadata as metadata
import os
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def site_packages(venv: Path) -> Path:
    """The site-packages folder of a venv made by this Python's version."""
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        sys.exit(f"share_packages: {venv} has no lib/python*/site-packages; create the venv first.")
    return found[0]


def closure(names, path):
    """The distributions named and all they require, transitively (extras included), as found on `path`."""
    dists = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(path)])}
    todo, seen, done = [(canonicalize_name(n), "") for n in names], {}, set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in done:
            continue
        done.add((name, extra))
        if name not in dists:
            sys.exit(f"share_packages: {name} is not installed in {path}; install it there first.")
        seen[name] = dists[name]
        for line in dists[name].requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ("", *sorted(req.extras))]
    return seen


def link_tree(dist, src: Path, dst: Path) -> int:
    """Hard-link (or copy) one distribution's files under site-packages; returns the bytes shared."""
    shared = 0
    for rel in dist.files or []:
        if ".." in rel.parts:  # scripts in bin/ and the like: not needed to import
            continue
        a, b = src / rel, dst / rel
        if not a.is_file() or b.exists():
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
        shared += a.stat().st_size
    return shared


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    src, dst = site_packages(args.source), site_packages(args.target)
    dists = closure(args.names, src)
    present = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=[str(dst)])}
    kept = sorted(f"{name} {present[name]}" for name in dists if name in present)
    if kept:
        print(f"share_packages: left as installed in {args.target}: {', '.join(kept)}")
    dists = {name: d for name, d in dists.items() if name not in present}
    total = sum(link_tree(d, src, dst) for d in dists.values())
    print(f"share_packages: {len(dists)} distributions, {total / 2**30:.1f} GiB, linked from {args.source} into {args.target}")


if __name__ == "__main__":
    main()
