"""FLOPs of one ControlNet training step, counted op by op, and the MFU of the measured GPU runs.

    python benchmarks/flops.py                                  # tiny, sd15, sdxl at batch 1 and 8 (about a minute)
    python benchmarks/flops.py --arch sd15 --batch 1 8 --out benchmarks/results/flops-2026-12-01
    python benchmarks/flops.py --peak 989e12                     # MFU's peak (default: H100/H200 bf16 dense)

What is counted: one training step of the course's loop (``cnhelpers.training.train``), split in four parts,
each under its own ``torch.utils.flop_counter.FlopCounterMode``:

- **ControlNet fwd**: ``controlnet(noisy_latents, t, encoder_hidden_states, controlnet_cond)`` (+ ``added_cond_kwargs``
  for SDXL) -> the 12 down residuals (SDXL: 9) and the mid residual;
- **UNet fwd**: the frozen UNet with ``down_block_additional_residuals`` / ``mid_block_additional_residual``;
- **UNet bwd**: backward of the MSE loss through the UNet *to the residuals only*. The UNet's weights are frozen
  (``requires_grad_(False)``), so autograd computes activation gradients and no weight gradients there, and
  the residuals enter the UNet at its skip connections and after its mid block, so the gradient never runs
  through the UNet's down blocks or mid block: UNet bwd covers the up path (and conv_out) only;
- **ControlNet bwd**: from the residuals' gradients back through the ControlNet, weight and activation
  gradients (the first layers' inputs need no gradient: no activation gradient there).

The split detaches the residuals between the two models (``detach().requires_grad_()``) and feeds their
gradients back by hand; ``tests/test_flops.py`` checks that the four parts add up to the step counted in one
piece. Not counted: the VAE encoder and text encoder of the rungs that do not cache them (reported apart for
SD 1.5, :func:`count_sd15_encoder_flops`), the optimizer update, gradient clipping, the loss, and the forward
that gradient checkpointing recomputes (MFU counts model FLOPs, not hardware FLOPs).

How: the models are built on the meta device (shapes, no storage: SDXL's 2.6 B + 1.25 B parameters cost no
memory), so the count takes seconds on a CPU and is exact for the shapes: FLOP counts depend on the
architecture and the shapes, not on the hardware. ``FlopCounterMode`` counts only matrix products and
convolutions (``mm``/``addmm``/``bmm``/``convolution``/``convolution_backward``, and the fused SDPA kernels
on CUDA), 2 FLOPs per multiply-add; GroupNorm, LayerNorm, SiLU/GELU, softmax, the residual adds, the
timestep embedding's sin/cos and the loss count zero. Attention *is* counted: on meta tensors
``scaled_dot_product_attention`` takes PyTorch's math path, two ``bmm`` per call forward (QK^T and PV,
4*b*h*s_q*s_k*d) and four backward (2x forward). On CUDA the fused kernels are counted by formulas that
add the recomputation of QK^T in backward (2.5x forward); on a CPU with real tensors the fused
``_scaled_dot_product_flash_attention_for_cpu`` has no formula and counts **zero** -- hence meta.
The JSON keeps the split by op (``bmm`` = attention matmuls) for every part.

Architectures (all with ``ControlNetModel.from_unet(unet)``, which copies the UNet's addition-embedding
config, so SDXL's ControlNet reads ``added_cond_kwargs`` too):

- ``tiny``: the course's tiny base, ``cnhelpers/assets/tiny-sd/unet/config.json``, 64 px (VAE 8x: 8x8
  latents), text 77 tokens x the config's ``cross_attention_dim``;
- ``sd15``: SD 1.5's UNet, 512 px (64x64 latents), text 77 x 768. Config: ``cnhelpers.course.tiny_bases.SD15_UNET_CONFIG``,
  i.e. ``unet/config.json`` of stable-diffusion-v1-5 (the fields not given are diffusers' defaults);
- ``sdxl``: SDXL base 1.0's UNet, 1024 px (128x128 latents), text 77 x 2048, ``added_cond_kwargs`` text_embeds
  (B, 1280) and time_ids (B, 6). Config: ``cnhelpers.course.tiny_sdxl.SDXL_BASE_UNET_CONFIG``, checked against the diffusers-format copy of
  ``stabilityai/stable-diffusion-xl-base-1.0/unet/config.json`` in dvlab-research/ControlNeXt,
  ``ControlNeXt-SDXL/utils/tools.py`` (``UNET_CONFIG``, commit 109953a7), and against Stability's original
  Stability-AI/generative-models ``configs/inference/sd_xl_base.yaml`` (commit 3df5c81a): model_channels 320,
  channel_mult [1, 2, 4], transformer_depth [1, 2, 10] with attention at levels 2 and 3 only,
  num_head_channels 64 (diffusers' ``attention_head_dim`` (5, 10, 20) is the number of heads), context_dim
  2048, adm_in_channels 2816 = 1280 pooled text + 6 x 256 time ids, use_linear_in_transformer True.

Sanity checks. "6 x parameters x tokens" does not apply: the weights of a convolution are reused at every
pixel, an attention's cost grows with the square of the pixels, and here the UNet's weights get no gradient
and only part of it a backward at all. Published figures for the SD 1.x UNet forward at 512 px (64x64 latents),
which the count of ``UNet fwd`` at batch 1 (residuals in, ~0.8 TFLOP) can be set against:

- NVIDIA's TensorRT talk "Stable Diffusion 推理加速技巧解析" (slides mirrored at
  https://www.sgpjbg.com/bgdown/155314.html): 1.67952e12 FLOPs per UNet call at B=1 with classifier-free
  guidance, i.e. 2 latents of 4x64x64: 0.84 TFLOP per latent;
- onnx-tool (ThanatosShinji/onnx-tool, README, model-zoo table): UNet2DCondition of SD 1.4 (same architecture),
  859.52 M parameters, 888,870 M MACs for its exported ONNX model, with 2 latents per call (the CFG batch,
  per https://www.codetd.com/en/article/15627148): ~444 G MACs, ~0.89 TFLOP per latent, all ops included.

The "about 0.4 TFLOPs" sometimes quoted for the SD 1.5 UNet at 512 px matches neither as FLOPs; it is close
to the MAC count per latent (~0.44 T multiply-adds), so it is likely MACs read as FLOPs.

MFU = counted FLOPs per step x steps/s / peak, with the measured s/step of
``results/sd15-ladder-h200-2026-11-26-run{1,2}.json`` (SD 1.5, 512 px, batch 1, one row per rung) and its
samples/s at batch 8 (bf16, SDPA, cached latents, no checkpointing: the clean case). The ladder's flags are
cumulative: every rung from 2 up accumulates 4 micro-batches per step (its s/step covers 4 samples), rungs 1-5
encode images and captions in the loop (``cache: never``), rungs 1-4 run in fp32 (their MFU against a bf16
peak says how far they are from it, not how well they use fp32), rungs 3 and up recompute activations
(gradient checkpointing: not in the count). SDXL and the tiny base have no GPU measurement: "not measured".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

from cnhelpers.course.tiny_bases import SD15_TEXT_ENCODER_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG
from cnhelpers.course.tiny_sdxl import SDXL_BASE_POOLED_TEXT_DIM, SDXL_BASE_UNET_CONFIG

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY_UNET_CONFIG_PATH = ROOT / "cnhelpers" / "assets" / "tiny-sd" / "unet" / "config.json"
LADDER_RUNS = (RESULTS / "sd15-ladder-h200-2026-11-26-run1.json", RESULTS / "sd15-ladder-h200-2026-11-26-run2.json")
H100_BF16_DENSE_PEAK = 989e12  # FLOP/s, H100/H200 SXM, dense bf16 (no sparsity)
TEXT_TOKENS = 77

ARCHS = {
    "tiny": {"label": "tiny base", "resolution": 64},
    "sd15": {"label": "SD 1.5", "resolution": 512},
    "sdxl": {"label": "SDXL base", "resolution": 1024},
}
VAE_FACTOR = 8  # every architecture here: 3 downsamplings of the VAE (the tiny one's 4 blocks too)
PARTS = ("controlnet_fwd", "controlnet_bwd", "unet_fwd", "unet_bwd")


def unet_config(arch: str) -> dict:
    """The UNet config of an architecture (the tiny one read from the course's asset)."""
    if arch == "tiny":
        saved = json.loads(TINY_UNET_CONFIG_PATH.read_text())
        return {k: v for k, v in saved.items() if not k.startswith("_")}
    return {"sd15": SD15_UNET_CONFIG, "sdxl": SDXL_BASE_UNET_CONFIG}[arch]


def build_models(arch: str, device: str = "meta"):
    """The UNet of ``arch`` (frozen) and ``ControlNetModel.from_unet`` of it, on ``device`` (meta: no memory)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config(arch))
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=device != "meta")
    unet.requires_grad_(False)
    unet.train()  # as in training (no dropout in these configs, so it changes no FLOPs)
    controlnet.train()
    return unet, controlnet


def step_inputs(unet, batch: int, resolution: int, device: str = "meta", text_tokens: int = TEXT_TOKENS) -> dict:
    """Stand-in inputs of one step: noisy latents, timesteps, text states, conditioning image, SDXL's extras."""
    import torch

    config = unet.config
    side = resolution // VAE_FACTOR
    inputs = {
        "sample": torch.randn(batch, config.in_channels, side, side, device=device),
        "timestep": torch.randint(0, 1000, (batch,), device=device),
        "encoder_hidden_states": torch.randn(batch, text_tokens, config.cross_attention_dim, device=device),
        "controlnet_cond": torch.rand(batch, 3, resolution, resolution, device=device),
        "added_cond_kwargs": None,
    }
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, device=device),
                                       "time_ids": torch.randn(batch, 6, device=device)}
    return inputs


