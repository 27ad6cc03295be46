"""Checkpoints of a run: listing, finding (``latest``), saving atomically, and the ControlNet stored in diffusers
format inside each.

Checkpoints are written under a temporary name and renamed when complete, and pruned only after the new one
exists: a crash never leaves a half-written ``checkpoint-N``.

A complete checkpoint ends with a manifest, :data:`MANIFEST` (``checkpoint.json``), written last: the size of
every file in it. :func:`checkpoint_problem` compares the files with it and also checks each file's own
structure (a safetensors header that matches the file's size, torch archives whose index is whole), so a
checkpoint cut short later (a full disk while copying it, a truncated file) is found before resuming.
Checkpoints written before the manifest existed are accepted when that structural check passes: their
``controlnet/`` folder is there, and every weights, optimizer, scheduler and random-state file is whole.
``--resume_from_checkpoint latest`` skips an incomplete checkpoint with a warning naming it, and resumes
from the newest complete one; a named incomplete checkpoint is an error.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

from .lora import has_lora, load_lora_state, save_controlnet

#: The last file written into a checkpoint: ``{"step": N, "files": {relative path: size in bytes}}``.
MANIFEST = "checkpoint.json"
#: The errno values of a full disk (or a full quota).
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def checkpoint_step(path) -> int:
    """The N of ``checkpoint-N``."""
    return int(Path(path).name.split("-", 1)[1])


def list_checkpoints(output_dir) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest first (``.partial`` ones left by a crash are not
    listed; whether each is complete is :func:`checkpoint_problem`'s question)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
             and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=checkpoint_step)


def write_manifest(folder, step: int, run_facts: dict | None = None) -> Path:
    """Write :data:`MANIFEST` into ``folder``: every file's size (called last, when everything else is saved), and
    ``run_facts``, what a resumed run must repeat (read back by :func:`checkpoint_run_facts`)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"step": step, "files": files, **(run_facts or {})}, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole: its header must parse and describe exactly the file's size."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > size - 8:
                return f"{path.name} is cut short ({size} bytes)"
            header = json.loads(f.read(length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return f"{path.name} has no readable safetensors header"
    if 8 + length + end != size:
        return f"{path.name} is {size} bytes but its header describes {8 + length + end}"
    return None


def _archive_problem(path: Path) -> str | None:
    """Why a torch.save archive (a zip file: optimizer.bin, scheduler.bin, random_states_*.pkl) is not whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return f"{path.name} is not a whole torch archive ({path.stat().st_size} bytes)"
    return None


def checkpoint_problem(path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from (a short phrase), or None when it is complete.

    With a manifest: every file it lists must be there with its size. With or without one: ``controlnet/``
    must hold its config and weights, every safetensors file must match its header and every torch archive
    must have a whole index (a truncated file fails both).
    """
    path = Path(path)
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
            files = {str(name): int(size) for name, size in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"its {MANIFEST} is unreadable"
        for name, size in files.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} is {file.stat().st_size} bytes, {MANIFEST} says {size}"
    controlnet = path / "controlnet"
    if not (controlnet / "config.json").is_file():
        return "controlnet/config.json is missing"
    try:
        json.loads((controlnet / "config.json").read_text())
    except ValueError:
        return "controlnet/config.json is not valid JSON"
    if not any(controlnet.glob("diffusion_pytorch_model*")):
        return "controlnet/ has no weights"
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        elif file.suffix in (".bin", ".pkl", ".pt", ".pth"):
            problem = _archive_problem(file)
        else:
            continue
        if problem:
            return problem.replace(file.name, file.relative_to(path).as_posix(), 1)
    return None


def find_checkpoint(output_dir, resume_from_checkpoint: str) -> Path | None:
    """``latest`` -> the newest complete checkpoint (None if there is none); otherwise that checkpoint's path.

    ``latest`` skips incomplete checkpoints with a warning naming each (and refuses when there are checkpoints
    but none is complete, rather than silently starting over); a named checkpoint must be complete.
    """
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        skipped = []
        for candidate in reversed(checkpoints):
            problem = checkpoint_problem(candidate)
            if problem is None:
                return candidate
            skipped.append(candidate.name)
            warnings.warn(f"{candidate} is incomplete or corrupt ({problem}): skipping it and resuming from an "
                          "older checkpoint (delete it to be rid of this warning).", stacklevel=2)
        if skipped:
            raise ValueError(f"Every checkpoint in {output_dir} is incomplete or corrupt ({', '.join(skipped)}): "
                             "delete them (or pass another --output_dir) to start a new run.")
        return None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / path.name
    if not path.is_dir():
        available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist in "
                                f"{output_dir} (checkpoints there: {available}; or pass 'latest')")
    problem = checkpoint_problem(path)
    if problem is not None:
        good = [p.name for p in list_checkpoints(path.parent) if p != path and checkpoint_problem(p) is None]
        older = f"another checkpoint ({', '.join(good)})" if good else "another checkpoint"
        raise ValueError(f"--resume_from_checkpoint {path.name} is incomplete or corrupt ({problem}): resume from "
                         f"{older} or 'latest' (which skips it), or delete it.")
    return path


def checkpoint_run_facts(checkpoint) -> dict:
    """The ``run_facts`` a checkpoint's manifest holds (``{}`` for one saved before they were written)."""
    manifest = Path(checkpoint) / MANIFEST
    if not manifest.is_file():
        return {}
    facts = json.loads(manifest.read_text())
    return {key: value for key, value in facts.items() if key not in ("step", "files")}


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: int | None,
                    run_facts: dict | None = None) -> Path:
    """``accelerator.save_state`` into ``checkpoint-N``, atomically, then prune to ``total_limit``.

    ``run_facts`` go into the manifest: what the run chose once that a resumed run must choose the same way.

    Called on every process (each saves its RNG state; DeepSpeed needs all of them). The state is written
    to ``checkpoint-N.partial``, the manifest last, and the folder renamed when complete; older checkpoints
    go only after that. If saving fails (a full disk, an interrupt) the partial folder is removed; a full disk
    becomes an OSError(ENOSPC) whose message names the checkpoint and the newest one still intact.
    """
    final = Path(output_dir) / f"checkpoint-{global_step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        if partial.exists():  # left by a crash: never resume from it
            shutil.rmtree(partial)
        partial.mkdir(parents=True)  # before any process writes its RNG state into it
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(partial, global_step, run_facts)
    except BaseException as error:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            intact = [p.name for p in list_checkpoints(output_dir) if checkpoint_problem(p) is None]
            raise OSError(error.errno, f"No space left on device while saving {final.name} in {output_dir} (its "
                                       "partial copy was removed; "
                                       + (f"{intact[-1]} is intact)" if intact else "no earlier checkpoint)")) \
                from error
        raise
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (a run resumed from before it): swap, then delete
            stale = final.with_name(final.name + ".old")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(partial, final)
            shutil.rmtree(stale)
        else:
            os.replace(partial, final)
        if total_limit is not None:
            # Only checkpoints up to this step count: a newer one left by an abandoned run is overwritten
            # when the run gets there, and must never make this one be pruned.
            done = [p for p in list_checkpoints(output_dir) if checkpoint_step(p) <= global_step]
            for old in done[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def register_controlnet_hooks(accelerator):
    """Make ``save_state``/``load_state`` store the ControlNet in diffusers format (``controlnet/``), loaded back with
    the class of the ControlNet being trained (``ControlNetModel``, ``SD3ControlNetModel``...)."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:  # (a LoRA ControlNet: merged, and its adapters in controlnet/lora)
                save_controlnet(accelerator.unwrap_model(model), os.path.join(output_dir, "controlnet"))
        weights.clear()  # accelerate must not save the same weights again

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            if has_lora(model):
                load_lora_state(model, os.path.join(input_dir, "controlnet"))
                continue
            if os.path.isdir(os.path.join(input_dir, "controlnet", "lora")):
                raise ValueError(f"{input_dir} is a LoRA ControlNet's checkpoint: resume it with the --lora_rank (and "
                                 "--lora_alpha) its run was started with.")
            loaded = type(model).from_pretrained(input_dir, subfolder="controlnet")
            # (not its private keys: _name_or_path would name the checkpoint in the final config.json)
            model.register_to_config(**{k: v for k, v in loaded.config.items() if not k.startswith("_")})
            model.load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
