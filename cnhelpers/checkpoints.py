"""Checkpoints of a run: listing, finding (``latest``), saving atomically, and the ControlNet stored in diffusers
format inside each.

Checkpoints are written under a temporary name and renamed when complete, and pruned only after the new one
exists: a crash never leaves a half-written ``checkpoint-N``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def list_checkpoints(output_dir) -> list[Path]:
    """Complete ``checkpoint-N`` folders of ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
             and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def find_checkpoint(output_dir, resume_from_checkpoint: str) -> Path | None:
    """``latest`` -> the newest checkpoint (None if there is none); otherwise that checkpoint's path."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / path.name
    if not path.is_dir():
        available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist in "
                                f"{output_dir} (checkpoints there: {available}; or pass 'latest')")
    return path


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: int | None) -> Path:
    """``accelerator.save_state`` into ``checkpoint-N``, atomically, then prune to ``total_limit``.

    Called on every process (each saves its RNG state; DeepSpeed needs all of them). The state is written
    to ``checkpoint-N.partial`` and renamed when complete; older checkpoints go only after that.
    """
    final = Path(output_dir) / f"checkpoint-{global_step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        if partial.exists():  # left by a crash: never resume from it
            shutil.rmtree(partial)
        partial.mkdir(parents=True)  # before any process writes its RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def register_controlnet_hooks(accelerator):
    """Make ``save_state``/``load_state`` store the ControlNet in diffusers format (``controlnet/``)."""
    from diffusers import ControlNetModel

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "controlnet"))
        weights.clear()  # accelerate must not save the same weights again

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            loaded = ControlNetModel.from_pretrained(input_dir, subfolder="controlnet")
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
