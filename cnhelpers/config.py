"""The training configuration: upstream train_controlnet.py's flags, plus a few, as one argparse Namespace.

Every flag of diffusers' examples/controlnet/train_controlnet.py is accepted with the same name, default
and meaning, so the guide's commands run with only the script name changed. Added: ``--snr_gamma``
(Min-SNR weighting), ``--cache`` (the fast path), ``--num_validation_inference_steps``,
``--validation_guidance_scale``, ``--optimizer_in_backward`` (notebook 04), ``--channels_last``,
``--torch_compile`` (:mod:`cnhelpers.speed`), ``--skip_bad_images``, ``--validation_condition``
(:mod:`cnhelpers.consistency`) and ``--conditioning_embedding_init`` (notebook 03). The extra flags of
train_controlnet_sdxl.py (:data:`SDXL_FLAGS`) are accepted too; they matter for an SDXL base (notebook 07); so are
those of train_controlnet_sd3.py and train_controlnet_flux.py (:data:`SD3_FLAGS`, :data:`FLUX_FLAGS`), with
``--num_controlnet_layers`` for SD3's ControlNet. A flag that only one base family uses is refused, in one line,
on a base of another family (:func:`cnhelpers.families.check_family_flags`, when the run loads its base).

:func:`parse_args` reads a command line; :func:`training_args` takes keyword arguments (notebooks); both
check the result with :func:`check_args` (the flags alone; :func:`check_paths`, called when a run starts, checks
the files and folders they name). :func:`resolved_args` returns the copy a run really uses
(seed drawn, learning rate scaled): the Namespace passed in is never changed.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .data import check_resolution
from .families.flow_matching import WEIGHTING_SCHEMES
from .families.sd import CONDITIONING_EMBEDDING_INITS
from .hub import HubUnavailableError, hub_offline
from .lora import check_lora_flags
from .own_data import condition_function
from .speed import COMPILE_MODES


class CourseArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose error for an unknown flag suggests the closest known one, and that reads
    ``--learning_rate -1e-4`` as a (negative) value: argparse's own pattern knows no exponents, so it took
    ``-1e-4`` for a flag and said "expected one argument" instead of what is wrong with the value."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            hints = []
            for flag in (u for u in unknown if u.startswith("-")):
                close = difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.6)
                hints.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
            self.error("unknown flags: " + ", ".join(hints or unknown)
                       + ". `python -m cnhelpers.train --help` lists them all.")
        return parsed

    def error(self, message):
        """The usage, then one last line ``error: ...`` (the same form as every other refusal of the CLI)."""
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


UPSTREAM_FLAGS = (
    "pretrained_model_name_or_path", "controlnet_model_name_or_path", "revision", "variant", "tokenizer_name",
    "output_dir", "cache_dir", "seed", "resolution", "train_batch_size", "num_train_epochs", "max_train_steps",
    "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "gradient_accumulation_steps",
    "gradient_checkpointing", "learning_rate", "scale_lr", "lr_scheduler", "lr_warmup_steps", "lr_num_cycles",
    "lr_power", "use_8bit_adam", "dataloader_num_workers", "adam_beta1", "adam_beta2", "adam_weight_decay",
    "adam_epsilon", "max_grad_norm", "push_to_hub", "hub_token", "hub_model_id", "logging_dir", "allow_tf32",
    "report_to", "mixed_precision", "enable_xformers_memory_efficient_attention", "set_grads_to_none",
    "dataset_name", "dataset_config_name", "train_data_dir", "image_column", "conditioning_image_column",
    "caption_column", "max_train_samples", "proportion_empty_prompts", "validation_prompt", "validation_image",
    "num_validation_images", "validation_steps", "tracker_project_name",
)
"""The 52 flags of upstream's train_controlnet.py, in its order."""


SDXL_FLAGS = ("pretrained_vae_model_name_or_path", "crops_coords_top_left_h", "crops_coords_top_left_w",
              "image_interpolation_mode")
"""The flags train_controlnet_sdxl.py adds to train_controlnet.py's."""


SD3_FLAGS = ("num_extra_conditioning_channels", "upcast_vae", "weighting_scheme", "logit_mean", "logit_std",
             "mode_scale", "precondition_outputs", "max_sequence_length")
