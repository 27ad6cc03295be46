"""Which of .venv's distributions .venv-colab takes as they are, and which it drops afterwards (``make setup-colab``).

    .venv/bin/python .ci/colab_shared.py link constraints-colab.txt ROOT...
    .venv-colab/bin/python .ci/colab_shared.py unneeded ROOT...

``link`` prints the distributions that the course package (its ``course`` extra included) and the ROOTs require,
transitively, as installed in this Python's environment, less those the constraints file pins: Colab's pins change
them. ``scripts/share_packages.py`` hard-links those from .venv into .venv-colab, so pip there unpacks only what
Colab's pins change instead of the whole stack a second time. What .venv's versions of the pinned distributions
require stands in for what Colab's versions do, so a few are linked that those do not need: ``unneeded``, run in
.venv-colab once pip has installed Colab's pins, prints each distribution there that nothing the same roots require
(as installed there) needs, for pip to remove. .venv-colab ends with the distributions a plain install of the same
requirements gives; where .venv's version satisfies Colab's, it is .venv's.
"""
import importlib.metadata as metadata
import re
import sys

from packaging.requirements import Requirement

PACKAGE, EXTRA = "cnhelpers", "course"
#: What a new venv has before anything is installed.
OWN = {"pip", "setuptools"}


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(constraints_file: str) -> set[str]:
    lines = (line.split("#")[0].strip() for line in open(constraints_file))
    return {key(Requirement(line).name) for line in lines if line}


def installed(site: str | None = None) -> dict:
    """The distributions of this environment (or of the folder ``site``), by normalised name."""
    return {key(d.metadata["Name"]): d for d in metadata.distributions(**({"path": [site]} if site else {}))}


def required(roots: list[str], site: str | None = None) -> set[str]:
    """The package, the roots and all they require (extras and markers as the install evaluates them)."""
    dists = installed(site)
    todo = [(key(PACKAGE), EXTRA)] + [(key(name), "") for name in roots]
    seen, found = set(), set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        if name not in dists:
            sys.exit(f"colab_shared: {name} is not installed in {sys.prefix}; install it there first.")
        found.add(name)
        for line in dists[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(key(requirement.name), e) for e in ("", *sorted(requirement.extras))]
    return found


def link(constraints_file: str, roots: list[str], site: str | None = None) -> list[str]:
    return sorted(required(roots, site) - pinned(constraints_file) - {key(PACKAGE)} - OWN)


def unneeded(roots: list[str], site: str | None = None) -> list[str]:
    return sorted(set(installed(site)) - required(roots, site) - OWN)


def main(argv: list[str]) -> str:
    if argv[:1] == ["link"] and len(argv) >= 2:
        return " ".join(link(argv[1], argv[2:]))
    if argv[:1] == ["unneeded"]:
        return " ".join(unneeded(argv[1:]))
    sys.exit(__doc__)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
