"""Stable Diffusion 3: an MMDiT transformer, three text encoders, flow matching, a ControlNet that reads latents.

Everything the training loop needs to know about this family, as upstream's ``train_controlnet_sd3.py`` has it:

- **Parts**: ``transformer`` (SD3Transformer2DModel), ``vae`` (with a ``shift_factor``), ``text_encoder`` and
  ``text_encoder_2`` (CLIPTextModelWithProjection), ``text_encoder_3`` (T5EncoderModel), their three tokenizers,
  ``scheduler`` (FlowMatchEulerDiscreteScheduler).
- **Text**: both CLIPs' penultimate hidden states side by side, padded with zeros to T5's width, then T5's states
  after them on the sequence axis: ``(batch, 77 + max_sequence_length, t5_width)``; the pooled text is both CLIPs'
  projected embeddings side by side. ``--max_sequence_length`` (77) is T5's length; a caption longer than it is
  refused rather than cut.
- **Latents**: ``(latents - shift_factor) * scaling_factor``.
- **ControlNet**: ``SD3ControlNetModel.from_transformer``: the patch, time and text embeddings and the first
  ``--num_controlnet_layers`` joint blocks copied (upstream: 12; here at most all but the transformer's last), a zero-initialised
  ``pos_embed_input`` for the condition and zero-initialised linear layers for the residuals, which the transformer
  adds to its blocks' outputs (``block_controlnet_hidden_states``). The condition is the conditioning image's VAE
  latents (in [-1, 1] as the pipeline encodes it, shifted and scaled), sampled from the posterior every step like
  the target's. A new ControlNet is marked ``force_zeros_for_pooled_projection=False``, so that the pipeline feeds
  it the pooled text and the shifted latents it was trained with (the class's default is for InstantX's
  ControlNets; diffusers issue #9686).
- **Objective**: flow matching (:class:`cnhelpers.families.flow_matching.FlowMatchingObjective`): ``--weighting_scheme``,
  ``--logit_mean``, ``--logit_std``, ``--mode_scale``, ``--precondition_outputs``; no Min-SNR.
- **Pipeline**: ``StableDiffusion3ControlNetPipeline`` (FlowMatchEulerDiscreteScheduler; ``control_image``).

One difference from upstream: its script encodes the conditioning image in [0, 1] while its pipeline encodes it in
[-1, 1]; here training encodes what the pipeline will (diffusers issues #11867 and #9686 discuss the mismatches).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import tokenize_prompts
from .flow_matching import FlowMatchingObjective
from ..model_info import count_parameters, vae_scale_factor
from .family import Family, Models, StepConstants, StepMemory

#: Upstream's ``SD3ControlNetModel.from_transformer`` default: the ControlNet copies the first 12 joint blocks.
DEFAULT_CONTROLNET_LAYERS = 12
#: The T5 length of upstream's SD3 script (``--max_sequence_length``); the pipelines allow up to 512.
DEFAULT_MAX_SEQUENCE_LENGTH = 77
MAX_SEQUENCE_LENGTH_LIMIT = 512


def t5_token_ids(tokenizer, prompts: list[str], max_sequence_length: int) -> torch.Tensor:
    """T5's token ids of ``prompts``, padded (and cut) to ``max_sequence_length``, as the pipelines tokenize them."""
    return tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                     add_special_tokens=True, return_tensors="pt").input_ids


def check_t5_lengths(tokenizer, prompts: list[str], max_sequence_length: int, label: str, what: str) -> None:
    """Refuse, in one line, a prompt with more T5 tokens (its end token included) than ``--max_sequence_length``:
    the pipelines and upstream's scripts would cut it silently."""
    for prompt in dict.fromkeys(p for p in prompts if p):
        length = len(tokenizer(prompt, add_special_tokens=True).input_ids)
        if length > max_sequence_length:
            shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            raise ValueError(f"{what} {shown!r} is {length} T5 tokens, more than --max_sequence_length "
                             f"{max_sequence_length}: {label}'s T5 encoder would read it cut short. Raise "
                             f"--max_sequence_length (at most {MAX_SEQUENCE_LENGTH_LIMIT}) or shorten it.")


