"""The tiny SD3, Flux and SDXL bases pretrained: what ``python -m cnhelpers.course.pretrain_base --family NAME`` adds.

The three layouts share what the pretrained tiny SD base (``cnhelpers/assets/tiny-sd``) already learned, so only the
denoiser is trained here:

- **VAE**: the tiny SD base's 8x AutoencoderKL with 4 latent channels (SD3's and Flux's real VAEs have 16
  channels and no quant convolutions; the pipelines and ``from_transformer`` work with 4). For SD3 and Flux its
  ``shift_factor`` and ``scaling_factor`` are measured on the training images' latents (their mean, and 1 / the
  standard deviation of the shifted latents), as :func:`cnhelpers.course.pretrain_base.latent_scaling_factor`
  measures SD's; SDXL keeps SD's measured ``scaling_factor``. SD3's and Flux's ControlNets see their condition
  through the VAE, which learned fill pictures only and encoded a thin outline too faintly to tell one from another:
  their VAE is fine-tuned to encode every fill condition type as well, the training images' latents held where they
  were (stage ``condition_vae``, :func:`cnhelpers.course.pretrain_base.train_condition_vae`). SDXL's ControlNet
  reads pixels and keeps the VAE as it is.
- **CLIP**: the tiny SD base's text encoder (trained with its UNet) and its tokenizer. Where the layout has a CLIP
  with a projection (SD3's two, SDXL's second), it is the same weights with an identity projection.
- **T5** (SD3's ``text_encoder_3``, Flux's ``text_encoder_2``): seeded random weights, frozen, with a Unigram
  tokenizer learned offline whose vocabulary holds every caption word; the denoiser learns to read its states.
- **Denoiser**: trained from scratch by the recipe's denoiser stage (``pretrain_base.train_denoiser``, the loop that
  trains the SD UNet) with the family's own objective, inputs and prediction (:mod:`cnhelpers.families`): flow
  matching for SD3 and Flux, epsilon prediction with Min-SNR for SDXL. The text encoders are frozen, so the text
  of each of the 257 captions (16 x 16 colour pairs and the empty prompt) is encoded once.

The run that makes the SD3 base (resumable: the same command continues from ``build/pretrain/sd3``'s checkpoint,
written every 50 steps; about 0.3 CPU-s a step on one thread)::

    python -m cnhelpers.course.pretrain_base --family sd3 --num_latent_examples 4096 --unet_steps 6000 \
        --unet_batch_size 32 --unet_learning_rate 0.001 --warmup_steps 100 --checkpoint_every 50 --threads 1

then ``--family sdxl`` with the same flags, and ``--family flux`` with ``--unet_steps 3000``. (The shipped SD3 and
SDXL bases ran 3,000 steps first and were resumed to 6,000: their model cards' notes say how.) SD3's ``from_transformer`` with its default of 12
copied blocks needs a transformer of 13 blocks or more; this one has 4 (pass ``num_layers``; the course's
family does).

SD3's and Flux's T5 length is :data:`T5_LENGTH` (77, upstream's SD3 default): pass ``max_sequence_length=77`` to
their pipelines and ``--max_sequence_length 77`` to ``cnhelpers.train`` (the model cards say so).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..paths import staged_folder
from .fill import caption_words
from .tiny_bases import PRETRAINED_TINY_BASE, seeded
from .tiny_sdxl import SDXL_SCHEDULER_CONFIG, TINY_SDXL_UNET_CONFIG
from .tiny_transformers import (TINY_FLUX_SCHEDULER_CONFIG, TINY_SD3_SCHEDULER_CONFIG, TINY_T5_CONFIG,
                                write_t5_tokenizer)

#: The families this module pretrains (``--family``), in the order the course made them.
FAMILY_NAMES = ("sd3", "flux", "sdxl")
#: The families whose ControlNet sees its condition through the VAE (upstream's SD3 and Flux scripts encode it), so
#: their VAE learns the conditioning pictures too (``pretrain_base.train_condition_vae``); SDXL's reads pixels.
CONDITION_THROUGH_VAE = ("sd3", "flux")
#: T5's length in training, and so at inference (upstream's SD3 default; Flux's pipeline default is 512).
T5_LENGTH = 77

#: SD3's MMDiT for the pretrained base: 4 joint blocks of 4 heads x 16, the text width of both CLIPs (64 each,
#: side by side) padded to T5's 128, the pooled text both CLIPs' projections side by side.
PRETRAIN_SD3_TRANSFORMER_CONFIG = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                                       attention_head_dim=16, num_attention_heads=4, joint_attention_dim=128,
                                       caption_projection_dim=64, pooled_projection_dim=128, pos_embed_max_size=16)
PRETRAIN_SD3_T5_CONFIG = dict(TINY_T5_CONFIG, d_model=128, d_kv=32, d_ff=256)
#: Flux's transformer: 2 double- and 4 single-stream blocks (FLUX.1: 19 and 38) of 4 heads x 16; the 2x2-packed
#: 4-channel latents (16 channels a token); CLIP's pooled 64; T5's 64; the guidance embedding of FLUX.1-dev.
PRETRAIN_FLUX_TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4,
                                        attention_head_dim=16, num_attention_heads=4, joint_attention_dim=64,
                                        pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=[4, 6, 6])
PRETRAIN_FLUX_T5_CONFIG = dict(TINY_T5_CONFIG, d_model=64, d_kv=16, d_ff=128)
#: Why the pretrained SDXL base's ``model_index.json`` says ``force_zeros_for_empty_prompt: false``.
SDXL_EMPTY_PROMPT_NOTE = (
    "SDXL's pipeline feeds classifier-free guidance's unconditional branch zeros in place of the empty prompt's "
    "encoding when its `force_zeros_for_empty_prompt` is true (SDXL base 1.0's setting). This base was trained, as "
    "the course's ControlNets are, with the empty prompt's encoding for its 10 % dropped captions, so its index sets "
    "it false: with zeros, guidance pushes from a condition the UNet never saw, and the colours wash out (a "
    "1,200-step ControlNet's held-out IoU: 0.64 with zeros, 0.84 with the empty prompt's encoding, 16 outlines).")
#: SDXL's UNet at the tiny SD UNet's width (64 channels: 2 per norm group, see TINY_UNET_CONFIG), cross-attention
#: over both CLIPs' states side by side (128), the pooled text (64) and 6 time ids of 8.
PRETRAIN_SDXL_UNET_CONFIG = dict(TINY_SDXL_UNET_CONFIG, block_out_channels=(64, 64), cross_attention_dim=128,
                                 projection_class_embeddings_input_dim=64 + 6 * 8)


def with_projection(clip):
    """The CLIPTextModel ``clip`` as a CLIPTextModelWithProjection: the same weights, an identity projection."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**{**clip.config.to_dict(), "projection_dim": clip.config.hidden_size})
    model = CLIPTextModelWithProjection(config)
    model.text_model.load_state_dict(getattr(clip, "text_model", clip).state_dict())
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(config.hidden_size))
    return model


