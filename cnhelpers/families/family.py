"""What a base family must provide to the training loop: the :class:`Family` interface and the :class:`Models` it loads.

The loop, the cache, checkpoints, outputs and the CLI never ask which family they have: every place where SD 1.5,
SDXL (and, later, SD3 or Flux) differ is a method of the family object that :func:`cnhelpers.families.detect_family`
finds from the base's own files. A family module (``families/sd.py``, ``families/sdxl.py``) subclasses
:class:`Family`, fills in what it knows, and is registered in ``families/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


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
    #: Flags that only mean something for this family (the CLI accepts them for every family).
    flags: tuple[str, ...] = ()
    #: The flags whose values :meth:`objective` takes, by name.
    objective_flags: tuple[str, ...] = ()

    # -- detection ----------------------------------------------------------------------------------------
    def claims(self, model_index: dict, folder: Path) -> bool:
        """True when the base in ``folder`` (its parsed ``model_index.json``, ``{}`` if it has none) is this
        family's. Families are asked most specific first."""
        raise NotImplementedError

    # -- loading ------------------------------------------------------------------------------------------
    def load(self, base: Path, *, variant: str | None = None, tokenizer_name: str | None = None,
             vae_path: Path | None = None, controlnet: str | Path | None = None) -> Models:
        """The frozen base in ``base`` (a local folder holding :attr:`components`) and the ControlNet: loaded from
        ``controlnet`` (a local folder) or made from the denoiser."""
        raise NotImplementedError

    def check_controlnet_fits(self, controlnet, denoiser, vae_factor: int) -> None:
        """Refuse, with the reason and the fix, a ControlNet that cannot feed this denoiser and VAE."""
        raise NotImplementedError

    def step_memory(self, models: Models, resolution: int, activation_bytes: int, adam_state_bytes: int):
        """A lower bound on one training step's memory (:class:`StepMemory`)."""
        raise NotImplementedError

    def vae_in_float32(self, weight_dtype: torch.dtype, replaced_vae: bool) -> bool:
        """Whether the VAE must stay in float32 under ``weight_dtype`` (a VAE that overflows in fp16)."""
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

    # -- the training step ---------------------------------------------------------------------------------
    def step_constants(self, models: Models, *, resolution: int, crops_coords_top_left=(0, 0), dtype=torch.float32,
                       device=None) -> StepConstants:
        """The inputs every step shares (none for SD 1.5)."""
        return StepConstants()

    def objective(self, noise_scheduler, **options):
        """The training objective: an object with ``noised(latents, generator)`` (the forward process on clean
        latents: a :class:`cnhelpers.losses.Noised`, drawing from ``generator`` only) and ``loss(prediction,
        noised, snr_gamma)``. ``options`` are the values of :attr:`objective_flags`."""
        raise NotImplementedError

    def step_inputs(self, models: Models, constants: StepConstants, noised, text: tuple, conditioning) -> dict:
        """The inputs of the ControlNet and the denoiser for one step."""
        raise NotImplementedError

    def predict(self, models: Models, inputs: dict) -> torch.Tensor:
        """The denoiser's prediction with the ControlNet's residuals added."""
        raise NotImplementedError

    # -- after training ------------------------------------------------------------------------------------
    def validation_pipeline(self, models: Models, controlnet, scheduler):
        """The family's ControlNet pipeline built from the run's loaded models (no download)."""
        raise NotImplementedError

    def card_tags(self) -> list[str]:
        """Model card tags for a ControlNet of this family."""
        return ["controlnet", "diffusers"]