@torch.no_grad()
def encode_token_ids_sd3(clip_ids, t5_ids, text_encoders) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's text conditioning from the two CLIP tokenizers' ids and T5's: ``(prompt_embeds, pooled_prompt_embeds)``.

    ``prompt_embeds``: the CLIPs' penultimate hidden states side by side, zero-padded to T5's width, followed on
    the sequence axis by T5's last hidden states. ``pooled_prompt_embeds``: the CLIPs' projected embeddings side
    by side. ``text_encoders`` are (CLIP, CLIP, T5).
    """
    hidden, pooled = [], []
    for ids, encoder in zip(clip_ids, text_encoders[:2]):
        output = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
        pooled.append(output.text_embeds)
    t5 = text_encoders[2]
    t5_states = t5(t5_ids.to(t5.device))[0]
    clip_states = torch.cat(hidden, dim=-1)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
    return torch.cat([clip_states, t5_states.to(clip_states.dtype)], dim=-2), torch.cat(pooled, dim=-1)


def encode_prompt_sd3(prompts: list[str], tokenizers, text_encoders, max_sequence_length: int = 77):
    """:func:`encode_token_ids_sd3` of ``prompts``, tokenized by each encoder's tokenizer (T5 to
    ``max_sequence_length``)."""
    clip_ids = [tokenize_prompts(t, prompts) for t in tokenizers[:2]]
    return encode_token_ids_sd3(clip_ids, t5_token_ids(tokenizers[2], prompts, max_sequence_length), text_encoders)


def controlnet_layers(requested: int | None, available: int) -> int:
    """How many joint blocks a new ControlNet copies: ``requested`` (upstream's default when ``None``), at most all
    but the last of the transformer's ``available`` ones. The transformer's last block reads the text but returns
    none (``context_pre_only``), a ControlNet block returns both, so the last block's weights do not fit one; more
    would be new random blocks, not copies."""
    return max(1, min(requested or DEFAULT_CONTROLNET_LAYERS, available - 1))


def check_same_config(controlnet, denoiser, names, label: str, fix: str) -> None:
    """Refuse a ControlNet whose config differs from the denoiser's in one of ``names`` (one line, both values)."""
    for name in names:
        mine, theirs = controlnet.config.get(name), denoiser.config.get(name)
        if (list(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (list(theirs) if isinstance(theirs, (list, tuple)) else theirs):
            raise ValueError(f"This ControlNet does not fit the base model: its {name} is {mine}, the base "
                             f"{label}'s is {theirs}. A ControlNet only works with the base it was made from: {fix}")


def check_patch_resolution(resolution: int, vae_factor: int, patch: int, what: str) -> None:
    """Refuse a resolution whose latents do not split into whole patches (one line naming the multiple)."""
    step = vae_factor * patch
    if resolution % step:
        lower = max(step, resolution // step * step)
        raise ValueError(f"--resolution {resolution} is not a multiple of {step}: the VAE shrinks images "
                         f"{vae_factor}x and {what}, so the latents would not split into whole patches. Use "
                         f"{lower} or {lower + step}.")


def transformer_step_memory(models, resolution: int, tokens: int, activation_bytes: int, adam_state_bytes: int):
    """A lower bound on one step's memory for a transformer base: per example the pictures in RAM; on the device
    the larger of the VAE encoder's first activations and the step's (the latents, noise, noisy latents, target and
    condition; the ControlNet's and the transformer's hidden states over ``tokens`` image and text tokens, twice
    each); once, AdamW's moments."""
    pixels = resolution * resolution
    vae_factor = vae_scale_factor(models.vae) if models.vae is not None else 8
    latent_elements = models.vae.config.latent_channels * (resolution // vae_factor) ** 2 if models.vae is not None \
        else 0
    pictures = 2 * pixels * (4 + 2 * 3 * 4)
    width = models.denoiser.config.num_attention_heads * models.denoiser.config.attention_head_dim
    step = 5 * latent_elements * 4 + 2 * 2 * tokens * width * activation_bytes
    vae = 2 * models.vae.config.block_out_channels[0] * pixels * activation_bytes if models.vae is not None else 0
    return StepMemory(pictures, max(step, vae), 2 * count_parameters(models.controlnet) * adam_state_bytes)


class StableDiffusion3(Family):
    """SD3 (and 3.5): an MMDiT, two CLIPs and T5, flow matching, a ControlNet on the VAE latents."""

    name = "sd3"
    label = "Stable Diffusion 3"
    components = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                  "tokenizer_2", "tokenizer_3", "scheduler")
    pipeline_name = "StableDiffusion3ControlNetPipeline"
    controlnet_class = "SD3ControlNetModel"
    #: The denoiser's class, by diffusers' name.
    transformer_class = "SD3Transformer2DModel"
    condition_as_latents = True
    denoiser_name = "transformer"
    default_interpolation = "bilinear"  # (upstream's train_controlnet_sd3.py)
    pipelines = ("StableDiffusion3Pipeline", "StableDiffusion3ControlNetPipeline")
    objective_flags = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "precondition_outputs")
    flags = objective_flags + ("num_controlnet_layers", "num_extra_conditioning_channels", "upcast_vae",
                               "max_sequence_length")
    flag_notes = {"snr_gamma": "Min-SNR weights a DDPM objective; SD3 trains by flow matching, whose timesteps "
                               "--weighting_scheme weights",
                  "conditioning_embedding_init": "SD3's ControlNet reads the condition's latents through one "
                                                 "zero-initialised layer, not a stack of convolutions"}

    def claims(self, model_index: dict, folder: Path) -> bool:
        if model_index:
            return model_index.get("_class_name") in self.pipelines
        return (folder / "transformer").is_dir() and (folder / "text_encoder_3").is_dir()

    # -- loading ------------------------------------------------------------------------------------------
    def max_sequence_length(self, models: Models) -> int:
        """T5's length for this run (``--max_sequence_length``, the family's default when not given)."""
        return models.options.get("max_sequence_length") or DEFAULT_MAX_SEQUENCE_LENGTH

    def load_text(self, base: Path, variant: str | None, tokenizer_name: str | None) -> tuple[dict, dict]:
        """``(tokenizers, text_encoders)`` by their pipeline names."""
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        tokenizers = {"tokenizer": AutoTokenizer.from_pretrained(tokenizer_name) if tokenizer_name
                      else AutoTokenizer.from_pretrained(base, subfolder="tokenizer"),
                      "tokenizer_2": AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
                      "tokenizer_3": AutoTokenizer.from_pretrained(base, subfolder="tokenizer_3")}
        text_encoders = {
            "text_encoder": CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder", variant=variant),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2",
                                                                          variant=variant),
            "text_encoder_3": T5EncoderModel.from_pretrained(base, subfolder="text_encoder_3", variant=variant)}
        return tokenizers, text_encoders

    def load(self, base: Path, *, variant: str | None = None, tokenizer_name: str | None = None,
             vae_path: Path | None = None, controlnet: str | Path | None = None, options: dict | None = None) -> Models:
        import diffusers
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

        options = dict(options or {})
        tokenizers, text_encoders = self.load_text(base, variant, tokenizer_name)
        noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler")
        vae = AutoencoderKL.from_pretrained(vae_path) if vae_path is not None \
            else AutoencoderKL.from_pretrained(base, subfolder="vae", variant=variant)
        transformer = getattr(diffusers, self.transformer_class).from_pretrained(base, subfolder="transformer",
                                                                                variant=variant)
        net = self.make_controlnet(transformer, controlnet, options)
        self.check_controlnet_fits(net, transformer, vae_scale_factor(vae))
        return Models(self, tokenizers, text_encoders, vae, transformer, noise_scheduler, net, options)

    def make_controlnet(self, transformer, controlnet: str | Path | None = None, options: dict | None = None):
        """Load the SD3 ControlNet in the local folder ``controlnet``, or make one from the transformer."""
        from diffusers import SD3ControlNetModel

        if controlnet is not None:
            return SD3ControlNetModel.from_pretrained(controlnet)
        options = options or {}
        extra = options.get("num_extra_conditioning_channels") or 0
        if extra:
            raise ValueError(f"--num_extra_conditioning_channels {extra}: the new ControlNet would read {extra} "
                             "channels besides the conditioning image's latents (e.g. an inpainting mask), and the "
                             "training data has none. Leave it at 0.")
        net = SD3ControlNetModel.from_transformer(
            transformer, num_layers=controlnet_layers(options.get("num_controlnet_layers"),
                                                      transformer.config.num_layers),
            num_extra_conditioning_channels=0)
        net.register_to_config(force_zeros_for_pooled_projection=False)
        return net

    def check_controlnet_fits(self, controlnet, denoiser, vae_factor: int = 8) -> None:
        check_same_config(controlnet, denoiser, ("in_channels", "patch_size", "num_attention_heads",
                                                 "attention_head_dim", "joint_attention_dim", "pooled_projection_dim"),
                          "transformer", "load one trained for this base, or leave out --controlnet_model_name_or_path "
                          "to make one with SD3ControlNetModel.from_transformer(transformer).")

    def check_resolution(self, models: Models, resolution: int) -> None:
        config = models.denoiser.config
        vae_factor = vae_scale_factor(models.vae)
        check_patch_resolution(resolution, vae_factor, config.patch_size,
                               f"the transformer cuts the latents into {config.patch_size}x{config.patch_size} patches")
        side = resolution // vae_factor // config.patch_size
        if config.pos_embed_max_size is not None and side > config.pos_embed_max_size:
            largest = config.pos_embed_max_size * config.patch_size * vae_factor
            raise ValueError(f"--resolution {resolution} is {side} patches a side, more than the transformer's "
                             f"position embedding holds (pos_embed_max_size {config.pos_embed_max_size}): use "
                             f"--resolution {largest} or less.")

    def step_memory(self, models: Models, resolution: int, activation_bytes: int = 4, adam_state_bytes: int = 4):
        patches = (resolution // 8 // models.denoiser.config.patch_size) ** 2
        tokens = patches + 77 + self.max_sequence_length(models)
        return transformer_step_memory(models, resolution, tokens, activation_bytes, adam_state_bytes)

    def vae_in_float32(self, weight_dtype: torch.dtype, replaced_vae: bool, options: dict | None = None) -> bool:
        # --upcast_vae, as upstream's SD3 script: the VAE stays in float32 under mixed precision
        return bool((options or {}).get("upcast_vae")) and weight_dtype != torch.float32

    # -- text ---------------------------------------------------------------------------------------------
    def _tokenizers(self, models: Models):
        return [models.tokenizers[name] for name in ("tokenizer", "tokenizer_2", "tokenizer_3")]

    def _text_encoders(self, models: Models):
        return [models.text_encoders[name] for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]

    def encode_prompts(self, models: Models, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        return encode_prompt_sd3(prompts, self._tokenizers(models), self._text_encoders(models),
                                 self.max_sequence_length(models))

    def encode_batch_text(self, models: Models, batch: dict) -> tuple[torch.Tensor, ...]:
        return encode_token_ids_sd3([batch["input_ids"], batch["input_ids_2"]], batch["input_ids_3"],
                                    self._text_encoders(models))

    def text_shape(self, models: Models) -> tuple[int, ...]:
        return (77 + self.max_sequence_length(models), models.text_encoders["text_encoder_3"].config.d_model)

    def tokenize(self, models: Models, captions: list[str]) -> dict:
        return {"input_ids": tokenize_prompts(models.tokenizer, captions),
                "input_ids_2": tokenize_prompts(models.tokenizers["tokenizer_2"], captions),
                "input_ids_3": t5_token_ids(models.tokenizers["tokenizer_3"], captions,
                                            self.max_sequence_length(models))}

    def check_prompts(self, models: Models, prompts: list[str], what: str) -> None:
        check_t5_lengths(models.tokenizers["tokenizer_3"], prompts, self.max_sequence_length(models),
                         "the base's text_encoder_3", what)

    # -- the training step ---------------------------------------------------------------------------------
    def scale_latents(self, latents: torch.Tensor, scaling_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
        return (latents - shift_factor) * scaling_factor

    def encode_condition(self, vae, pixels: torch.Tensor):
        # the pipeline's image processor hands the VAE the conditioning image in [-1, 1]
        return vae.encode((pixels * 2 - 1).to(vae.device, vae.dtype)).latent_dist

    def controlnet_condition(self, models: Models, batch: dict, generator: torch.Generator, dtype: torch.dtype,
                             scaling_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
        # Sampled from the (cached) posterior of the conditioning image, as the target's latents are.
        if "condition_mean" in batch:
            mean = batch["condition_mean"]
            latents = mean + batch["condition_std"] * torch.randn(mean.shape, generator=generator, device=mean.device)
        else:
            latents = self.encode_condition(models.vae, batch["conditioning_pixel_values"]).sample(generator=generator)
        return self.scale_latents(latents, scaling_factor, shift_factor).to(dtype)

    def objective(self, noise_scheduler, **options) -> FlowMatchingObjective:
        return FlowMatchingObjective(noise_scheduler, **options)

    def step_inputs(self, models: Models, constants: StepConstants, noised, text: tuple, conditioning) -> dict:
        return {"latents": noised.latents, "timesteps": noised.timesteps, "encoder_hidden_states": text[0],
                "pooled_projections": text[1], "conditioning": conditioning}

    def predict(self, models: Models, inputs: dict) -> torch.Tensor:
        # (models.controlnet None: the transformer alone, as the course's pretraining of the tiny base runs it)
        residuals = None if models.controlnet is None else models.controlnet(
            hidden_states=inputs["latents"], timestep=inputs["timesteps"],
            encoder_hidden_states=inputs["encoder_hidden_states"], pooled_projections=inputs["pooled_projections"],
            controlnet_cond=inputs["conditioning"], return_dict=False)[0]
        dtype = next(models.denoiser.parameters()).dtype  # the frozen transformer may run in half precision
        return models.denoiser(hidden_states=inputs["latents"], timestep=inputs["timesteps"],
                               encoder_hidden_states=inputs["encoder_hidden_states"],
                               pooled_projections=inputs["pooled_projections"],
                               block_controlnet_hidden_states=None if residuals is None
                               else [r.to(dtype) for r in residuals],
                               return_dict=False)[0]

    # -- after training ------------------------------------------------------------------------------------
    def validation_scheduler(self, noise_scheduler):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(noise_scheduler.config)

    def pipeline_inputs(self, models: Models, conditions: list) -> dict:
        return {"control_image": conditions, "max_sequence_length": self.max_sequence_length(models)}

    def validation_pipeline(self, models: Models, controlnet, scheduler):
        from diffusers import StableDiffusion3ControlNetPipeline

        return StableDiffusion3ControlNetPipeline(
            transformer=models.denoiser, scheduler=scheduler, vae=models.vae, controlnet=controlnet,
            **{name: models.text_encoders[name] for name in ("text_encoder", "text_encoder_2", "text_encoder_3")},
            **{name: models.tokenizers[name] for name in ("tokenizer", "tokenizer_2", "tokenizer_3")})

    def card_tags(self) -> list[str]:
        return ["controlnet", "sd3", "stable-diffusion-3", "diffusers", "controlnet-course"]


FAMILY = StableDiffusion3()

