"""What a base family must provide to the training loop: the :class:`Family` interface and the :class:`Models` it loads.

The loop, the cache, checkpoints, outputs and the CLI never ask which family they have: every place where SD 1.5,
SDXL (and, later, SD3 or Flux) differ is a method of the family object that :func:`cnhelpers.families.detect_family`
finds from the base's own files. A family module (``families/sd.py``, ``families/sdxl.py``) subclasses
:class:`Family`, fills in what it knows, and is registered in ``families/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..data import tokenize_prompts

@dataclass
class Models:
    """The parts of a ControlNet training run: the frozen base and the ControlNet to train.

    Tokenizers and text encoders are kept under the names of the family's diffusers pipeline (``tokenizer``,
    ``tokenizer_2``, ``text_encoder``, ``text_encoder_2``, ...), so they can be handed to the pipeline as they are.
    ``denoiser`` is the base's UNet (or, for a transformer family, its transformer).
    """

    family: "Family"
    tokenizers: dict
    text_encoders: dict
    vae: torch.nn.Module | None
    denoiser: torch.nn.Module
    noise_scheduler: object
    controlnet: torch.nn.Module
    #: The values of the family's own flags (:attr:`Family.flags`) that the run was given, e.g. SD3's and Flux's
    #: ``max_sequence_length``; the family reads them where a step needs them.
    options: dict = field(default_factory=dict)

    @property
    def tokenizer(self):
        """The first tokenizer (the only one of SD 1.5)."""
        return self.tokenizers["tokenizer"]

    @property
    def text_encoder(self):
        """The first text encoder (``None`` once the text is cached and nothing validates)."""
        return self.text_encoders.get("text_encoder")

    @property
    def unet(self):
        """The denoiser, under the name the UNet families' code and notebooks use."""
        return self.denoiser

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """The text conditioning of ``prompts`` as this base's family computes it (a tuple of tensors)."""
        return self.family.encode_prompts(self, prompts)

    def frozen(self) -> list[torch.nn.Module]:
        """The frozen models still loaded: VAE, denoiser, text encoders."""
        return [m for m in (self.vae, self.denoiser, *self.text_encoders.values()) if m is not None]

    def free_text_encoders(self) -> None:
        """Drop the text encoders and the VAE (their work is cached and nothing validates)."""
        self.vae = None
        self.text_encoders = {name: None for name in self.text_encoders}

    def tokenize_fn(self):
        """``captions -> token ids``, this base's family's :meth:`Family.tokenize`, holding the tokenizers and
        options but none of the models: a data set's transform captures it, and datasets hashes a transform (its
        fingerprint) and a DataLoader worker may pickle it, so weights there would be serialized each run (1.5 s of
        a 2-step run on the tiny base; on SD 1.5 its 4 GB)."""
        text_only = Models(family=self.family, tokenizers=self.tokenizers, text_encoders={}, vae=None,
                           denoiser=None, noise_scheduler=None, controlnet=None, options=self.options)
        return partial(self.family.tokenize, text_only)


@dataclass
class StepMemory:
    """A lower bound on what one training step allocates beyond the loaded models, in bytes.

    Only tensors that certainly exist at once are counted, so a run refused by
    :func:`cnhelpers.loading.check_step_fits_memory` could never have run (a run that passes may still run out:
    attention, the rest of the activations and the allocator's slack come on top).
    """

    #: Per example, in RAM: the target and conditioning pictures decoded (PIL: 4 bytes a pixel) and as float32
    #: tensors, each example's and the stacked batch's.
    host_per_example: int
    #: Per example, on the training device: the largest set of activations that certainly coexist.
    device_per_example: int
    #: Once, on the device: AdamW's two moments of every ControlNet parameter (float32, 1 byte with 8-bit Adam).
    device_fixed: int


@dataclass
class StepConstants:
    """What every training step of a run shares besides the models: the family's fixed extra inputs (SDXL's
    size and crop ids), computed once when the run is set up."""

    extra: dict = field(default_factory=dict)