def _flops_by_op(counter) -> dict[str, int]:
    return {str(op).replace("aten.", ""): n for op, n in counter.get_flop_counts().get("Global", {}).items()}


def count_training_step_flops(unet, controlnet, batch: int = 1, resolution: int | None = None,
                              device: str = "meta", split: bool = True) -> dict:
    """FLOPs of one ControlNet training step: ``{part: {"flops": n, "by_op": {op: n}}}`` for the four parts
    (:data:`PARTS`) and ``"total"``.

    ``split=False`` counts the step in one piece instead (no detach between the models): only ``"total"``.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    resolution = resolution or unet.config.sample_size * VAE_FACTOR
    x = step_inputs(unet, batch, resolution, device)
    target = torch.randn_like(x["sample"])
    common = {"encoder_hidden_states": x["encoder_hidden_states"], "added_cond_kwargs": x["added_cond_kwargs"]}
    parts: dict[str, dict] = {}

    def counted(name, fn):
        with FlopCounterMode(display=False) as counter:
            out = fn()
        by_op = _flops_by_op(counter)
        parts[name] = {"flops": sum(by_op.values()), "by_op": by_op}
        return out

    def controlnet_fwd():
        return controlnet(x["sample"], x["timestep"], controlnet_cond=x["controlnet_cond"], return_dict=False, **common)

    def unet_fwd(down, mid):
        return unet(x["sample"], x["timestep"], down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, **common).sample

    if not split:
        def whole():
            down, mid = controlnet_fwd()
            F.mse_loss(unet_fwd(down, mid).float(), target.float()).backward()
        counted("total", whole)
        return parts

    down, mid = counted("controlnet_fwd", controlnet_fwd)
    residuals = [r.detach().requires_grad_() for r in (*down, mid)]
    pred = counted("unet_fwd", lambda: unet_fwd(residuals[:-1], residuals[-1]))
    loss = F.mse_loss(pred.float(), target.float())
    counted("unet_bwd", loss.backward)
    counted("controlnet_bwd", lambda: torch.autograd.backward([*down, mid], [r.grad for r in residuals]))
    if any(p.grad is not None for p in unet.parameters()):
        raise AssertionError("the frozen UNet got weight gradients")
    by_op: dict[str, int] = {}
    for name in PARTS:
        for op, n in parts[name]["by_op"].items():
            by_op[op] = by_op.get(op, 0) + n
    parts["total"] = {"flops": sum(by_op.values()), "by_op": by_op}
    return {name: parts[name] for name in (*PARTS, "total")}


def count_sd15_encoder_flops(batch: int = 1, resolution: int = 512) -> dict:
    """Forward FLOPs of SD 1.5's VAE encoder on the images and of its text encoder on 77 tokens (meta tensors):
    the work of the rungs that do not cache latents and text embeddings (no gradients: both frozen)."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER_CONFIG))
    images = torch.randn(batch, 3, resolution, resolution, device="meta")
    ids = torch.zeros(batch, TEXT_TOKENS, dtype=torch.long, device="meta")
    out = {}
    with torch.no_grad():
        for name, fn in (("vae_encoder", lambda: vae.encode(images).latent_dist.mean),
                         ("text_encoder", lambda: text_encoder(ids)[0])):
            with FlopCounterMode(display=False) as counter:
                fn()
            out[name] = sum(_flops_by_op(counter).values())
    return out


