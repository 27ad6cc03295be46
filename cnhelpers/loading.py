"""Loading: the frozen parts of a base model and the ControlNet to train, from a folder or hub id, the one
check that a ControlNet fits a base, and the check that one training step can fit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from packaging.version import Version

from .base_models import conditioning_downsampling, count_parameters, vae_scale_factor
from .env import available_memory, format_bytes
from .hub import HubUnavailableError, looks_like_hub_id, resolve_base, resolve_pretrained
from .recipes import how_to_make_controlnet
from .sdxl import is_sdxl_unet


@dataclass
class Models:
    """The parts of a ControlNet training run: the frozen base (tokenizer, text encoder, VAE, UNet, noise
    scheduler; an SDXL base adds ``tokenizer_2`` and ``text_encoder_2``) and the ControlNet to train."""

    tokenizer: object
    text_encoder: torch.nn.Module | None
    vae: torch.nn.Module | None
    unet: torch.nn.Module
    noise_scheduler: object
    controlnet: torch.nn.Module
    tokenizer_2: object = None
    text_encoder_2: torch.nn.Module | None = None

    @property
    def sdxl(self) -> bool:
        """An SDXL base: its UNet also reads pooled text and size/crop ids (``addition_embed_type="text_time"``)."""
        return is_sdxl_unet(self.unet)

    @property
    def text_encoders(self) -> list:
        """The text encoders still loaded (one for SD 1.5, two for SDXL; none once the text is cached)."""
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]


def load_models(args) -> Models:
    """The frozen base of ``--pretrained_model_name_or_path`` and the ControlNet of
    ``--controlnet_model_name_or_path`` (made from the UNet when not given), as upstream's script loads them.

    A ControlNet made for another base is refused here, naming both shapes, rather than deep inside the UNet.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    # Only the parts loaded below, at --revision, in --variant: not the repository's single-file checkpoints,
    # other variants or safety checker (SD 1.5's repository holds about 40 GB; these parts 4-5 GB).
    base = resolve_base(args.pretrained_model_name_or_path, revision=args.revision, variant=args.variant,
                        skip=("vae",) if args.pretrained_vae_model_name_or_path else (), cache_dir=args.cache_dir)
    common = dict(variant=args.variant)
    # (subfolder only for the base's tokenizer: transformers 5 fails on subfolder=None)
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(
        args.tokenizer_name, allow_patterns=["*.json", "*.txt"], cache_dir=args.cache_dir)) if args.tokenizer_name \
        else AutoTokenizer.from_pretrained(base, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **common)
    if args.pretrained_vae_model_name_or_path:  # e.g. SDXL's fp16-fix VAE: a whole repository, no subfolder
        vae = AutoencoderKL.from_pretrained(resolve_pretrained(
            args.pretrained_vae_model_name_or_path, allow_patterns=SINGLE_MODEL_PATTERNS, cache_dir=args.cache_dir))
    else:
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **common)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **common)
    controlnet = load_or_create_controlnet(unet, args.controlnet_model_name_or_path)
    check_controlnet_fits(controlnet, unet, vae_scale_factor(vae))
    models = Models(tokenizer, text_encoder, vae, unet, noise_scheduler, controlnet)
    if models.sdxl:  # a second tokenizer and text encoder (CLIPTextModelWithProjection, for the pooled text)
        if not (Path(base) / "text_encoder_2").is_dir():
            raise ValueError(f"{args.pretrained_model_name_or_path} has an SDXL UNet but no text_encoder_2 folder: "
                             "pass a complete SDXL base (e.g. stabilityai/stable-diffusion-xl-base-1.0).")
        models.tokenizer_2 = AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2")
        models.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2",
                                                                            **common)
    for frozen in (vae, unet, *models.text_encoders):
        frozen.requires_grad_(False)
        frozen.eval()
    controlnet.train()
    return models


def load_or_create_controlnet(unet, controlnet_model_name_or_path=None):
    """What upstream's ``--controlnet_model_name_or_path`` switches: load existing ControlNet weights
    (a hub id or a folder saved with ``save_pretrained``), or make a new ControlNet from the UNet."""
    from diffusers import ControlNetModel

    if controlnet_model_name_or_path is not None:
        return ControlNetModel.from_pretrained(resolve_controlnet(controlnet_model_name_or_path))
    return ControlNetModel.from_unet(unet)


