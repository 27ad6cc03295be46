"""The ControlNet training loop, on accelerate, readable top to bottom (notebook 03).

``train(args)`` is the whole loop; ``args`` are upstream train_controlnet.py's flags (see
:mod:`cnhelpers.cli`). One step:

VAE latents (cached or encoded) -> scale -> noise -> timesteps -> add_noise -> text embeddings ->
ControlNet(noisy latents, t, text, conditioning image) -> frozen UNet with the down/mid residuals ->
target (epsilon, or velocity for v_prediction) -> Min-SNR-weighted MSE -> backward -> optimizer step.

What differs from upstream, and why:

- Min-SNR weighting (``--snr_gamma``), with diffusers' ``compute_snr``, per sample.
- The fast path (``--cache auto``, the default when it fits in memory): the VAE posterior's mean and std
  are computed once and a latent is *sampled* from them every step (upstream samples ``latent_dist``
  every step too, so the training signal is the same); text embeddings are computed once for every
  caption and for the empty prompt; conditioning images are kept as tensors, so a step does no PIL work.
  The cache is encoded in batches of the training batch size, so building it needs no more memory than
  an uncached step.
- On a CPU the conditioning embedding runs in the channels-last memory layout (faster oneDNN convolutions
  at its few channels and full resolution; the same arithmetic).
- Every random draw of a step comes from a generator seeded by (seed, process, step), and the data order
  by (seed, epoch), so resuming from a checkpoint continues exactly where the run was.
- Checkpoints are written under a temporary name and renamed when complete, and pruned only after the
  new one exists: a crash never leaves a half-written ``checkpoint-N``.

An SDXL base (its UNet has ``addition_embed_type="text_time"``; notebook 07) goes through the same loop, with
what train_controlnet_sdxl.py adds: a second text encoder (the text is both encoders' penultimate hidden
states, concatenated), its pooled embedding, and ``add_time_ids`` (original size, crop top-left, target
size), handed to the ControlNet and the UNet as ``added_cond_kwargs``. See :mod:`cnhelpers.sdxl`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# Loss: Min-SNR weighting
# --------------------------------------------------------------------------------------------------


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-γ loss weights (Hang et al., 2023), shape ``(batch,)``.

    ``min(SNR(t), γ) / SNR(t)`` for epsilon prediction, ``min(SNR(t), γ) / (SNR(t) + 1)`` for v-prediction:
    easy, low-noise timesteps (large SNR) stop dominating the loss.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"Min-SNR weighting needs epsilon or v_prediction, not {prediction_type!r}")


def diffusion_target(noise_scheduler, latents, noise, timesteps):
    """What the UNet must predict: the noise (epsilon) or the velocity (v_prediction)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unknown prediction type {prediction_type!r}: use epsilon or v_prediction")


def controlnet_loss(model_pred, target, timesteps=None, noise_scheduler=None, snr_gamma: float | None = None):
    """Mean squared error, per sample then over the batch; Min-SNR-weighted when ``snr_gamma`` is set.

    The per-sample loss has shape ``(batch,)`` before weighting, so ``(batch,)`` weights multiply the right
    axis (upstream's Flax script multiplies a ``(B, C, H, W)`` loss by ``(B,)`` weights instead).
    """
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, snr_gamma)).mean()


# --------------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------------


def load_models(args):
    """Tokenizer, text encoder, VAE, UNet, noise scheduler (all frozen) and the ControlNet to train."""
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from .hub import resolve_pretrained

    base = resolve_pretrained(args.pretrained_model_name_or_path)
    common = dict(revision=args.revision, variant=args.variant)
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_pretrained(args.tokenizer_name) if args.tokenizer_name else base,
        subfolder=None if args.tokenizer_name else "tokenizer", revision=args.revision)
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **common)
    if args.pretrained_vae_model_name_or_path:  # e.g. SDXL's fp16-fix VAE: a whole folder, no subfolder
        vae = AutoencoderKL.from_pretrained(resolve_pretrained(args.pretrained_vae_model_name_or_path))
    else:
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **common)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **common)
    if args.controlnet_model_name_or_path:
        controlnet = ControlNetModel.from_pretrained(resolve_pretrained(args.controlnet_model_name_or_path))
    else:
        controlnet = ControlNetModel.from_unet(unet)
    for frozen in (text_encoder, vae, unet):
        frozen.requires_grad_(False)
        frozen.eval()
    controlnet.train()
    return tokenizer, text_encoder, vae, unet, noise_scheduler, controlnet


