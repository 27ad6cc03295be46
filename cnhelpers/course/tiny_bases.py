"""The course's tiny bases: the tiny Stable-Diffusion-layout base it trains on (built, or copied from the pretrained
one it ships), SD 1.5's architecture with random weights, and the profile's base folder.

The tiny base mirrors SD 1.5 where a learner would notice: the same folder layout and loaders, a VAE
that downsamples by 8 with 4 latent channels (so ``ControlNetModel.from_unet(unet)`` works with its
default conditioning embedding), 32-group normalisation in the UNet (diffusers' Flax UNet assumes 32),
a CLIP text encoder and a CLIP BPE tokenizer. SD 1.5's configs build its architecture with random weights
(on the meta device for counting, or saved for the benchmarks), since nothing is downloaded here.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from ..hub import resolve_base
from ..paths import build_dir, staged_folder
from ..tokenizer import write_clip_tokenizer
from .fill import caption_words
from .profiles import Profile


#: UNet of the tiny base: two resolutions, cross-attention at both, 32 normalisation groups like SD
#: (diffusers' Flax UNet assumes 32). 64 channels, so each group has two: with one channel per group the
#: last GroupNorm would be an instance norm, which erases the per-channel means that carry the colours.
TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)


#: VAE of the tiny base: four blocks, so three downsamplings (8x), 4 latent channels, like SD's VAE.
TINY_VAE_CONFIG = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    # 8 groups of 4 channels, as SD's VAE (128 channels / 32 groups): with one channel per group a
    # GroupNorm is an instance norm, which erases flat colours, and fill images are flat colours.
    norm_num_groups=8,
    scaling_factor=0.18215,
)


#: CLIP text encoder of the tiny base; its hidden size is the UNet's cross_attention_dim.
TINY_TEXT_ENCODER_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)


#: The noise schedule of SD 1.5 (its scheduler folder holds a PNDMScheduler with these values).
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
)


def seeded(seed: int, make):
    torch.manual_seed(seed)
    return make()


def build_tiny_base(path: str | Path, seed: int = 0, words: list[str] | None = None) -> Path:
    """Build the tiny SD-layout base with seeded random weights and save it as a diffusers folder.

    The folder loads with ``StableDiffusionPipeline.from_pretrained(path)`` and each part with its own
    ``from_pretrained(path, subfolder=...)``. It is written to a temporary folder and moved into place
    at the end, so an interrupted build never leaves a broken model behind.
    """

    with staged_folder(path) as tmp:
        _write_tiny_base(tmp, seed, words or caption_words())
    return Path(path)


def _write_tiny_base(folder: Path, seed: int, words: list[str]) -> None:
    """Save the seeded tiny pipeline and SD-style tokenizer files into ``folder``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer_dir = write_clip_tokenizer(folder / "tokenizer", words)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_TEXT_ENCODER_CONFIG)
    pipeline = StableDiffusionPipeline(
        vae=seeded(seed, lambda: AutoencoderKL(**TINY_VAE_CONFIG)),
        text_encoder=seeded(seed + 1, lambda: CLIPTextModel(text_config)),
        tokenizer=tokenizer,
        unet=seeded(seed + 2, lambda: UNet2DConditionModel(**TINY_UNET_CONFIG)),
        scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    write_clip_tokenizer(folder / "tokenizer", words)  # keep the SD-style vocab.json and merges.txt too
    (folder / "README.md").write_text(TINY_MODEL_CARD.format(seed=seed))


TINY_MODEL_CARD = """\
# tiny-sd (ControlNet course)

A Stable-Diffusion-1.5-layout model, small enough to train and run on a CPU, for the course's `tiny` profile.
Built offline by `cnhelpers.course.tiny_bases.build_tiny_base(path, seed={seed})` with seeded random weights.

- `vae/`: AutoencoderKL, 8x downsampling, 4 latent channels, 32-group norms
- `unet/`: UNet2DConditionModel, blocks (32, 64), cross-attention dim 64, 32-group norms
- `text_encoder/`: CLIPTextModel, 2 layers, hidden size 64
- `tokenizer/`: CLIP BPE tokenizer whose vocabulary holds every word of the fill captions
- `scheduler/`: PNDMScheduler with SD 1.5's noise schedule
"""


def is_complete_base(path: str | Path) -> bool:
    """True when ``path`` holds a full SD-layout folder (model_index.json and every component)."""
    path = Path(path)
    return (path / "model_index.json").is_file() and all(
        (path / sub).is_dir() for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))