"""The flags train_controlnet_sd3.py adds that matter here (its ``--dataset_preprocess_batch_size`` does not: the
cache encodes in batches of the training batch size)."""


FLUX_FLAGS = ("num_double_layers", "num_single_layers", "guidance_scale", "weighting_scheme", "logit_mean",
              "logit_std", "mode_scale")
"""The flags train_controlnet_flux.py adds that matter here (and ``--max_sequence_length``, which it leaves at the
pipeline's 512)."""



#: torchvision's InterpolationMode names, lowercased (upstream's choices for --image_interpolation_mode).
INTERPOLATION_MODES = ("nearest", "nearest_exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


def build_parser() -> argparse.ArgumentParser:
    """The parser: upstream's flags (same defaults), then the course's additions."""
    p = CourseArgumentParser(prog="python -m cnhelpers.train",
                             description="Train a ControlNet (flags of diffusers' train_controlnet.py, plus "
                                         "--snr_gamma and --cache).")
    model = p.add_argument_group("model")
    model.add_argument("--pretrained_model_name_or_path", type=str, required=True,
                       help="Base model: a local SD-layout folder or a hub id.")
    model.add_argument("--controlnet_model_name_or_path", type=str, default=None,
                       help="Existing ControlNet weights; by default they are initialised from the UNet.")
    model.add_argument("--conditioning_embedding_init", type=str, default="default",
                       choices=CONDITIONING_EMBEDDING_INITS,
                       help="SD 1.5, SDXL: how a new ControlNet's conditioning embedding starts. default: as "
                            "from_unet makes it (PyTorch's init, under which its layers all but erase the condition: "
                            "when the ControlNet starts to follow it varies from run to run); kaiming: He-initialised, "
                            "zero biases (the condition reaches the ControlNet from the first step). Its last conv and "
                            "the zero convolutions stay zero either way. The course's flag.")
    model.add_argument("--revision", type=str, default=None, help="Revision of the base model on the hub.")
    model.add_argument("--variant", type=str, default=None, help="Weights variant of the base model, e.g. fp16.")
    model.add_argument("--tokenizer_name", type=str, default=None, help="Tokenizer, if not the base model's.")
    model.add_argument("--pretrained_vae_model_name_or_path", type=str, default=None,
                       help="A VAE to use instead of the base's, e.g. madebyollin/sdxl-vae-fp16-fix (SDXL's own "
                            "VAE overflows in fp16: black images).")

    out = p.add_argument_group("output and checkpoints")
    out.add_argument("--output_dir", type=str, default="controlnet-model")
    out.add_argument("--cache_dir", type=str, default=None, help="Where downloaded models and data go.")
    out.add_argument("--checkpointing_steps", type=int, default=500, help="Save the training state every N steps.")
    out.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    out.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help="A checkpoint-N folder, or 'latest'.")

    data = p.add_argument_group("data")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="Hub id or local folder of the data (fusing/fill50k works despite its loading script).")
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--train_data_dir", type=str, default=None, help="An imagefolder with metadata.jsonl.")
    data.add_argument("--image_column", type=str, default="image", help="Target image column.")
    data.add_argument("--conditioning_image_column", type=str, default="conditioning_image",
                      help="Conditioning image column.")
    data.add_argument("--caption_column", type=str, default="text", help="Caption column.")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--proportion_empty_prompts", type=float, default=0,
                      help="Share of prompts replaced by the empty prompt (classifier-free guidance).")
    data.add_argument("--resolution", type=int, default=512, help="Training resolution, a multiple of 8.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    data.add_argument("--image_interpolation_mode", type=str, default=None, choices=INTERPOLATION_MODES,
                      help="Resize filter. Default: lanczos for SDXL (train_controlnet_sdxl.py's), bilinear for "
                           "SD 1.5 (train_controlnet.py's).")
    data.add_argument("--crops_coords_top_left_h", type=int, default=0,
                      help="SDXL: the crop's top coordinate given to the UNet (add_time_ids).")
    data.add_argument("--crops_coords_top_left_w", type=int, default=0,
                      help="SDXL: the crop's left coordinate given to the UNet (add_time_ids).")
    data.add_argument("--cache", choices=["auto", "always", "never"], default="auto",
                      help="Encode latents and text once (auto: when the run reads every example at least once "
                           "and the cache fits in 4 GiB and in half the available RAM).")
    data.add_argument("--skip_bad_images", action="store_true",
                      help="Before training, read every image and leave out the rows whose image or conditioning "
                           "image cannot be read (each is named in a warning). By default an unreadable image "
                           "stops the run, naming its file.")

    schedule = p.add_argument_group("schedule")
    schedule.add_argument("--seed", type=int, default=None)
    schedule.add_argument("--train_batch_size", type=int, default=4, help="Batch size per device.")
    schedule.add_argument("--num_train_epochs", type=int, default=1)
    schedule.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    schedule.add_argument("--gradient_accumulation_steps", type=int, default=1)
    schedule.add_argument("--snr_gamma", type=float, default=None,
                          help="Min-SNR weighting γ (5.0 is the paper's choice); off by default.")

    optim = p.add_argument_group("optimizer")
    optim.add_argument("--learning_rate", type=float, default=5e-6)
    optim.add_argument("--scale_lr", action="store_true", default=False,
                       help="Multiply the learning rate by accumulation x batch size x processes.")
    optim.add_argument("--lr_scheduler", type=str, default="constant",
                       help="linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup")
    optim.add_argument("--lr_warmup_steps", type=int, default=500)
    optim.add_argument("--lr_num_cycles", type=int, default=1)
    optim.add_argument("--lr_power", type=float, default=1.0)
    optim.add_argument("--use_8bit_adam", action="store_true", help="8-bit AdamW from bitsandbytes.")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=1e-2)
    optim.add_argument("--adam_epsilon", type=float, default=1e-08)
    optim.add_argument("--max_grad_norm", default=1.0, type=float,
                       help="Clip gradients to this global norm; 0 turns clipping off.")
    optim.add_argument("--lora_rank", type=int, default=None,
                       help="Train a LoRA ControlNet: adapters of this rank on the blocks copied from the denoiser, the "
                            "conditioning embedding and zero convolutions in full (cnhelpers.lora; the course's "
                            "addition). Saved merged (loads as any ControlNet) and as adapters in output_dir/lora.")
    optim.add_argument("--lora_alpha", type=float, default=None,
                       help="The LoRA update's scale is lora_alpha / lora_rank (default: alpha = rank, a scale of 1).")

    memory = p.add_argument_group("memory and speed")
    memory.add_argument("--gradient_checkpointing", action="store_true",
                        help="Checkpoint the ControlNet's activations (recomputed in backward), as upstream does.")
    memory.add_argument("--checkpoint_frozen_unet", action="store_true",
                        help="Checkpoint the frozen UNet too: the loss reaches the ControlNet through it, so its "
                             "activations are kept for backward as well. Less memory for more time a step (measured on "
                             "SD 1.5: benchmarks/results/sd15-ladder-h200-2026-11-26.md; the course's addition, "
                             "upstream has no such flag).")
    memory.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere and newer GPUs.")
    memory.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Default: the accelerate config's value.")
    memory.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    memory.add_argument("--set_grads_to_none", action="store_true")
    memory.add_argument("--channels_last", action="store_true",
                        help="Both models in the channels-last (NHWC) layout, which cuDNN's and oneDNN's fastest "
                             "convolutions read; the same arithmetic (the course's addition).")
    memory.add_argument("--torch_compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="Compile the UNet's and the ControlNet's forward and backward with torch.compile "
                             "(BACKEND: inductor when left out). The first step compiles (minutes on a CPU with an empty "
                             "compile cache, seconds with a filled one), so only a long run earns it back (the "
                             "course's addition).")
    memory.add_argument("--torch_compile_mode", default=None, choices=COMPILE_MODES,
                        help="torch.compile's mode with --torch_compile inductor (reduce-overhead: CUDA graphs).")
    memory.add_argument("--optimizer_in_backward", action="store_true",
                        help="Update each parameter inside backward as soon as its gradient exists, then free "
                             "the gradient: saves the whole gradient buffer. Needs --max_grad_norm 0, "
                             "--gradient_accumulation_steps 1, bf16 or no mixed precision, one process.")

    hub = p.add_argument_group("hub and logging")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_token", type=str, default=None)
    hub.add_argument("--hub_model_id", type=str, default=None)
    hub.add_argument("--logging_dir", type=str, default="logs", help="TensorBoard logs, under output_dir.")
    hub.add_argument("--report_to", type=str, default="tensorboard", help="tensorboard, wandb, comet_ml, all or none")
    hub.add_argument("--tracker_project_name", type=str, default="train_controlnet")

    transformers = p.add_argument_group(
        "SD3 and Flux (upstream's train_controlnet_sd3.py and train_controlnet_flux.py; refused on other bases)")
    transformers.add_argument("--num_controlnet_layers", type=int, default=None,
                              help="SD3: joint blocks the new ControlNet copies from the transformer (default: "
                                   "SD3ControlNetModel.from_transformer's 12, at most all but the transformer's last; the "
                                   "course's "
                                   "flag, upstream's script always takes 12).")
    transformers.add_argument("--num_extra_conditioning_channels", type=int, default=0,
                              help="SD3: channels the ControlNet reads besides the condition's latents (0: the "
                                   "training data has none).")
    transformers.add_argument("--upcast_vae", action="store_true",
                              help="SD3: keep the VAE in float32 under mixed precision.")
    transformers.add_argument("--weighting_scheme", type=str, default="logit_normal", choices=WEIGHTING_SCHEMES,
                              help="SD3, Flux: the timestep density (logit_normal, mode; else uniform) and, for SD3, "
                                   "the loss weighting (sigma_sqrt, cosmap).")
    transformers.add_argument("--logit_mean", type=float, default=0.0, help="SD3, Flux: logit_normal's mean.")
    transformers.add_argument("--logit_std", type=float, default=1.0, help="SD3, Flux: logit_normal's std.")
    transformers.add_argument("--mode_scale", type=float, default=1.29, help="SD3, Flux: the mode density's scale.")
    transformers.add_argument("--precondition_outputs", type=int, default=1,
                              help="SD3: 1 maps the prediction to the clean latents (pred * -sigma + x_t) and compares "
                                   "those; 0 compares the velocity (noise - x0).")
    transformers.add_argument("--max_sequence_length", type=int, default=None,
                              help="SD3, Flux: T5's tokens per prompt (default: 77 for SD3, upstream's SD3 script; 512 "
                                   "for Flux, its pipeline's); a longer caption is refused.")
    transformers.add_argument("--num_double_layers", type=int, default=4,
                              help="Flux: double-stream blocks the new ControlNet copies (at most the transformer's).")
    transformers.add_argument("--num_single_layers", type=int, default=4,
                              help="Flux: single-stream blocks the new ControlNet copies (at most the transformer's).")
    transformers.add_argument("--guidance_scale", type=float, default=3.5,
                              help="Flux: the guidance embedding's value while training and validating (FLUX.1-dev's "
                                   "3.5), for a transformer that has one.")

    validation = p.add_argument_group("validation")
    validation.add_argument("--validation_prompt", type=str, default=None, nargs="+")
    validation.add_argument("--validation_image", type=str, default=None, nargs="+",
                            help="Conditioning image paths: one per prompt, or one for all prompts.")
    validation.add_argument("--num_validation_images", type=int, default=4, help="Images per (prompt, image).")
    validation.add_argument("--validation_steps", type=int, default=100)
    validation.add_argument("--num_validation_inference_steps", type=int, default=20)
    validation.add_argument("--validation_guidance_scale", type=float, default=7.5,
                            help="Classifier-free guidance of the validation images (the pipeline's default "
                                 "7.5, as upstream; the tiny base looks right at 3).")
    validation.add_argument("--validation_condition", type=str, default=None, metavar="NAME",
                            help="Score control at each validation, as ControlNet++ does: the condition NAME (canny, "
                                 "softedge, scribble, grayscale, blur, lowres, or module:function) extracted again "
                                 "from each validation picture and compared with its --validation_image (edge F1, "
                                 "mask IoU, or 1 - mean absolute error of a map); written to train_log.jsonl and the "
                                 "trackers as consistency (the course's addition).")
    return p


