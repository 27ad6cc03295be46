"""Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet, DDPM noise with an epsilon or v target, Min-SNR.

Everything the training loop needs to know about this family, as upstream's ``train_controlnet.py`` has it:

- **Parts**: ``tokenizer``, ``text_encoder`` (CLIPTextModel), ``vae``, ``unet``, ``scheduler`` (DDPM for training).
- **Text**: the text encoder's last hidden states, ``(batch, 77, cross_attention_dim)``.
- **ControlNet**: ``ControlNetModel.from_unet(unet)``: the UNet's encoder copied, a conditioning embedding and
  zero convolutions new; its residuals are added to the UNet's skip connections and mid block.
- **Objective**: DDPM forward noising at a uniformly drawn timestep; the target is the noise (epsilon) or the
  velocity (v_prediction), as the scheduler's ``prediction_type`` says; mean squared error per sample, optionally
  Min-SNR-weighted (:mod:`cnhelpers.losses`).
- **Pipeline**: ``StableDiffusionControlNetPipeline`` (no safety checker while validating).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import tokenize_prompts
from ..losses import DDPMObjective, predict_noise
from ..model_info import conditioning_downsampling, vae_scale_factor
from .family import Family, Models, StepConstants, StepMemory


def make_controlnet(unet, controlnet: str | Path | None = None):
    """Load the ControlNet in the local folder ``controlnet``, or make a new one from the UNet."""
    from diffusers import ControlNetModel

    if controlnet is not None:
        return ControlNetModel.from_pretrained(controlnet)
    return ControlNetModel.from_unet(unet)


#: ``--conditioning_embedding_init``'s choices: ``default`` keeps ``from_unet``'s embedding as diffusers makes it.
CONDITIONING_EMBEDDING_INITS = ("default", "kaiming")


def init_conditioning_embedding(controlnet, how: str = "default") -> None:
    """Start a new ControlNet's conditioning embedding (the small CNN that reads the conditioning image) as ``how``
    says, in place. ``kaiming``: He-normal weights (fan in, for its SiLUs) and zero biases for every convolution
    before ``conv_out``; ``conv_out`` and the zero convolutions stay zero, so the ControlNet still adds nothing at
    step 0.

    Why: under PyTorch's default convolution init (``default``, what ``from_unet`` leaves), each layer shrinks the
    part of its features that depends on the image, and the biases add a constant: on the tiny base's outlines, the
    7 convolutions before ``conv_out`` leave features that differ between outlines by about 0.2 % of their size
    (``cnhelpers.course.anatomy.condition_share`` measures it). The ControlNet first learns from features that
    barely carry the condition, and when it starts to follow it (if it does) varies from run to run.

    Draws from torch's global generator (``train`` seeds it with ``--seed``)."""
    if how not in CONDITIONING_EMBEDDING_INITS:
        raise ValueError(f"--conditioning_embedding_init {how!r}: choose one of "
                         f"{', '.join(CONDITIONING_EMBEDDING_INITS)}.")
    if how == "default":
        return
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in (embedding.conv_in, *embedding.blocks):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # (SiLU: ReLU's gain, near enough)
            torch.nn.init.zeros_(conv.bias)


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
            f"e.g. ControlNetModel.from_unet(unet) with its default (16, 32, 96, 256).")
    for name in ("block_out_channels", "cross_attention_dim", "in_channels"):
        mine, theirs = controlnet.config[name], unet.config[name]
        if (tuple(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs):
            raise ValueError(
                f"This ControlNet does not fit the base model: its {name} is {mine}, the base UNet's is "
                f"{theirs}. A ControlNet only works with the base it was made from: load one trained for this "
                "base, or make one with ControlNetModel.from_unet(unet) (leave out "
                "--controlnet_model_name_or_path).")


def step_memory(models, resolution: int, activation_bytes: int = 4, adam_state_bytes: int = 4):
    """A lower bound on one training step's memory (:class:`StepMemory`) for a UNet base: per example, the
    pictures in RAM; on the device the larger of the VAE encoder's first activations
    and the step's (the conditioning embedding's first convolution at full resolution, the first blocks of
    the ControlNet and the UNet, the latents, noise, noisy latents and target); once, AdamW's moments."""
    pixels = resolution * resolution
    vae_factor = vae_scale_factor(models.vae) if models.vae is not None else 8
    latent_pixels = (resolution // vae_factor) ** 2
    pictures = 2 * pixels * (4 + 2 * 3 * 4)
    embedding = models.controlnet.config.conditioning_embedding_out_channels[0]
    first_block = models.denoiser.config.block_out_channels[0]
    step = (2 * embedding * pixels + 2 * 2 * first_block * latent_pixels) * activation_bytes \
        + 4 * models.denoiser.config.in_channels * latent_pixels * 4
    vae = 2 * models.vae.config.block_out_channels[0] * pixels * activation_bytes if models.vae is not None else 0
    trained = sum(p.numel() for p in models.controlnet.parameters() if p.requires_grad)  # (a LoRA's: a few %)
    return StepMemory(pictures, max(step, vae), 2 * trained * adam_state_bytes)


class StableDiffusion(Family):
    """SD 1.x/2.x: a UNet without added embeddings, one CLIP text encoder."""

    name = "sd"
    label = "Stable Diffusion 1.x/2.x"
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    pipeline_name = "StableDiffusionControlNetPipeline"
    # (no safety checker: a ControlNet's validation and the course's pictures are judged by people)
    pipeline_kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    default_interpolation = "bilinear"
    #: The pipeline classes whose folders this family loads.
    pipelines = ("StableDiffusionPipeline", "StableDiffusionControlNetPipeline")
    #: Min-SNR weighting is a DDPM objective's (:func:`cnhelpers.losses.min_snr_weights`).
    #: ``--conditioning_embedding_init``: the UNet ControlNet's embedding (SD3's and Flux's read the condition's
    #: latents through one zero-initialised layer instead).
    flags = ("snr_gamma", "conditioning_embedding_init")

    def claims(self, model_index: dict, folder: Path) -> bool:
        if model_index:
            return model_index.get("_class_name") in self.pipelines
        return (folder / "unet").is_dir() and not (folder / "text_encoder_2").is_dir()

    # -- loading ------------------------------------------------------------------------------------------
    def load_text(self, base: Path, variant: str | None, tokenizer_name: str | None) -> tuple[dict, dict]:
        """``(tokenizers, text_encoders)`` by their pipeline names."""
        from transformers import AutoTokenizer, CLIPTextModel

        # (subfolder only for the base's tokenizer: transformers 5 fails on subfolder=None)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name) if tokenizer_name \
            else AutoTokenizer.from_pretrained(base, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", variant=variant)
        return {"tokenizer": tokenizer}, {"text_encoder": text_encoder}

    def load(self, base: Path, *, variant: str | None = None, tokenizer_name: str | None = None,
             vae_path: Path | None = None, controlnet: str | Path | None = None, options: dict | None = None) -> Models:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        tokenizers, text_encoders = self.load_text(base, variant, tokenizer_name)
        noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
        if vae_path is not None:  # e.g. SDXL's fp16-fix VAE: a whole repository, no subfolder
            vae = AutoencoderKL.from_pretrained(vae_path)
        else:
            vae = AutoencoderKL.from_pretrained(base, subfolder="vae", variant=variant)
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", variant=variant)
        net = self.make_controlnet(unet, controlnet)
        if controlnet is None:  # (a loaded ControlNet's embedding is trained already)
            init_conditioning_embedding(net, (options or {}).get("conditioning_embedding_init", "default"))
        self.check_controlnet_fits(net, unet, vae_scale_factor(vae))
        return Models(self, tokenizers, text_encoders, vae, unet, noise_scheduler, net, dict(options or {}))

    def make_controlnet(self, unet, controlnet: str | Path | None = None):
        return make_controlnet(unet, controlnet)

    def check_controlnet_fits(self, controlnet, unet, vae_factor: int = 8) -> None:
        check_controlnet_fits(controlnet, unet, vae_factor)

    def step_memory(self, models: Models, resolution: int, activation_bytes: int = 4, adam_state_bytes: int = 4):
        return step_memory(models, resolution, activation_bytes, adam_state_bytes)

    # -- text ---------------------------------------------------------------------------------------------
    def encode_prompts(self, models: Models, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        ids = tokenize_prompts(models.tokenizer, prompts).to(models.text_encoder.device)
        return (models.text_encoder(ids)[0],)

    def encode_batch_text(self, models: Models, batch: dict) -> tuple[torch.Tensor, ...]:
        return (models.text_encoder(batch["input_ids"])[0],)

    def text_shape(self, models: Models) -> tuple[int, ...]:
        return (77, models.denoiser.config.cross_attention_dim)  # CLIP's 77 tokens

    # -- the training step ---------------------------------------------------------------------------------
    def objective(self, noise_scheduler, **options) -> DDPMObjective:
        return DDPMObjective(noise_scheduler)

    def step_inputs(self, models: Models, constants: StepConstants, noised, text: tuple, conditioning) -> dict:
        return {"latents": noised.latents, "timesteps": noised.timesteps, "encoder_hidden_states": text[0],
                "conditioning": conditioning}

    def predict(self, models: Models, inputs: dict) -> torch.Tensor:
        return predict_noise(models.denoiser, models.controlnet, inputs)

    # -- after training ------------------------------------------------------------------------------------
    def validation_pipeline(self, models: Models, controlnet, scheduler):
        from diffusers import StableDiffusionControlNetPipeline

        return StableDiffusionControlNetPipeline(
            vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=models.denoiser,
            controlnet=controlnet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)

    def lora_layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # The encoder half copied from the UNet (SDXL's added-condition embedding too); the conditioning embedding
        # and the zero convolutions are the ControlNet's own, trained in full.
        return (("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"),
                ("controlnet_cond_embedding", "controlnet_down_blocks", "controlnet_mid_block"))

    def card_tags(self) -> list[str]:
        return ["controlnet", "stable-diffusion", "diffusers", "controlnet-course"]


FAMILY = StableDiffusion()