def count_arch(arch: str, batches=(1, 8)) -> list[dict]:
    """One row per batch size: the four parts, their total, per sample, params, and how long the count took."""
    rows = []
    started = time.perf_counter()
    unet, controlnet = build_models(arch)
    built = time.perf_counter() - started
    params = {"unet": sum(p.numel() for p in unet.parameters()),
              "controlnet": sum(p.numel() for p in controlnet.parameters())}
    resolution = ARCHS[arch]["resolution"]
    for batch in batches:
        t0 = time.perf_counter()
        parts = count_training_step_flops(unet, controlnet, batch=batch, resolution=resolution)
        controlnet.zero_grad(set_to_none=True)
        rows.append({"arch": arch, "label": ARCHS[arch]["label"], "resolution": resolution,
                     "latents": resolution // VAE_FACTOR, "batch": batch, "params": params,
                     "parts": parts, "flops_per_step": parts["total"]["flops"],
                     "flops_per_sample": parts["total"]["flops"] / batch,
                     "attention_flops": parts["total"]["by_op"].get("bmm", 0),
                     "seconds": round(time.perf_counter() - t0 + (built if batch == batches[0] else 0), 2)})
    return rows


# --------------------------------------------------------------------------------------------------
# Measured throughput (the H200 ladder) and MFU
# --------------------------------------------------------------------------------------------------

