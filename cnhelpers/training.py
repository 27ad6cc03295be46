"""The ControlNet training loop, on accelerate, as named steps (notebook 03 assembles the same steps by hand).

``train(args)`` reads top to bottom: :func:`setup`, :func:`prepare_models`, :func:`prepare_data`,
:func:`make_optimizer_and_lr_scheduler`, :func:`resume`, then the loop, whose every micro-step is
:func:`training_step` (latents -> noisy latents, timesteps and target -> text -> ControlNet -> frozen denoiser with
the residuals -> weighted loss) followed by accelerate's backward, clipping and the optimizer step, and finally
:func:`finish`. ``args`` are upstream train_controlnet.py's flags (:mod:`cnhelpers.config`); they
are never changed (:func:`cnhelpers.config.resolved_args` makes the copy a run uses).

What differs from upstream, and why:

- Min-SNR weighting (``--snr_gamma``), with diffusers' ``compute_snr``, per sample.
- The fast path (``--cache auto``, the default when it fits in memory; :mod:`cnhelpers.cache`).
- On a CPU the conditioning embedding runs in the channels-last memory layout (faster oneDNN convolutions
  at its few channels and full resolution; the same arithmetic). ``--channels_last`` lays out both models so,
  and ``--torch_compile`` compiles them (:mod:`cnhelpers.speed`); both are off by default.
- Every random draw of a step comes from a generator seeded by (seed, process, step), and the data order
  by (seed, epoch), so resuming from a checkpoint continues exactly where the run was.
- Checkpoints are written atomically and end with a manifest (:mod:`cnhelpers.checkpoints`); the log of
  every step is appended to ``train_log.jsonl`` as it happens, and a resumed run continues it.
- Bad input is refused before the work it would spoil: paths and flags in :func:`setup`, a step that cannot
  fit in memory at the end of :func:`prepare_models`, an empty data set, captions that are not text and a
  tokenizer that cannot feed the text encoder at the start of :func:`prepare_data`.
- SIGTERM and SIGINT stop a run with :class:`Terminated` (``python -m cnhelpers.train`` prints one line and
  exits 143 or 130), but never inside a checkpoint or the final save: a signal that arrives while one is being
  written is acted on once it is complete (:class:`SignalGuard`).

The loop never asks which base it trains for: what SD 1.5 and SDXL (notebook 07) differ in (the parts loaded,
how prompts become conditioning, the noise and the target, what the ControlNet and the denoiser read, the
validation pipeline) is asked of the base's family (:mod:`cnhelpers.families`), detected once when the models load.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import build_cache, use_cache
from .checkpoints import (
    checkpoint_run_facts, find_checkpoint, list_checkpoints, register_controlnet_hooks, save_checkpoint)
from .config import changed_flags, check_paths, check_push_to_hub, resolved_args
from .data import (
    check_aspect_ratios, check_captions, check_columns, collate_fn, drop_unreadable_rows, load_raw_dataset,
    make_train_dataset)
from .families import Models, StepConstants
from .loading import check_step_fits_memory, load_models
from .lora import add_controlnet_lora, trainable_parameters
from .optim import check_optimizer_in_backward, configure_attention, make_optimizer, match_state_layout
from .outputs import TrainLog, log_validation, push_to_hub, save_final_controlnet
from .paths import shown_path
from .run_lock import OutputDirLock
from .speed import check_torch_compile, compile_models, set_memory_layout
from .tokenizer import check_tokenizer_fits


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


@dataclass
class StepSetup:
    """What :func:`training_step` reads besides the batch: the models, the precision, the family's constant inputs
    and the memory layouts (made by :func:`prepare_models`), and the cached text tables (added by
    :func:`prepare_data` when it builds the cache)."""

    models: Models
    weight_dtype: torch.dtype = torch.float32
    #: The VAE's latent scaling and shift (kept here: the VAE itself may be freed once the latents are cached); the
    #: family applies them (:meth:`cnhelpers.families.Family.scale_latents`: SD's ignores the shift).
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    #: Cached text embeddings: one table per tensor of the family's text conditioning (SD 1.5: the text; SDXL:
    #: the text and the pooled text), one row per caption and a last row for the empty prompt.
    text_tables: tuple[torch.Tensor, ...] = ()
    #: The inputs every step shares (SDXL: the size and crop ids).
    constants: StepConstants = field(default_factory=StepConstants)
    conditioning_layout: torch.memory_format = torch.contiguous_format
    latent_layout: torch.memory_format = torch.contiguous_format  # (--channels_last: the models' layout)
    #: The family's training objective (noising, target, loss); by default with the family's default options.
    objective: object = None
    _empty_text: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.objective is None:
            self.objective = self.models.family.objective(self.models.noise_scheduler)

    def empty_text(self) -> tuple[torch.Tensor, ...]:
        """The empty prompt's text conditioning, encoded once (what the uncached path swaps in for a dropped
        prompt, as the cached path swaps in its table's last row)."""
        if self._empty_text is None:
            with torch.no_grad():
                self._empty_text = self.models.encode_prompts([""])
        return self._empty_text


