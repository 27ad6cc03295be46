"""Where the course keeps what it builds: the tiny base model, generated data, trained ControlNets."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path | None:
    """The course checkout this package lives in, or None when installed from a wheel (e.g. on Colab)."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def shown_path(path: str | Path) -> str:
    """``path`` as the notebooks print it: relative to the checkout when inside it (commands run from its
    root), ``~/...`` under the home folder, otherwise unchanged. So stored outputs name no machine's folders."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    root = project_root()
    for base, prefix in ((root, ""), (Path.home(), "~/")):
        if base is not None and path.is_relative_to(base.resolve()):
            return prefix + (path.relative_to(base.resolve()).as_posix() or ".")
    return str(path)


def build_dir() -> Path:
    """Folder for everything the course generates.

    ``CN_BUILD_DIR`` wins; otherwise ``build/`` in the checkout, or ``~/.cache/cnhelpers`` when the
    package is installed without one.
    """
    if os.environ.get("CN_BUILD_DIR"):
        path = Path(os.environ["CN_BUILD_DIR"]).expanduser()
    elif project_root() is not None:
        path = project_root() / "build"
    else:
        path = Path.home() / ".cache" / "cnhelpers"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def staged_folder(final: str | Path):
    """Write a folder under a temporary name and move it into place only when the block succeeds.

    So an interrupted build never leaves a half-written model or data set where a finished one is
    expected; on failure the temporary folder is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
