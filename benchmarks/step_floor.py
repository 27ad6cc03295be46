"""The floor under any script's training step: the models' own arithmetic, timed alone.

    OMP_NUM_THREADS=1 python benchmarks/step_floor.py [--threads 1] [--torch_compile]

A ControlNet training step must at least run the ControlNet forward, the frozen UNet forward with the
ControlNet's residuals, the backward through both to the ControlNet's weights, and the AdamW update. This times
exactly that, on the tiny model at ``train_throughput.py``'s sizes (64 px, batch 4, fp32, one thread), with the
models as the course's ``prepare_models`` lays them out and fixed random inputs: no data loading, no VAE or text
encoder, no noising, no logging. Whatever a script does around the models, its s/step cannot fall below the sum
with these kernels, so upstream's s/step divided by it is the most any script can gain over upstream on this
machine without faster kernels. ``train_throughput.py --floor`` prints that ratio beside the measured ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnhelpers.config import training_args
from cnhelpers.course.fill import ensure_fill_dataset
from cnhelpers.course.tiny_bases import ensure_tiny_base
from cnhelpers.losses import predict_noise
from cnhelpers.optim import make_optimizer
from cnhelpers.training import prepare_models, setup


def floor_inputs(models, batch_size: int, resolution: int, generator: torch.Generator, conditioning_layout,
                 latent_layout) -> dict:
    """Fixed random inputs of one step at the models' shapes: noisy latents, timesteps, text states, condition."""
    factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
    side = resolution // factor
    unet = models.unet.config
    latents = torch.randn(batch_size, unet.in_channels, side, side, generator=generator)
    return {"latents": latents.contiguous(memory_format=latent_layout),
            "timesteps": torch.randint(0, 1000, (batch_size,), generator=generator),
            "encoder_hidden_states": torch.randn(batch_size, 77, unet.cross_attention_dim, generator=generator),
            "conditioning": torch.rand(batch_size, 3, resolution, resolution, generator=generator).contiguous(
                memory_format=conditioning_layout)}


def time_per_call(work, steps: int, repeats: int, warmup: int) -> float:
    """Median seconds per call of ``work`` over ``repeats`` blocks of ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        work()
    blocks = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            work()
        blocks.append((time.perf_counter() - start) / steps)
    return statistics.median(blocks)


def measure_floor(threads: int = 1, torch_compile: str | None = None, channels_last: bool = False, steps: int = 20,
                  repeats: int = 5, warmup: int = 3, batch_size: int = 4, resolution: int = 64, base=None,
                  data=None) -> dict:
    """Seconds per step of the models' forward and backward, and of the AdamW update, on the tiny base (``base``
    and ``data``: the course's own tiny base and fill data set when not given)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(pretrained_model_name_or_path=str(base or ensure_tiny_base()),
                             train_data_dir=str(data or ensure_fill_dataset(512, resolution)),
                             output_dir=str(Path(tmp) / "out"), resolution=resolution, train_batch_size=batch_size,
                             learning_rate=1e-5, seed=0, mixed_precision="no", report_to="none",
                             torch_compile=torch_compile, channels_last=channels_last)
        args, accelerator = setup(args)
        parts = prepare_models(args, accelerator)
    unet, controlnet = parts.models.unet, parts.models.controlnet
    controlnet.train()
    generator = torch.Generator().manual_seed(0)
    inputs = floor_inputs(parts.models, batch_size, resolution, generator, parts.conditioning_layout,
                          parts.latent_layout)
    target = torch.randn(inputs["latents"].shape, generator=generator)
    params = [p for p in controlnet.parameters() if p.requires_grad]

    def forward_backward():
        for p in params:  # as the loop's zero_grad(set_to_none=True): each backward writes new gradients
            p.grad = None
        F.mse_loss(predict_noise(unet, controlnet, inputs).float(), target).backward()

    models_s = time_per_call(forward_backward, steps, repeats, warmup)
    # the course's AdamW (fused), on the last backward's gradients
    optimizer = make_optimizer(params, learning_rate=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                               epsilon=args.adam_epsilon, weight_decay=args.adam_weight_decay)
    update_s = time_per_call(optimizer.step, steps, repeats, warmup)
    return {"threads": threads, "torch_compile": torch_compile, "channels_last": channels_last,
            "batch_size": batch_size, "resolution": resolution,
            "models_s_per_step": models_s, "adamw_s_per_step": update_s, "floor_s_per_step": models_s + update_s,
            "controlnet_params_with_grad": sum(p.grad is not None for p in params), "controlnet_params": len(params)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch_compile", nargs="?", const="inductor", default=None, metavar="BACKEND")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--steps", type=int, default=20, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks (the median is kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    floor = measure_floor(args.threads, args.torch_compile, args.channels_last, args.steps, args.repeats)
    how = f"compiled ({args.torch_compile})" if args.torch_compile else "eager"
    how += ", channels-last" if args.channels_last else ""
    print(f"models alone, {how}, {args.threads} thread(s), 64 px, batch 4: forward + backward "
          f"{floor['models_s_per_step']:.4f} s/step, AdamW update {floor['adamw_s_per_step']:.4f} s/step, "
          f"floor {floor['floor_s_per_step']:.4f} s/step")
    if args.json:
        args.json.write_text(json.dumps(floor, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