def training_step(setup: StepSetup, batch: dict, generator: torch.Generator, snr_gamma: float | None = None,
                  proportion_empty_prompts: float = 0.0) -> torch.Tensor:
    """The loss of one micro-batch: the forward half of a training step (backward and the update are the loop's).

    Every random draw comes from ``generator``, in a fixed order (latent sample, the condition's latent sample for a
    family whose ControlNet reads latents, then the family's noise and timesteps, then dropped prompts), so the same
    generator gives the same loss on the cached and the uncached path.
    """
    models, family, dtype = setup.models, setup.models.family, setup.weight_dtype
    # Latents of the target images: sampled from the (cached) VAE posterior, then scaled.
    if "latent_mean" in batch:
        eps = torch.randn(batch["latent_mean"].shape, generator=generator, device=batch["latent_mean"].device)
        latents = batch["latent_mean"] + batch["latent_std"] * eps
    else:
        posterior = models.vae.encode(batch["pixel_values"].to(models.vae.dtype)).latent_dist
        latents = posterior.sample(generator=generator)
    latents = family.scale_latents(latents, setup.scaling_factor, setup.shift_factor).to(dtype)
    # What the ControlNet reads of the conditioning images (SD: the pixels; SD3, Flux: their sampled latents).
    condition = family.controlnet_condition(models, batch, generator, dtype, setup.scaling_factor,
                                            setup.shift_factor)

    # The forward process: noisy latents at random timesteps, and what the denoiser must predict from them.
    noised = setup.objective.noised(latents, generator)

    # Text conditioning; a share of prompts is dropped so that guidance works at inference.
    if setup.text_tables:
        caption_index = batch["caption_index"].clone()
        drop = torch.rand(caption_index.shape, generator=generator, device=caption_index.device)
        caption_index[drop < proportion_empty_prompts] = len(setup.text_tables[0]) - 1
        text = tuple(table[caption_index] for table in setup.text_tables)
    else:  # the batch's captions encoded now; the same draw swaps the same share for the empty prompt
        text = family.encode_batch_text(models, batch)
        drop = torch.rand(text[0].shape[:1], generator=generator, device=text[0].device) < proportion_empty_prompts
        if drop.any():
            text = tuple(torch.where(drop.view(-1, *[1] * (part.dim() - 1)), empty.to(part.dtype), part)
                         for part, empty in zip(text, setup.empty_text()))
    noised.latents = noised.latents.contiguous(memory_format=setup.latent_layout)
    inputs = family.step_inputs(models, setup.constants, noised, text,
                                condition.contiguous(memory_format=setup.conditioning_layout))

    # The ControlNet reads the condition; its residuals are added inside the frozen denoiser.
    prediction = family.predict(models, inputs)
    return setup.objective.loss(prediction, noised, snr_gamma)