#: The pretrained tiny base shipped with the package (``python -m cnhelpers.course.pretrain_base`` made it).
PRETRAINED_TINY_BASE = Path(__file__).resolve().parents[1] / "assets" / "tiny-sd"


def ensure_base_copy(name: str, asset: Path, is_complete, build, seed: int = 0) -> Path:
    """``build/<name>``: a copy of the pretrained ``asset`` folder shipped with the package (refreshed when its model
    card changes), or, where no complete asset is shipped, the base that ``build(path, seed=seed)`` makes with
    seeded random weights (built once, kept). ``is_complete(path)`` says whether a folder holds every part."""
    path = build_dir() / name
    if is_complete(asset):
        card = (asset / "README.md").read_text()
        if not is_complete(path) or not (path / "README.md").is_file() or (path / "README.md").read_text() != card:
            with staged_folder(path) as tmp:
                shutil.copytree(asset, tmp, dirs_exist_ok=True)
    elif not is_complete(path):
        build(path, seed=seed)
    return path


def ensure_tiny_base(seed: int = 0) -> Path:
    """Return the tiny base's folder under the build folder (``build/tiny-sd``), putting it there first.

    It is a copy of the pretrained base shipped in ``cnhelpers/assets/tiny-sd`` (refreshed when that one
    changes). Without it (a stripped install), a base with seeded random weights is built instead, with a
    warning: the course then runs, but every picture is noise.
    """
    path = build_dir() / "tiny-sd"
    if is_complete_base(PRETRAINED_TINY_BASE):
        card = (PRETRAINED_TINY_BASE / "README.md").read_text()
        if not is_complete_base(path) or not (path / "README.md").is_file() or \
                (path / "README.md").read_text() != card:
            with staged_folder(path) as tmp:
                shutil.copytree(PRETRAINED_TINY_BASE, tmp, dirs_exist_ok=True)
    elif not is_complete_base(path):
        warnings.warn(f"The pretrained tiny base is missing ({PRETRAINED_TINY_BASE}): building one with random "
                      "weights, so generated pictures will be noise. Reinstall the course, or make it with "
                      "`python -m cnhelpers.course.pretrain_base` and copy build/pretrain/tiny-sd there.", stacklevel=2)
        build_tiny_base(path, seed=seed)
    return path


#: SD 1.5's UNet (``unet/config.json`` of stable-diffusion-v1-5); the fields not given are diffusers'
#: defaults, which are SD 1.5's too. Built on the meta device it costs no memory and needs no download.
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)


#: SD 1.5's VAE (``vae/config.json`` of stable-diffusion-v1-5): the same 8x AutoencoderKL as the tiny one, at
#: full width.
SD15_VAE_CONFIG = dict(TINY_VAE_CONFIG, sample_size=512, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                       norm_num_groups=32)  # 32 groups of 4 to 16 channels


#: SD 1.5's text encoder: the text half of CLIP ViT-L/14.
SD15_TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)


def sd15_unet_and_controlnet_on_meta():
    """SD 1.5's UNet and the ControlNet ``from_unet`` makes of it, on the meta device.

    Meta tensors have shapes but no storage, so this counts parameters of the real architecture without
    downloading or allocating 4 GB. The weights are not real (nor copied): use it for shapes and counts.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    return unet, controlnet


def build_sd15_random_base(path: str | Path, seed: int = 0) -> Path:
    """An SD-1.5-architecture folder with seeded random weights (about 4 GB), for memory and speed tests.

    Memory and speed depend on the architecture, not on the weight values, so this stands in for the real
    model where nothing can be downloaded. The tokenizer is the tiny one (its ids fit CLIP's vocabulary).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with staged_folder(path) as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer", caption_words()))
        text_config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id, **SD15_TEXT_ENCODER_CONFIG)
        parts = {
            "vae": seeded(seed, lambda: AutoencoderKL(**SD15_VAE_CONFIG)),
            "text_encoder": seeded(seed + 1, lambda: CLIPTextModel(text_config)),
            "unet": seeded(seed + 2, lambda: UNet2DConditionModel(**SD15_UNET_CONFIG)),
        }
        for name, model in parts.items():
            model.save_pretrained(folder / name)
        PNDMScheduler(**SD_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    return Path(path)


def base_model_path(profile: Profile) -> Path:
    """A local folder holding the profile's base model: the tiny base, or the parts of the hub repository that
    the course loads (:func:`cnhelpers.hub.resolve_base`)."""
    if profile.pretrained_model_name_or_path is None:
        return ensure_tiny_base()
    return resolve_base(profile.pretrained_model_name_or_path)
