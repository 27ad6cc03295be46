"""Hub ids to local folders: only the files the course loads, at the revision asked for, with clear errors.

A model repository on the Hub holds far more than a training run reads: SD 1.5's has single-file checkpoints
(``v1-5-pruned.ckpt``, 7.7 GB), ``.bin`` and ``fp16`` copies of every part, a non-EMA UNet, a safety checker.
:func:`resolve_pretrained` downloads with ``allow_patterns`` (what :func:`component_patterns` lists: each
part's configs, tokenizer files and safetensors weights, in the variant asked for), as upstream's script does
by loading each part with ``from_pretrained(id, subfolder=..., revision=..., variant=...)``.

The network is asked first (huggingface_hub then reuses what the cache holds and fetches only what is
missing); the cache alone is used offline (``HF_HUB_OFFLINE=1``) or when the Hub cannot be reached, and then
only if it holds every file: a download that was interrupted is completed by the next run, never loaded half.
"""

from __future__ import annotations

import json
import os
import re
from fnmatch import fnmatch
from pathlib import Path

from .messages import error_summary

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: Parts a pipeline's ``model_index.json`` may list that training and inference never load.
NEVER_LOADED = ("safety_checker", "feature_extractor", "image_encoder")
#: Weight files of a diffusers model and of a transformers model, without the variant.
WEIGHT_NAMES = ("diffusion_pytorch_model", "model")


class HubUnavailableError(RuntimeError):
    """A hub id was asked for, but the Hugging Face Hub cannot be reached (offline, no network)."""


class GatedRepoAccessError(HubUnavailableError):
    """A gated repository (e.g. black-forest-labs/FLUX.1-dev) whose licence this user has not accepted, or no login."""


