"""Tiny SD3- and Flux-layout bases with seeded random weights: the transformer families at toy size.

Each folder is what ``StableDiffusion3Pipeline.save_pretrained`` / ``FluxPipeline.save_pretrained`` writes, so it
loads with the pipeline's ``from_pretrained(path)`` and each part with its own ``from_pretrained(path,
subfolder=...)``, and the families (:mod:`cnhelpers.families.sd3`, :mod:`cnhelpers.families.flux`) train a
ControlNet on it as on the real base. What mirrors the real models:

- **The parts and their classes**: SD3's two CLIP text encoders with projection and a T5 encoder
  (``text_encoder_3``), Flux's CLIP and T5 (``text_encoder_2``); the transformers; an ``AutoencoderKL`` with a
  ``shift_factor`` (the SD3 and Flux pipelines decode ``latents / scaling_factor + shift_factor``); a
  ``FlowMatchEulerDiscreteScheduler`` with the real scheduler's settings.
- **The widths that must agree**: SD3's CLIP widths add up to at most T5's (their states are padded to T5's width),
  the pooled widths add up to the transformer's ``pooled_projection_dim``; Flux's CLIP width is its
  ``pooled_projection_dim``, T5's its ``joint_attention_dim``, its 2x2 packing its ``in_channels`` (4 x the
  latent channels), its rotary axes add up to the head width; Flux has the guidance embedding of FLUX.1-dev.
- **Tokenizers**: CLIP BPE tokenizers learned from the fill captions (:func:`cnhelpers.tokenizer.write_clip_tokenizer`)
  and a T5 (Unigram) tokenizer whose vocabulary holds every caption word as one piece, with single characters
  besides, so any text tokenizes.

At 64 px the VAE's 8x8 latents are SD3's 4x4 patches of 2x2, and Flux's 4x4 packed tokens.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import staged_folder
from ..tokenizer import write_clip_tokenizer
from .fill import caption_words
from .tiny_bases import TINY_VAE_CONFIG, ensure_base_copy, seeded

#: The real VAEs' latent statistics (SD3's and FLUX.1's ``vae/config.json``); SD3's and Flux's VAEs have no
#: quant convolutions.
TINY_SD3_VAE_CONFIG = dict(TINY_VAE_CONFIG, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                           use_post_quant_conv=False)
TINY_FLUX_VAE_CONFIG = dict(TINY_VAE_CONFIG, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                            use_post_quant_conv=False)

#: SD3's two CLIP text encoders (both with a projection: the pooled text is both projections side by side).
TINY_SD3_CLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)
TINY_SD3_CLIP_2_CONFIG = dict(TINY_SD3_CLIP_CONFIG, hidden_act="gelu")
#: T5 (v1.1's gated GELU), as wide as both CLIPs' states side by side.
TINY_T5_CONFIG = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=32, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                      is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
#: SD3's MMDiT: patches of 2x2 latents, joint attention over text and image tokens.
TINY_SD3_TRANSFORMER_CONFIG = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                                   attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                   caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16)
#: SD3's scheduler folder: flow matching with a timestep shift of 3.
TINY_SD3_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0)

#: Flux's CLIP (its pooled output is the transformer's pooled text) and T5 (the token states).
TINY_FLUX_CLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)
TINY_FLUX_T5_CONFIG = dict(TINY_T5_CONFIG, d_model=32, d_kv=8)
#: Flux's transformer: 2x2-packed latents (4 latent channels x 4), double- and single-stream blocks, rotary axes
#: adding up to the head width, the guidance embedding of FLUX.1-dev.
TINY_FLUX_TRANSFORMER_CONFIG = dict(patch_size=1, in_channels=16, num_layers=4, num_single_layers=4,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 6, 6])
#: FLUX.1's scheduler folder: flow matching with the shift that grows with the image's token count.
TINY_FLUX_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                  max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def write_t5_tokenizer(folder: str | Path, words: list[str]):
    """Write a T5 tokenizer (Unigram, as T5's sentencepiece model) whose vocabulary holds each of ``words`` as one
    piece; returns it. Single letters and digits are pieces too, so any other word still tokenizes (in pieces)."""
    from transformers import T5TokenizerFast

    special = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces = [("\u2581" + word, -1.0) for word in sorted({w.lower() for w in words})]
    characters = [(c, -10.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = T5TokenizerFast(vocab=special + pieces + characters, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def _clip_text(folder: Path, name: str, words: list[str]):
    """A CLIP tokenizer learned from ``words`` in ``folder/name``, and the ids its text encoder's config needs."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / name, words))
    return tokenizer, dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build_tiny_sd3_base(path: str | Path, seed: int = 0, words: list[str] | None = None) -> Path:
    """Build the tiny SD3-layout base with seeded random weights; it loads with
    ``StableDiffusion3Pipeline.from_pretrained(path)``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    words = words or caption_words()
    with staged_folder(path) as folder:
        tokenizer, ids = _clip_text(folder, "tokenizer", words)
        tokenizer_2, ids_2 = _clip_text(folder, "tokenizer_2", words)
        tokenizer_3 = write_t5_tokenizer(folder / "tokenizer_3", words)
        pipeline = StableDiffusion3Pipeline(
            transformer=seeded(seed + 3, lambda: SD3Transformer2DModel(**TINY_SD3_TRANSFORMER_CONFIG)),
            scheduler=FlowMatchEulerDiscreteScheduler(**TINY_SD3_SCHEDULER_CONFIG),
            vae=seeded(seed, lambda: AutoencoderKL(**TINY_SD3_VAE_CONFIG)),
            text_encoder=seeded(seed + 1, lambda: CLIPTextModelWithProjection(
                CLIPTextConfig(**ids, **TINY_SD3_CLIP_CONFIG))),
            tokenizer=tokenizer,
            text_encoder_2=seeded(seed + 2, lambda: CLIPTextModelWithProjection(
                CLIPTextConfig(**ids_2, **TINY_SD3_CLIP_2_CONFIG))),
            tokenizer_2=tokenizer_2,
            text_encoder_3=seeded(seed + 4, lambda: T5EncoderModel(
                T5Config(vocab_size=len(tokenizer_3), **TINY_T5_CONFIG))),
            tokenizer_3=tokenizer_3,
        )
        pipeline.save_pretrained(folder)
        for name in ("tokenizer", "tokenizer_2"):  # keep the SD-style vocab.json and merges.txt too
            write_clip_tokenizer(folder / name, words)
        (folder / "README.md").write_text(
            f"# tiny-sd3 (ControlNet course)\n\nAn SD3-layout model with seeded random weights, built by "
            f"`cnhelpers.course.tiny_transformers.build_tiny_sd3_base(path, seed={seed})`.\n")
    return Path(path)


def build_tiny_flux_base(path: str | Path, seed: int = 0, words: list[str] | None = None) -> Path:
    """Build the tiny Flux-layout base with seeded random weights; it loads with ``FluxPipeline.from_pretrained(path)``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    words = words or caption_words()
    with staged_folder(path) as folder:
        tokenizer, ids = _clip_text(folder, "tokenizer", words)
        tokenizer_2 = write_t5_tokenizer(folder / "tokenizer_2", words)
        pipeline = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**TINY_FLUX_SCHEDULER_CONFIG),
            vae=seeded(seed, lambda: AutoencoderKL(**TINY_FLUX_VAE_CONFIG)),
            text_encoder=seeded(seed + 1, lambda: CLIPTextModel(CLIPTextConfig(**ids, **TINY_FLUX_CLIP_CONFIG))),
            tokenizer=tokenizer,
            text_encoder_2=seeded(seed + 2, lambda: T5EncoderModel(
                T5Config(vocab_size=len(tokenizer_2), **TINY_FLUX_T5_CONFIG))),
            tokenizer_2=tokenizer_2,
            transformer=seeded(seed + 3, lambda: FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER_CONFIG)),
        )
        pipeline.save_pretrained(folder)
        write_clip_tokenizer(folder / "tokenizer", words)  # keep the SD-style vocab.json and merges.txt too
        (folder / "README.md").write_text(
            f"# tiny-flux (ControlNet course)\n\nA Flux-layout model with seeded random weights, built by "
            f"`cnhelpers.course.tiny_transformers.build_tiny_flux_base(path, seed={seed})`.\n")
    return Path(path)


