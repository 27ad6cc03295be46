"""Pretrain the tiny base from scratch on generated fill data, so the CPU course shows real control.

The tiny profile's base (:func:`cnhelpers.course.tiny_bases.ensure_tiny_base`) is a Stable-Diffusion-layout model.
With random weights every picture is noise; this recipe trains its three learned parts in stages,
each of which saves checkpoints atomically and resumes where it stopped:

1. ``vae``: the 8x AutoencoderKL learns to reconstruct fill images (L1 + a tiny KL term, as SD's VAE).
   Most steps see random 32x32 crops (4x cheaper, the VAE is convolutional), the last ones whole images.
   Then its ``scaling_factor`` is set so that the scaled latents have unit variance, as SD's 0.18215.
2. ``latents``: the trained encoder's posterior (mean, std) of every training image, computed once.
3. ``unet``: the UNet and the CLIP text encoder learn together, the text encoder from scratch: the
   diffusion loss of SD (epsilon prediction, SD's noise schedule) with Min-SNR-γ weighting, 10 % empty
   prompts (for classifier-free guidance), and an exponential moving average of the weights (EMA).
4. ``assemble``: the trained parts, the tokenizer and SD's scheduler as one diffusers folder with a model
   card that records the recipe, seeds, steps and the evaluation's figures.

    python -m cnhelpers.course.pretrain_base                  # every stage, resuming what is done
    python -m cnhelpers.course.pretrain_base --stage vae      # one stage
    python -m cnhelpers.course.pretrain_base --stage unet --unet_init cnhelpers/assets/tiny-sd   # fine-tune a base
    python -m cnhelpers.course.pretrain_base evaluate         # the figures of the model card (see evaluate_base)

The data never includes the held-out seed that the evaluations use (:data:`HELD_OUT_SEED`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..families import detect_family, family_named
from ..families.family import Models
from ..families.sd import FAMILY as SD
from ..inference import image_generators, load_controlnet_pipeline
from ..paths import build_dir, staged_folder
from ..training import train
from .evaluation import breakdown_rows, default_resolution, held_out_scores
from .fill import BORDER_CUT_SHARE, FILL_CONDITIONS, PALETTE, RADIUS_RANGE, draw_circle, fill_condition, sample_circle
from .held_out import HELD_OUT_SEED, held_out_circles, held_out_examples
from .metrics import circle_mask, colour_accuracy, mask_iou
from .profiles import get_profile
from .recipes import course_training_args
from . import pretrain_families
from .pretrain_families import (CONDITION_THROUGH_VAE, FAMILY_NAMES, T5_LENGTH, build_init, family_options,
                                pipeline_options)
from .tiny_bases import PRETRAINED_TINY_BASE, build_tiny_base, ensure_tiny_base, is_complete_base

#: Seed of the pretraining data (the ControlNet trains on seed 0; evaluations use HELD_OUT_SEED).
PRETRAIN_SEED = 2
COLOUR_NAMES = list(PALETTE)


@dataclass
class PretrainConfig:
    """Every knob of the recipe (a plain field each, as a command-line flag of the same name)."""

    family: str = "sd"  # sd (the VAE, latents, unet and assemble stages), or sd3, flux, sdxl (pretrain_families)
    resolution: int = 64
    seed: int = 0
    # stage 1: VAE
    vae_steps: int = 4800
    vae_batch_size: int = 16
    vae_learning_rate: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_crop: int = 32  # side of the random crops; 0 trains on whole images throughout
    vae_whole_image_fraction: float = 0.2  # the last steps see whole images
    # stage 2: latents
    num_latent_examples: int = 20_000
    # stage 3: UNet + text encoder
    unet_steps: int = 4000
    unet_batch_size: int = 64
    unet_learning_rate: float = 6e-4
    text_encoder_learning_rate: float = 1e-3
    snr_gamma: float = 5.0
    proportion_empty_prompts: float = 0.1
    ema_decay: float = 0.999
    # family stage condition_vae (SD3, Flux): the shared VAE learns to encode the conditioning pictures too
    condition_vae_steps: int = 800  # 0: keep the tiny SD base's VAE as it is
    condition_vae_learning_rate: float = 5e-4
    condition_vae_pin_weight: float = 10.0  # how hard the training images' latents are held where they were
    unet_init: str = ""  # a base folder whose UNet and text encoder the stage fine-tunes; "": random init
    # all stages
    warmup_steps: int = 100
    checkpoint_every: int = 250
    log_every: int = 50
    eval_examples: int = 64  # held-out images scored at each VAE checkpoint
    threads: int = 0  # 0: leave torch's default
    notes: str = ""  # how the run went, for a family base's model card (e.g. a stage resumed with more steps)


def work_dir() -> Path:
    """Where the stages keep checkpoints and results: ``build/pretrain``."""
    return build_dir() / "pretrain"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def fill_batch(indices, resolution: int, seed: int = PRETRAIN_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] of shape (B, 3, R, R) and (circle, background) colour indices of shape (B, 2)."""
    images, colours = [], []
    for index in indices:
        circle = sample_circle(seed, int(index))
        image, _ = draw_circle(circle, resolution)
        images.append(image)
        colours.append((COLOUR_NAMES.index(circle.colour), COLOUR_NAMES.index(circle.background)))
    return signed_pixels(images), torch.tensor(colours)


def condition_batch(indices, resolution: int, seed: int = PRETRAIN_SEED) -> torch.Tensor:
    """The conditioning pictures of the same circles as :func:`fill_batch`, in [-1, 1], each of the next condition
    type of :data:`cnhelpers.course.fill.FILL_CONDITIONS` in turn (outline, mask, depth, scribble, ...)."""
    return signed_pixels([fill_condition(sample_circle(seed, int(index)), resolution,
                                         FILL_CONDITIONS[int(index) % len(FILL_CONDITIONS)], seed=seed, index=int(index))
                          for index in indices])


