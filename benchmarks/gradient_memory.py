"""Gradient memory of ControlNet training, with and without the optimizer step in backward (runs on a CPU).

    python benchmarks/gradient_memory.py --arch sd15 --resolution 64 --steps 2

Builds the ControlNet of the architecture from its config with random weights (sd15: 361M parameters, no
download) and, in a fresh child process per mode, runs a few steps: the ControlNet on seeded stand-in
inputs, a loss on its residuals, backward, AdamW (8-bit unless --no-8bit). Reports two measurements:

- the peak bytes of gradients alive at once (``cnhelpers.course.memory.LiveGradientBytes``: exact, any device);
- the child's peak RSS (the whole process: Python, libraries, weights, optimizer state, activations).

Only the ControlNet runs: the frozen UNet the loss goes through in training adds the same memory to both
modes, and the gradient buffer (what the step in backward removes) is the ControlNet's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

RESULT_TAG = "GRADIENT-MEMORY "


def build_controlnet(arch: str):
    """The ControlNet of SD 1.5's (or the tiny model's) UNet, with seeded random weights."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from cnhelpers.course.tiny_bases import SD15_UNET_CONFIG, TINY_UNET_CONFIG

    config = SD15_UNET_CONFIG if arch == "sd15" else TINY_UNET_CONFIG
    with torch.device("meta"):  # the UNet only lends its config: never allocated
        unet = UNet2DConditionModel(**config)
        config = ControlNetModel.from_unet(unet, load_weights_from_unet=False).config
    torch.manual_seed(0)
    return ControlNetModel.from_config(config), unet.config


def child(args) -> int:
    import resource

    from cnhelpers.course.anatomy import demo_inputs
    from cnhelpers.course.memory import LiveGradientBytes
    from cnhelpers.losses import controlnet_residuals
    from cnhelpers.optim import make_optimizer

    controlnet, unet_config = build_controlnet(args.arch)
    controlnet.train()
    live = LiveGradientBytes(controlnet.parameters())  # first: its hooks see each gradient before it is freed
    optimizer = make_optimizer(controlnet.parameters(), learning_rate=1e-5, use_8bit=args.use_8bit_adam,
                               in_backward=args.mode == "in-backward")
    inputs = demo_inputs(type("Unet", (), {"config": unet_config})(), args.resolution, batch_size=1)
    for _ in range(args.steps):
        down, mid = controlnet_residuals(controlnet, inputs)
        loss = sum(r.float().square().mean() for r in [*down, mid])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    result = {"mode": args.mode, "parameters": sum(p.numel() for p in controlnet.parameters()),
              "all_gradient_bytes": sum(p.nbytes for p in controlnet.parameters()),
              "largest_parameter_bytes": max(p.nbytes for p in controlnet.parameters()),
              "peak_live_gradient_bytes": live.peak_bytes,
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-8bit", dest="use_8bit_adam", action="store_false", help="fp32 AdamW instead")
    parser.add_argument("--mode", choices=["usual", "in-backward"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        return child(args)

    rows = []
    for mode in ("usual", "in-backward"):
        command = [sys.executable, __file__, "--arch", args.arch, "--resolution", str(args.resolution),
                   "--steps", str(args.steps), "--mode", mode] + ([] if args.use_8bit_adam else ["--no-8bit"])
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        line = next(l for l in done.stdout.splitlines() if l.startswith(RESULT_TAG))
        rows.append(json.loads(line[len(RESULT_TAG):]))
    first = rows[0]
    print(f"ControlNet of the {args.arch} architecture: {first['parameters'] / 1e6:.1f} M parameters, all gradients "
          f"{first['all_gradient_bytes'] / 1e6:.1f} MB, largest parameter {first['largest_parameter_bytes'] / 1e6:.1f} MB; "
          f"{args.resolution} px, batch 1, {args.steps} steps, {'8-bit' if args.use_8bit_adam else 'fp32'} AdamW, on CPU")
    print(f"{'optimizer step':<16}{'peak live gradients':>22}{'peak RSS (process)':>22}")
    for row in rows:
        print(f"{row['mode']:<16}{row['peak_live_gradient_bytes'] / 1e6:>19.1f} MB"
              f"{row['peak_rss_bytes'] / 1e9:>19.2f} GB")
    saved = rows[0]["peak_rss_bytes"] - rows[1]["peak_rss_bytes"]
    print(f"peak RSS saved by the step in backward: {saved / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