def setup(args):
    """The resolved copy of ``args`` and the Accelerator, after the checks that must come before any work."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    check_paths(args)  # nothing is made before the paths are known to work
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        find_checkpoint(args.output_dir, args.resume_from_checkpoint)  # missing or incomplete: refused now
    output_dir = Path(args.output_dir)
    # Forget the precision settings of an earlier run in this process (a notebook calls train() often);
    # the process group of a multi-process launch is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=None if args.report_to in (None, "none") else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)))
    alone = int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and (
            accelerator.distributed_type != "DEEPSPEED" or alone):
        raise ValueError(
            "Launched with a DeepSpeed config, but accelerate runs DeepSpeed on GPUs only and found none here"
            f"{' (ACCELERATE_USE_CPU is set)' if os.environ.get('ACCELERATE_USE_CPU') else ''}, so the processes would "
            "train without ZeRO: launch on GPUs, or without the DeepSpeed config (on a CPU: `ACCELERATE_USE_CPU=1 "
            "accelerate launch --multi_gpu --num_processes 2 -m cnhelpers.train ...`).")
    if alone:
        raise ValueError(
            f"Started as one of {os.environ['WORLD_SIZE']} processes, but accelerate found no GPU to share them "
            "on, so each would train alone into the same output_dir. On a CPU, set ACCELERATE_USE_CPU=1: "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m cnhelpers.train ...`.")
    if args.push_to_hub:
        check_push_to_hub(args)
    check_optimizer_in_backward(accelerator, args.max_grad_norm, in_backward=args.optimizer_in_backward)
    check_torch_compile(args.torch_compile, accelerator.device.type)
    args = resolved_args(args, accelerator.num_processes)
    torch.manual_seed(args.seed)  # library internals (from_unet copies its weights: nothing random there)
    output_dir.mkdir(parents=True, exist_ok=True)
    return args, accelerator


def prepare_models(args, accelerator) -> StepSetup:
    """Load the models, put the frozen ones in the run's precision on its device, and set the memory flags."""
    # (a flag of another base family is refused once the base's family is known, before its weights load)
    models = load_models(args.pretrained_model_name_or_path,
                         controlnet_model_name_or_path=args.controlnet_model_name_or_path, revision=args.revision,
                         variant=args.variant, tokenizer_name=args.tokenizer_name,
                         pretrained_vae_model_name_or_path=args.pretrained_vae_model_name_or_path,
                         cache_dir=args.cache_dir, flags=vars(args), changed_flags=changed_flags(args))
    models.family.check_resolution(models, args.resolution)
    if args.lora_rank is not None:  # (a family without a LoRA layout refuses here, before anything else is done)
        counts = add_controlnet_lora(models.controlnet, models.family.lora_layout(), args.lora_rank, args.lora_alpha)
        accelerator.print(f"LoRA ControlNet, rank {args.lora_rank}: training {counts['trainable']:,} parameters "
                          f"({counts['adapter']:,} in adapters, {counts['full']:,} in the conditioning embedding and "
                          f"zero convolutions) of {counts['total'] - counts['adapter']:,}")
    register_controlnet_hooks(accelerator)
    configure_attention(args.enable_xformers_memory_efficient_attention, models.denoiser, models.controlnet)
    # Memory layouts (the same arithmetic, reordered): --channels_last for both models; on a CPU the
    # conditioning embedding is channels-last anyway (oneDNN's faster layout at its few channels, full size).
    latent_layout, conditioning_layout = set_memory_layout(models.denoiser, models.controlnet, args.channels_last,
                                                           accelerator.device.type)
    if args.gradient_checkpointing:
        models.controlnet.enable_gradient_checkpointing()
    if args.checkpoint_frozen_unet:
        # The loss reaches the ControlNet *through* the frozen denoiser, whose activations are kept for the
        # backward pass too: checkpoint them as well (same gradients, recomputed instead of stored).
        models.denoiser.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if models.controlnet.dtype != torch.float32:
        raise ValueError(f"The ControlNet was loaded as {models.controlnet.dtype}: it must be float32 even with "
                         "mixed precision (accelerate keeps fp32 master weights and autocasts the forward pass).")
    # The frozen models only run forward: half precision for them saves memory and time.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in models.frozen():
        if frozen.dtype != weight_dtype:  # (a cast to the same dtype only makes diffusers warn)
            frozen.to(dtype=weight_dtype)  # cast first: a float32 copy never reaches the GPU
        frozen.to(accelerator.device)
    if models.family.vae_in_float32(weight_dtype, replaced_vae=bool(args.pretrained_vae_model_name_or_path),
                                    options=models.options):
        models.vae.to(dtype=torch.float32)  # a VAE that overflows in fp16 (NaN latents, black images)
    # Before anything is allocated for a step: refuse one that cannot fit (e.g. --resolution 100000).
    check_step_fits_memory(models, args.resolution, args.train_batch_size, accelerator.device,
                           activation_bytes=2 if weight_dtype != torch.float32 else 4,
                           adam_state_bytes=1 if args.use_8bit_adam else 4)
    # Compiled last, on the models as they will run (device, dtype, layout, checkpointing).
    compile_models(args.torch_compile, args.torch_compile_mode, models.denoiser, models.controlnet)
    constants = models.family.step_constants(
        models, resolution=args.resolution, dtype=weight_dtype, device=accelerator.device,
        crops_coords_top_left=(args.crops_coords_top_left_h, args.crops_coords_top_left_w))
    objective = models.family.objective(models.noise_scheduler,
                                        **{flag: getattr(args, flag) for flag in models.family.objective_flags})
    return StepSetup(models, weight_dtype, models.vae.config.scaling_factor,
                     shift_factor=models.vae.config.get("shift_factor") or 0.0, constants=constants,
                     conditioning_layout=conditioning_layout, latent_layout=latent_layout, objective=objective)