def load_raw_dataset(args):
    """The raw rows (a ``datasets.Dataset``) named by ``--dataset_name`` or ``--train_data_dir``.

    ``fusing/fill50k`` (and local folders in its raw layout) go through
    :func:`cnhelpers.data.load_fill50k`, since datasets >= 4 cannot run its loading script.
    """
    from datasets import load_dataset, load_from_disk

    from .data import FILL50K_FILES, load_fill50k
    from .hub import HubUnavailableError, hub_offline, looks_like_hub_id

    if args.train_data_dir is not None:
        return load_dataset(args.train_data_dir, cache_dir=args.cache_dir, split="train")
    name = args.dataset_name
    local = Path(name).expanduser()
    if local.is_dir():
        if all((local / f).is_file() for f in FILL50K_FILES):
            return load_fill50k(local)
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            loaded = load_from_disk(str(local))
            return loaded["train"] if hasattr(loaded, "keys") else loaded
        return load_dataset(str(local), args.dataset_config_name, cache_dir=args.cache_dir, split="train")
    if name.rstrip("/").lower() == "fusing/fill50k":
        return load_fill50k(name)
    if looks_like_hub_id(name) and hub_offline():
        raise HubUnavailableError(
            f"--dataset_name {name!r} is a hub id, but HF_HUB_OFFLINE is set. Use a local folder "
            "(--train_data_dir or --dataset_name PATH), or go online.")
    try:
        return load_dataset(name, args.dataset_config_name, cache_dir=args.cache_dir, split="train")
    except (ConnectionError, OSError) as error:
        raise HubUnavailableError(f"Cannot load --dataset_name {name!r} from the hub ({error}). Use a local "
                                  "folder (--train_data_dir or --dataset_name PATH), or go online.") from error


def column_names(args) -> tuple[str, str, str]:
    """The image, conditioning-image and caption columns: by name, fill50k's names when not given."""
    return (args.image_column or "image", args.conditioning_image_column or "conditioning_image",
            args.caption_column or "text")


class CachedExamples(torch.utils.data.Dataset):
    """Training examples prepared once: VAE posterior mean and std, conditioning image, caption index."""

    def __init__(self, latent_mean, latent_std, conditioning, caption_index):
        self.latent_mean, self.latent_std = latent_mean, latent_std
        self.conditioning, self.caption_index = conditioning, caption_index

    def __len__(self):
        return len(self.caption_index)

    def __getitem__(self, i):
        return {"latent_mean": self.latent_mean[i], "latent_std": self.latent_std[i],
                "conditioning_uint8": self.conditioning[i], "caption_index": self.caption_index[i]}


def estimated_cache_bytes(num_examples: int, resolution: int, num_captions: int, text_shape,
                          latent_channels: int = 4, vae_scale_factor: int = 8) -> int:
    """Memory the cache would take: float32 latent mean+std, uint8 conditioning, float32 text table."""
    side = resolution // vae_scale_factor
    latents = num_examples * 2 * latent_channels * side * side * 4
    conditioning = num_examples * 3 * resolution * resolution
    text = (num_captions + 1) * math.prod(text_shape) * 4
    return latents + conditioning + text


CACHE_AUTO_LIMIT_BYTES = 4 * 2**30