@torch.no_grad()
def latent_statistics(cache: dict, n: int = 4096, seed: int = 0) -> tuple[float, float]:
    """``(shift_factor, scaling_factor)`` of the cached latents (posterior samples of the training images): their
    mean, and 1 / the standard deviation of the shifted latents, so the denoiser reads mean 0 and variance 1."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = cache["mean"][:n], cache["std"][:n]
    latents = mean + std * torch.randn(mean.shape, generator=generator)
    shift = float(latents.mean())
    return shift, float(1.0 / (latents - shift).std())


def build_init(family: str, path: Path, cache: dict, sd_base: Path = PRETRAINED_TINY_BASE, seed: int = 0) -> Path:
    """The folder the ``family``'s denoiser stage starts from: SD's VAE and CLIP, a random T5 and a random
    denoiser, in the family's layout (``from_pretrained(path)`` of its pipeline)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                           FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    if family not in FAMILY_NAMES:
        raise ValueError(f"--family {family!r} is not one of sd, {', '.join(FAMILY_NAMES)}")
    words = caption_words()
    vae = AutoencoderKL.from_pretrained(sd_base, subfolder="vae")
    clip = CLIPTextModel.from_pretrained(sd_base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(sd_base, subfolder="tokenizer")
    if family in ("sd3", "flux"):
        shift, scale = latent_statistics(cache, seed=seed)
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    with staged_folder(path) as folder:
        t5_tokenizer = write_t5_tokenizer(folder / ("tokenizer_3" if family == "sd3" else "tokenizer_2"), words)
        if family == "sd3":
            pipeline = StableDiffusion3Pipeline(
                transformer=seeded(seed + 3, lambda: SD3Transformer2DModel(**PRETRAIN_SD3_TRANSFORMER_CONFIG)),
                scheduler=FlowMatchEulerDiscreteScheduler(**TINY_SD3_SCHEDULER_CONFIG), vae=vae,
                text_encoder=with_projection(clip), tokenizer=tokenizer, text_encoder_2=with_projection(clip),
                tokenizer_2=tokenizer, tokenizer_3=t5_tokenizer,
                text_encoder_3=seeded(seed + 4, lambda: T5EncoderModel(
                    T5Config(vocab_size=len(t5_tokenizer), **PRETRAIN_SD3_T5_CONFIG))))
        elif family == "flux":
            pipeline = FluxPipeline(
                transformer=seeded(seed + 3, lambda: FluxTransformer2DModel(**PRETRAIN_FLUX_TRANSFORMER_CONFIG)),
                scheduler=FlowMatchEulerDiscreteScheduler(**TINY_FLUX_SCHEDULER_CONFIG), vae=vae,
                text_encoder=clip, tokenizer=tokenizer, tokenizer_2=t5_tokenizer,
                text_encoder_2=seeded(seed + 4, lambda: T5EncoderModel(
                    T5Config(vocab_size=len(t5_tokenizer), **PRETRAIN_FLUX_T5_CONFIG))))
        else:
            vae.register_to_config(force_upcast=True)
            pipeline = StableDiffusionXLPipeline(
                unet=seeded(seed + 3, lambda: UNet2DConditionModel(**PRETRAIN_SDXL_UNET_CONFIG)),
                scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG), vae=vae, text_encoder=clip,
                text_encoder_2=with_projection(clip), tokenizer=tokenizer, tokenizer_2=tokenizer,
                add_watermarker=False, force_zeros_for_empty_prompt=False)  # see SDXL_EMPTY_PROMPT_NOTE
        pipeline.save_pretrained(folder)
        for name in ("tokenizer",) if family == "flux" else ("tokenizer", "tokenizer_2"):
            shutil.rmtree(folder / name)
            shutil.copytree(Path(sd_base) / "tokenizer", folder / name)  # the ids SD's CLIP was trained on
    return path


def family_options(family) -> dict:
    """The options the family's loop reads in pretraining (and a ControlNet's training should pass): T5's length."""
    return {"max_sequence_length": T5_LENGTH} if "max_sequence_length" in family.flags else {}

def pipeline_options(family, guidance_scale: float) -> dict:
    """The pipeline call's options as the family's base was trained: T5's length, and for a guidance embedding
    (Flux) the training's 3.5 in place of classifier-free guidance's ``guidance_scale``."""
    return {**family_options(family), "guidance_scale": 3.5 if "guidance_scale" in family.flags else guidance_scale}