def prepare_data(args, accelerator, setup: StepSetup):
    """Rows -> transformed examples -> (with ``--cache``) latents and text embeddings computed once -> batches.

    With the cache, the text tables are put into ``setup`` (the steps read them instead of the text encoders)."""
    models = setup.models
    raw = load_raw_dataset(train_data_dir=args.train_data_dir, dataset_name=args.dataset_name,
                           dataset_config_name=args.dataset_config_name, cache_dir=args.cache_dir)
    check_data(args, raw, models)
    if args.skip_bad_images:
        raw, left_out = drop_unreadable_rows(raw, (args.image_column, args.conditioning_image_column))
        for problem in left_out[:10]:
            warnings.warn(f"--skip_bad_images: left out {problem}", stacklevel=2)
        if left_out:
            warnings.warn(f"--skip_bad_images: left out {len(left_out)} of {len(raw) + len(left_out)} rows.",
                          stacklevel=2)
        if len(raw) == 0:
            raise ValueError("--skip_bad_images left no rows: every example has an unreadable image. Check the "
                             "data set's image files.")
    cached = use_cache(cache_mode(args), raw, caption_column=args.caption_column, resolution=args.resolution,
                       text_shape=models.family.text_shape(models), max_train_samples=args.max_train_samples,
                       latent_channels=models.vae.config.latent_channels,
                       condition_latents=models.family.condition_as_latents,
                       examples_read=examples_read(args))
    dataset = make_train_dataset(
        raw, models.tokenizer, resolution=args.resolution, image_column=args.image_column,
        conditioning_image_column=args.conditioning_image_column, caption_column=args.caption_column,
        # prompts are dropped per step, from the step's generator (training_step), on both paths: a resumed run
        # draws what the uninterrupted one drew (a draw in the transform would depend on the batches it skipped)
        proportion_empty_prompts=0.0,
        max_train_samples=args.max_train_samples, seed=args.seed, tokenizer_2=models.tokenizers.get("tokenizer_2"),
        interpolation=args.image_interpolation_mode or models.family.default_interpolation,
        tokenize=models.tokenize_fn())
    collate = collate_fn
    if not cached:  # (the cache transforms every row before the first step, and so checks them all)
        check_aspect_ratios(raw, args.image_column, args.conditioning_image_column)
    if cached:
        dataset, tables = build_cache(dataset, dataset.with_format(None)[args.caption_column], models.encode_prompts,
                                      models.vae, accelerator.device, batch_size=args.train_batch_size,
                                      disable_progress=not accelerator.is_local_main_process,
                                      encode_condition=partial(models.family.encode_condition, models.vae))
        setup.text_tables = tuple(t.to(accelerator.device, setup.weight_dtype) for t in tables)
        collate = None  # default_collate stacks the cached tensors
        # The loop no longer needs the VAE nor the text encoders: free their device memory (validation brings
        # them back for a moment), or all of their memory when nothing validates.
        for frozen in (models.vae, *models.text_encoders.values()):
            frozen.to("cpu")
        if not args.validation_prompt:
            models.free_text_encoders()
    return torch.utils.data.DataLoader(dataset, batch_size=args.train_batch_size, collate_fn=collate,
                                       sampler=EpochSampler(len(dataset), args.seed),
                                       num_workers=args.dataloader_num_workers)