@torch.no_grad()
def build_cache(train_dataset, captions, tokenizer, text_encoder, vae, device, batch_size=4,
                disable_progress=False, encode_text=None):
    """Encode every example once: VAE posterior (mean, std), uint8 conditioning, text embeddings.

    ``train`` passes the training batch size as ``batch_size``: the encoders then never see a larger batch
    than an uncached step would, so caching costs no more memory than the cache itself.

    Returns ``(CachedExamples, text_table)``, where ``text_table[i]`` is the embedding of caption ``i``
    and the last row that of the empty prompt. ``encode_text(prompts)``, if given, replaces the text
    encoder and returns a tuple of tensors (SDXL: text and pooled text); ``text_table`` is then a tuple too.
    """
    from tqdm.auto import tqdm

    from .data import collate_fn, tokenize_prompts

    unique = sorted(set(captions))
    index_of = {caption: i for i, caption in enumerate(unique)}
    text_table = []
    for start in range(0, len(unique) + 1, batch_size):
        chunk = (unique + [""])[start:start + batch_size]
        if encode_text is not None:
            text_table.append(tuple(part.float().cpu() for part in encode_text(chunk)))
        else:
            ids = tokenize_prompts(tokenizer, chunk).to(device)
            text_table.append(text_encoder(ids)[0].float().cpu())
    text_table = tuple(map(torch.cat, zip(*text_table))) if encode_text is not None else torch.cat(text_table)

    loader = torch.utils.data.DataLoader(train_dataset, batch_size=batch_size, collate_fn=collate_fn)
    means = stds = conditioning = None
    start = 0
    for batch in tqdm(loader, desc="Caching latents", disable=disable_progress):
        posterior = vae.encode(batch["pixel_values"].to(device, vae.dtype)).latent_dist
        if means is None:  # allocated once, filled batch by batch: no second copy from concatenating
            means = torch.empty((len(train_dataset), *posterior.mean.shape[1:]))
            stds = torch.empty_like(means)
            conditioning = torch.empty((len(train_dataset), *batch["conditioning_pixel_values"].shape[1:]),
                                       dtype=torch.uint8)
        end = start + len(posterior.mean)
        means[start:end] = posterior.mean
        stds[start:end] = posterior.std
        conditioning[start:end] = (batch["conditioning_pixel_values"] * 255).round()
        start = end
    examples = CachedExamples(means, stds, conditioning, torch.tensor([index_of[c] for c in captions]))
    return examples, text_table


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles with a permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, num_examples: int, seed: int):
        self.num_examples, self.seed, self.epoch = num_examples, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.num_examples

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples).tolist())


def step_generator(seed: int, process_index: int, micro_step: int, device) -> torch.Generator:
    """The random source of one micro-step: a function of (seed, process, step) only."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(np.random.SeedSequence([seed, process_index, micro_step]).generate_state(1)[0]))
    return generator


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir) -> list[Path]:
    """Complete ``checkpoint-N`` folders of ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
             and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def find_checkpoint(output_dir, resume_from_checkpoint: str) -> Path | None:
    """``latest`` -> the newest checkpoint (None if there is none); otherwise that checkpoint's path."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / path.name
    if not path.is_dir():
        available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist in "
                                f"{output_dir} (checkpoints there: {available}; or pass 'latest')")
    return path


def save_checkpoint(accelerator, output_dir, global_step: int, total_limit: int | None) -> Path:
    """``accelerator.save_state`` into ``checkpoint-N``, atomically, then prune to ``total_limit``.

    Called on every process (each saves its RNG state; DeepSpeed needs all of them). The state is written
    to ``checkpoint-N.partial`` and renamed when complete; older checkpoints go only after that.
    """
    final = Path(output_dir) / f"checkpoint-{global_step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        if partial.exists():  # left by a crash: never resume from it
            shutil.rmtree(partial)
        partial.mkdir(parents=True)  # before any process writes its RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def match_state_layout(optimizer):
    """Give every optimizer state tensor the memory layout of its parameter, after loading a checkpoint.

    Fused AdamW on a CPU walks a parameter and its state as flat memory: a channels-last parameter with
    a state saved in the default layout (say, by a GPU run) would pair the wrong elements, silently.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[name] = torch.empty_like(param).copy_(value)