class Family:
    """One base family. Subclasses set the class attributes and implement the methods; the defaults below are
    the UNet families' where that is the natural default."""

    #: Short name, as the CLI and errors say it ("sd", "sdxl").
    name: str = ""
    #: Human name for messages ("Stable Diffusion 1.x/2.x").
    label: str = ""
    #: The folders of a base repository this family loads (and so the files a Hub snapshot fetches).
    components: tuple[str, ...] = ()
    #: The ControlNet pipeline of this family (validation, inference, the model card), by diffusers' name, and the
    #: keyword arguments its ``from_pretrained`` needs besides the base and the ControlNet.
    pipeline_name: str = ""
    pipeline_kwargs: dict = {}
    #: The pipeline's name for the denoiser ("unet" or "transformer").
    denoiser_name: str = "unet"
    #: Upstream's default resize filter for this family's training script.
    default_interpolation: str = "bilinear"
    #: Flags that only mean something for this family. The CLI parses them for every family, but a run refuses
    #: one changed from its default when the base's family does not list it and another family does
    #: (:func:`cnhelpers.families.check_family_flags`); their values reach the family as ``Models.options``.
    flags: tuple[str, ...] = ()
    #: The flags whose values :meth:`objective` takes, by name.
    objective_flags: tuple[str, ...] = ()
    #: Why a flag of another family means nothing here, by flag (added to the refusal's line).
    flag_notes: dict = {}
    #: The ControlNet class of this family, by diffusers' name (loading, checkpoints, the model card).
    controlnet_class: str = "ControlNetModel"
    #: Whether the ControlNet reads the conditioning image's VAE latents (:meth:`encode_condition`) rather than its
    #: pixels (the cache then stores their posterior instead of the picture).
    condition_as_latents: bool = False

    # -- detection ----------------------------------------------------------------------------------------
    def claims(self, model_index: dict, folder: Path) -> bool:
        """True when the base in ``folder`` (its parsed ``model_index.json``, ``{}`` if it has none) is this
        family's. Families are asked most specific first."""
        raise NotImplementedError

    # -- loading ------------------------------------------------------------------------------------------
    def load(self, base: Path, *, variant: str | None = None, tokenizer_name: str | None = None,
             vae_path: Path | None = None, controlnet: str | Path | None = None, options: dict | None = None) -> Models:
        """The frozen base in ``base`` (a local folder holding :attr:`components`) and the ControlNet: loaded from
        ``controlnet`` (a local folder) or made from the denoiser. ``options`` are the values of :attr:`flags`."""
        raise NotImplementedError

    def check_resolution(self, models: Models, resolution: int) -> None:
        """Refuse, in one line, a training resolution the denoiser cannot take (the SD families: any multiple of
        the VAE's factor, which :func:`cnhelpers.data.check_resolution` checks for every family)."""

    def check_controlnet_fits(self, controlnet, denoiser, vae_factor: int) -> None:
        """Refuse, with the reason and the fix, a ControlNet that cannot feed this denoiser and VAE."""
        raise NotImplementedError

    def step_memory(self, models: Models, resolution: int, activation_bytes: int, adam_state_bytes: int):
        """A lower bound on one training step's memory (:class:`StepMemory`)."""
        raise NotImplementedError

    def vae_in_float32(self, weight_dtype: torch.dtype, replaced_vae: bool, options: dict | None = None) -> bool:
        """Whether the VAE must stay in float32 under ``weight_dtype`` (a VAE that overflows in fp16, or SD3's
        ``--upcast_vae`` among ``options``, the run's :attr:`flags`)."""
        return False

    # -- text ---------------------------------------------------------------------------------------------
    def encode_prompts(self, models: Models, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """The text conditioning of ``prompts`` as a tuple of tensors (the cache stores one table per tensor)."""
        raise NotImplementedError

    def encode_batch_text(self, models: Models, batch: dict) -> tuple[torch.Tensor, ...]:
        """The same conditioning from a batch's token ids (the uncached path's ``input_ids``, ...)."""
        raise NotImplementedError

    def text_shape(self, models: Models) -> tuple[int, ...]:
        """The shape of one prompt's text embedding (for the cache's size estimate)."""
        raise NotImplementedError

    def tokenize(self, models: Models, captions: list[str]) -> dict:
        """The uncached path's token ids of ``captions``, one tensor per tokenizer (``input_ids``, ``input_ids_2``,
        ...), as :meth:`encode_batch_text` reads them: each tokenizer padded to its own length (CLIP's 77)."""
        ids = {"input_ids": tokenize_prompts(models.tokenizer, captions)}
        for name, tokenizer in models.tokenizers.items():
            if name != "tokenizer":
                ids[name.replace("tokenizer", "input_ids")] = tokenize_prompts(tokenizer, captions)
        return ids

    def check_prompts(self, models: Models, prompts: list[str], what: str) -> None:
        """Refuse, in one line, prompts this family's text encoders would cut short (``what`` names where they come
        from). The CLIP families truncate at 77 tokens, as their pipelines do, and refuse nothing."""

    # -- the training step ---------------------------------------------------------------------------------
    def step_constants(self, models: Models, *, resolution: int, crops_coords_top_left=(0, 0), dtype=torch.float32,
                       device=None) -> StepConstants:
        """The inputs every step shares (none for SD 1.5)."""
        return StepConstants()

    def scale_latents(self, latents: torch.Tensor, scaling_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
        """The VAE's latents as the denoiser reads them: times ``scaling_factor`` (the SD families; SD3 and Flux
        subtract the VAE's ``shift_factor`` first)."""
        return latents * scaling_factor

    def encode_condition(self, vae, pixels: torch.Tensor):
        """The VAE posterior of conditioning images ``pixels`` (in [0, 1]) for a ControlNet that reads latents, or
        ``None`` for one that reads the pixels (the SD families: their conditioning embedding shrinks them itself).
        The cache stores this posterior's mean and std."""
        return None

    def controlnet_condition(self, models: Models, batch: dict, generator: torch.Generator, dtype: torch.dtype,
                             scaling_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
        """What the ControlNet reads of a batch's conditioning images: the SD families' pixels in [0, 1] (from the
        cache's uint8 copy, or the uncached batch); drawn from ``generator`` only where the family samples latents."""
        if "conditioning_uint8" in batch:
            return batch["conditioning_uint8"].to(dtype) / 255
        return batch["conditioning_pixel_values"].to(dtype)

    def objective(self, noise_scheduler, **options):
        """The training objective: an object with ``noised(latents, generator)`` (the forward process on clean
        latents: a :class:`cnhelpers.losses.Noised`, drawing from ``generator`` only) and ``loss(prediction,
        noised, snr_gamma)``. ``options`` are the values of :attr:`objective_flags`."""
        raise NotImplementedError

    def step_inputs(self, models: Models, constants: StepConstants, noised, text: tuple, conditioning) -> dict:
        """The inputs of the ControlNet and the denoiser for one step."""
        raise NotImplementedError

    def predict(self, models: Models, inputs: dict) -> torch.Tensor:
        """The denoiser's prediction with the ControlNet's residuals added (``models.controlnet`` None: the denoiser
        alone, with ``step_inputs``' conditioning None)."""
        raise NotImplementedError

    # -- after training ------------------------------------------------------------------------------------
    def validation_scheduler(self, noise_scheduler):
        """The sampler of validation images, made from the training scheduler's config (UniPC for the SD families,
        as upstream's scripts)."""
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler.from_config(noise_scheduler.config)

    def pipeline_inputs(self, models: Models, conditions: list) -> dict:
        """The pipeline call's keyword arguments for the conditioning images ``conditions`` (PIL images) and
        whatever else must match training (SD3's and Flux's T5 length, Flux's guidance)."""
        return {"image": conditions}

    def validation_pipeline(self, models: Models, controlnet, scheduler):
        """The family's ControlNet pipeline built from the run's loaded models (no download)."""
        raise NotImplementedError

    def card_tags(self) -> list[str]:
        """Model card tags for a ControlNet of this family."""
        return ["controlnet", "diffusers"]

    # -- a LoRA ControlNet ---------------------------------------------------------------------------------
    def lora_layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(copied_blocks, full_modules)`` of this family's ControlNet for ``--lora_rank``
        (:func:`cnhelpers.lora.add_controlnet_lora`): the top-level modules copied from the denoiser, which get LoRA
        adapters, and the ControlNet's own modules (conditioning embedding, zero convolutions), trained in full.
        A family without one refuses ``--lora_rank`` in one line."""
        raise ValueError(f"--lora_rank is not supported for {self.label or self.name} bases here (the course's LoRA "
                         "ControlNet covers the UNet families, SD 1.x/2.x and SDXL): leave --lora_rank out.")