class DownloadInterruptedError(HubUnavailableError):
    """A download from the Hub broke off (connection closed, server gone) before a file was complete."""


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` strings that are not an existing local path."""
    return bool(_HUB_ID.match(str(name))) and not Path(str(name)).expanduser().exists()


def hub_offline() -> bool:
    """True when huggingface_hub is told not to use the network (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def component_patterns(components, variant: str | None = None) -> list[str]:
    """``allow_patterns`` for the parts of an SD-layout repository: ``model_index.json``, and per part its JSON
    and text files (configs, tokenizer) and its safetensors weights, of ``variant`` (e.g. ``"fp16"``) if given."""
    patterns = ["model_index.json"]
    suffix = f".{variant}" if variant else ""
    for part in components:
        patterns += [f"{part}/*.json", f"{part}/*.txt"]
        for name in WEIGHT_NAMES:
            patterns += [f"{part}/{name}{suffix}.safetensors", f"{part}/{name}{suffix}-*-of-*.safetensors"]
    return patterns


def _unavailable(repo_id: str, what: str, cause: BaseException | None) -> HubUnavailableError:
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else error_summary(cause)
    return HubUnavailableError(
        f"Cannot get {what} {repo_id!r} from the Hugging Face Hub ({reason}), and the local cache does not hold "
        "all of it. Either use the offline tiny profile (CN_PROFILE=tiny, the default), or go online once "
        f"(or run `hf download {repo_id}` on a machine that is) and try again, or pass a local folder."
    )


def _interrupted(error: BaseException) -> bool:
    """A connection that broke off mid-transfer (as opposed to one that never opened)."""
    names = {type(e).__name__ for e in _causes(error)}
    return bool(names & {"RemoteProtocolError", "ReadError", "IncompleteRead", "ChunkedEncodingError",
                         "ProtocolError", "ReadTimeout"})


def _causes(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _fetch(download, repo_id: str, what: str, **kwargs) -> str:
    """``download(repo_id, **kwargs)`` online (the cache alone when offline), its errors turned into advice."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if hub_offline():
        try:
            return download(repo_id, local_files_only=True, **kwargs)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError) as error:
            raise _unavailable(repo_id, what, None) from error
    try:
        return download(repo_id, **kwargs)
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"{repo_id!r} has no revision {kwargs.get('revision')!r} on the Hugging Face Hub "
                                "(check --revision: a branch, a tag or a commit sha of the repository)") from error
    except GatedRepoError as error:  # (a RepositoryNotFoundError too): 401 not logged in, 403 licence not accepted
        from huggingface_hub import constants

        raise GatedRepoAccessError(
            f"{repo_id!r} is a gated model: accept its licence on {constants.ENDPOINT}/{repo_id} (logged in as "
            "the account you use here), then log in with `hf auth login` (or set HF_TOKEN) and run the same "
            "command again.") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a repository on the Hugging Face Hub "
            "(check the spelling, or log in with `hf auth login` for a gated or private one)"
        ) from error
    except LocalEntryNotFoundError as error:  # (an EntryNotFoundError too): no connection, and not in the cache
        raise _unavailable(repo_id, what, error) from error
    except EntryNotFoundError as error:
        raise FileNotFoundError(f"{what.capitalize()} {repo_id!r} has no such file on the Hub ({error})") from error
    except Exception as error:  # connection refused, DNS failure, timeouts, a transfer that broke off
        if _interrupted(error):
            raise DownloadInterruptedError(
                f"The download of {what} {repo_id!r} broke off ({error_summary(error)}). Nothing half-"
                "written is kept: run the same command again, and the files that were complete are not fetched "
                "again.") from error
        raise _unavailable(repo_id, what, error) from error


def missing_components(folder: str | Path, components, variant: str | None = None) -> list[str]:
    """The parts of ``components`` that ``folder`` lacks: no config, or no safetensors weights (of ``variant``)
    for a part that has weights. A tokenizer or scheduler needs only its files; absent parts are not asked for."""
    folder = Path(folder)
    suffix = f".{variant}" if variant else ""
    missing = []
    for part in components:
        files = [p.name for p in (folder / part).glob("*")] if (folder / part).is_dir() else []
        if not files:
            missing.append(part)
        elif not part.startswith(("tokenizer", "scheduler")) and not any(
                fnmatch(name, f"{weights}{suffix}.safetensors") or fnmatch(name, f"{weights}{suffix}-*-of-*.safetensors")
                for name in files for weights in WEIGHT_NAMES):
            missing.append(f"{part} (weights{' of variant ' + variant if variant else ''})")
    return missing


def resolve_pretrained(name_or_path: str | Path, repo_type: str = "model", *, revision: str | None = None,
                       allow_patterns=None, cache_dir: str | Path | None = None) -> Path:
    """Return a local folder for a model or data set: the path itself, or the hub snapshot of ``owner/name``
    at ``revision`` (default ``main``), holding only the files that match ``allow_patterns`` (all if None).

    Raises :class:`HubUnavailableError` with advice when the Hub cannot be reached and the cache lacks the
    files, :class:`DownloadInterruptedError` when a transfer broke off, FileNotFoundError for an unknown
    repository or revision.
    """
    local = Path(str(name_or_path)).expanduser()
    if local.exists():
        return local
    if not looks_like_hub_id(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path!r} is not an existing folder, nor a hub id like 'owner/name': check "
                                "the path, or pass a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)")
    from huggingface_hub import snapshot_download

    return Path(_fetch(snapshot_download, str(name_or_path), f"the {repo_type}", repo_type=repo_type,
                       revision=revision, allow_patterns=allow_patterns, cache_dir=cache_dir))


def resolve_base(name_or_path: str | Path, *, revision: str | None = None, variant: str | None = None,
                 components=None, skip=(), cache_dir: str | Path | None = None) -> Path:
    """A local folder in diffusers' pipeline layout holding the parts asked for, in ``variant``, and nothing else:
    ``components`` (a base family knows its own: :mod:`cnhelpers.families`), or by default every part its
    ``model_index.json`` lists but those never loaded (:data:`NEVER_LOADED`); less ``skip``, e.g. the VAE when
    another one replaces it.

    Refuses, naming the parts, a folder or a download that lacks one (e.g. ``--variant fp16`` of a repository
    without fp16 weights).
    """
    if components is None:
        index = resolve_pretrained(name_or_path, revision=revision, allow_patterns=["model_index.json"],
                                   cache_dir=cache_dir) / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(f"{name_or_path} has no model_index.json: pass a base in diffusers' pipeline "
                                    "layout (a folder saved with save_pretrained, or its hub id).")
        components = sorted(part for part in _listed_components(index) if part not in NEVER_LOADED)
    components = [part for part in components if part not in skip]
    folder = resolve_pretrained(name_or_path, revision=revision, allow_patterns=component_patterns(components, variant),
                                cache_dir=cache_dir)
    missing = missing_components(folder, components, variant)
    if missing:
        problem = (f"{name_or_path} lacks {', '.join(missing)}{' at revision ' + revision if revision else ''}: the "
                   "course loads each part's config and safetensors weights")
        if variant:
            fix = f" of the {variant!r} variant (leave out --variant to load the default weights)."
        elif Path(str(name_or_path)).expanduser().exists():  # a folder the learner assembled, with parts left out
            parts = " ".join(f"'{part.split(' ')[0]}/*'" for part in missing)
            fix = (f". Copy the missing parts from the base's Hub repository (`hf download OWNER/NAME --include {parts} "
                   f"--local-dir {name_or_path}`), or pass its Hub id instead of the folder.")
        else:
            fix = ". This repository does not hold them: pass a base in diffusers' layout with every part."
        raise FileNotFoundError(problem + fix)
    return folder


def _listed_components(model_index: Path) -> set[str]:
    return {key for key, value in json.loads(model_index.read_text()).items()
            if isinstance(value, list) and value[0] is not None}


def download_file(repo_id: str, filename: str, repo_type: str = "model", revision: str | None = None) -> Path:
    """Download one file of a hub repository (e.g. a data set's raw archive) at ``revision``; return its path."""
    from huggingface_hub import hf_hub_download

    return Path(_fetch(hf_hub_download, repo_id, f"{filename} of the {repo_type}",
                       filename=filename, repo_type=repo_type, revision=revision))