def register_controlnet_hooks(accelerator):
    """Make ``save_state``/``load_state`` store the ControlNet in diffusers format (``controlnet/``)."""
    from diffusers import ControlNetModel

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, "controlnet"))
        weights.clear()  # accelerate must not save the same weights again

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop())
            loaded = ControlNetModel.from_pretrained(input_dir, subfolder="controlnet")
            model.register_to_config(**loaded.config)
            model.load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# --------------------------------------------------------------------------------------------------
# Validation and outputs
# --------------------------------------------------------------------------------------------------


def validation_pairs(args) -> list[tuple[str, str]]:
    """(prompt, conditioning image path) pairs: one image for all prompts, one prompt for all images, or 1:1."""
    prompts, images = args.validation_prompt or [], args.validation_image or []
    if len(images) == 1:
        images = images * len(prompts)
    elif len(prompts) == 1:
        prompts = prompts * len(images)
    return list(zip(prompts, images))


@torch.no_grad()
def log_validation(accelerator, args, vae, text_encoder, tokenizer, unet, controlnet, noise_scheduler,
                   weight_dtype, step: int, text_encoder_2=None, tokenizer_2=None):
    """Generate ``num_validation_images`` per (prompt, image) with UniPC; log them and save a grid PNG.

    With ``text_encoder_2`` and ``tokenizer_2`` (an SDXL base) the pipeline is StableDiffusionXLControlNetPipeline.
    """
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline, \
        UniPCMultistepScheduler
    from PIL import Image

    from .plots import image_grid

    controlnet = accelerator.unwrap_model(controlnet)
    encoders_device = vae.device
    text_encoders = [e for e in (text_encoder, text_encoder_2) if e is not None]
    vae.to(accelerator.device)  # offloaded while training from the cache
    for encoder in text_encoders:
        encoder.to(accelerator.device)
    was_training = controlnet.training
    controlnet.eval()
    scheduler = UniPCMultistepScheduler.from_config(noise_scheduler.config)
    if text_encoder_2 is not None:
        pipeline = StableDiffusionXLControlNetPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, controlnet=controlnet, scheduler=scheduler, add_watermarker=False)
    else:
        pipeline = StableDiffusionControlNetPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    if args.enable_xformers_memory_efficient_attention:
        pipeline.enable_xformers_memory_efficient_attention()
    generator = None if args.seed is None else torch.Generator(accelerator.device).manual_seed(args.seed)
    rows = []
    for prompt, image_path in validation_pairs(args):
        condition = Image.open(image_path).convert("RGB").resize((args.resolution, args.resolution))
        with torch.autocast(accelerator.device.type, dtype=weight_dtype,
                            enabled=weight_dtype != torch.float32):
            n = args.num_validation_images  # image by name: SDXL's pipeline takes prompt_2 second
            images = pipeline([prompt] * n, image=[condition] * n, height=args.resolution, width=args.resolution,
                              generator=generator, num_inference_steps=args.num_validation_inference_steps,
                              guidance_scale=args.validation_guidance_scale).images
        rows.append({"prompt": prompt, "condition": condition, "images": images})
    controlnet.train(was_training)
    vae.to(encoders_device)
    for encoder in text_encoders:
        encoder.to(encoders_device)

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for row in rows:
                stacked = np.stack([np.asarray(im) for im in [row["condition"], *row["images"]]])
                tracker.writer.add_images(row["prompt"], stacked, step, dataformats="NHWC")
    grid = image_grid([[row["condition"], *row["images"]] for row in rows])
    path = Path(args.output_dir) / "validation" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return {"step": step, "grid": str(path), "prompts": [row["prompt"] for row in rows]}


MODEL_CARD = """\
---
base_model: {base}
library_name: diffusers
tags: [controlnet, stable-diffusion, diffusers, controlnet-course]
---

# ControlNet trained with the ControlNet course

Trained with `python -m cnhelpers.train` (same flags as diffusers' train_controlnet.py) on `{data}`.

| setting | value |
| --- | --- |
| base model | `{base}` |
| steps | {steps} |
| batch size (per device x processes x accumulation) | {batch} |
| learning rate | {lr} |
| resolution | {resolution} |
| Min-SNR γ | {snr_gamma} |
| mixed precision | {mixed_precision} |
| seed | {seed} |

{validation}
```python
from diffusers import ControlNetModel, {pipeline}
controlnet = ControlNetModel.from_pretrained("{output_dir}")
pipe = {pipeline}.from_pretrained("{base}", controlnet=controlnet)
```
"""