def check_args(args) -> None:
    """Reject contradictory or impossible flag combinations with a message that says what to change."""
    import torch

    if args.dataset_name is None and args.train_data_dir is None:
        raise ValueError("Give the data: --dataset_name (hub id or folder) or --train_data_dir (an imagefolder).")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError("Give only one of --dataset_name and --train_data_dir.")
    if not 0 <= args.proportion_empty_prompts <= 1:
        raise ValueError(f"--proportion_empty_prompts must be in [0, 1], got {args.proportion_empty_prompts}.")
    if (args.validation_prompt is None) != (args.validation_image is None):
        missing = "--validation_image" if args.validation_image is None else "--validation_prompt"
        raise ValueError(f"{missing} must be given too: validation needs prompts and conditioning images.")
    if args.validation_prompt is not None:
        n_prompts, n_images = len(args.validation_prompt), len(args.validation_image)
        if 1 not in (n_prompts, n_images) and n_prompts != n_images:
            raise ValueError(f"{n_prompts} validation prompts but {n_images} validation images: give as many of "
                             "each, or one image for all prompts, or one prompt for all images.")
    check_resolution(args.resolution)
    if args.validation_condition is not None:
        if args.validation_prompt is None:
            raise ValueError("--validation_condition scores the validation pictures: give --validation_prompt and "
                             "--validation_image too.")
        condition_function(args.validation_condition)  # an unknown name or a module that cannot be imported
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed_precision fp16 needs a CUDA GPU and none is available. On a CPU use "
                         "--mixed_precision no (or bf16, which CPUs support).")
    if min(args.crops_coords_top_left_h, args.crops_coords_top_left_w) < 0:
        raise ValueError("--crops_coords_top_left_h/w are pixel coordinates of a crop's corner: 0 or more.")
    check_lora_flags(args.lora_rank, args.lora_alpha)
    if args.conditioning_embedding_init != "default" and args.controlnet_model_name_or_path:
        raise ValueError(f"--conditioning_embedding_init {args.conditioning_embedding_init} starts a new ControlNet, "
                         "but --controlnet_model_name_or_path loads a trained one: leave one of them out.")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        raise ValueError(f"--snr_gamma must be positive (5.0 is usual), got {args.snr_gamma}.")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate:g}: a ControlNet trains at "
                         "about 1e-5 (the course's tiny base at 1e-4 to 1e-3).")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps",
                 "num_train_epochs", "num_validation_images", "num_validation_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    for name in ("max_train_steps", "max_train_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)} (leave it out for "
                             f"{'--num_train_epochs' if name == 'max_train_steps' else 'every example'}).")
    for name in ("lr_warmup_steps", "dataloader_num_workers", "max_grad_norm"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be 0 or more, got {getattr(args, name)}.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError("--checkpoints_total_limit must be at least 1 (or left out to keep every checkpoint).")
    if args.max_sequence_length is not None and not 1 <= args.max_sequence_length <= 512:
        raise ValueError(f"--max_sequence_length must be between 1 and 512 (the SD3 and Flux pipelines' limit), got "
                         f"{args.max_sequence_length}.")
    if args.num_controlnet_layers is not None and args.num_controlnet_layers < 1:
        raise ValueError(f"--num_controlnet_layers must be at least 1, got {args.num_controlnet_layers}.")
    for name in ("num_double_layers", "num_single_layers", "num_extra_conditioning_channels"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be 0 or more, got {getattr(args, name)}.")
    if not args.logit_std > 0:
        raise ValueError(f"--logit_std must be positive, got {args.logit_std}.")
    if args.torch_compile_mode is not None and args.torch_compile != "inductor":
        raise ValueError(f"--torch_compile_mode {args.torch_compile_mode} sets a mode of inductor, torch.compile's "
                         "kernel-writing backend: add --torch_compile (inductor is its default), or leave the mode out.")


def check_paths(args) -> None:
    """Refuse, before any work, paths that cannot work: an ``--output_dir`` that is a file (or under one) or
    cannot be written, a missing ``--train_data_dir``, a missing or unreadable ``--validation_image``.

    Nothing is created here (:func:`cnhelpers.training.setup` makes ``output_dir`` after every check).
    """
    output_dir = Path(args.output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {args.output_dir} is a file, not a folder: pass a folder path (it is made "
                         "if missing), or move that file away.")
    nearest = next((p for p in (output_dir.absolute(), *output_dir.absolute().parents) if p.exists()), None)
    if nearest is not None and not nearest.is_dir():
        raise ValueError(f"--output_dir {args.output_dir} cannot be made: {nearest} is a file. Pass a folder path "
                         "whose parents are folders.")
    if nearest is not None and not os.access(nearest, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {args.output_dir} cannot be written ({nearest} is not writable for you): "
                         "pass a folder you can write to.")
    if args.train_data_dir is not None and not Path(args.train_data_dir).expanduser().is_dir():
        what = "is a file" if Path(args.train_data_dir).expanduser().exists() else "does not exist"
        raise FileNotFoundError(f"--train_data_dir {args.train_data_dir} {what}: pass an imagefolder (a folder with "
                                "metadata.jsonl and the images it names; cnhelpers.course.fill.write_fill_imagefolder "
                                "writes one), or a data set with --dataset_name.")
    for image in args.validation_image or []:
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--validation_image {image} does not exist: pass the path of a conditioning "
                                    "image (e.g. an outline PNG), or leave out --validation_prompt and "
                                    "--validation_image.")
        try:
            with Image.open(path) as opened:
                opened.verify()
        except Exception as error:
            raise ValueError(f"--validation_image {image} is not a readable image ({type(error).__name__}: "
                             f"{error}): pass a PNG or JPEG conditioning image.") from error


def parse_args(argv=None):
    """Parse and check the flags (``argv`` defaults to the command line)."""
    args = build_parser().parse_args(argv)
    check_args(args)
    return args


def training_args(**flags):
    """Flags as keyword arguments, for notebooks: ``training_args(resolution=64, validation_prompt=["..."])``.

    Each value is taken as it is (paths become strings; a single string for a many-valued flag such as
    ``validation_prompt`` becomes a one-item list); names are checked against the parser's, and the result
    against :func:`check_args`, exactly as on the command line.
    """
    parser = build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    unknown = [name for name in flags if name not in actions]
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, actions, n=1))
                 else name for name in unknown]
        raise ValueError(f"Unknown training flags: {', '.join(hints)}. `python -m cnhelpers.train --help` lists "
                         "them all.")
    values = {name: action.default for name, action in actions.items()}
    for name, value in flags.items():
        action = actions[name]
        if value is None:  # as on the command line: a flag left out keeps its default
            continue
        if isinstance(value, Path):
            value = str(value)
        if action.nargs == "+":
            value = [str(v) if isinstance(v, Path) else v for v in (value if isinstance(value, (list, tuple))
                                                                    else [value])]
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, action.choices))}.")
        values[name] = value
    missing = [name for name, action in actions.items() if action.required and values[name] is None]
    if missing:
        raise ValueError(f"training_args needs {', '.join(missing)}.")
    args = argparse.Namespace(**values)
    check_args(args)
    return args


