#!/usr/bin/env bash
# The GPU checks of the memory ladder, as one script for a lent GPU machine (see benchmarks/README.md):
# the SD 1.5 architecture at 512 px, every rung at its own batch size (cnhelpers.course.memory.LADDER), and samples/s at batch 8 in bf16 with SDPA,
# eager and then with --channels_last --torch_compile (THROUGHPUT_FAST=0: eager only).
# Wheels the machine lacks (diffusers, datasets, bitsandbytes, deepspeed, ...) are carried in .whl/.
# Only some rungs, e.g. the guide's batch-4 default (1) and the optimizer step in backward (8), beside rung 7
# measured in the same session:
#   RUNGS=1,7,8 THROUGHPUT_BATCH=0 bash benchmarks/gpu_ladder.sh
# MFU at batch 8, eager and compiled, beside rung 1 (the compiled run's first step compiles for a few minutes):
#   RUNGS=1 LADDER_TIMEOUT=560 bash benchmarks/gpu_ladder.sh
# COUNT_TENSORS=1 also counts live tensors op by op (LiveTensorBytes) and keeps max_memory_allocated beside the
# count in the JSON (device_peak_gb): the check of the CPU-counted ladder (its s/step then includes the counting).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/ladder-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 - <<'PY' | tee -a "$OUT/device.txt"
import importlib
for name in ("torch", "diffusers", "transformers", "accelerate", "datasets", "bitsandbytes", "deepspeed", "xformers"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as error:
        print(name, "unavailable:", type(error).__name__, str(error)[:120])
PY
timeout "${LADDER_TIMEOUT:-480}" python3 benchmarks/memory_ladder.py --arch sd15 --resolution 512 --batch 1 --steps "${STEPS:-5}" \
  --rungs "${RUNGS:-1,2,3,4,5,6,7,8,9}" --throughput-batch "${THROUGHPUT_BATCH:-8}" --threads 8 --timeout "${RUNG_TIMEOUT:-240}" --work /tmp/ladder \
  $([ "${THROUGHPUT_FAST:-1}" = 1 ] && echo --throughput-fast) ${COUNT_TENSORS:+--count-tensors} --json "$OUT/sd15-ladder.json" --markdown "$OUT/sd15-ladder.md" 2>&1 | grep -v "it/s\]\|s/it\]" | tee "$OUT/ladder.log"
