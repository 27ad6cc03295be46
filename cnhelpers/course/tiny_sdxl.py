"""SDXL for the course: a tiny SDXL-layout base, SDXL base 1.0's UNet config and demo inputs (notebook 07).

What SDXL adds to SD 1.5 (two text encoders, pooled text, size and crop ids) is computed where the training loop
finds it, in :mod:`cnhelpers.families.sdxl`; the tiny base here has each of those parts at toy size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..families.sdxl import added_conditions, make_add_time_ids
from ..paths import staged_folder
from ..tokenizer import write_clip_tokenizer
from .fill import caption_words
from .tiny_bases import TINY_VAE_CONFIG, ensure_base_copy, seeded

#: Hidden sizes of the tiny base's two text encoders; the UNet's cross-attention reads both, concatenated.
TINY_SDXL_TEXT_ENCODER_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                     projection_dim=32)
TINY_SDXL_TEXT_ENCODER_2_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                                       projection_dim=32)
#: Width of each ``add_time_ids`` number's sinusoidal embedding (SDXL: 256).
TINY_SDXL_ADDITION_TIME_EMBED_DIM = 8

#: UNet of the tiny SDXL base: SDXL's layout at toy size (no attention in the first block, linear
#: projections in the transformers, more transformer layers deeper down, "text_time" added embeddings).
TINY_SDXL_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    norm_num_groups=32,
    cross_attention_dim=TINY_SDXL_TEXT_ENCODER_CONFIG["hidden_size"] + TINY_SDXL_TEXT_ENCODER_2_CONFIG["hidden_size"],
    addition_embed_type="text_time",
    addition_time_embed_dim=TINY_SDXL_ADDITION_TIME_EMBED_DIM,
    # the pooled embedding (projection_dim of text_encoder_2) + 6 time ids, each embedded to 8 numbers
    projection_class_embeddings_input_dim=TINY_SDXL_TEXT_ENCODER_2_CONFIG["projection_dim"]
    + 6 * TINY_SDXL_ADDITION_TIME_EMBED_DIM,
)
#: SDXL's VAE has another scaling factor, and is marked as overflowing in fp16 (``force_upcast``).
TINY_SDXL_VAE_CONFIG = dict(TINY_VAE_CONFIG, scaling_factor=0.13025, force_upcast=True)
#: SDXL's scheduler folder: an EulerDiscreteScheduler with SD's noise schedule.
SDXL_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
                             prediction_type="epsilon")

#: SDXL base 1.0's UNet (``unet/config.json`` of stabilityai/stable-diffusion-xl-base-1.0;
#: checked in benchmarks/flops.py against two public copies). Built on the meta device it costs nothing..
SDXL_BASE_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
#: Width of SDXL base's pooled text embedding (``text_embeds``): 2816 = 1280 + 6 time ids x 256.
SDXL_BASE_POOLED_TEXT_DIM = 1280

SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def build_tiny_sdxl_base(path: str | Path, seed: int = 0, words: list[str] | None = None) -> Path:
    """Build the tiny SDXL-layout base with seeded random weights; it loads with
    ``StableDiffusionXLPipeline.from_pretrained(path)``. Both tokenizers share one vocabulary (SDXL's do too)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


    words = words or caption_words()
    with staged_folder(path) as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer", words))
        ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        pipeline = StableDiffusionXLPipeline(
            vae=seeded(seed, lambda: AutoencoderKL(**TINY_SDXL_VAE_CONFIG)),
            text_encoder=seeded(seed + 1, lambda: CLIPTextModel(
                CLIPTextConfig(**ids, **TINY_SDXL_TEXT_ENCODER_CONFIG))),
            text_encoder_2=seeded(seed + 2, lambda: CLIPTextModelWithProjection(
                CLIPTextConfig(**ids, **TINY_SDXL_TEXT_ENCODER_2_CONFIG))),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=seeded(seed + 3, lambda: UNet2DConditionModel(**TINY_SDXL_UNET_CONFIG)),
            scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
            add_watermarker=False,
        )
        pipeline.save_pretrained(folder)
        for name in ("tokenizer", "tokenizer_2"):  # keep the SD-style vocab.json and merges.txt too
            write_clip_tokenizer(folder / name, words)
        (folder / "README.md").write_text(f"# tiny-sdxl (ControlNet course)\n\nAn SDXL-layout model with seeded "
                                          f"random weights, built by `cnhelpers.course.tiny_sdxl.build_tiny_sdxl_base(path, "
                                          f"seed={seed})` for notebook 07.\n")
    return Path(path)


def is_complete_sdxl_base(path: str | Path) -> bool:
    """True when ``path`` holds model_index.json and every SDXL part."""
    path = Path(path)
    return (path / "model_index.json").is_file() and all((path / part).is_dir() for part in SDXL_PARTS)


#: The pretrained tiny SDXL base shipped with the package (``python -m cnhelpers.course.pretrain_base --family sdxl``).
PRETRAINED_TINY_SDXL_BASE = Path(__file__).resolve().parents[1] / "assets" / "tiny-sdxl"


def ensure_tiny_sdxl_base(seed: int = 0) -> Path:
    """The tiny SDXL base's folder, ``build/tiny-sdxl``: a copy of the pretrained one shipped in
    ``cnhelpers/assets/tiny-sdxl``, or where none is shipped, one with seeded random weights."""
    return ensure_base_copy("tiny-sdxl", PRETRAINED_TINY_SDXL_BASE, is_complete_sdxl_base, build_tiny_sdxl_base, seed)


def sdxl_demo_inputs(unet, resolution: int, batch_size: int = 2, seed: int = 0, pooled_dim: int | None = None):
    """Seeded stand-ins for one SDXL training batch (latents, timesteps, text, pooled text, time ids, image)."""
    generator = torch.Generator().manual_seed(seed)
    side = resolution // 8
    config = unet.config
    if pooled_dim is None:
        pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    return {
        "latents": torch.randn(batch_size, config.in_channels, side, side, generator=generator),
        "timesteps": torch.randint(0, 1000, (batch_size,), generator=generator),
        "encoder_hidden_states": torch.randn(batch_size, 77, config.cross_attention_dim, generator=generator),
        "conditioning": torch.rand(batch_size, 3, resolution, resolution, generator=generator),
        "added_cond_kwargs": added_conditions(
            torch.randn(batch_size, pooled_dim, generator=generator),
            make_add_time_ids((resolution, resolution), (0, 0), (resolution, resolution), batch_size)),
    }


def describe_model_index(path: str | Path) -> dict:
    """``{part: class name}`` from a pipeline folder's model_index.json (what the folder holds)."""
    index = json.loads((Path(path) / "model_index.json").read_text())
    return {k: v[1] for k, v in index.items() if isinstance(v, list) and v[1] is not None}