def changed_flags(args) -> dict:
    """The flags of ``args`` that differ from the parser's defaults: the whole recipe of a run, nothing hidden."""
    defaults = {action.dest: action.default for action in build_parser()._actions if action.dest != "help"}
    return {name: value for name, value in vars(args).items() if name in defaults and value != defaults[name]}


def resolved_args(args, num_processes: int = 1):
    """A copy of ``args`` as a run uses it: a seed drawn when none is given, and the learning rate multiplied
    by accumulation x batch size x processes under ``--scale_lr``. ``args`` itself is left as it is, so calling
    ``train`` twice with the same flags trains twice with the same settings."""
    resolved = argparse.Namespace(**vars(args))
    if resolved.seed is None:
        resolved.seed = int(np.random.SeedSequence().generate_state(1)[0] % 2**31)
    if resolved.scale_lr:
        resolved.learning_rate = (args.learning_rate * args.gradient_accumulation_steps * args.train_batch_size
                                  * num_processes)
    return resolved


def check_push_to_hub(args) -> None:
    """Fail before training, not after it, when ``--push_to_hub`` cannot work (offline or not logged in)."""

    if hub_offline():
        raise HubUnavailableError("--push_to_hub was given but HF_HUB_OFFLINE is set: train without --push_to_hub "
                                  "and upload output_dir later with `hf upload`.")
    from huggingface_hub import HfApi

    try:
        HfApi().whoami(token=args.hub_token)
    except Exception as error:
        raise HubUnavailableError(
            f"--push_to_hub cannot reach the Hugging Face Hub or you are not logged in ({type(error).__name__}: "
            f"{error}). Log in with `hf auth login` (or pass --hub_token), or train without --push_to_hub and "
            "upload output_dir later with `hf upload`.") from error