def cache_mode(args) -> str:
    """``--cache``, where a resumed run's ``auto`` becomes the choice its start made (written in its checkpoints):
    a run extended past its first ``--max_train_steps`` reads more examples, but must take the same path to end
    with the weights of an uninterrupted run."""
    if args.cache != "auto" or not args.resume_from_checkpoint:
        return args.cache
    checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    cached = checkpoint_run_facts(checkpoint).get("cached") if checkpoint is not None else None
    return args.cache if cached is None else ("always" if cached else "never")


def examples_read(args) -> int | None:
    """How many examples one process reads in the whole run (``None`` when the run is counted in epochs)."""
    if args.max_train_steps is None:
        return None
    return args.max_train_steps * args.train_batch_size * args.gradient_accumulation_steps


def check_data(args, raw, models: Models) -> None:
    """The data set's checks before any example is transformed: its columns, text captions, tokenizers whose ids
    their text encoders have and that know the captions' words, and captions (and validation prompts) that the
    family's text encoders read whole (SD3's and Flux's T5: at most ``--max_sequence_length`` tokens)."""
    check_columns(raw.column_names, as_flags=True, image_column=args.image_column,
                  conditioning_image_column=args.conditioning_image_column, caption_column=args.caption_column)
    captions = raw[args.caption_column]
    check_captions(captions, args.caption_column)
    texts = [c for caption in captions for c in ([caption] if isinstance(caption, str) else caption)]
    for name, tokenizer in models.tokenizers.items():
        label = f"--tokenizer_name {args.tokenizer_name}" if name == "tokenizer" and args.tokenizer_name \
            else f"the base model's {name}"
        encoder = models.text_encoders[name.replace("tokenizer", "text_encoder")]
        check_tokenizer_fits(tokenizer, texts, encoder.config.vocab_size, label)
    models.family.check_prompts(models, texts, "The caption")
    models.family.check_prompts(models, list(args.validation_prompt or []), "--validation_prompt")


@dataclass
class RunLength:
    """How long a run is: optimizer steps in all and per epoch, epochs, and the samples of one step."""

    max_train_steps: int
    updates_per_epoch: int
    num_epochs: int
    total_batch_size: int


def make_optimizer_and_lr_scheduler(args, accelerator, parameters, dataloader):
    """The optimizer over the ControlNet's parameters, the learning-rate scheduler, and the run's length
    (:class:`RunLength`)."""
    from diffusers.optimization import get_scheduler

    optimizer = make_optimizer(parameters, learning_rate=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                               epsilon=args.adam_epsilon, weight_decay=args.adam_weight_decay,
                               use_8bit=args.use_8bit_adam, in_backward=args.optimizer_in_backward)
    updates_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    schedule = RunLength(max_train_steps, updates_per_epoch, math.ceil(max_train_steps / updates_per_epoch),
                        args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes, num_cycles=args.lr_num_cycles,
        power=args.lr_power)
    return optimizer, lr_scheduler, schedule


