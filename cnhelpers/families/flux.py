"""Flux: a double- and single-stream transformer on 2x2-packed latents, CLIP's pooled text and T5's states, flow
matching, a ControlNet that reads packed latents.

Everything the training loop needs to know about this family, as upstream's ``train_controlnet_flux.py`` has it:

- **Parts**: ``transformer`` (FluxTransformer2DModel), ``vae`` (with a ``shift_factor``), ``text_encoder`` (CLIP),
  ``text_encoder_2`` (T5EncoderModel), ``tokenizer``, ``tokenizer_2``, ``scheduler`` (FlowMatchEulerDiscreteScheduler).
- **Text**: T5's last hidden states ``(batch, max_sequence_length, t5_width)`` are the token states; CLIP's pooled
  output ``(batch, clip_width)`` the pooled text; ``txt_ids`` are zeros. ``--max_sequence_length`` is T5's length
  (512 when not given, the pipeline's and so upstream's script's); a longer caption is refused rather than cut.
- **Latents**: ``(latents - shift_factor) * scaling_factor``, then packed: each 2x2 square of latents becomes one
  token of 4x the channels (the pipeline's ``_pack_latents``), with its row and column in ``img_ids``
  (``_prepare_latent_image_ids``). The objective works on the unpacked latents; only the transformer's inputs are
  packed, and its prediction is unpacked again.
- **Guidance**: a transformer with ``guidance_embeds`` (FLUX.1-dev) reads ``--guidance_scale`` (3.5) each step.
- **ControlNet**: ``FluxControlNetModel.from_transformer`` with ``--num_double_layers`` and ``--num_single_layers``
  (4 and 4, upstream's; at most the transformer's) and the transformer's attention widths; the embeddings and the
  first blocks copied, a zero-initialised ``controlnet_x_embedder`` for the condition and zero-initialised
  residual layers. The transformer adds the residuals to its double- and single-stream blocks
  (``controlnet_block_samples``, ``controlnet_single_block_samples``). The condition is the conditioning image's
  VAE latents (in [-1, 1], shifted, scaled and packed like the target's), sampled every step.
- **Objective**: flow matching (:class:`cnhelpers.families.flow_matching.FlowMatchingObjective`) with ``--weighting_scheme``'s
  timestep density, and the plain mean squared error to ``noise - x0`` (upstream's Flux script weights nothing).
- **Pipeline**: ``FluxControlNetPipeline`` (``control_image``; its ``guidance_scale`` is the guidance embedding's).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import tokenize_prompts
from ..model_info import vae_scale_factor
from .family import Models, StepConstants
from .flow_matching import FlowMatchingObjective
from .sd3 import (StableDiffusion3, check_patch_resolution, check_same_config, check_t5_lengths, t5_token_ids,
                  transformer_step_memory)

#: The T5 length of upstream's Flux script (FluxPipeline.encode_prompt's default), and the pipelines' limit.
DEFAULT_MAX_SEQUENCE_LENGTH = 512
#: Upstream's ``--num_double_layers`` and ``--num_single_layers``.
DEFAULT_DOUBLE_LAYERS = 4
DEFAULT_SINGLE_LAYERS = 4


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(batch, channels, h, w)`` latents as Flux's tokens: ``(batch, h/2 * w/2, channels * 4)``."""
    from diffusers import FluxControlNetPipeline

    batch, channels, height, width = latents.shape
    return FluxControlNetPipeline._pack_latents(latents, batch, channels, height, width)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flux's tokens back to ``(batch, channels, height, width)`` latents (the inverse of :func:`pack_latents`)."""
    from diffusers import FluxControlNetPipeline

    return FluxControlNetPipeline._unpack_latents(tokens, height, width, 1)  # (1: sides given in latents)


def latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Each packed token's (0, row, column) for the rotary position embedding: ``(h/2 * w/2, 3)``."""
    from diffusers import FluxControlNetPipeline

    return FluxControlNetPipeline._prepare_latent_image_ids(1, height // 2, width // 2, device, dtype)


@torch.no_grad()
def encode_token_ids_flux(clip_ids, t5_ids, text_encoders) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's text conditioning: ``(prompt_embeds, pooled_prompt_embeds)``, T5's last hidden states and CLIP's
    pooled output. ``text_encoders`` are (CLIP, T5)."""
    clip, t5 = text_encoders
    pooled = clip(clip_ids.to(clip.device), output_hidden_states=False).pooler_output
    return t5(t5_ids.to(t5.device))[0], pooled


def encode_prompt_flux(prompts: list[str], tokenizers, text_encoders, max_sequence_length: int = 512):
    """:func:`encode_token_ids_flux` of ``prompts`` (CLIP's 77 tokens, T5's ``max_sequence_length``)."""
    return encode_token_ids_flux(tokenize_prompts(tokenizers[0], prompts),
                                 t5_token_ids(tokenizers[1], prompts, max_sequence_length), text_encoders)


class Flux(StableDiffusion3):
    """FLUX.1: double- and single-stream blocks on 2x2-packed latents, CLIP's pooled text and T5, guidance embedding.

    SD3's latents, condition and objective (flow matching), with Flux's text, packing and ControlNet."""

    name = "flux"
    label = "Flux"
    components = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    pipeline_name = "FluxControlNetPipeline"
    controlnet_class = "FluxControlNetModel"
    transformer_class = "FluxTransformer2DModel"
    default_interpolation = "lanczos"  # (upstream's train_controlnet_flux.py)
    pipelines = ("FluxPipeline", "FluxControlNetPipeline")
    objective_flags = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale")
    flags = objective_flags + ("num_double_layers", "num_single_layers", "guidance_scale", "max_sequence_length")
    flag_notes = {"snr_gamma": "Min-SNR weights a DDPM objective; Flux trains by flow matching, whose timesteps "
                               "--weighting_scheme draws",
                  "conditioning_embedding_init": "Flux's ControlNet reads the condition's latents through one "
                                                 "zero-initialised layer, not a stack of convolutions"}

    def claims(self, model_index: dict, folder: Path) -> bool:
        if model_index:
            return model_index.get("_class_name") in self.pipelines
        return (folder / "transformer").is_dir() and not (folder / "text_encoder_3").is_dir()

    # -- loading ------------------------------------------------------------------------------------------
    def max_sequence_length(self, models: Models) -> int:
        return models.options.get("max_sequence_length") or DEFAULT_MAX_SEQUENCE_LENGTH

    def load_text(self, base: Path, variant: str | None, tokenizer_name: str | None) -> tuple[dict, dict]:
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        tokenizers = {"tokenizer": AutoTokenizer.from_pretrained(tokenizer_name) if tokenizer_name
                      else AutoTokenizer.from_pretrained(base, subfolder="tokenizer"),
                      "tokenizer_2": AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2")}
        text_encoders = {"text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder", variant=variant),
                         "text_encoder_2": T5EncoderModel.from_pretrained(base, subfolder="text_encoder_2",
                                                                          variant=variant)}
        return tokenizers, text_encoders

    def make_controlnet(self, transformer, controlnet: str | Path | None = None, options: dict | None = None):
        """Load the Flux ControlNet in the local folder ``controlnet``, or make one from the transformer."""
        from diffusers import FluxControlNetModel

        if controlnet is not None:
            return FluxControlNetModel.from_pretrained(controlnet)
        options, config = options or {}, transformer.config
        double = options.get("num_double_layers")
        single = options.get("num_single_layers")
        return FluxControlNetModel.from_transformer(
            transformer,
            num_layers=min(DEFAULT_DOUBLE_LAYERS if double is None else double, config.num_layers),
            num_single_layers=min(DEFAULT_SINGLE_LAYERS if single is None else single, config.num_single_layers),
            attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads)

    def check_controlnet_fits(self, controlnet, denoiser, vae_factor: int = 8) -> None:
        check_same_config(controlnet, denoiser, ("in_channels", "patch_size", "num_attention_heads",
                                                 "attention_head_dim", "joint_attention_dim", "pooled_projection_dim",
                                                 "guidance_embeds", "axes_dims_rope"),
                          "transformer", "load one trained for this base, or leave out --controlnet_model_name_or_path "
                          "to make one with FluxControlNetModel.from_transformer(transformer, ...).")

    def check_resolution(self, models: Models, resolution: int) -> None:
        patch = models.denoiser.config.patch_size
        check_patch_resolution(resolution, vae_scale_factor(models.vae), 2 * patch,
                               "Flux packs each 2x2 square of latents into one token"
                               + (f" of {patch}x{patch} patches" if patch > 1 else ""))

    def step_memory(self, models: Models, resolution: int, activation_bytes: int = 4, adam_state_bytes: int = 4):
        tokens = (resolution // 16) ** 2 + self.max_sequence_length(models)
        return transformer_step_memory(models, resolution, tokens, activation_bytes, adam_state_bytes)

    def vae_in_float32(self, weight_dtype: torch.dtype, replaced_vae: bool, options: dict | None = None) -> bool:
        return False

    # -- text ---------------------------------------------------------------------------------------------
    def _text_encoders(self, models: Models):
        return [models.text_encoders["text_encoder"], models.text_encoders["text_encoder_2"]]

    def encode_prompts(self, models: Models, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        return encode_prompt_flux(prompts, [models.tokenizer, models.tokenizers["tokenizer_2"]],
                                  self._text_encoders(models), self.max_sequence_length(models))

    def encode_batch_text(self, models: Models, batch: dict) -> tuple[torch.Tensor, ...]:
        return encode_token_ids_flux(batch["input_ids"], batch["input_ids_2"], self._text_encoders(models))

    def text_shape(self, models: Models) -> tuple[int, ...]:
        return (self.max_sequence_length(models), models.text_encoders["text_encoder_2"].config.d_model)

    def tokenize(self, models: Models, captions: list[str]) -> dict:
        return {"input_ids": tokenize_prompts(models.tokenizer, captions),
                "input_ids_2": t5_token_ids(models.tokenizers["tokenizer_2"], captions,
                                            self.max_sequence_length(models))}

    def check_prompts(self, models: Models, prompts: list[str], what: str) -> None:
        check_t5_lengths(models.tokenizers["tokenizer_2"], prompts, self.max_sequence_length(models),
                         "the base's text_encoder_2", what)

    # -- the training step ---------------------------------------------------------------------------------
    def objective(self, noise_scheduler, **options) -> FlowMatchingObjective:
        return FlowMatchingObjective(noise_scheduler, **options, precondition_outputs=False, weighted=False)

    def step_inputs(self, models: Models, constants: StepConstants, noised, text: tuple, conditioning) -> dict:
        latents = noised.latents
        batch, _, height, width = latents.shape
        guidance = None
        if models.denoiser.config.guidance_embeds:
            scale = models.options.get("guidance_scale")
            guidance = torch.full((batch,), 3.5 if scale is None else scale, device=latents.device,
                                  dtype=latents.dtype)
        return {"latents": pack_latents(latents), "timesteps": noised.timesteps / 1000, "guidance": guidance,
                "encoder_hidden_states": text[0], "pooled_projections": text[1],
                "txt_ids": torch.zeros(text[0].shape[1], 3, device=latents.device, dtype=latents.dtype),
                "img_ids": latent_image_ids(height, width, latents.device, latents.dtype),
                "conditioning": None if conditioning is None else pack_latents(conditioning.contiguous()),
                "size": (height, width)}

    def predict(self, models: Models, inputs: dict) -> torch.Tensor:
        shared = {name: inputs[name] for name in ("timesteps", "guidance", "encoder_hidden_states",
                                                  "pooled_projections", "txt_ids", "img_ids")}
        shared["timestep"] = shared.pop("timesteps")
        # (models.controlnet None: the transformer alone, as the course's pretraining of the tiny base runs it)
        double, single = (None, None) if models.controlnet is None else models.controlnet(
            hidden_states=inputs["latents"], controlnet_cond=inputs["conditioning"], return_dict=False, **shared)
        dtype = next(models.denoiser.parameters()).dtype  # the frozen transformer may run in half precision
        tokens = models.denoiser(
            hidden_states=inputs["latents"], return_dict=False, **shared,
            controlnet_block_samples=[r.to(dtype) for r in double] if double is not None else None,
            controlnet_single_block_samples=[r.to(dtype) for r in single] if single is not None else None)[0]
        return unpack_latents(tokens, *inputs["size"])

    # -- after training ------------------------------------------------------------------------------------
    def pipeline_inputs(self, models: Models, conditions: list) -> dict:
        scale = models.options.get("guidance_scale")
        # the pipeline's guidance_scale is the guidance embedding's (no classifier-free guidance): the training value
        return {"control_image": conditions, "max_sequence_length": self.max_sequence_length(models),
                "guidance_scale": 3.5 if scale is None else scale}

    def validation_pipeline(self, models: Models, controlnet, scheduler):
        from diffusers import FluxControlNetPipeline

        return FluxControlNetPipeline(
            scheduler=scheduler, vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
            text_encoder_2=models.text_encoders["text_encoder_2"], tokenizer_2=models.tokenizers["tokenizer_2"],
            transformer=models.denoiser, controlnet=controlnet)

    def card_tags(self) -> list[str]:
        return ["controlnet", "flux", "diffusers", "controlnet-course"]


FAMILY = Flux()
