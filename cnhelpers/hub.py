"""Resolving hub ids to local folders, with a clear error when the hub cannot be reached."""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailableError(RuntimeError):
    """A hub id was asked for, but the Hugging Face Hub cannot be reached (offline, no network)."""


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` strings that are not an existing local path."""
    return bool(_HUB_ID.match(str(name))) and not Path(str(name)).expanduser().exists()


def hub_offline() -> bool:
    """True when huggingface_hub is told not to use the network (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(repo_id: str, what: str, cause: BaseException | None) -> HubUnavailableError:
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else f"{type(cause).__name__}: {cause}"
    return HubUnavailableError(
        f"Cannot get {what} {repo_id!r} from the Hugging Face Hub ({reason}), and it is not in the local "
        "cache. Either use the offline tiny profile (CN_PROFILE=tiny, the default), or go online once "
        f"(or run `hf download {repo_id}` on a machine that is) and try again, or pass a local folder."
    )


def _fetch(download, repo_id: str, what: str, **kwargs) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:  # the local cache first: no network needed for what was downloaded before
        return download(repo_id, local_files_only=True, **kwargs)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if hub_offline():
        raise _unavailable(repo_id, what, None)
    try:
        return download(repo_id, **kwargs)
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a repository on the Hugging Face Hub "
            "(check the spelling, or log in with `hf auth login` for a gated or private one)"
        ) from error
    except Exception as error:  # connection refused, DNS failure, timeouts: all mean "no hub"
        raise _unavailable(repo_id, what, error) from error


def resolve_pretrained(name_or_path: str | Path, repo_type: str = "model") -> Path:
    """Return a local folder for a model: the path itself, or the hub snapshot of ``owner/name``.

    Raises :class:`HubUnavailableError` with advice when a hub id is given and the hub is unreachable.
    """
    local = Path(str(name_or_path)).expanduser()
    if local.exists():
        return local
    if not looks_like_hub_id(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path!r} is not an existing folder, nor a hub id like 'owner/name': check "
                                "the path, or pass a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)")
    from huggingface_hub import snapshot_download

    return Path(_fetch(snapshot_download, str(name_or_path), f"the {repo_type}", repo_type=repo_type))


def download_file(repo_id: str, filename: str, repo_type: str = "model") -> Path:
    """Download one file of a hub repository (e.g. a data set's raw archive) and return its path."""
    from huggingface_hub import hf_hub_download

    return Path(_fetch(hf_hub_download, repo_id, f"{filename} of the {repo_type}",
                       filename=filename, repo_type=repo_type))
