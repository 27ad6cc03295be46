"""Loading: the frozen parts of a base model and the ControlNet to train, from a folder or hub id, the one
check that a ControlNet fits a base, and the check that one training step can fit in memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import diffusers
import torch
from packaging.version import Version

from .env import available_memory, format_bytes
from .families import Models, check_controlnet_family, check_family_flags, detect_family
from .hub import HubUnavailableError, looks_like_hub_id, resolve_base, resolve_pretrained


def load_models(pretrained_model_name_or_path, *, controlnet_model_name_or_path=None, revision: str | None = None,
                variant: str | None = None, tokenizer_name: str | None = None,
                pretrained_vae_model_name_or_path: str | None = None, cache_dir: str | None = None,
                flags: dict | None = None, changed_flags: dict | None = None) -> Models:
    """The frozen base of ``pretrained_model_name_or_path`` (a folder or hub id) and the ControlNet of
    ``controlnet_model_name_or_path`` (made from the denoiser when not given), as upstream's scripts load them
    (the arguments are their flags of the same names).

    The base's family (:mod:`cnhelpers.families`) is detected from its own ``model_index.json``, and only the
    parts that family loads are fetched. A ControlNet made for another base is refused here, naming both shapes
    (or, for another family's ControlNet class, the class), rather than deep inside the denoiser.

    ``flags`` are the run's flags (name -> value): the family takes the values of its own (``Models.options``).
    ``changed_flags`` (those changed from their defaults) are checked first: one that only another family uses is
    refused (:func:`cnhelpers.families.check_family_flags`).
    """
    index = resolve_pretrained(pretrained_model_name_or_path, revision=revision, allow_patterns=["model_index.json"],
                               cache_dir=cache_dir)
    family = detect_family(index)
    check_family_flags(family, changed_flags or {})
    # Only the parts the family loads, at the revision, in the variant: not the repository's single-file
    # checkpoints, other variants or safety checker (SD 1.5's repository holds about 40 GB; these parts 4-5 GB).
    base = resolve_base(pretrained_model_name_or_path, revision=revision, variant=variant,
                        components=family.components,
                        skip=("vae",) if pretrained_vae_model_name_or_path else (), cache_dir=cache_dir)
    tokenizer = resolve_pretrained(tokenizer_name, allow_patterns=["*.json", "*.txt"], cache_dir=cache_dir) \
        if tokenizer_name else None
    vae = resolve_pretrained(pretrained_vae_model_name_or_path, allow_patterns=SINGLE_MODEL_PATTERNS,
                             cache_dir=cache_dir) if pretrained_vae_model_name_or_path else None
    controlnet = resolve_controlnet(controlnet_model_name_or_path) if controlnet_model_name_or_path else None
    if controlnet is not None:
        check_controlnet_family(family, controlnet)
    options = {name: value for name, value in (flags or {}).items() if name in family.flags}
    models = family.load(base, variant=variant, tokenizer_name=tokenizer, vae_path=vae, controlnet=controlnet,
                         options=options)
    for frozen in models.frozen():
        frozen.requires_grad_(False)
        frozen.eval()
    models.controlnet.train()
    return models


#: What a single-model repository (a ControlNet, a VAE such as madebyollin/sdxl-vae-fp16-fix) needs: its config and
#: safetensors weights, not the ``.bin`` copy beside them.
SINGLE_MODEL_PATTERNS = ["*.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model-*-of-*.safetensors"]


def check_step_fits_memory(models, resolution: int, batch_size: int, device, activation_bytes: int = 4,
                           adam_state_bytes: int = 4) -> None:
    """Refuse a run whose first step could not fit, before it allocates anything: name what a step needs, the
    limit it exceeds (the free GPU memory, the available RAM) and the batch size or resolution that would fit.
    """
    need = models.family.step_memory(models, resolution, activation_bytes, adam_state_bytes)
    device = torch.device(device)
    if device.type == "cuda":
        checks = [(device, need.device_per_example, need.device_fixed), ("cpu", need.host_per_example, 0)]
    else:
        checks = [(device, need.host_per_example + need.device_per_example, need.device_fixed)]
    for where, per_example, fixed in checks:
        available, limit = available_memory(where)
        total = batch_size * per_example + fixed
        if total <= available:
            continue
        room = available - fixed
        largest_batch = room // per_example if room > 0 else 0

        def largest_side(batch):  # what a step needs grows with the pixels: the side that fits, a multiple of 8
            return int(resolution * math.sqrt(max(room, 0) / (batch * per_example)) / 8) * 8
        problem = (f"One training step at --resolution {resolution} with --train_batch_size {batch_size} needs at "
                   f"least {format_bytes(total)} (the pictures, the conditioning embedding's full-resolution "
                   f"activations, the latents, the optimizer state), but {limit} is {format_bytes(available)}.")
        if room <= 0:
            fix = (f"The ControlNet's optimizer state alone needs {format_bytes(fixed)}: use --use_8bit_adam, or a "
                   "machine with more memory.")
        elif largest_batch >= 1:
            accumulate = math.ceil(batch_size / largest_batch)
            fix = (f"Use --train_batch_size {largest_batch} (with --gradient_accumulation_steps {accumulate} to keep "
                   f"the effective batch), or a smaller --resolution (at most {largest_side(batch_size)} at this batch "
                   "size).")
        elif largest_side(1) >= 8:
            fix = f"Even --train_batch_size 1 does not fit: use --resolution {largest_side(1)} or less."
        else:
            fix = "Even --train_batch_size 1 at --resolution 8 does not fit: free memory or use a larger machine."
        raise ValueError(f"{problem} {fix}")


#: Files that make a folder a ControlNet in diffusers format (the weights in either format).
CONTROLNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def is_controlnet_folder(path: str | Path) -> bool:
    """True when ``path`` holds a ControlNet in diffusers format: config.json and its weights."""
    path = Path(path)
    return (path / "config.json").is_file() and any((path / name).is_file() for name in CONTROLNET_WEIGHTS)


def how_to_make_controlnet(path: str | Path) -> str:
    """The advice for a ControlNet that is not at ``path``: the command that trains one into it."""
    return (f"Train one into it with `python -m cnhelpers.train --pretrained_model_name_or_path BASE "
            f"--train_data_dir DATA --output_dir {path}` (BASE: the base model's folder or hub id; DATA: an "
            "imagefolder with metadata.jsonl), or pass the folder or hub id of an existing ControlNet.")


def resolve_controlnet(name_or_path: str | Path) -> Path:
    """A local folder for a ControlNet: the folder itself, or the hub snapshot of ``owner/name``.

    A missing folder raises FileNotFoundError saying how to make it; an unreachable hub raises
    :class:`cnhelpers.hub.HubUnavailableError`.
    """
    local = Path(str(name_or_path)).expanduser()
    if isinstance(name_or_path, str) and looks_like_hub_id(name_or_path):
        try:
            return resolve_pretrained(name_or_path, allow_patterns=SINGLE_MODEL_PATTERNS)
        except HubUnavailableError as error:
            raise HubUnavailableError(f"{error}\nIf you meant a local folder: {local.resolve()} does not exist. "
                                      + how_to_make_controlnet(local)) from error
    if not local.exists():
        raise FileNotFoundError(f"No ControlNet at {local}: the folder does not exist.\n"
                                + how_to_make_controlnet(local))
    if not is_controlnet_folder(local):
        raise FileNotFoundError(
            f"{local} is not a ControlNet in diffusers format: it needs config.json and "
            f"{CONTROLNET_WEIGHTS[0]}, and has {sorted(p.name for p in local.iterdir()) or 'nothing'} "
            "(an unfinished training run saves only at its end; a checkpoint keeps it in checkpoint-N/controlnet).\n"
            + how_to_make_controlnet(local))
    return local


#: ``from_pretrained``'s precision keyword: diffusers 0.40 renamed ``torch_dtype`` to ``dtype`` (the old name now
#: warns); Colab's diffusers 0.39 knows only ``torch_dtype``.
DTYPE_KEYWORD = "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


def dtype_kwargs(dtype: torch.dtype | None) -> dict:
    """``{DTYPE_KEYWORD: dtype}`` for a diffusers ``from_pretrained`` call, ``{}`` for None (keep the stored one)."""
    return {} if dtype is None else {DTYPE_KEYWORD: dtype}


def load_controlnet(name_or_path, dtype: torch.dtype | None = None, class_name: str = "ControlNetModel"):
    """A ControlNet from a folder or hub id (a loaded model passes through, cast to ``dtype``). ``class_name`` is
    the base family's ControlNet class by diffusers' name (``SD3ControlNetModel``, ``FluxControlNetModel``)."""
    import diffusers

    if isinstance(name_or_path, torch.nn.Module):
        return name_or_path.to(dtype=dtype) if dtype is not None else name_or_path
    return getattr(diffusers, class_name).from_pretrained(resolve_controlnet(name_or_path), **dtype_kwargs(dtype))
