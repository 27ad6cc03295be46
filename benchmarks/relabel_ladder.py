"""Today's ladder rows from the 2026-11-26 measurements, which were taken on an older ladder.

    python benchmarks/relabel_ladder.py     # writes results/sd15-ladder-{h200,counted-cpu}-2026-11-26-ladder2.json

The 2026-11-26 runs numbered their rungs differently: batch 1 throughout (the guide's 38 GB default is at
batch 4), accumulation as a rung of its own, and ``--gradient_checkpointing`` covering the frozen UNet in
H200 run 2 and in the CPU count but not in H200 run 1. Each of today's rungs (``cnhelpers.course.memory.LADDER``)
takes the one measurement that ran exactly its flags; a rung no run matched stays unmeasured. Every row keeps
``measured_as`` (file and old rung), so nothing is moved without a trace.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnhelpers.course.memory import LADDER, LADDER_VERSION

RESULTS = Path(__file__).resolve().parent / "results"

#: today's rung -> (file, rung number in that file): the runs whose flags equal today's rung's.
SOURCES = {
    "sd15-ladder-h200-2026-11-26-ladder2.json": {
        # rung 1 (batch 4) was never measured; old rung 1 ran batch 1 without accumulation, which no rung is now
        2: ("sd15-ladder-h200-2026-11-26-run1.json", 2),  # batch 1, accumulation 4, fp32
        3: ("sd15-ladder-h200-2026-11-26-run1.json", 3),  # + ControlNet checkpointing + 8-bit (run 1: ControlNet only)
        4: ("sd15-ladder-h200-2026-11-26-run1.json", 4),  # + grads to None
        5: ("sd15-ladder-h200-2026-11-26-run2.json", 4),  # run 2 checkpointed the frozen UNet too
        6: ("sd15-ladder-h200-2026-11-26-run2.json", 5),
        7: ("sd15-ladder-h200-2026-11-26-run2.json", 6),
        # rung 8 (step in backward) was not measured on the GPU
        9: ("sd15-ladder-h200-2026-11-26-run1.json", 7),  # ZeRO-2 offload, ControlNet-only checkpointing, cached
    },
    "sd15-ladder-counted-cpu-2026-11-26-ladder2.json": {
        # the CPU count checkpointed the frozen UNet from old rung 3 on, so rungs 3 and 4 have no count
        2: ("sd15-ladder-counted-cpu-2026-11-26.json", 2),
        5: ("sd15-ladder-counted-cpu-2026-11-26.json", 4),
        6: ("sd15-ladder-counted-cpu-2026-11-26.json", 5),
        7: ("sd15-ladder-counted-cpu-2026-11-26.json", 6),
        8: ("sd15-ladder-counted-cpu-2026-11-26.json", 7),
    },
}


def relabel(target: str, sources: dict) -> dict:
    """One derived file: today's rung numbers and names, the measured figures unchanged."""
    loaded = {name: json.loads((RESULTS / name).read_text()) for name, _ in sources.values()}
    first = loaded[next(iter(sources.values()))[0]]
    rows = []
    for rung in LADDER:
        if rung.number not in sources:
            continue
        name, old = sources[rung.number]
        row = next(r for r in loaded[name]["rows"] if r["rung"] == old)
        rows.append(row | {"rung": rung.number, "name": rung.name, "guide_gb": rung.guide_gb,
                           "measured_as": f"{name}, rung {old} ({row['name']})"})
    return {"header": first["header"].replace(", batch 1,", ",").replace(" from rung 4", "") + "; rows relabelled to today's ladder",
            "device": first["device"], "measure": first.get("measure"), "arch": first["arch"],
            "resolution": first["resolution"], "ladder_version": LADDER_VERSION, "rows": rows,
            "throughput": loaded["sd15-ladder-h200-2026-11-26-run1.json"]["throughput"]
            if "sd15-ladder-h200-2026-11-26-run1.json" in loaded else None}


def main() -> int:
    for target, sources in SOURCES.items():
        (RESULTS / target).write_text(json.dumps(relabel(target, sources), indent=2) + "\n")
        print("wrote", target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