def check_controlnet_fits(controlnet, unet, vae_factor: int = 8) -> None:
    """Refuse, with the reason and the fix, a ControlNet that cannot feed this UNet and VAE.

    Its conditioning embedding must shrink the conditioning image by the VAE's factor (so the embedding
    and the latents have the same size), and its encoder must have the UNet's channels and text width.
    """
    factor = conditioning_downsampling(controlnet)
    if factor != vae_factor:
        channels = tuple(controlnet.config.conditioning_embedding_out_channels)
        raise ValueError(
            f"The ControlNet's conditioning embedding shrinks the conditioning image {factor}x "
            f"(conditioning_embedding_out_channels={channels} has {len(channels)} entries), but the VAE shrinks "
            f"images {vae_factor}x, so the embedding and the latents would differ in size. Use a ControlNet "
            f"whose conditioning_embedding_out_channels has {vae_factor.bit_length()} entries, "
            f"e.g. ControlNetModel.from_unet(unet) with its default (16, 32, 96, 256)."
        )
    for field in ("block_out_channels", "cross_attention_dim", "in_channels"):
        mine, theirs = controlnet.config[field], unet.config[field]
        if (tuple(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs):
            raise ValueError(f"This ControlNet does not fit the base model: its {field} is {mine}, the base UNet's is "
                             f"{theirs}. A ControlNet only works with the base it was made from (the tiny base for "
                             "the tiny profile, SD 1.5 for sd15): load one trained for this base, or make one with "
                             "ControlNetModel.from_unet(unet) (leave out --controlnet_model_name_or_path).")


#: What a single-model repository (a ControlNet, a VAE such as madebyollin/sdxl-vae-fp16-fix) needs: its config and
#: safetensors weights, not the ``.bin`` copy beside them.
SINGLE_MODEL_PATTERNS = ["*.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model-*-of-*.safetensors"]


@dataclass
class StepMemory:
    """A lower bound on what one training step allocates beyond the loaded models, in bytes.

    Only tensors that certainly exist at once are counted, so a run refused by :func:`check_step_fits_memory`
    could never have run (a run that passes may still run out: attention, the rest of the activations and
    the allocator's slack come on top).
    """

    #: Per example, in RAM: the target and conditioning pictures decoded (PIL: 4 bytes a pixel) and as float32
    #: tensors, each example's and the stacked batch's.
    host_per_example: int
    #: Per example, on the training device: the larger of the VAE encoder's first activations at full
    #: resolution (when latents are encoded) and the step's: the conditioning embedding's first convolution
    #: and activation at full resolution (kept for backward), the first blocks of the ControlNet and the UNet,
    #: and the latents, noise, noisy latents and target.
    device_per_example: int
    #: Once, on the device: AdamW's two moments of every ControlNet parameter (float32, 1 byte with 8-bit Adam).
    device_fixed: int


def step_memory(models, resolution: int, activation_bytes: int = 4, adam_state_bytes: int = 4) -> StepMemory:
    """:class:`StepMemory` of ``models`` (a :class:`Models`) at ``resolution``; ``activation_bytes`` is 2 under
    fp16/bf16 mixed precision."""
    pixels = resolution * resolution
    vae_factor = vae_scale_factor(models.vae) if models.vae is not None else 8
    latent_pixels = (resolution // vae_factor) ** 2
    pictures = 2 * pixels * (4 + 2 * 3 * 4)
    embedding = models.controlnet.config.conditioning_embedding_out_channels[0]
    first_block = models.unet.config.block_out_channels[0]
    step = (2 * embedding * pixels + 2 * 2 * first_block * latent_pixels) * activation_bytes \
        + 4 * models.unet.config.in_channels * latent_pixels * 4
    vae = 2 * models.vae.config.block_out_channels[0] * pixels * activation_bytes if models.vae is not None else 0
    return StepMemory(pictures, max(step, vae), 2 * count_parameters(models.controlnet) * adam_state_bytes)


def check_step_fits_memory(models, resolution: int, batch_size: int, device, activation_bytes: int = 4,
                           adam_state_bytes: int = 4) -> None:
    """Refuse a run whose first step could not fit, before it allocates anything: name what a step needs, the
    limit it exceeds (the free GPU memory, the available RAM) and the batch size or resolution that would fit.
    """
    need = step_memory(models, resolution, activation_bytes, adam_state_bytes)
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


def load_controlnet(name_or_path, dtype: torch.dtype | None = None):
    """A ``ControlNetModel`` from a folder or hub id (a ControlNetModel passes through, cast to ``dtype``)."""
    from diffusers import ControlNetModel

    if isinstance(name_or_path, ControlNetModel):
        return name_or_path.to(dtype=dtype) if dtype is not None else name_or_path
    return ControlNetModel.from_pretrained(resolve_controlnet(name_or_path), **dtype_kwargs(dtype))
