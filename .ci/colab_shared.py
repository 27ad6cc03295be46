"""Which of .venv's distributions .venv-colab takes as they are, and which it drops afterwards (``make setup-colab``).

    .venv/bin/python .ci/colab_shared.py link .venv .venv-colab constraints-colab.txt ROOT...
    .venv-colab/bin/python .ci/colab_shared.py unneeded ROOT...

``link`` hard-links into .venv-colab (with ``scripts/share_packages.py``'s ``link_tree``: site-packages only) the
distributions that the course package (its ``course`` extra included) and the ROOTs require,
transitively, as installed in this Python's environment, less those the constraints file pins (Colab's pins change
them) and those with files outside site-packages besides scripts (Jupyter's templates, kernels and settings: pip
installs those), and nothing else (share_packages.py's own command would add all they require), so pip there
unpacks only what Colab's pins change instead of the whole stack a second time. What .venv's versions of the pinned distributions
require stands in for what Colab's versions do, so a few are linked that those do not need: ``unneeded``, run in
.venv-colab once pip has installed Colab's pins, prints each distribution there that nothing the same roots require
(as installed there) needs, for pip to remove. .venv-colab ends with the distributions a plain install of the same
requirements gives; where .venv's version satisfies Colab's, it is .venv's.
"""
import importlib.metadata as metadata
import importlib.util
import re
import sys
from pathlib import Path

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


def data_outside(dist) -> bool:
    """Whether ``dist`` installs files outside site-packages other than scripts in bin/ (share/jupyter's templates
    and kernels, etc/jupyter's configuration): scripts/share_packages.py links site-packages only, so pip installs
    such a distribution itself."""
    outside = ("/".join(p for p in f.parts if p != "..") for f in dist.files or [] if ".." in f.parts)
    return any(not path.startswith("bin/") for path in outside)


def link(constraints_file: str, roots: list[str], site: str | None = None) -> list[str]:
    dists = installed(site)
    names = required(roots, site) - pinned(constraints_file) - {key(PACKAGE)} - OWN
    return sorted(name for name in names if not data_outside(dists[name]))


def unneeded(roots: list[str], site: str | None = None) -> list[str]:
    return sorted(set(installed(site)) - required(roots, site) - OWN)


def link_into(source: Path, target: Path, constraints_file: str, roots: list[str]) -> str:
    """Hard-link :func:`link`'s distributions from venv ``source`` into venv ``target``, but those it has already."""
    spec = importlib.util.spec_from_file_location(
        "share_packages", Path(__file__).resolve().parents[1] / "scripts" / "share_packages.py")
    share = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(share)
    src, dst = share.site_packages(source), share.site_packages(target)
    dists, present = installed(str(src)), set(installed(str(dst)))
    names = [name for name in link(constraints_file, roots, str(src)) if name not in present]
    shared = sum(share.link_tree(dists[name], src, dst) for name in names)
    return f"colab_shared: {len(names)} distributions, {shared / 2**30:.1f} GiB, linked from {source} into {target}"


def main(argv: list[str]) -> str:
    if argv[:1] == ["link"] and len(argv) >= 4:
        return link_into(Path(argv[1]), Path(argv[2]), argv[3], argv[4:])
    if argv[:1] == ["unneeded"]:
        return " ".join(unneeded(argv[1:]))
    sys.exit(__doc__)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