def save_final_controlnet(controlnet, args, global_step: int, total_batch_size: int, validation: dict | None):
    """Write the trained ControlNet (diffusers format) and a model card into ``output_dir``.

    Files go to a temporary folder first and are moved into place one by one (each move is atomic).
    """
    import tempfile

    output_dir = Path(args.output_dir)
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    controlnet.save_pretrained(staging)
    grid = ""
    if validation:
        grid = f"Validation at step {validation['step']}:\n\n![validation]({Path(validation['grid']).relative_to(output_dir)})\n"
    (staging / "README.md").write_text(MODEL_CARD.format(
        base=args.pretrained_model_name_or_path, data=args.dataset_name or args.train_data_dir,
        steps=global_step, batch=total_batch_size, lr=args.learning_rate, resolution=args.resolution,
        snr_gamma=args.snr_gamma, mixed_precision=args.mixed_precision or "no", seed=args.seed,
        validation=grid, output_dir=output_dir,
        pipeline="StableDiffusionXLControlNetPipeline" if controlnet.config.addition_embed_type == "text_time"
        else "StableDiffusionControlNetPipeline"))
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a run returns: where it saved, how far it got, and its logged history."""

    output_dir: str
    global_step: int
    history: list[dict] = field(default_factory=list)
    validations: list[dict] = field(default_factory=list)
    cached: bool = False
    is_main_process: bool = True


def train(args, callback=None) -> TrainResult:
    """Train a ControlNet with the flags in ``args`` (from :func:`cnhelpers.cli.parse_args`).

    ``callback(logs)``, if given, is called on the main process after every optimizer step with
    ``{"step", "loss", "lr", "epoch"}`` (notebook 03 draws a live loss plot with it).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .cli import check_push_to_hub
    from .data import make_train_dataset
    from .memory import check_optimizer_in_backward, configure_attention, make_optimizer
    from .sdxl import added_conditions, encode_prompt_sdxl, encode_token_ids_sdxl, is_sdxl_unet, \
        load_second_text_encoder, make_add_time_ids

    output_dir = Path(args.output_dir)
    # Forget the precision settings of an earlier run in this process (a notebook calls train() often);
    # the process group of a multi-process launch is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to in (None, "none") else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1:
        raise ValueError(
            f"Started as one of {os.environ['WORLD_SIZE']} processes, but accelerate found no GPU to share them "
            "on, so each would train alone into the same output_dir. On a CPU, set ACCELERATE_USE_CPU=1: "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m cnhelpers.train ...`.")
    if args.push_to_hub:
        check_push_to_hub(args)
    check_optimizer_in_backward(args, accelerator)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().generate_state(1)[0] % 2**31)
    torch.manual_seed(seed)  # model initialisation (none here: from_unet copies) and library internals
    output_dir.mkdir(parents=True, exist_ok=True)

    # 1. Models: frozen base parts, trainable ControlNet.
    tokenizer, text_encoder, vae, unet, noise_scheduler, controlnet = load_models(args)
    # SDXL: a second tokenizer and text encoder (CLIPTextModelWithProjection, for the pooled embedding).
    sdxl = is_sdxl_unet(unet)
    tokenizer_2, text_encoder_2 = load_second_text_encoder(args) if sdxl else (None, None)
    text_encoders = [text_encoder, text_encoder_2] if sdxl else [text_encoder]
    register_controlnet_hooks(accelerator)
    configure_attention(args, unet, controlnet)
    # On a CPU, oneDNN convolves faster in the channels-last layout at the conditioning embedding's few
    # channels and full resolution (about a third of a step at 64 px); the same arithmetic, reordered.
    conditioning_layout = torch.channels_last if accelerator.device.type == "cpu" else torch.contiguous_format
    controlnet.controlnet_cond_embedding.to(memory_format=conditioning_layout)
    if args.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        # The loss reaches the ControlNet *through* the frozen UNet, whose activations are kept for the
        # backward pass too: checkpoint them as well (same gradients, recomputed instead of stored).
        unet.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.unwrap_model(controlnet).dtype != torch.float32:
        raise ValueError(f"The ControlNet was loaded as {controlnet.dtype}: it must be float32 even with mixed "
                         "precision (accelerate keeps fp32 master weights and autocasts the forward pass).")
    # The frozen models only run forward: half precision for them saves memory and time.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in (vae, unet, *text_encoders):
        frozen.to(dtype=weight_dtype)  # cast first: a float32 copy never reaches the GPU
        frozen.to(accelerator.device)
    if sdxl and weight_dtype == torch.float16 and not args.pretrained_vae_model_name_or_path:
        # SDXL's own VAE overflows in fp16 (NaN latents, black images): keep it in float32, as upstream
        # does, unless a VAE fixed for fp16 (--pretrained_vae_model_name_or_path) is given.
        vae.to(dtype=torch.float32)

    scaling_factor = vae.config.scaling_factor

    # 2. Data: rows -> transformed examples -> (optionally) a cache of latents and text embeddings.
    image_column, conditioning_column, caption_column = column_names(args)
    raw = load_raw_dataset(args)
    use_cache = _use_cache(args, raw, caption_column, text_encoder, text_width=unet.config.cross_attention_dim)
    train_dataset = make_train_dataset(
        raw, tokenizer, resolution=args.resolution, image_column=image_column,
        conditioning_image_column=conditioning_column, caption_column=caption_column,
        # with the cache, prompts are dropped per step instead (same share, same effect)
        proportion_empty_prompts=0.0 if use_cache else args.proportion_empty_prompts,
        max_train_samples=args.max_train_samples, seed=seed, tokenizer_2=tokenizer_2,
        # upstream's defaults: lanczos in train_controlnet_sdxl.py, bilinear in train_controlnet.py
        interpolation=args.image_interpolation_mode or ("lanczos" if sdxl else "bilinear"))
    text_table = pooled_table = None
    if use_cache:
        captions = train_dataset.with_format(None)[caption_column]
        train_dataset, text_table = build_cache(
            train_dataset, captions, tokenizer, text_encoder, vae, accelerator.device,
            batch_size=args.train_batch_size,
            disable_progress=not accelerator.is_local_main_process,
            encode_text=(lambda prompts: encode_prompt_sdxl(prompts, [tokenizer, tokenizer_2], text_encoders))
            if sdxl else None)
        if sdxl:
            text_table, pooled_table = (t.to(accelerator.device, weight_dtype) for t in text_table)
        else:
            text_table = text_table.to(accelerator.device, weight_dtype)
        collate = None  # default_collate stacks the cached tensors
        # The loop no longer needs the VAE encoder nor the text encoder: free their device memory
        # (validation brings them back for a moment), or all their memory when nothing validates.
        vae.to("cpu")
        for encoder in text_encoders:
            encoder.to("cpu")
        if not args.validation_prompt:  # (the loop variables hold the last encoder too)
            vae = text_encoder = text_encoder_2 = text_encoders = encoder = frozen = None
    else:
        from .data import collate_fn as collate
    sampler = EpochSampler(len(train_dataset), seed)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.train_batch_size, sampler=sampler, collate_fn=collate,
        num_workers=args.dataloader_num_workers)

    # 3. Optimizer and learning-rate schedule.
    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer = make_optimizer(args, controlnet.parameters())
    updates_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes, num_cycles=args.lr_num_cycles,
        power=args.lr_power)
    controlnet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        controlnet, optimizer, train_dataloader, lr_scheduler)
    if accelerator.is_main_process and args.report_to not in (None, "none"):
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.tracker_project_name, config=config)

    # 4. Resume: weights, optimizer and schedule from the checkpoint; position from its step number.
    global_step = 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint)
        if checkpoint is None:
            accelerator.print(f"No checkpoint in {output_dir}: starting a new run.")
        else:
            accelerator.print(f"Resuming from {checkpoint}")
            accelerator.load_state(str(checkpoint))
            match_state_layout(optimizer)
            global_step = int(checkpoint.name.split("-")[1])
    first_epoch = global_step // updates_per_epoch
    batches_to_skip = (global_step - first_epoch * updates_per_epoch) * args.gradient_accumulation_steps

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    result = TrainResult(str(output_dir), global_step, cached=text_table is not None,
                         is_main_process=accelerator.is_main_process)
    progress = tqdm(total=max_train_steps, initial=global_step, desc="Steps", mininterval=2,
                    disable=not accelerator.is_local_main_process)
    micro_step = global_step * args.gradient_accumulation_steps
    if sdxl:
        # Size and crop conditioning, the same for every example: each image is resized and center-cropped
        # to --resolution, so original size = target size; the crop corner is --crops_coords_top_left_h/w
        # (upstream's SDXL script does the same).
        size = (args.resolution, args.resolution)
        add_time_ids = make_add_time_ids(size, (args.crops_coords_top_left_h, args.crops_coords_top_left_w), size,
                                         dtype=weight_dtype, device=accelerator.device)

    # 5. The loop.
    for epoch in range(first_epoch, num_epochs):
        train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        if epoch == first_epoch and batches_to_skip:
            batches = accelerator.skip_first_batches(train_dataloader, batches_to_skip)
        for batch in batches:
            generator = step_generator(seed, accelerator.process_index, micro_step, accelerator.device)
            micro_step += 1
            with accelerator.accumulate(controlnet):
                # Latents of the target images: sampled from the (cached) VAE posterior, then scaled.
                if "latent_mean" in batch:
                    eps = torch.randn(batch["latent_mean"].shape, generator=generator, device=accelerator.device)
                    latents = batch["latent_mean"] + batch["latent_std"] * eps
                else:
                    posterior = vae.encode(batch["pixel_values"].to(vae.dtype)).latent_dist
                    latents = posterior.sample(generator=generator)
                latents = (latents * scaling_factor).to(weight_dtype)

                # Forward diffusion: noise each latent to a random timestep.
                noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                          generator=generator, device=latents.device).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)

                # Text conditioning; a share of prompts is dropped so guidance works at inference.
                if text_table is not None:
                    caption_index = batch["caption_index"].clone()
                    drop = torch.rand(caption_index.shape, generator=generator, device=caption_index.device)
                    caption_index[drop < args.proportion_empty_prompts] = len(text_table) - 1
                    encoder_hidden_states = text_table[caption_index]
                    pooled_text = pooled_table[caption_index] if sdxl else None
                    controlnet_image = batch["conditioning_uint8"].to(weight_dtype) / 255
                else:
                    if sdxl:
                        encoder_hidden_states, pooled_text = encode_token_ids_sdxl(
                            [batch["input_ids"], batch["input_ids_2"]], text_encoders)
                    else:
                        encoder_hidden_states = text_encoder(batch["input_ids"])[0]
                    controlnet_image = batch["conditioning_pixel_values"].to(weight_dtype)
                controlnet_image = controlnet_image.contiguous(memory_format=conditioning_layout)
                # SDXL's UNet, and so its ControlNet, also read the pooled text and the size/crop ids.
                added_cond_kwargs = added_conditions(
                    pooled_text, add_time_ids.repeat(latents.shape[0], 1)) if sdxl else None

                # The ControlNet reads the condition; its residuals are added inside the frozen UNet.
                down_block_res_samples, mid_block_res_sample = controlnet(
                    noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states,
                    controlnet_cond=controlnet_image, added_cond_kwargs=added_cond_kwargs, return_dict=False)
                model_pred = unet(
                    noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states,
                    added_cond_kwargs=added_cond_kwargs,
                    down_block_additional_residuals=[s.to(weight_dtype) for s in down_block_res_samples],
                    mid_block_additional_residual=mid_block_res_sample.to(weight_dtype)).sample

                target = diffusion_target(noise_scheduler, latents, noise, timesteps)
                loss = controlnet_loss(model_pred, target, timesteps, noise_scheduler, args.snr_gamma)

                accelerator.backward(loss)  # --optimizer_in_backward: updates the weights in here
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(controlnet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=args.set_grads_to_none)

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            logs = {"step": global_step, "loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0],
                    "epoch": epoch}
            result.history.append(logs)
            progress.update(1)
            # refresh=False: shown at the bar's next redraw. Redrawing every step would flood a notebook's
            # output channel (thousands of messages in a few minutes) and can stall a headless runner.
            progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)
            accelerator.log({"loss": logs["loss"], "lr": logs["lr"]}, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if accelerator.is_main_process:
                if args.validation_prompt and global_step % args.validation_steps == 0:
                    result.validations.append(log_validation(
                        accelerator, args, vae, text_encoder, tokenizer, unet, controlnet, noise_scheduler,
                        weight_dtype, global_step, text_encoder_2, tokenizer_2))
                if callback is not None:
                    callback(logs)
            if global_step >= max_train_steps:
                break
        if global_step >= max_train_steps:
            break
    progress.close()

    # 6. Save the trained ControlNet in diffusers format, with a model card.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.validation_prompt and (not result.validations or result.validations[-1]["step"] != global_step):
            result.validations.append(log_validation(
                accelerator, args, vae, text_encoder, tokenizer, unet, controlnet, noise_scheduler,
                weight_dtype, global_step, text_encoder_2, tokenizer_2))
        save_final_controlnet(accelerator.unwrap_model(controlnet), args, global_step, total_batch_size,
                              result.validations[-1] if result.validations else None)
        with open(output_dir / "train_log.jsonl", "w") as log:
            log.writelines(json.dumps(entry) + "\n" for entry in result.history)
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token).repo_id
            upload_folder(repo_id=repo_id, folder_path=output_dir, commit_message="End of training",
                          ignore_patterns=["step_*", "epoch_*", "checkpoint-*"], token=args.hub_token)
    accelerator.end_training()
    result.global_step = global_step
    return result


def _use_cache(args, raw, caption_column, text_encoder, text_width: int | None = None) -> bool:
    """Whether to take the fast path: ``--cache always``, or ``auto`` when the cache fits in memory."""
    if args.cache == "never":
        return False
    captions = raw[caption_column] if caption_column in raw.column_names else []
    strings = all(isinstance(c, str) for c in captions)
    if not strings:
        if args.cache == "always":
            raise ValueError("--cache always needs one string caption per example; this data set has lists "
                             "of captions. Use --cache never (captions are then drawn per step).")
        return False
    if args.cache == "always":
        return True
    n = min(len(raw), args.max_train_samples or len(raw))
    shape = (77, text_width or text_encoder.config.hidden_size)
    return estimated_cache_bytes(n, args.resolution, len(set(captions)), shape) <= CACHE_AUTO_LIMIT_BYTES


def course_training_args(profile, base, output_dir, **overrides):
    """The flags of notebook 03's run for ``profile``: its batch size, learning rate, steps and guidance scale
    (for validation images), Min-SNR γ=5, 10 % empty prompts. ``overrides`` replace any of them (e.g. validation or checkpoint flags)."""
    from .cli import training_args
    from .data import ensure_fill_dataset

    flags = dict(
        pretrained_model_name_or_path=base, output_dir=output_dir, resolution=profile.resolution,
        train_batch_size=profile.train_batch_size, learning_rate=profile.learning_rate, lr_warmup_steps=0,
        max_train_steps=profile.max_train_steps, snr_gamma=5.0, proportion_empty_prompts=0.1, seed=0,
        validation_guidance_scale=profile.guidance_scale, report_to="none")
    if profile.dataset_name is None:
        flags["train_data_dir"] = ensure_fill_dataset(profile.num_generated_examples, profile.resolution)
    else:
        flags["dataset_name"] = profile.dataset_name
    return training_args(**(flags | overrides))