def signed_pixels(pictures) -> torch.Tensor:
    """RGB pictures as one (B, 3, R, R) float tensor in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2).float() / 127.5 - 1


def balanced_l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 in which a picture's lit pixels weigh as much, together, as its black ones: a thin outline is a few per
    cent of its pixels, and plain L1 is lowest for a black picture that drops it."""
    lit = (target > -0.9).any(1, keepdim=True).float()
    share = lit.mean((2, 3), keepdim=True).clamp(1e-3, 1 - 1e-3)
    weight = lit * 0.5 / share + (1 - lit) * 0.5 / (1 - share)
    return ((reconstruction - target).abs() * weight).mean()


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator, grid: int = 8) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per image, its corner on a ``grid``-pixel lattice (the VAE's stride)."""
    if not size or size >= images.shape[-1]:
        return images
    positions = (images.shape[-1] - size) // grid + 1
    corners = torch.randint(0, positions, (len(images), 2), generator=generator) * grid
    return torch.stack([image[:, y:y + size, x:x + size] for image, (y, x) in zip(images, corners.tolist())])


def caption(colours) -> str:
    """The fill caption of a (circle, background) pair of colour indices."""
    return f"{COLOUR_NAMES[int(colours[0])]} circle with {COLOUR_NAMES[int(colours[1])]} background"


# --------------------------------------------------------------------------------------------------
# Checkpoints: written under a temporary name and renamed, so a crash never leaves a broken one
# --------------------------------------------------------------------------------------------------


def save_state(path: Path, state: dict) -> None:
    """Save ``state`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict | None:
    """The state saved at ``path``, or None when there is none yet."""
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def restore(state: dict | None, **objects) -> int:
    """Load each object's ``state_dict`` from ``state`` under its keyword; return the step reached (0: none)."""
    if state is None:
        return 0
    for key, obj in objects.items():
        obj.load_state_dict(state[key])
    return state["step"]


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Backward, the gradient clipped to norm 1, the optimizer's and the schedule's step, the gradients freed."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _progress(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, mininterval=5, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# Stage 1: the VAE
# --------------------------------------------------------------------------------------------------


def init_base(config: PretrainConfig) -> Path:
    """The randomly initialised tiny base the stages start from (``build/pretrain/init``)."""

    path = work_dir() / "init"
    if not is_complete_base(path):
        build_tiny_base(path, seed=config.seed)
    return path


@torch.no_grad()
def vae_reconstruction_scores(vae, n: int = 64, resolution: int = 64) -> dict[str, float]:
    """How well ``vae`` reconstructs held-out fill images: mean absolute error (0..255) and circle IoU."""

    indices = range(n)
    pixels, colours = fill_batch(indices, resolution, seed=HELD_OUT_SEED)
    reconstruction = vae.decode(vae.encode(pixels).latent_dist.mean).sample.clamp(-1, 1)
    to_uint8 = lambda x: ((x + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()  # noqa: E731
    originals, rebuilt = to_uint8(pixels), to_uint8(reconstruction)
    ious = []
    for original, image, pair in zip(originals, rebuilt, colours.tolist()):
        circle_rgb, background_rgb = PALETTE[COLOUR_NAMES[pair[0]]], PALETTE[COLOUR_NAMES[pair[1]]]
        ious.append(mask_iou(circle_mask(image, circle_rgb, background_rgb),
                             circle_mask(original, circle_rgb, background_rgb)))
    return {"mean_abs_error": float(np.abs(originals - rebuilt).mean()), "iou": float(np.mean(ious))}


def train_vae(config: PretrainConfig) -> Path:
    """Stage 1: train the VAE; returns the folder of the trained VAE (``build/pretrain/vae``)."""
    from diffusers import AutoencoderKL

    final = work_dir() / "vae"
    if (final / "config.json").is_file():
        return final
    vae = AutoencoderKL.from_pretrained(init_base(config), subfolder="vae")
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.vae_steps, config.warmup_steps))
    checkpoint = work_dir() / "vae-checkpoint.pt"
    step = restore(load_state(checkpoint), model=vae, optimizer=optimizer, scheduler=scheduler)
    whole_from = int(config.vae_steps * (1 - config.vae_whole_image_fraction))
    vae.train()
    bar = _progress(config.vae_steps, step, "VAE")
    while step < config.vae_steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        indices = range(step * config.vae_batch_size, (step + 1) * config.vae_batch_size)
        pixels, _ = fill_batch(indices, config.resolution)
        if step < whole_from:
            pixels = random_crops(pixels, config.vae_crop, generator)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        reconstruction_loss = F.l1_loss(reconstruction, pixels)
        loss = reconstruction_loss + config.vae_kl_weight * posterior.kl().mean()
        optimizer_step(loss, vae, optimizer, scheduler)
        step += 1
        bar.update(1)
        if step % config.log_every == 0:
            bar.set_postfix(l1=f"{reconstruction_loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.vae_steps:
            vae.eval()
            scores = vae_reconstruction_scores(vae, n=config.eval_examples, resolution=config.resolution)
            vae.train()
            bar.write(f"VAE step {step}: held-out error {scores['mean_abs_error']:.2f}/255, "
                      f"circle IoU {scores['iou']:.3f}")
            save_state(checkpoint, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "step": step, "scores": scores})
    bar.close()
    vae.eval()
    n = min(512, config.num_latent_examples)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, config.resolution, n=n))
    with staged_folder(final) as tmp:
        vae.save_pretrained(tmp)
        (tmp / "scores.json").write_text(json.dumps(vae_reconstruction_scores(
            vae, n=config.eval_examples, resolution=config.resolution)))
    return final


