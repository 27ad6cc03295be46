"""A LoRA ControlNet against full training on the tiny base: trainable parameters, optimizer-state bytes, and the
held-out circle IoU at equal steps.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/lora_vs_full.py [--rank 8] [--steps 200] [--every 50] [-n 8] \
        [--out benchmarks/results/lora-vs-full-tiny-cpu-DATE]

Sizes: the tiny base's ControlNet (``from_unet``) trained in full and with LoRA adapters of ``--ranks`` on its copied
blocks (``cnhelpers.lora.add_controlnet_lora``: the conditioning embedding and zero convolutions in full); the
optimizer-state bytes are measured, the tensors AdamW (``cnhelpers.optim.make_optimizer``) holds after one step. The
same counts for SD 1.5's ControlNet (its UNet's architecture, ``cnhelpers.course.tiny_bases.SD15_UNET_CONFIG``, built
on the meta device: nothing is allocated), where the state is AdamW's two float32 moments per trained parameter, the
rule the tiny measurement checks. Score: the tiny profile's recipe at a constant lr of 2e-3 (``fill_curves``, the
same run as ``condition_types.py``'s outline and ``knob_sweep.py``'s lr 2e-3) and the same with ``--lora_rank
--rank``, IoU of ``n`` held-out circles at each checkpoint. Prints a table; OUT.json holds every figure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from cnhelpers.course.tiny_bases import SD15_UNET_CONFIG
from cnhelpers.families.sd import FAMILY
from cnhelpers.lora import add_controlnet_lora, trainable_parameters
from cnhelpers.optim import make_optimizer
from fill_curves import BASE, Variant, markdown_table, run_curve, write_json


def optimizer_state_bytes(controlnet) -> int:
    """Bytes of the tensors AdamW holds for ``controlnet``'s trained parameters after one step."""
    parameters = trainable_parameters(controlnet)
    optimizer = make_optimizer(parameters, learning_rate=1e-4)
    for p in parameters:
        p.grad = torch.ones_like(p)
    optimizer.step()
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))


def sizes(make, rank: int | None) -> dict:
    controlnet = make()
    total = sum(p.numel() for p in controlnet.parameters())
    if rank is not None:
        add_controlnet_lora(controlnet, FAMILY.lora_layout(), rank)
    trained = sum(p.numel() for p in trainable_parameters(controlnet))
    row = {"rank": rank, "controlnet_parameters": total, "trainable": trained, "share": trained / total}
    if next(controlnet.parameters()).device.type != "meta":
        row["optimizer_state_bytes"] = optimizer_state_bytes(controlnet)
    row["adamw_float32_rule_bytes"] = 2 * 4 * trained
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8, help="the LoRA rank of the scored run")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 64], help="ranks whose sizes are counted")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("-n", type=int, default=8, help="held-out circles per checkpoint")
    parser.add_argument("--cached_only", action="store_true", help="report only runs already trained and scored")
    parser.add_argument("--out", type=Path, default=None, help="OUT.json is written")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    unet = UNet2DConditionModel.from_pretrained(BASE, subfolder="unet")
    with torch.device("meta"):
        sd15_unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    table = []
    for label, make in (("tiny base", lambda: ControlNetModel.from_unet(unet)),
                        ("SD 1.5 (meta, counted)", lambda: ControlNetModel.from_unet(sd15_unet))):
        for rank in (None, *args.ranks):
            with torch.device("meta") if label.startswith("SD") else torch.device("cpu"):
                row = {"model": label} | sizes(make, rank)
            table.append(row)
            state = row.get("optimizer_state_bytes")
            print(f"{label:<24} {'full' if rank is None else f'LoRA rank {rank}':<14} trains {row['trainable']:>12,} of "
                  f"{row['controlnet_parameters']:,} ({100 * row['share']:.1f} %); AdamW state "
                  + (f"{state:,} bytes measured, " if state is not None else "")
                  + f"{row['adamw_float32_rule_bytes']:,} by 8 bytes a parameter", flush=True)
    recipe = {"lr_scheduler": "constant", "learning_rate": 2e-3}
    curves = [run_curve(Variant("lr 0.002", recipe, args.steps, args.every), args.n, cached_only=args.cached_only),
              run_curve(Variant(f"LoRA rank {args.rank}", recipe | {"lora_rank": args.rank}, args.steps, args.every),
                        args.n, cached_only=args.cached_only)]
    curves = [row for row in curves if row is not None]
    if curves:
        curves[0] = curves[0] | {"name": "full"}
        print(markdown_table(curves))
    total = {"wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    print(f"this process: {total['cpu_seconds']:.0f} CPU s, {total['wall_seconds']:.0f} s wall")
    if args.out:
        write_json(args.out.with_suffix(".json"), {"sizes": table, "curves": curves, "n": args.n, "process": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
