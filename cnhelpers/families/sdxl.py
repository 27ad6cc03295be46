"""SDXL: SD's UNet objective, with two text encoders, pooled text and size/crop conditioning (notebook 07).

What SDXL adds to SD 1.5's conditioning, as upstream's ``train_controlnet_sdxl.py`` has it, and what this module
computes:

- **Two text encoders.** ``text_encoder`` (CLIPTextModel) and ``text_encoder_2``
  (CLIPTextModelWithProjection), each with its own tokenizer. The UNet's cross-attention reads the
  *penultimate* hidden states of both, concatenated on the feature axis: ``(batch, 77, h1 + h2)``.
- **A pooled text embedding.** ``text_encoder_2``'s projected embedding of the whole prompt,
  ``(batch, projection_dim)``, added to the timestep embedding.
- **Size and crop conditioning** (``add_time_ids``): original size, crop top-left corner and target size,
  six numbers per image, also added to the timestep embedding.

The UNet takes the last two as ``added_cond_kwargs={"text_embeds": pooled, "time_ids": add_time_ids}``, and
so does a ControlNet made from it with ``ControlNetModel.from_unet``. The noise, target, loss and the ControlNet
are SD's (:mod:`cnhelpers.families.sd`); SDXL's own VAE overflows in fp16 and is kept in float32 then.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import tokenize_prompts
from .family import Models, StepConstants
from .sd import StableDiffusion


def is_sdxl_unet(unet) -> bool:
    """An SDXL UNet adds pooled text and size/crop ids to its timestep embedding (``"text_time"``)."""
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


@torch.no_grad()
def encode_token_ids_sdxl(token_ids, text_encoders):
    """SDXL's text conditioning from each tokenizer's ids: ``(prompt_embeds, pooled_prompt_embeds)``.

    ``prompt_embeds`` are each encoder's penultimate hidden states, concatenated on the last axis:
    ``(batch, 77, h1 + h2)``. ``pooled_prompt_embeds`` is the second encoder's projected embedding,
    ``(batch, projection_dim)``.
    """
    hidden = []
    for ids, text_encoder in zip(token_ids, text_encoders):
        output = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    pooled = output.text_embeds  # the last encoder's: CLIPTextModelWithProjection
    return torch.cat(hidden, dim=-1), pooled


def encode_prompt_sdxl(prompts: list[str], tokenizers, text_encoders):
    """:func:`encode_token_ids_sdxl` of ``prompts``, tokenized by each encoder's tokenizer."""
    return encode_token_ids_sdxl([tokenize_prompts(t, prompts) for t in tokenizers], text_encoders)


def make_add_time_ids(original_size, crops_coords_top_left, target_size, batch_size: int = 1,
                      dtype=torch.float32, device=None) -> torch.Tensor:
    """SDXL's size and crop conditioning, ``(batch, 6)``: original (h, w), crop top-left (h, w), target (h, w).

    At training time: the image's size before resizing, where the crop began, and the training size.
    At inference, (0, 0) and original = target ask for a centred, uncropped-looking image.
    """
    ids = list(original_size) + list(crops_coords_top_left) + list(target_size)
    if len(ids) != 6:
        raise ValueError(f"add_time_ids needs three (height, width) pairs, got {ids}")
    return torch.tensor([ids], dtype=dtype, device=device).repeat(batch_size, 1)


def added_conditions(pooled_prompt_embeds, add_time_ids) -> dict:
    """The ``added_cond_kwargs`` an SDXL UNet and its ControlNet take."""
    return {"text_embeds": pooled_prompt_embeds, "time_ids": add_time_ids}


class StableDiffusionXL(StableDiffusion):
    """SDXL: SD's objective and ControlNet, two text encoders, pooled text and ``add_time_ids``."""

    name = "sdxl"
    label = "Stable Diffusion XL"
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2")
    pipeline_name = "StableDiffusionXLControlNetPipeline"
    pipeline_kwargs = {"add_watermarker": False}
    # upstream's defaults: lanczos in train_controlnet_sdxl.py (bilinear in train_controlnet.py)
    default_interpolation = "lanczos"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLControlNetPipeline")
    # (--pretrained_vae_model_name_or_path, also train_controlnet_sdxl.py's, works for every family)
    flags = StableDiffusion.flags + ("crops_coords_top_left_h", "crops_coords_top_left_w")

    def claims(self, model_index: dict, folder: Path) -> bool:
        if model_index:
            return model_index.get("_class_name") in self.pipelines
        config = folder / "unet" / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("addition_embed_type") == "text_time"

    def load_text(self, base: Path, variant: str | None, tokenizer_name: str | None) -> tuple[dict, dict]:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        tokenizers, text_encoders = super().load_text(base, variant, tokenizer_name)
        # a second tokenizer and text encoder (CLIPTextModelWithProjection, for the pooled text)
        tokenizers["tokenizer_2"] = AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2")
        text_encoders["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            base, subfolder="text_encoder_2", variant=variant)
        return tokenizers, text_encoders

    def vae_in_float32(self, weight_dtype: torch.dtype, replaced_vae: bool, options: dict | None = None) -> bool:
        # SDXL's own VAE overflows in fp16 (NaN latents, black images): keep it in float32, as upstream does,
        # unless a VAE fixed for fp16 (--pretrained_vae_model_name_or_path) replaces it.
        return weight_dtype == torch.float16 and not replaced_vae

    def encode_prompts(self, models: Models, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        return encode_prompt_sdxl(prompts, [models.tokenizers["tokenizer"], models.tokenizers["tokenizer_2"]],
                                  [models.text_encoders["text_encoder"], models.text_encoders["text_encoder_2"]])

    def encode_batch_text(self, models: Models, batch: dict) -> tuple[torch.Tensor, ...]:
        return encode_token_ids_sdxl([batch["input_ids"], batch["input_ids_2"]],
                                     [models.text_encoders["text_encoder"], models.text_encoders["text_encoder_2"]])

    def step_constants(self, models: Models, *, resolution: int, crops_coords_top_left=(0, 0), dtype=torch.float32,
                       device=None) -> StepConstants:
        # Size and crop conditioning, the same for every example: each image is resized and center-cropped to
        # the resolution, so original size = target size; the crop corner is --crops_coords_top_left_h/w
        # (upstream's SDXL script does the same).
        size = (resolution, resolution)
        return StepConstants({"add_time_ids": make_add_time_ids(size, crops_coords_top_left, size, dtype=dtype,
                                                                device=device)})

    def step_inputs(self, models: Models, constants: StepConstants, noised, text: tuple, conditioning) -> dict:
        inputs = super().step_inputs(models, constants, noised, text, conditioning)
        # SDXL's UNet, and so its ControlNet, also read the pooled text and the size/crop ids
        inputs["added_cond_kwargs"] = added_conditions(
            text[1], constants.extra["add_time_ids"].repeat(len(noised.latents), 1))
        return inputs

    def validation_pipeline(self, models: Models, controlnet, scheduler):
        from diffusers import StableDiffusionXLControlNetPipeline

        return StableDiffusionXLControlNetPipeline(
            vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=models.denoiser,
            controlnet=controlnet, scheduler=scheduler, text_encoder_2=models.text_encoders["text_encoder_2"],
            tokenizer_2=models.tokenizers["tokenizer_2"], add_watermarker=False)

    def card_tags(self) -> list[str]:
        return ["controlnet", "stable-diffusion-xl", "diffusers", "controlnet-course"]


FAMILY = StableDiffusionXL()