def resume(args, accelerator, optimizer) -> int:
    """Load weights, optimizer and schedule from ``--resume_from_checkpoint``; return the step it was saved at."""
    if not args.resume_from_checkpoint:
        return 0
    checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is None:
        accelerator.print(f"No checkpoint in {args.output_dir}: starting a new run.")
        return 0
    accelerator.print(f"Resuming from {shown_path(checkpoint)}")
    accelerator.load_state(str(checkpoint))
    match_state_layout(optimizer)
    return int(checkpoint.name.split("-")[1])


def epoch_batches(accelerator, dataloader, schedule: RunLength, global_step: int, gradient_accumulation_steps: int):
    """``(epoch, batch)`` from the step ``global_step`` on: the batches a resumed run has seen are skipped."""
    first_epoch = global_step // schedule.updates_per_epoch
    skip = (global_step - first_epoch * schedule.updates_per_epoch) * gradient_accumulation_steps
    for epoch in range(first_epoch, schedule.num_epochs):
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, skip) if epoch == first_epoch and skip else dataloader
        for batch in batches:
            yield epoch, batch


class Terminated(KeyboardInterrupt):
    """A run stopped by SIGTERM or SIGINT (a KeyboardInterrupt, so ``except Exception`` never swallows it).

    Its message names the signal, the last step done and the newest checkpoint to resume from.
    """

    def __init__(self, signum: int, step: int | None = None, output_dir=None):
        super().__init__(signum)
        self.signum, self.step, self.output_dir = signum, step, output_dir

    def __str__(self):
        name = signal.Signals(self.signum).name
        at = f" after step {self.step}" if self.step is not None else " before the first step"
        checkpoints = list_checkpoints(self.output_dir) if self.output_dir is not None else []
        if checkpoints:
            resume = (f"the newest checkpoint is {checkpoints[-1].name}: resume with --resume_from_checkpoint latest "
                      "(the steps after it are trained again)")
        else:
            resume = "no checkpoint was saved: run again to start over (save more often with --checkpointing_steps)"
        return f"stopped by {name}{at}; {resume}."