def ladder_micro_batches(rung_name: str) -> int:
    """Micro-batches per optimizer step of a ladder rung. The ladder's flags are cumulative: every rung from
    gradient accumulation up runs 4 micro-batches per step (``cnhelpers.course.memory.rung_flags``, as committed with
    the 2026-11-26 files), but rung 1 and the optimizer step in backward (which drops accumulation)."""
    return 1 if rung_name.startswith(("fp32 AdamW", "+ optimizer step in backward")) else 4


def ladder_uncached(rung_name: str) -> bool:
    """Whether a rung encodes images and captions in the loop (rungs 1-5: ``cache: never`` until rung 6)."""
    return not any(rung_name.startswith(s) for s in ("+ cached latents", "ZeRO-2", "+ optimizer step in backward"))


def load_measurements(paths=LADDER_RUNS) -> list[dict]:
    """The measured rows of the ladder files: ``{"source", "rung", "name", "batch", "s_per_step"}`` at batch 1,
    ``{"source", "batch", "samples_per_s"}`` for a throughput run. Nothing is made up: absent files give none."""
    rows = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        if data.get("arch") != "sd15":
            continue
        for row in data.get("rows", []):
            if row.get("s_per_step"):
                rows.append({"source": path.name, "rung": row["rung"], "name": row["name"],
                             "batch": data.get("batch", 1), "resolution": data.get("resolution"),
                             "s_per_step": row["s_per_step"]})
        for key, name in (("throughput", "throughput: bf16, SDPA, cached latents"),
                          ("throughput_fast", "throughput: bf16, SDPA, cached latents, channels-last, torch.compile")):
            throughput = data.get(key) or {}
            if throughput.get("samples_per_s"):
                rows.append({"source": path.name, "rung": None, "name": name, "batch": throughput["batch"],
                             "resolution": data.get("resolution"), "samples_per_s": throughput["samples_per_s"]})
    return rows


def mfu_rows(flop_rows: list[dict], measurements: list[dict], peak: float, encoders: dict | None) -> list[dict]:
    """One row per measurement of a counted (arch, batch), and a "not measured" row for each one without."""
    out = []
    for fr in flop_rows:
        matching = [m for m in measurements if fr["arch"] == "sd15" and m["batch"] == fr["batch"]
                    and m.get("resolution") in (None, fr["resolution"])]
        base = {"arch": fr["arch"], "label": fr["label"], "resolution": fr["resolution"], "batch": fr["batch"]}
        if not matching:
            out.append(base | {"measurement": "not measured", "flops_per_step": fr["flops_per_step"],
                               "measured": "not measured", "mfu": None, "mfu_with_encoders": None})
            continue
        for m in matching:
            if "samples_per_s" in m:
                micro, steps_per_s = 1, m["samples_per_s"] / m["batch"]
                measured = f"{m['samples_per_s']:.1f} samples/s"
                what, uncached = m["name"], False
            else:
                micro, steps_per_s = ladder_micro_batches(m["name"]), 1 / m["s_per_step"]
                measured = f"{m['s_per_step']:.3f} s/step"
                what = f"rung {m['rung']} ({m['source'].rsplit('-', 1)[-1].removesuffix('.json')}): {m['name']}"
                uncached = ladder_uncached(m["name"])
            flops = micro * fr["flops_per_step"]
            row = base | {"measurement": what, "micro_batches": micro, "flops_per_step": flops, "measured": measured,
                          "steps_per_s": steps_per_s, "mfu": flops * steps_per_s / peak, "mfu_with_encoders": None}
            if uncached and encoders:
                with_enc = flops + micro * fr["batch"] * sum(encoders.values())
                row |= {"flops_per_step_with_encoders": with_enc, "mfu_with_encoders": with_enc * steps_per_s / peak}
            out.append(row)
    return out


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