@torch.no_grad()
def latent_scaling_factor(vae, resolution: int, n: int = 512) -> float:
    """``1 / std`` of the VAE's latents on training images: SD's ``scaling_factor`` (0.18215 for SD 1.5)."""
    pixels, _ = fill_batch(range(n), resolution)
    latents = torch.cat([vae.encode(chunk).latent_dist.sample() for chunk in pixels.split(64)])
    return float(1.0 / latents.std())


# --------------------------------------------------------------------------------------------------
# Stage 2: latents
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_latents(config: PretrainConfig, vae_folder: Path | None = None, path: Path | None = None) -> Path:
    """Stage 2: the VAE posterior (mean, std) and colour indices of the training images (a .pt file). The VAE is
    stage 1's unless ``vae_folder`` names another (the families' stages encode with the tiny SD base's)."""
    from diffusers import AutoencoderKL

    path = path or work_dir() / "latents.pt"
    if path.is_file():
        return path
    vae = AutoencoderKL.from_pretrained(vae_folder or work_dir() / "vae").eval()
    means, stds, colours = [], [], []
    chunk = 64
    bar = _progress(config.num_latent_examples, 0, "latents")
    for start in range(0, config.num_latent_examples, chunk):
        pixels, pairs = fill_batch(range(start, min(start + chunk, config.num_latent_examples)), config.resolution)
        posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
        colours.append(pairs)
        bar.update(len(pairs))
    bar.close()
    save_state(path, {"mean": torch.cat(means), "std": torch.cat(stds), "colours": torch.cat(colours),
                      "scaling_factor": vae.config.scaling_factor})
    return path


# --------------------------------------------------------------------------------------------------
# Stage 3: the UNet and the text encoder
# --------------------------------------------------------------------------------------------------


def caption_texts() -> list[str]:
    """Every caption, row ``16 * circle + background``, and the empty prompt in the last row."""
    return [caption((c, b)) for c in range(len(COLOUR_NAMES)) for b in range(len(COLOUR_NAMES))] + [""]