SD3_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
             "tokenizer_3", "scheduler")
FLUX_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
#: The pretrained tiny bases shipped with the package (``python -m cnhelpers.course.pretrain_base --family ...``).
PRETRAINED_TINY_SD3_BASE = _ASSETS / "tiny-sd3"
PRETRAINED_TINY_FLUX_BASE = _ASSETS / "tiny-flux"


def is_complete_sd3_base(path: str | Path) -> bool:
    """True when ``path`` holds model_index.json and every SD3 part."""
    path = Path(path)
    return (path / "model_index.json").is_file() and all((path / part).is_dir() for part in SD3_PARTS)


def is_complete_flux_base(path: str | Path) -> bool:
    """True when ``path`` holds model_index.json and every Flux part."""
    path = Path(path)
    return (path / "model_index.json").is_file() and all((path / part).is_dir() for part in FLUX_PARTS)


def ensure_tiny_sd3_base(seed: int = 0) -> Path:
    """The tiny SD3 base's folder, ``build/tiny-sd3``: a copy of the pretrained one shipped in
    ``cnhelpers/assets/tiny-sd3``, or where none is shipped, one with seeded random weights."""
    return ensure_base_copy("tiny-sd3", PRETRAINED_TINY_SD3_BASE, is_complete_sd3_base, build_tiny_sd3_base, seed)


def ensure_tiny_flux_base(seed: int = 0) -> Path:
    """The tiny Flux base's folder, ``build/tiny-flux``: a copy of the pretrained one shipped in
    ``cnhelpers/assets/tiny-flux``, or where none is shipped, one with seeded random weights."""
    return ensure_base_copy("tiny-flux", PRETRAINED_TINY_FLUX_BASE, is_complete_flux_base, build_tiny_flux_base,
                            seed)