NOTES = """\
## What the figures are

- **Counted**: matrix products and convolutions only (``mm``, ``addmm``, ``bmm``, ``convolution``,
  ``convolution_backward``), 2 FLOPs per multiply-add, by ``torch.utils.flop_counter.FlopCounterMode`` on meta
  tensors. Attention is included: on meta, SDPA runs PyTorch's math path, 2 ``bmm`` forward (QK^T, PV) and 4
  backward; "attention matmuls" above is that ``bmm`` share (the q/k/v/out projections are ``mm``, not in it).
  **Not counted** (zero in the counter): GroupNorm, LayerNorm, SiLU/GELU, softmax, residual adds, the timestep
  embedding, the loss, the optimizer update, and the recomputation of gradient checkpointing (MFU counts model
  FLOPs, not hardware FLOPs).
- **UNet bwd** is activation gradients only (its weights are frozen), and only along the path from the output
  back to the ControlNet's residuals, which join the UNet at its skip connections and after its mid block: the
  up blocks and ``conv_out``. Its down blocks and mid block (about a third of UNet fwd for SD 1.5) get no
  backward at all. **ControlNet bwd** is weight and activation gradients: about 2x its forward.
- **Hardware independent**: counted on a CPU from shapes alone. On CUDA tensors the counter would see the fused
  attention kernels, whose backward formula adds the recomputation of QK^T (2.5x forward instead of 2x);
  on a CPU with real tensors, the fused CPU attention kernel has no formula and would count zero.
- **Sanity check** (SD 1.x UNet forward at 512 px, per latent): NVIDIA's TensorRT talk "Stable Diffusion
  推理加速技巧解析" (https://www.sgpjbg.com/bgdown/155314.html) gives 1.67952e12 FLOPs per UNet call at B=1 with
  classifier-free guidance (2 latents): 0.84 TFLOP; onnx-tool (github.com/ThanatosShinji/onnx-tool, README) gives
  888,870 M MACs for SD 1.4's UNet (2 latents per call): 0.89 TFLOP, counting every op. Counted here (UNet fwd,
  SD 1.5, batch 1): {sd15_unet_fwd} TFLOP (matmuls and convolutions only). onnx-tool's VAE encoder (566,371 M
  MACs: 1.13 TFLOP) and text encoder (6,782 M MACs: 13.6 GFLOP) match the encoder counts above. The "about 0.4
  TFLOPs" sometimes quoted for the UNet is close to its multiply-adds (~0.44 T MACs), not its FLOPs. "6 x params x
  tokens" does not apply (convolution weights are reused at every pixel; the frozen UNet has no weight gradients).
- **MFU rows**: s/step and samples/s of ``sd15-ladder-h200-2026-11-26-run{{1,2}}.json`` (NVIDIA H200), rung numbers
  as in those files (run 1's rung 7, ZeRO-2 offload, is today's rung 8). The ladder's flags are cumulative: the
  rungs from 2 up accumulate 4 micro-batches per step (their TFLOP/step is 4x batch 1's); rungs 1-5 encode images
  and captions in the loop (last column: with the VAE encoder and text encoder forward added); rungs 1-4 run in
  fp32, so a bf16 peak is not their ceiling; rungs 3 and up recompute activations (not counted). The batch-8
  throughput run (bf16, SDPA, cached latents, no checkpointing, no accumulation) is the like-for-like MFU.
  SDXL and the tiny base have no GPU measurement: "not measured".
"""


def tflop(n: float) -> str:
    t = n / 1e12
    return f"{t:.3f}" if t >= 0.1 else f"{t:.3g}"