def caption_token_table(tokenizer) -> torch.Tensor:
    """Token ids of every caption (:func:`caption_texts`), padded to the tokenizer's length."""
    return tokenizer(caption_texts(), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def unet_start(config: PretrainConfig) -> Path:
    """The base whose UNet and text encoder the UNet stage starts from: ``unet_init`` (fine-tuning a trained base
    on the current data), else the random init. A ``unet_init`` that is not a complete base is refused."""
    if not config.unet_init:
        return init_base(config)
    start = Path(config.unet_init).expanduser()
    if not is_complete_base(start):
        raise ValueError(f"--unet_init {start} is not a complete base folder (model_index.json, unet/, text_encoder/ "
                         "...): name a base such as cnhelpers/assets/tiny-sd, or leave it out to start from scratch")
    return start


def train_unet(config: PretrainConfig) -> Path:
    """Stage 3: train the UNet and the text encoder on the cached latents; returns ``build/pretrain/unet``."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    final = work_dir() / "unet"
    if (final / "unet" / "config.json").is_file():
        return final
    init = init_base(config)
    cache = load_state(encode_latents(config))
    start = unet_start(config)
    tokenizer = CLIPTokenizer.from_pretrained(init, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(start, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(start, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(init, subfolder="scheduler")
    models = Models(SD, {"tokenizer": tokenizer}, {"text_encoder": text_encoder}, None, unet, noise_scheduler, None)
    tokens = caption_token_table(tokenizer)
    train_denoiser(config, models, cache, lambda rows: (text_encoder(tokens[rows])[0],),
                   {"unet": unet, "text_encoder": text_encoder},
                   [{"params": list(unet.parameters()), "lr": config.unet_learning_rate},
                    {"params": list(text_encoder.parameters()), "lr": config.text_encoder_learning_rate}],
                   work_dir() / "unet-checkpoint.pt", "UNet + text encoder", scaling_factor=cache["scaling_factor"])
    with staged_folder(final) as tmp:
        unet.save_pretrained(tmp / "unet")
        text_encoder.save_pretrained(tmp / "text_encoder")
    return final


def train_denoiser(config: PretrainConfig, models: Models, cache: dict, text, modules: dict, parameter_groups: list,
                   checkpoint: Path, desc: str, scaling_factor: float, shift_factor: float = 0.0) -> None:
    """The denoiser stage's loop, for every family: ``config.unet_steps`` steps of the family's diffusion loss
    (:meth:`Family.objective`, its inputs and prediction with no ControlNet) on latents drawn from the cached
    posteriors, with 10 % empty prompts, AdamW with warm-up and cosine decay, and an EMA of the weights, which
    are copied into ``modules`` at the end. ``text(rows)``: the text conditioning (a tuple, as the family's
    ``encode_prompts`` returns it) of caption-table rows (:func:`caption_token_table`'s order). ``modules``: the
    trained modules by checkpoint key. A checkpoint is written every ``config.checkpoint_every`` steps and the loop
    resumes from it exactly (every draw comes from a generator seeded by the step)."""
    from diffusers.training_utils import EMAModel

    family = models.family
    objective = family.objective(models.noise_scheduler)
    snr_gamma = config.snr_gamma if "snr_gamma" in family.flags else None  # (Min-SNR: the DDPM families only)
    constants = family.step_constants(models, resolution=config.resolution)
    empty_prompt = len(COLOUR_NAMES) ** 2
    caption_rows = cache["colours"][:, 0] * len(COLOUR_NAMES) + cache["colours"][:, 1]
    parameters = [p for group in parameter_groups for p in group["params"]]
    optimizer = torch.optim.AdamW(parameter_groups, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.unet_steps, config.warmup_steps))
    ema = EMAModel(parameters, decay=config.ema_decay)
    step = restore(load_state(checkpoint), **modules, optimizer=optimizer, scheduler=scheduler, ema=ema)
    for module in modules.values():
        module.train()
    num_examples = len(caption_rows)
    bar = _progress(config.unet_steps, step, desc)
    while step < config.unet_steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        batch = torch.randint(0, num_examples, (config.unet_batch_size,), generator=generator)
        latents = cache["mean"][batch] + cache["std"][batch] * torch.randn(
            cache["mean"][batch].shape, generator=generator)
        latents = family.scale_latents(latents, scaling_factor, shift_factor)
        rows = caption_rows[batch].clone()
        rows[torch.rand(len(rows), generator=generator) < config.proportion_empty_prompts] = empty_prompt
        noised = objective.noised(latents, generator)
        model_pred = family.predict(models, family.step_inputs(models, constants, noised, text(rows), None))
        loss = objective.loss(model_pred, noised, snr_gamma)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(parameters)
        step += 1
        bar.update(1)
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.unet_steps:
            save_state(checkpoint, {**{key: module.state_dict() for key, module in modules.items()},
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "ema": ema.state_dict(), "step": step, "loss": loss.item()})
    bar.close()
    ema.copy_to(parameters)  # the averaged weights sample better than the last ones


def ema_snapshot(config: PretrainConfig, path: Path | None = None) -> Path:
    """Write the EMA weights of the UNet stage's latest checkpoint as a base folder (to look at progress)."""
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextModel

    init = init_base(config)
    state = load_state(work_dir() / "unet-checkpoint.pt")
    unet = UNet2DConditionModel.from_pretrained(init, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(init, subfolder="text_encoder")
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(parameters, decay=config.ema_decay)
    ema.load_state_dict(state["ema"])
    ema.copy_to(parameters)
    path = path or work_dir() / f"snapshot-{state['step']}"
    with staged_folder(path) as tmp:
        shutil.copytree(init, tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / "vae")
        shutil.copytree(work_dir() / "vae", tmp / "vae")
        unet.save_pretrained(tmp / "unet")
        text_encoder.save_pretrained(tmp / "text_encoder")
    return path


# --------------------------------------------------------------------------------------------------
# Stage 4: one diffusers folder with a model card
# --------------------------------------------------------------------------------------------------


def assemble(config: PretrainConfig, path: Path | None = None) -> Path:
    """Stage 4: the trained VAE, text encoder and UNet, the tokenizer and the scheduler as one base folder."""
    path = Path(path) if path is not None else work_dir() / "tiny-sd"
    init, trained = init_base(config), work_dir() / "unet"
    with staged_folder(path) as tmp:
        shutil.copytree(init, tmp, dirs_exist_ok=True)
        for part, source in (("vae", work_dir() / "vae"), ("unet", trained / "unet"),
                             ("text_encoder", trained / "text_encoder")):
            shutil.rmtree(tmp / part)
            shutil.copytree(source, tmp / part)
        (tmp / "vae" / "scores.json").unlink(missing_ok=True)
        (tmp / "pretrain_config.json").write_text(json.dumps(asdict(config), indent=2))
        (tmp / "README.md").write_text(model_card(config, scores=None))
    return path


def model_card(config: PretrainConfig, scores: dict | None) -> str:
    """The tiny base's README: what it is, the recipe that made it, and its evaluation figures."""
    recipe = "\n".join(f"| `{key}` | {value} |" for key, value in asdict(config).items() if key != "notes")
    figures = "Not evaluated yet: run `python -m cnhelpers.course.pretrain_base evaluate`."
    if scores:
        # format_scores indents a run's placements and groups; as markdown, nested list items
        figures = "\n".join(" " * (len(line) - len(line.lstrip())) + f"- {line.lstrip()}" for line in format_scores(scores))
    return TRAINED_MODEL_CARD.format(recipe=recipe, figures=figures, seed=PRETRAIN_SEED, held_out=HELD_OUT_SEED,
                                     radius_range="-".join(f"{r:.2f}" for r in RADIUS_RANGE),
                                     cut_share=BORDER_CUT_SHARE)


TRAINED_MODEL_CARD = """\
# tiny-sd (ControlNet course), pretrained

A Stable-Diffusion-1.5-layout model small enough to train and run on a CPU: the base of the course's `tiny`
profile. It was trained from scratch, offline, on generated fill images (a circle of one of 16 named colours
on a background of another, caption "{{circle}} circle with {{background}} background"), by
`python -m cnhelpers.course.pretrain_base` (see `cnhelpers/course/pretrain_base.py`).

- `vae/`: AutoencoderKL, 8x downsampling, 4 latent channels, `scaling_factor` measured on its latents
- `unet/`: UNet2DConditionModel, blocks (64, 64), cross-attention dim 64, 32-group norms, epsilon prediction
- `text_encoder/`: CLIPTextModel, 2 layers, hidden size 64, trained from scratch with the UNet
- `tokenizer/`: CLIP BPE tokenizer whose vocabulary holds every word of the fill captions
- `scheduler/`: PNDMScheduler with SD 1.5's noise schedule

## Recipe

History of this copy. The data's generator changed (issue 17): radii 0.12-0.32 wholly inside the frame
became radii 0.08-0.40 with 30 % of the circles cut by the border. The previous copy (this folder's git
history) had run the VAE stage 2,400 steps, resumed with `--vae_steps 4800` (its cosine schedule restarted at
step 2,400; about 24 minutes), and the UNet stage 4,000 steps from scratch (45 minutes), all on one CPU thread.
This copy keeps that VAE, which is convolutional and reconstructs the new circles too (held-out circle IoU of
its reconstructions 0.94 inside the frame, 0.93 cut by the border, 0.87 for radii under 0.16, circles of 5-10
px at 64 px); encodes the new data's latents again (`--stage latents`, about 3 minutes); and fine-tunes the
previous copy's UNet and text encoder on them (`--stage unet --unet_init build/pretrain/previous-tiny-sd`, a
copy of the previous base, with the table's settings: 1,000 steps, 13 minutes on one thread of a shared
2-core CPU, a quarter of the previous UNet stage's steps). The table is that invocation's configuration.

Data: fill images of seed {seed} from `cnhelpers.course.fill.sample_circle` (radius uniform in {radius_range},
{cut_share:.0%} of the circles cut by the border), generated on the fly (VAE) or encoded once (UNet stage);
every evaluation uses seed {held_out}, which no training stage sees.

| field | value |
| --- | --- |
{recipe}

## Evaluation

Printed by `python -m cnhelpers.course.pretrain_base evaluate --base <this folder> --short-run -n 64` (UniPC, 20
steps; the short run trains a ControlNet with notebook 03's flags and times it, here on a 2-core CPU):

{figures}

It only knows fill images and the 16 colours of `cnhelpers.course.fill.PALETTE`; it is a teaching model, not an
image generator.
"""

# --------------------------------------------------------------------------------------------------
# The SD3, Flux and SDXL bases (--family): SD's VAE and CLIP shared, the denoiser trained (pretrain_families)
# --------------------------------------------------------------------------------------------------


def train_condition_vae(config: PretrainConfig) -> Path | None:
    """Family stage ``condition_vae``: the tiny SD base's VAE fine-tuned to encode the conditioning pictures too
    (``build/pretrain/condition-vae``, shared by SD3 and Flux); None for a family whose ControlNet reads pixels.

    SD3's and Flux's ControlNets see their condition only through the VAE (``vae.encode``, as upstream's scripts
    and pipelines do it). The tiny SD base's VAE learned fill pictures only, and encodes a 1-pixel outline so
    faintly that its latents barely differ between outlines. Here it also learns every fill condition type
    (:func:`condition_batch`, reconstructed under :func:`balanced_l1`), while the training images' latents are pinned
    to the original encoder's (``condition_vae_pin_weight``) and the decoder keeps decoding those latents: the
    denoiser trained on them (stage ``denoiser``) stays valid, so this stage can run before or after it.
    """
    import copy

    from diffusers import AutoencoderKL

    if config.family not in CONDITION_THROUGH_VAE or config.condition_vae_steps <= 0:
        return None
    final = work_dir() / "condition-vae"
    if (final / "config.json").is_file():
        return final
    vae = AutoencoderKL.from_pretrained(PRETRAINED_TINY_BASE / "vae")
    reference = copy.deepcopy(vae).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.condition_vae_learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.condition_vae_steps, min(50, config.warmup_steps)))
    checkpoint = work_dir() / "condition-vae-checkpoint.pt"
    step = restore(load_state(checkpoint), model=vae, optimizer=optimizer, scheduler=scheduler)
    half = max(1, config.vae_batch_size // 2)
    vae.train()
    bar = _progress(config.condition_vae_steps, step, "condition VAE")
    while step < config.condition_vae_steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        indices = range(step * half, (step + 1) * half)
        pixels, _ = fill_batch(indices, config.resolution)
        conditions = condition_batch(indices, config.resolution)
        with torch.no_grad():
            pinned = reference.encode(pixels).latent_dist.mean
        pin_loss = F.mse_loss(vae.encode(pixels).latent_dist.mean, pinned)
        image_loss = F.l1_loss(vae.decode(pinned).sample, pixels)  # the latents the denoiser draws, decoded
        posterior = vae.encode(conditions).latent_dist
        condition_loss = balanced_l1(vae.decode(posterior.sample(generator)).sample, conditions)
        loss = (config.condition_vae_pin_weight * pin_loss + image_loss + condition_loss
                + config.vae_kl_weight * posterior.kl().mean())
        optimizer_step(loss, vae, optimizer, scheduler)
        step += 1
        bar.update(1)
        if step % config.log_every == 0:
            bar.set_postfix(pin=f"{pin_loss.item():.4f}", image=f"{image_loss.item():.4f}",
                            condition=f"{condition_loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.condition_vae_steps:
            save_state(checkpoint, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "step": step})
    bar.close()
    vae.eval()
    with staged_folder(final) as tmp:
        vae.save_pretrained(tmp)
    return final


def family_dir(family: str) -> Path:
    """Where a family's stages keep their folders and checkpoints: ``build/pretrain/<family>``."""
    return work_dir() / family


def shared_latents(config: PretrainConfig) -> Path:
    """The latents of the training images under the shipped tiny SD base's VAE, which the families share."""
    return encode_latents(config, PRETRAINED_TINY_BASE / "vae", work_dir() / "sd-vae-latents.pt")


def family_init(config: PretrainConfig) -> Path:
    """Stage ``init``: the family's layout with SD's VAE (its latent statistics measured) and CLIP, a random T5
    and a random denoiser (:func:`cnhelpers.course.pretrain_families.build_init`)."""
    path = family_dir(config.family) / "init"
    if not (path / "model_index.json").is_file():
        build_init(config.family, path, load_state(shared_latents(config)), seed=config.seed)
    return path


def train_family_denoiser(config: PretrainConfig) -> Path:
    """Stage ``denoiser``: the family's denoiser trained from scratch by :func:`train_denoiser` (the UNet stage's
    loop) with the text encoders frozen, so each caption's text is encoded once."""
    family = family_named(config.family)
    final = family_dir(config.family) / "denoiser"
    if (final / "config.json").is_file():
        return final
    init = family_init(config)
    cache = load_state(shared_latents(config))
    models = family.load(init, options=family_options(family))
    models.controlnet = None  # the base alone
    table = family.encode_prompts(models, caption_texts())
    denoiser = models.denoiser.requires_grad_(True)
    train_denoiser(config, models, cache, lambda rows: tuple(t[rows] for t in table), {"denoiser": denoiser},
                   [{"params": list(denoiser.parameters()), "lr": config.unet_learning_rate}],
                   family_dir(config.family) / "denoiser-checkpoint.pt", f"{family.label} {family.denoiser_name}",
                   scaling_factor=models.vae.config.scaling_factor,
                   shift_factor=models.vae.config.get("shift_factor") or 0.0)
    # from_transformer (in family.load) writes the ControlNet's num_layers into the transformer's own config
    # (diffusers 0.42.1): save the weights under the init's config
    clean = type(denoiser).from_pretrained(init, subfolder=family.denoiser_name)
    clean.load_state_dict(denoiser.state_dict())
    with staged_folder(final) as tmp:
        clean.save_pretrained(tmp)
    return final


def assemble_family(config: PretrainConfig, path: Path | None = None) -> Path:
    """Stage ``assemble`` of a family: the init folder with the trained denoiser, the recipe and a model card."""
    family = family_named(config.family)
    path = Path(path) if path is not None else family_dir(config.family) / f"tiny-{config.family}"
    with staged_folder(path) as tmp:
        shutil.copytree(family_init(config), tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / family.denoiser_name)
        shutil.copytree(train_family_denoiser(config), tmp / family.denoiser_name)
        tuned = train_condition_vae(config)
        if tuned is not None:  # its weights, under the init's config (the latents' measured shift and scale)
            shutil.copy2(tuned / "diffusion_pytorch_model.safetensors", tmp / "vae")
        (tmp / "pretrain_config.json").write_text(json.dumps(asdict(config), indent=2))
        (tmp / "README.md").write_text(family_model_card(config, scores=None))
    return path


def family_model_card(config: PretrainConfig, scores: dict | None) -> str:
    """A family base's README: the layout, the recipe that made it, and its evaluation's figures."""
    family = family_named(config.family)
    recipe = "\n".join(f"| `{key}` | {value} |" for key, value in asdict(config).items() if key != "notes")
    figures = "Not evaluated yet: run `python -m cnhelpers.course.pretrain_base evaluate --base <this folder>`."
    if scores:
        figures = "\n".join(" " * (len(line) - len(line.lstrip())) + f"- {line.lstrip()}" for line in format_scores(scores))
    return FAMILY_MODEL_CARD.format(
        name=config.family, label=family.label, pipeline=family.pipelines[0], layout=family_layout(config.family),
        recipe=recipe, figures=figures, seed=PRETRAIN_SEED, held_out=HELD_OUT_SEED, t5_length=T5_LENGTH,
        notes=f"\n{config.notes}\n" if config.notes else "", doc=pretrain_families_doc())


FAMILY_MODEL_CARD = """\
# tiny-{name} (ControlNet course), pretrained

A {label}-layout model small enough to train and run on a CPU, for the course's notebooks on {label}. Its parts are
the real pipeline's (`{pipeline}.from_pretrained(path)`, each part with `from_pretrained(path, subfolder=...)`):

{layout}

It knows only the course's fill images (a circle of one of 16 named colours on a background of another, caption
"{{circle}} circle with {{background}} background"); it is a teaching model, not an image generator.

## How it was made

`python -m cnhelpers.course.pretrain_base --family {name}` (`cnhelpers/course/pretrain_families.py`):

{doc}

Data: fill images of seed {seed} (their latents under the tiny SD base's VAE, encoded once); every evaluation uses
seed {held_out}, which no training stage sees. T5's length is {t5_length} where the layout has a T5: pass
`max_sequence_length={t5_length}` to the pipeline and `--max_sequence_length {t5_length}` to `cnhelpers.train`.
{notes}
| field | value |
| --- | --- |
{recipe}

## Evaluation

Printed by `python -m cnhelpers.course.pretrain_base evaluate --base <this folder> -n 64` (20 steps):

{figures}
"""


def family_layout(name: str) -> str:
    """The model card's list of parts of a family's base."""
    return {
        "sd3": "- `transformer/`: SD3Transformer2DModel, 4 joint blocks, 4 heads x 16, patches of 2x2 latents\n"
               "- `vae/`: the tiny SD base's AutoencoderKL (4 latent channels), fine-tuned to encode the conditioning "
               "pictures too, `shift_factor` and `scaling_factor` measured on its latents\n"
               "- `text_encoder/`, `text_encoder_2/`: CLIPTextModelWithProjection, the tiny SD base's CLIP with an "
               "identity projection\n"
               "- `text_encoder_3/`: T5EncoderModel (d_model 128), seeded random weights\n"
               "- `tokenizer/`, `tokenizer_2/`: the tiny SD base's CLIP tokenizer; `tokenizer_3/`: a T5 (Unigram) "
               "tokenizer holding every caption word\n"
               "- `scheduler/`: FlowMatchEulerDiscreteScheduler (shift 3)",
        "flux": "- `transformer/`: FluxTransformer2DModel, 2 double- and 4 single-stream blocks, 4 heads x 16, "
                "guidance embedding\n"
                "- `vae/`: the tiny SD base's AutoencoderKL (4 latent channels, 16 a packed token), fine-tuned to "
                "encode the conditioning pictures too, `shift_factor` and `scaling_factor` measured on its latents\n"
                "- `text_encoder/`: CLIPTextModel, the tiny SD base's; `text_encoder_2/`: T5EncoderModel (d_model 64), "
                "seeded random weights\n"
                "- `tokenizer/`: the tiny SD base's CLIP tokenizer; `tokenizer_2/`: a T5 (Unigram) tokenizer holding "
                "every caption word\n"
                "- `scheduler/`: FlowMatchEulerDiscreteScheduler with FLUX.1's dynamic shift",
        "sdxl": "- `unet/`: UNet2DConditionModel in SDXL's layout (blocks 64, 64; text_time embedding)\n"
                "- `vae/`: the tiny SD base's AutoencoderKL\n"
                "- `text_encoder/`: CLIPTextModel and `text_encoder_2/`: CLIPTextModelWithProjection, both the tiny "
                "SD base's CLIP (identity projection)\n"
                "- `tokenizer/`, `tokenizer_2/`: the tiny SD base's CLIP tokenizer\n"
                "- `scheduler/`: EulerDiscreteScheduler with SD's noise schedule",
    }[name]


def pretrain_families_doc() -> str:
    """The recipe of the family bases, as pretrain_families' docstring has it (its bullet list)."""
    text = pretrain_families.__doc__
    return text[text.index("- **VAE**"):text.index("\n\nThe run that makes")]


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def held_out_prompts(n: int, seed: int = HELD_OUT_SEED) -> list[str]:
    """``n`` fill captions of the held-out seed."""
    return [sample_circle(seed, index).text for index in range(n)]


def base_colour_accuracy(base, n: int = 64, seed: int = HELD_OUT_SEED, num_inference_steps: int = 20,
                         guidance_scale: float | None = None) -> dict[str, float]:
    """Share of the base's images (no ControlNet) whose circle and background have the prompt's colours (a base of
    any family: its pipeline, the family's validation sampler, its T5 length and guidance as trained)."""
    import diffusers

    family = detect_family(base)
    guidance_scale = guidance_scale or _tiny_guidance_scale()
    pipeline = getattr(diffusers, family.pipelines[0]).from_pretrained(base, **family.pipeline_kwargs)
    pipeline.scheduler = family.validation_scheduler(pipeline.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    options = pipeline_options(family, guidance_scale) | trained_size(base)
    prompts = held_out_prompts(n, seed)
    images = []
    for start in range(0, n, 16):
        chunk = prompts[start:start + 16]
        images += pipeline(chunk, num_inference_steps=num_inference_steps, **options,
                           generator=image_generators(seed + start, len(chunk))).images
    return colour_accuracy(images, prompts)


def trained_size(base) -> dict:
    """``height`` and ``width`` of the images a pretrained base was trained on (its ``pretrain_config.json``), for
    its pipeline's call: Flux's pipeline would draw 1,024 px by default. Empty for a base without a recipe."""
    recipe = Path(base) / "pretrain_config.json"
    if not recipe.is_file():
        return {}
    resolution = json.loads(recipe.read_text())["resolution"]
    return {"height": resolution, "width": resolution}


def _tiny_guidance_scale() -> float:

    return get_profile("tiny").guidance_scale


#: The held-out outlines every ControlNet is scored on: as the training data places them, and anywhere.
PLACEMENT_LABELS = {"course": "held-out outlines placed as the training data", "anywhere": "outlines anywhere in the frame"}


def format_scores(scores: dict) -> list[str]:
    """Lines of text for the evaluation figures in ``scores``."""
    lines = []
    if "base" in scores:
        base = scores["base"]
        lines.append(f"base colour accuracy on {base['n']} held-out prompts (guidance {base['guidance_scale']}): "
                     f"circle {base['circle_accuracy']:.1%}, background {base['background_accuracy']:.1%}")
    for key, label in (("controlnet", "ControlNet"), ("short_run", "short ControlNet run")):
        if key not in scores:
            continue
        run = scores[key]
        line = f"{label} ({run['source']})"
        if "train_seconds" in run:
            line += f", trained {run['steps']} steps in {run['train_seconds']:.0f} s"
        lines.append(line + ": mean circle IoU with it / without it (the base alone)")
        for placement, result in run["placements"].items():
            lines.append(f"  {result['n']} {PLACEMENT_LABELS[placement]}: "
                         f"{result['iou_with']:.3f} / {result['iou_without']:.3f}")
            lines += [f"    {row['group']} ({row['n']}): " + (
                "-" if row["with ControlNet"] is None else
                f"{row['with ControlNet']:.3f} / {row['without ControlNet']:.3f}")
                for row in result["breakdown"] if row["group"] != "all"]
    return lines


def placement_scores(pipeline, n: int, placement: str, guidance_scale: float, seed: int = HELD_OUT_SEED,
                     resolution: int | None = None, **pipeline_kwargs) -> dict:
    """Circle IoU of ``n`` held-out outlines placed as ``placement`` says, with the ControlNet and without:
    the means, the mean scores per run, and the IoU per group (:func:`cnhelpers.course.metrics.iou_breakdown`)."""
    resolution = resolution or default_resolution(pipeline)
    examples = held_out_examples(n, seed=seed, resolution=resolution, placement=placement)
    circles = held_out_circles(n, seed=seed, placement=placement)
    scores = held_out_scores(pipeline, examples, seed, guidance_scale=guidance_scale, **pipeline_kwargs)
    table = {label: {key: round(float(np.mean([s[key] for s in run])), 4) for key in run[0]}
             for label, run in scores.items()}
    return {"n": n, "iou_with": float(np.mean([s["iou"] for s in scores["with ControlNet"]])),
            "iou_without": float(np.mean([s["iou"] for s in scores["without ControlNet"]])),
            "table": table, "breakdown": breakdown_rows(scores, circles)}


def controlnet_scores(base, controlnet, n: int = 32, guidance_scale: float | None = None,
                      placements: tuple[str, ...] = ("course", "anywhere")) -> dict:
    """Mean circle IoU of a ControlNet on ``n`` held-out outlines of each placement, with and without it
    (scale 0), split by inside the frame / cut by the border and by radius."""

    family = detect_family(base)
    options = pipeline_options(family, guidance_scale or _tiny_guidance_scale())  # as the base was trained
    guidance_scale = options.pop("guidance_scale")
    size = trained_size(base)
    options.update(size)
    resolution = size.get("height")
    pipeline = load_controlnet_pipeline(base, controlnet)
    return {"source": str(controlnet), "guidance_scale": guidance_scale,
            "placements": {placement: placement_scores(pipeline, n, placement, guidance_scale,
                                                       resolution=resolution, **options)
                           for placement in placements}}


def evaluate_base(base, controlnet=None, short_run: bool = False, n: int = 64) -> dict:
    """The figures of the model card: base colour accuracy, and the IoU of ControlNets trained on it.

    ``controlnet``: a trained ControlNet folder to score. ``short_run``: train a ControlNet first with the
    tiny profile's settings (notebook 03's budget) into ``build/pretrain/short-run`` and score it too.
    """

    guidance_scale = _tiny_guidance_scale()
    trained_guidance = pipeline_options(detect_family(base), guidance_scale)["guidance_scale"]  # Flux's: 3.5
    scores = {"base": {"n": n, "guidance_scale": trained_guidance,
                       **base_colour_accuracy(base, n=n, guidance_scale=guidance_scale)}}
    if controlnet is not None:
        scores["controlnet"] = controlnet_scores(base, controlnet, n=n)
    if short_run:
        output_dir = work_dir() / "short-run"
        profile = get_profile("tiny")
        start = time.perf_counter()
        result = train(course_training_args(profile, base, output_dir))
        seconds = time.perf_counter() - start
        scores["short_run"] = {**controlnet_scores(base, output_dir, n=n), "steps": result.global_step,
                               "train_seconds": seconds,
                               "source": f"tiny profile, notebook 03's flags: batch {profile.train_batch_size}, "
                                         f"lr {profile.learning_rate:g}, {profile.max_train_steps} steps"}
    return scores


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

STAGES = ("vae", "latents", "unet", "assemble")
#: The stages of ``--family sd3|flux|sdxl``: the shared latents, the layout's init folder, the denoiser, the folder.
FAMILY_STAGES = ("latents", "init", "denoiser", "condition_vae", "assemble")


def parse_config(argv=None) -> tuple[PretrainConfig, argparse.Namespace]:
    """The recipe's config from command-line flags named like its fields, plus ``--stage``."""
    parser = argparse.ArgumentParser(prog="python -m cnhelpers.course.pretrain_base", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("all",) + tuple(dict.fromkeys(STAGES + FAMILY_STAGES)), default="all")
    for field in fields(PretrainConfig):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    namespace = parser.parse_args(argv)
    config = PretrainConfig(**{f.name: getattr(namespace, f.name) for f in fields(PretrainConfig)})
    return config, namespace


def evaluate_main(argv) -> int:
    """``python -m cnhelpers.course.pretrain_base evaluate [--base PATH] [--controlnet PATH] [--short-run]``."""

    parser = argparse.ArgumentParser(prog="python -m cnhelpers.course.pretrain_base evaluate",
                                     description=evaluate_base.__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None, help="base folder (default: the tiny profile's)")
    parser.add_argument("--controlnet", type=Path, default=None, help="a trained ControlNet folder to score")
    parser.add_argument("--short-run", action="store_true", help="train a ControlNet at notebook 03's budget")
    parser.add_argument("-n", type=int, default=64, help="held-out prompts, and outlines of each placement")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--update-card", action="store_true",
                        help="write the figures into the base's model card (README.md); needs --base")
    args = parser.parse_args(argv)
    if args.update_card and args.base is None:
        parser.error("--update-card rewrites a base's README.md: name that base with --base")
    base = args.base or ensure_tiny_base()
    scores = evaluate_base(base, args.controlnet, args.short_run, args.n)
    for line in format_scores(scores):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2))
    if args.update_card:
        recipe = PretrainConfig(**json.loads((Path(base) / "pretrain_config.json").read_text()))
        card = model_card(recipe, scores) if recipe.family == "sd" else family_model_card(recipe, scores)
        (Path(base) / "README.md").write_text(card)
        (Path(base) / "evaluation.json").write_text(json.dumps(scores, indent=2))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:
        return evaluate_main(argv[1:])
    config, namespace = parse_config(argv)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.family == "sd" and namespace.stage in ("all", "unet"):
        try:
            unet_start(config)
        except ValueError as error:  # a bad flag: one line, no traceback
            print(f"error: {error}", file=sys.stderr)
            return 2
    if config.family == "sd":
        stages = STAGES if namespace.stage == "all" else (namespace.stage,)
        runners = {"vae": train_vae, "latents": encode_latents, "unet": train_unet, "assemble": assemble}
    else:
        stages = FAMILY_STAGES if namespace.stage == "all" else (namespace.stage,)
        runners = {"latents": shared_latents, "init": family_init, "denoiser": train_family_denoiser,
                   "condition_vae": train_condition_vae, "assemble": assemble_family}
    if config.family not in ("sd",) + FAMILY_NAMES or any(stage not in runners for stage in stages):
        print(f"error: --family {config.family} has the stages {', '.join(runners) if config.family == 'sd' or config.family in FAMILY_NAMES else '-'}"
              f" (--family is one of sd, {', '.join(FAMILY_NAMES)}); --stage {namespace.stage} is not one of them",
              file=sys.stderr)
        return 2
    for stage in stages:
        start = time.perf_counter()
        result = runners[stage](config)
        print(f"stage {stage}: {result} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