class SignalGuard:
    """While a run trains, SIGTERM and SIGINT raise :class:`Terminated` at once, except inside
    :meth:`critical` sections (a checkpoint, the final save), where the first signal waits for the section to
    be complete; a second one stops it anyway (a checkpoint's partial folder is then removed, never renamed).

    Handlers are installed only in the main thread (Python allows no other) and restored on exit. ``step`` is
    the last step done, kept up to date by the loop for the message.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, output_dir=None):
        self.output_dir, self.step = output_dir, None
        self.depth, self.pending, self.previous = 0, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.depth and self.pending is None:
            self.pending = signum
            return
        raise Terminated(signum, self.step, self.output_dir)

    @contextmanager
    def critical(self, then_stop: bool = True):
        """A block that a signal does not interrupt: the first one is acted on when the block is done (or, with
        ``then_stop=False``, for the run's last block, only kept from interrupting it)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None and then_stop:
            signum, self.pending = self.pending, None
            raise Terminated(signum, self.step, self.output_dir)


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
    """Train a ControlNet with the flags in ``args`` (from :func:`cnhelpers.config.parse_args` or
    :func:`cnhelpers.config.training_args`).

    ``callback(logs)``, if given, is called on the main process after every optimizer step with
    ``{"step", "loss", "lr", "epoch"}`` (notebook 03 draws a live loss plot with it).

    SIGTERM or SIGINT stops the run with :class:`Terminated`, but never in the middle of a checkpoint or of
    the final save (:class:`SignalGuard`).
    """
    with SignalGuard(args.output_dir) as guard, ExitStack() as on_exit:
        args, accelerator = setup(args)
        # one run per output folder, held until the run ends however it ends (a second run is refused)
        on_exit.enter_context(OutputDirLock(args.output_dir, enabled=accelerator.is_main_process))
        step_setup = prepare_models(args, accelerator)
        dataloader = prepare_data(args, accelerator, step_setup)
        optimizer, lr_scheduler, schedule = make_optimizer_and_lr_scheduler(args, accelerator,
                                                                            trainable_parameters(step_setup.models.controlnet),
                                                          dataloader)
        step_setup.models.controlnet, optimizer, dataloader, lr_scheduler = accelerator.prepare(
            step_setup.models.controlnet, optimizer, dataloader, lr_scheduler)
        controlnet = step_setup.models.controlnet
        if accelerator.is_main_process and args.report_to not in (None, "none"):
            accelerator.init_trackers(args.tracker_project_name, config={
                k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})
        global_step = guard.step = resume(args, accelerator, optimizer)
        log = TrainLog(Path(args.output_dir) / "train_log.jsonl", global_step, accelerator.is_main_process)
        result = TrainResult(str(args.output_dir), global_step, cached=bool(step_setup.text_tables),
                             is_main_process=accelerator.is_main_process)
        # closed however the loop ends, so that an error's line is the last one printed, not the bar's redraw
        progress = on_exit.enter_context(tqdm(total=schedule.max_train_steps, initial=global_step, desc="Steps",
                                              mininterval=2, disable=not accelerator.is_local_main_process))
        micro_step = global_step * args.gradient_accumulation_steps
        for epoch, batch in epoch_batches(accelerator, dataloader, schedule, global_step,
                                          args.gradient_accumulation_steps):
            if global_step >= schedule.max_train_steps:  # (a finished run, resumed: nothing left to train)
                break
            generator = step_generator(args.seed, accelerator.process_index, micro_step, accelerator.device)
            micro_step += 1
            with accelerator.accumulate(controlnet):
                loss = training_step(step_setup, batch, generator, args.snr_gamma, args.proportion_empty_prompts)
                accelerator.backward(loss)  # --optimizer_in_backward: updates the weights in here
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(controlnet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=args.set_grads_to_none)
            if not accelerator.sync_gradients:
                continue
            global_step = guard.step = global_step + 1
            logs = {"step": global_step, "loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0],
                    "epoch": epoch}
            result.history.append(logs)
            log.append(logs)
            progress.update(1)
            # refresh=False: shown at the bar's next redraw. Redrawing every step would flood a notebook's
            # output channel (thousands of messages in a few minutes) and can stall a headless runner.
            progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)
            accelerator.log({"loss": logs["loss"], "lr": logs["lr"]}, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                with guard.critical():  # a signal now waits until the checkpoint is complete
                    save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit,
                                    run_facts={"cached": bool(step_setup.text_tables)})
            if accelerator.is_main_process and args.validation_prompt and global_step % args.validation_steps == 0:
                result.validations.append(log_validation(accelerator, args, step_setup.models, step_setup.weight_dtype,
                                                         global_step))
            if accelerator.is_main_process and callback is not None:
                callback(logs)
            if global_step >= schedule.max_train_steps:
                break
        progress.close()
        result.global_step = global_step
        with guard.critical(then_stop=False):  # the run is done once this is: a signal now only waits for it
            finish(args, accelerator, step_setup, result, schedule)
    return result


def finish(args, accelerator, step_setup: StepSetup, result: TrainResult, schedule: RunLength) -> None:
    """A last validation (unless the last step had one), the ControlNet and its model card, the optional upload."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        step = result.global_step
        if args.validation_prompt and (not result.validations or result.validations[-1]["step"] != step):
            result.validations.append(log_validation(accelerator, args, step_setup.models, step_setup.weight_dtype,
                                                     step))
        save_final_controlnet(accelerator.unwrap_model(step_setup.models.controlnet), args, step,
                              schedule.total_batch_size, result.validations[-1] if result.validations else None,
                              step_setup.models.family)
        if args.push_to_hub:
            push_to_hub(args)
    accelerator.end_training()