def markdown(flop_rows: list[dict], mfu: list[dict], encoders: dict | None, peak: float, header: str) -> str:
    lines = [f"# {header}", "",
             "## FLOPs of one training step (TFLOP; counted, hardware independent)", "",
             "| architecture | resolution | batch | ControlNet fwd | ControlNet bwd | UNet fwd "
             "| UNet bwd (activation grads) | total / step | total / sample | of which attention matmuls "
             "| counted in |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in flop_rows:
        p = r["parts"]
        lines.append(f"| {r['label']} | {r['resolution']} px ({r['latents']}x{r['latents']} latents) | {r['batch']} | "
                     + " | ".join(tflop(p[k]["flops"]) for k in PARTS)
                     + f" | **{tflop(r['flops_per_step'])}** | {tflop(r['flops_per_sample'])} | "
                       f"{100 * r['attention_flops'] / r['flops_per_step']:.0f} % | {r['seconds']:.1f} s |")
    first: dict[str, dict] = {}
    for r in flop_rows:
        first.setdefault(r["arch"], r)
    first = first.values()
    lines += ["", "Parameters: " + "; ".join(
        f"{r['label']}: UNet {r['params']['unet'] / 1e6:.1f} M, ControlNet {r['params']['controlnet'] / 1e6:.1f} M"
        for r in first) + "."]
    if encoders:
        lines += ["", f"Not in the step above: SD 1.5's VAE encoder at 512 px, {tflop(encoders['vae_encoder'])} TFLOP "
                      f"per image, and its text encoder on 77 tokens, {tflop(encoders['text_encoder'])} TFLOP per "
                      "caption (forward only), which the ladder's rungs 1-5 run in every micro-batch."]
    lines += ["", f"## MFU = counted FLOPs per step x steps/s / {peak / 1e12:.0f} TFLOP/s (bf16 dense peak)", "",
              "| architecture | resolution | batch | measurement | TFLOP/step | measured | MFU "
              "| MFU with VAE + text encoder fwd |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in mfu:
        pct = lambda v: "—" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        mfu_text = "not measured" if r["measured"] == "not measured" else pct(r["mfu"])
        micro = f" ({r['micro_batches']} micro-batches)" if r.get("micro_batches", 1) > 1 else ""
        lines.append(f"| {r['label']} | {r['resolution']} px | {r['batch']} | {r['measurement']} | "
                     f"{tflop(r['flops_per_step'])}{micro} | {r['measured']} | {mfu_text} "
                     f"| {pct(r['mfu_with_encoders'])} |")
    sd15 = [r for r in flop_rows if r["arch"] == "sd15" and r["batch"] == 1]
    unet_fwd = tflop(sd15[0]["parts"]["unet_fwd"]["flops"]) if sd15 else "(run --arch sd15 --batch 1)"
    return "\n".join(lines) + "\n\n" + NOTES.format(sd15_unet_fwd=unet_fwd)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes to count (default: 1 8)")
    parser.add_argument("--peak", type=float, default=H100_BF16_DENSE_PEAK,
                        help="peak FLOP/s for MFU (default 989e12: H100/H200 SXM dense bf16)")
    parser.add_argument("--ladder", nargs="*", type=Path, default=list(LADDER_RUNS),
                        help="ladder JSON files with the measured s/step and samples/s")
    parser.add_argument("--out", type=Path, default=None, help="write PATH.json and PATH.md")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    flop_rows = []
    for arch in args.arch:
        rows = count_arch(arch, tuple(args.batch))
        for r in rows:
            print(f"{r['label']} {r['resolution']} px batch {r['batch']}: "
                  + ", ".join(f"{k} {tflop(r['parts'][k]['flops'])}" for k in PARTS)
                  + f", total {tflop(r['flops_per_step'])} TFLOP/step ({r['seconds']:.1f} s)", flush=True)
        flop_rows += rows
    encoders = count_sd15_encoder_flops() if "sd15" in args.arch else None
    mfu = mfu_rows(flop_rows, load_measurements(args.ladder), args.peak, encoders)
    header = (f"FLOPs per ControlNet training step, counted with torch.utils.flop_counter.FlopCounterMode on meta "
              f"tensors ({date.today().isoformat()}, torch {torch.__version__.split('+')[0]}, diffusers "
              f"{diffusers.__version__}, on a CPU: the counts are hardware independent)")
    table = markdown(flop_rows, mfu, encoders, args.peak, header)
    print("\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(
            {"header": header, "peak_flops_per_s": args.peak, "torch": torch.__version__,
             "diffusers": diffusers.__version__, "date": date.today().isoformat(),
             "counted_on": "CPU, meta tensors (FLOP counts depend on shapes only)",
             "ladder_files": [p.name for p in args.ladder if p.is_file()],
             "rows": flop_rows, "sd15_encoders_per_sample": encoders, "mfu": mfu}, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")
        print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
