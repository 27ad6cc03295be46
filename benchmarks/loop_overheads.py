"""What the course's loop does besides the models, each part timed alone on its own, beside the step it is part of.

    OMP_NUM_THREADS=1 python benchmarks/loop_overheads.py [--repeats 2000]

The training loop added, since its first throughput measurement, a flushed line of ``train_log.jsonl`` per
step, a signal guard around the run, a manifest per checkpoint and a memory estimate before the first step. This
times each one alone (the median of ``--repeats`` calls, after a warm-up) and prints it per step and as a share
of a tiny training step timed the same way (``step_floor.py``'s forward, backward and AdamW update), so one can
see which of them could explain a slower loop. Work done once per run (the guard, the estimate) or once per
checkpoint (the manifest) is shown per call; a throughput run's step-count difference cancels what happens once.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def median_seconds(work, repeats: int) -> float:
    """Median wall seconds of ``work()`` over ``repeats`` calls, after 10 untimed ones."""
    for _ in range(10):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from cnhelpers.checkpoints import write_manifest
    from cnhelpers.course.tiny_bases import ensure_tiny_base
    from cnhelpers.loading import check_step_fits_memory, load_models
    from cnhelpers.outputs import TrainLog
    from cnhelpers.training import SignalGuard, step_generator

    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log = TrainLog(tmp / "train_log.jsonl")
        entry = {"step": 1, "loss": 0.123456, "lr": 1e-4, "epoch": 0}
        rows["train_log.jsonl line (per step)"] = median_seconds(lambda: log.append(entry), args.repeats)
        rows["step generator (per micro-step)"] = median_seconds(lambda: step_generator(0, 0, 7, "cpu"), args.repeats)
        bar = tqdm(total=10**9, mininterval=2, disable=True)
        rows["progress postfix (per step)"] = median_seconds(
            lambda: bar.set_postfix(loss="0.1234", lr="1.00e-04", refresh=False), args.repeats)

        def guard():
            with SignalGuard(tmp):
                pass
        rows["signal guard (per run)"] = median_seconds(guard, min(args.repeats, 200))

        models = load_models(ensure_tiny_base())
        checkpoint = tmp / "checkpoint-1"
        models.controlnet.save_pretrained(checkpoint / "controlnet")
        torch.save({"state": [torch.zeros(10)]}, checkpoint / "optimizer.bin")
        rows["checkpoint manifest (per checkpoint)"] = median_seconds(lambda: write_manifest(checkpoint, 1),
                                                                      min(args.repeats, 200))
        rows["memory estimate (per run)"] = median_seconds(
            lambda: check_step_fits_memory(models, 64, 4, "cpu"), min(args.repeats, 200))

    floor = step_floor_seconds()
    print(f"one tiny training step's models alone (step_floor.py, 64 px, batch 4, 1 thread): {floor * 1000:.1f} ms")
    print(f"{'part':<40} {'median':>10} {'share of a step':>16}")
    for name, seconds in rows.items():
        print(f"{name:<40} {seconds * 1e6:>8.1f} µs {seconds / floor:>15.3%}")
    return 0


def step_floor_seconds() -> float:
    """The models' own arithmetic per step, as ``benchmarks/step_floor.py`` times it (median seconds)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_floor", Path(__file__).with_name("step_floor.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure_floor(steps=20)["floor_s_per_step"]


if __name__ == "__main__":
    raise SystemExit(main())
