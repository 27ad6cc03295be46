"""The memory ladder: peak memory and speed of ControlNet training, one memory trick at a time.

    python benchmarks/memory_ladder.py --arch tiny --resolution 64 --batch 1
    python benchmarks/memory_ladder.py --arch sd15 --resolution 512 --batch 1 --throughput-batch 8   # on a GPU
    python benchmarks/memory_ladder.py --arch sd15 --rungs 1 --throughput-batch 8 --throughput-fast   # + compiled
    python benchmarks/memory_ladder.py --arch sd15 --steps 2 --count-tensors --half bf16 --rungs 6,7   # on a CPU

The models are built from configs with random weights (memory and speed depend on the architecture, not
on the weight values), so the SD 1.5 architecture needs no download: UNet ~860M, ControlNet ~361M, the
CLIP ViT-L/14 text encoder, SD's VAE. Each rung runs a few steps of the course's own training loop
(``cnhelpers.training.train``) in a fresh child process, with the flags of ``cnhelpers.course.memory.LADDER``.
A rung this machine cannot run is printed as skipped, with the reason.

Peak memory is CUDA's ``max_memory_allocated`` on a GPU, else the child's peak RSS; with ``--count-tensors``
it is the peak of live tensor bytes counted op by op (``cnhelpers.course.memory.LiveTensorBytes``), on any device:
on a CPU, the tensors a GPU would hold, split into weights, gradients, optimizer state and activations.
``--half bf16`` runs the fp16 rungs in bf16 (the same bytes; CPUs autocast bf16 only).
``--throughput-fast`` measures the throughput run a second time with ``--channels_last --torch_compile`` (its
compiling first step is not timed: every rung is timed from the end of step 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

RESULT_TAG = "LADDER-RESULT "


def build_base(arch: str, folder: Path) -> Path:
    """A base model folder of the given architecture: the course's tiny base, or SD 1.5's with seeded random weights.

    The tiny one is the course's own (``ensure_tiny_base``: always today's architecture); an SD 1.5 folder
    left in ``folder`` by an earlier run is reused when its UNet has SD 1.5's config.
    """
    from cnhelpers.course.tiny_bases import SD15_UNET_CONFIG, build_sd15_random_base, ensure_tiny_base, is_complete_base

    if arch == "tiny":
        return ensure_tiny_base()
    if is_complete_base(folder):
        saved = json.loads((folder / "unet" / "config.json").read_text())
        if all(saved.get(key) == (list(value) if isinstance(value, tuple) else value)
               for key, value in SD15_UNET_CONFIG.items()):
            return folder
    return build_sd15_random_base(folder)


def child(args) -> int:
    """Run one rung in this process and print its measurements as a tagged JSON line."""
    import torch

    from cnhelpers.config import training_args
    from cnhelpers.course.memory import LiveTensorBytes, PeakMemory
    from cnhelpers.training import train

    flags = json.loads(args.flags)
    peak, marks = PeakMemory(), {}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where train() puts the models
    count = LiveTensorBytes(device) if args.count_tensors else contextlib.nullcontext()

    def measure(logs):
        if logs["step"] == 1:  # the optimizer state exists now; time and measure from here
            peak.start()
            if args.count_tensors:
                count.reset_peak()
            marks["start"] = time.perf_counter()
        if logs["step"] == args.steps:
            peak.stop()
            if args.count_tensors:
                marks["counted"] = count.peak_bytes, dict(count.peak_breakdown)
            marks["end"] = time.perf_counter()

    with count:
        train(training_args(**flags), callback=measure)
    result = {"peak_bytes": peak.peak_bytes, "cuda": torch.cuda.is_available(),
              "s_per_step": (marks["end"] - marks["start"]) / (args.steps - 1)}
    if args.count_tensors:  # the device's own figure stays beside the count (on a GPU: a check of the count)
        result["device_peak_bytes"] = result["peak_bytes"]
        result["peak_bytes"], result["breakdown_bytes"] = marks["counted"]
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def run_child(flags: dict, steps: int, deepspeed_config: Path | None, threads: int, timeout: int = 600,
              count_tensors: bool = False) -> dict:
    """Start a child for one rung (under ``accelerate launch`` for DeepSpeed) and read its result."""
    script = [str(Path(__file__).resolve()), "--child", "--steps", str(steps), "--flags", json.dumps(flags)]
    script += ["--count-tensors"] if count_tensors else []
    if deepspeed_config is None:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(deepspeed_config), *script]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": f"timed out after {timeout} s"}
    if process.returncode != 0:
        return {"error": (stderr.strip().splitlines() or ["failed"])[-1][:300]}
    line = next(l for l in stdout.splitlines() if l.startswith(RESULT_TAG))
    return json.loads(line[len(RESULT_TAG):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 512 (sd15)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="training steps per rung (timed from step 1)")
    parser.add_argument("--rungs", default=None, help="which rungs, e.g. 1,3,6 (default: all)")
    parser.add_argument("--throughput-batch", type=int, default=0,
                        help="also measure samples/s at this batch size in bf16 with SDPA")
    parser.add_argument("--throughput-fast", action="store_true",
                        help="and again with --channels_last --torch_compile (inductor)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per child")
    parser.add_argument("--jobs", type=int, default=1,
                        help="rungs run at a time (with --count-tensors only: the counts do not depend on it, the "
                             "s/step and a device's peak do)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per rung")
    parser.add_argument("--count-tensors", action="store_true",
                        help="peak = live tensor bytes counted op by op (any device), with a breakdown")
    parser.add_argument("--half", choices=["fp16", "bf16"], default="fp16",
                        help="the half precision of the mixed-precision rungs (bf16 runs on CPUs too)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the models and data (kept)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table as Markdown here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flags", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: run at least one rung at a time (--jobs 1, the default)")
    if args.jobs > 1 and not args.count_tensors:
        parser.error(f"--jobs {args.jobs} runs rungs side by side, so each one's peak and s/step would include the "
                     "others' load: use it with --count-tensors, or leave --jobs at 1")

    import torch

    from cnhelpers.course.fill import write_fill_imagefolder
    from cnhelpers.course.memory import LADDER, LADDER_VERSION, missing_requirements, rung_flags, write_deepspeed_config
    from cnhelpers.optim import xformers_available

    resolution = args.resolution or (64 if args.arch == "tiny" else 512)
    work = args.work or Path(tempfile.mkdtemp(prefix="ladder-"))
    started = time.perf_counter()
    base = build_base(args.arch, work / f"base-{args.arch}")
    data = work / f"fill-{resolution}"
    if not (data / "metadata.jsonl").is_file():
        write_fill_imagefolder(data, max(16, 4 * args.batch), resolution, seed=0)
    print(f"models and data ready in {time.perf_counter() - started:.0f} s ({work})", flush=True)

    common = {"pretrained_model_name_or_path": str(base), "train_data_dir": str(data), "resolution": resolution,
              "train_batch_size": args.batch, "max_train_steps": args.steps, "learning_rate": 1e-5,
              "lr_warmup_steps": 0, "seed": 0, "report_to": "none", "checkpointing_steps": 10**6}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    use_xformers = xformers_available()
    wanted = {int(n) for n in args.rungs.split(",")} if args.rungs else {r.number for r in LADDER}
    # a rung that cannot run here leaves its flags out of the rungs above it, asked for or not
    rows, skipped = [], {r.number for r in LADDER if missing_requirements(r, args.half)}
    rungs = [r for r in LADDER if r.number in wanted]

    def plan(rung, skipped):
        """The row of one rung, and the flags and DeepSpeed config it runs with (None: it is skipped here)."""
        row = {"rung": rung.number, "name": rung.name, "guide_gb": rung.guide_gb, "peak_gb": None,
               "s_per_step": None, "skipped": missing_requirements(rung, args.half)}
        if row["skipped"] is not None:
            return row, None, None
        flags = common | rung_flags(rung.number, use_xformers, skipped, args.half) | {
            "output_dir": str(work / f"run-{rung.number}")}
        ds_config = None
        if "deepspeed" in rung.needs:
            ds_config = write_deepspeed_config(work / "deepspeed.yaml",
                                               gradient_accumulation_steps=flags.get("gradient_accumulation_steps", 1),
                                               mixed_precision=flags.get("mixed_precision", "fp16"))
        return row, flags, ds_config

    def run(flags, ds_config):
        return run_child(flags, args.steps, ds_config, args.threads, args.timeout, args.count_tensors)

    def record(row, flags, result):
        if result is not None and "error" in result:
            row["skipped"] = f"failed: {result['error']}"
        elif result is not None:
            row["peak_gb"] = result["peak_bytes"] / 1e9
            row["s_per_step"] = result["s_per_step"]
            row["mixed_precision"] = flags.get("mixed_precision", "no")
            if "breakdown_bytes" in result:
                row["breakdown_gb"] = {k: v / 1e9 for k, v in result["breakdown_bytes"].items()}
                row["device_peak_gb"] = result["device_peak_bytes"] / 1e9
        if row["skipped"] is not None:
            skipped.add(row["rung"])
        elif skipped & set(range(1, row["rung"])):
            row["name"] += f" (without rung {', '.join(str(n) for n in sorted(skipped) if n < row['rung'])})"
        rows.append(row)
        print(format_row(row), flush=True)

    if args.jobs == 1:  # one after the other: a rung that fails here also leaves its flags out of the rungs above
        for rung in rungs:
            row, flags, ds_config = plan(rung, skipped)
            record(row, flags, run(flags, ds_config) if flags is not None else None)
    else:  # side by side (counts only): the rungs' flags are planned from what this machine lacks
        plans = [plan(rung, set(skipped)) for rung in rungs]
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda p: run(p[1], p[2]) if p[1] is not None else None, plans))
        for (row, flags, _), result in zip(plans, results):
            record(row, flags, result)

    throughput = throughput_fast = None
    if args.throughput_batch:
        flags = common | {"train_batch_size": args.throughput_batch, "cache": "always", "set_grads_to_none": True,
                          "mixed_precision": "bf16", "output_dir": str(work / "run-throughput")}
        throughput = measure_throughput(flags, args)
        if args.throughput_fast:
            # (its first step compiles both models, forward and backward: 300 s more allowed, a guess, not measured)
            throughput_fast = measure_throughput(flags | {"channels_last": True, "torch_compile": "inductor",
                                                          "output_dir": str(work / "run-throughput-fast")}, args,
                                                 timeout=args.timeout + 300)

    measure = ("live tensor bytes counted op by op (LiveTensorBytes) over the timed steps" if args.count_tensors else
               "CUDA max_memory_allocated over the timed steps" if torch.cuda.is_available() else
               "peak RSS of the child process")
    header = (f"Memory ladder, {args.arch} architecture, {resolution} px, batch {args.batch}, {args.steps} steps per "
              f"rung, on {device}, {date.today().isoformat()}; attention: "
              f"{'xFormers' if use_xformers else 'PyTorch SDPA'}; "
              f"{'fp16 rungs run in bf16; ' if args.half == 'bf16' else ''}peak = {measure}"
              + (f"; {args.jobs} rungs at a time (their s/step are not each its own)" if args.jobs > 1 else ""))
    table = markdown_table(rows, throughput, header, throughput_fast)
    print("\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "device": device, "measure": measure, "arch": args.arch,
                                         "resolution": resolution, "batch": args.batch, "ladder_version": LADDER_VERSION,
                                         "rows": rows,
                                         "throughput": throughput, "throughput_fast": throughput_fast}, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    return 0


def format_row(row: dict) -> str:
    if row["peak_gb"] is None:
        return f"rung {row['rung']}: {row['name']}: skipped ({row['skipped']})"
    peak = f"{row['peak_gb']:.2f} GB" if row["peak_gb"] >= 1 else f"{row['peak_gb'] * 1e3:.2f} MB"
    return f"rung {row['rung']}: {row['name']}: {peak}, {row['s_per_step']:.3f} s/step"


def measure_throughput(flags: dict, args, timeout: int | None = None) -> dict:
    """samples/s and the peak of one throughput run (``{"error": ...}`` if it failed)."""
    result = run_child(flags, args.steps, None, args.threads, timeout or args.timeout, args.count_tensors)
    if "error" in result:
        return {"error": result["error"]}
    return {"batch": flags["train_batch_size"], "samples_per_s": flags["train_batch_size"] / result["s_per_step"],
            "peak_gb": result["peak_bytes"] / 1e9}


def markdown_table(rows: list[dict], throughput: dict | None, header: str, throughput_fast: dict | None = None) -> str:
    """The ladder as a Markdown table, the guide's figure beside each measured one (in MB when all peaks are < 1 GB)."""
    unit, scale = ("GB", 1) if any((row["peak_gb"] or 0) >= 1 for row in rows) else ("MB", 1e3)
    lines = [header, "", "| rung | what | peak memory | s/step | the guide says |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        guide = f"{row['guide_gb']:g} GB" if row["guide_gb"] else "—"
        if row["peak_gb"] is None:
            lines.append(f"| {row['rung']} | {row['name']} | skipped: {row['skipped']} | — | {guide} |")
        else:
            lines.append(f"| {row['rung']} | {row['name']} | {row['peak_gb'] * scale:.2f} {unit} | "
                         f"{row['s_per_step']:.3f} | {guide} |")
    counted = [row for row in rows if row.get("breakdown_gb")]
    if counted:
        categories = list(counted[0]["breakdown_gb"])
        lines += ["", f"What the counted peak is made of ({unit}):", "",
                  "| rung | " + " | ".join(categories) + " |", "|" + " --- |" * (len(categories) + 1)]
        lines += [f"| {row['rung']} | " + " | ".join(f"{row['breakdown_gb'][c] * scale:.2f}" for c in categories) + " |"
                  for row in counted]
    for measured, what in ((throughput, "Throughput"), (throughput_fast, "Throughput with --channels_last "
                                                                         "--torch_compile")):
        if measured is None:
            continue
        if "error" in measured:
            lines += ["", f"{what} run failed: {measured['error']}"]
        else:
            lines += ["", f"{what}: {measured['samples_per_s']:.1f} samples/s at batch {measured['batch']}, "
                          f"bf16, SDPA, cached latents (peak {measured['peak_gb']:.2f} GB)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
