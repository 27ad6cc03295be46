"""The counted memory ladder of SD3.5-medium (1024 px) and FLUX.1-dev (512 px) ControlNet training, rung by rung.

    python benchmarks/transformer_ladder.py                    # both, printed; --markdown/--json to keep them

The real models are far too large for this machine, so they are built at their real sizes from their configs
(SD3.5-medium's and FLUX.1-dev's transformers, their VAE, CLIP and T5-XXL) under PyTorch's ``FakeTensorMode``:
every tensor has its shape and dtype but no storage, and every operation runs its shape logic only. Inside it,
:class:`cnhelpers.course.memory.LiveTensorBytes` counts the bytes of the tensors alive op by op, as it does for the
SD 1.5 ladder (``benchmarks/memory_ladder.py --count-tensors``), through two training steps of the family's own
forward (``family.step_inputs`` and ``family.predict``: ControlNet, then the base with its residuals), the flow
matching loss, backward and an AdamW step. Each rung's peak is counted over the second step (the optimizer state
exists then), as a GPU's ``max_memory_allocated`` would see it, split into weights, gradients, optimizer state and
activations. Not counted: the CUDA context and kernels' workspaces (about 0.5-1 GB on a GPU), the allocator's cache.

Upstream's Flux README gives its A100-80GB figures for the stages of one run; they stand beside the rungs that
match them (``UPSTREAM_FLUX``). The rungs are cumulative:

1. everything in fp32 and on the GPU, the text encoders and VAE run every step (upstream's "load as float32");
2. + the frozen parts in bf16, bf16 autocast (``--mixed_precision bf16``; the ControlNet keeps fp32 weights);
3. + cached latents and text embeddings (``--cache always``): the text encoders and VAE leave the GPU;
4. + gradient checkpointing of the ControlNet and the base (``--gradient_checkpointing``).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import torch

#: stabilityai/stable-diffusion-3.5-medium's transformer/config.json (two public copies agree).
SD35_MEDIUM_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                               attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                               caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                               dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
#: black-forest-labs/FLUX.1-dev's transformer/config.json.
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
#: The 16-channel VAE both use (SD3's and FLUX.1's vae/config.json: 8x, 4 levels).
VAE_16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False)
#: T5 v1.1 XXL's encoder (text_encoder_3 of SD3, text_encoder_2 of Flux).
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False)
#: CLIP ViT-L/14's text tower (SD3's text_encoder, Flux's text_encoder) and OpenCLIP bigG's (SD3's text_encoder_2).
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")

#: Each family's run: resolution, the ControlNet upstream's script makes by default (SD3: 12 of the 24 blocks;
#: Flux: upstream README's example, 4 double and 0 single blocks), T5's length and the text encoders.
RUNS = {
    "sd3": dict(family="sd3", name="SD3.5-medium", resolution=1024, t5_length=256, transformer=SD35_MEDIUM_TRANSFORMER,
                controlnet=dict(num_layers=12), clips=(CLIP_L, CLIP_G), t5=T5_XXL, vae=VAE_16),
    "flux": dict(family="flux", name="FLUX.1-dev", resolution=512, t5_length=512, transformer=FLUX_DEV_TRANSFORMER,
                 controlnet=dict(num_layers=4, num_single_layers=0), clips=(CLIP_L,), t5=T5_XXL, vae=VAE_16),
}

#: Upstream's Flux README (examples/controlnet/README_flux.md, one A100-80GB, 512 px, batch 1): its stages.
UPSTREAM_FLUX = {1: "load as float32: ~70 GB", 2: "transformer and VAE to bf16: ~48 GB",
                 3: "text encoders offloaded: ~30 GB; training: ~58 GB"}

RUNGS = ((1, "fp32, everything on the GPU", dict(half=False, cached=False, checkpointing=False)),
         (2, "+ frozen parts in bf16, bf16 autocast", dict(half=True, cached=False, checkpointing=False)),
         (3, "+ cached latents and text (encoders off the GPU)", dict(half=True, cached=True, checkpointing=False)),
         (4, "+ gradient checkpointing", dict(half=True, cached=True, checkpointing=True)))


def build_models(run: dict, half: bool, cached: bool):
    """The family's models at full size (fake tensors): the frozen parts in bf16 when ``half``; no text encoders
    nor VAE when ``cached`` (they encoded the cache before training and left the GPU)."""
    from diffusers import (AutoencoderKL, FluxControlNetModel, FluxTransformer2DModel, SD3ControlNetModel,
                           SD3Transformer2DModel)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    frozen_dtype = torch.bfloat16 if half else torch.float32
    torch.set_default_dtype(frozen_dtype)  # (built in their dtype: a .to() cannot swap fake parameters)
    try:
        if run["family"] == "sd3":
            transformer = SD3Transformer2DModel(**run["transformer"])
        else:
            transformer = FluxTransformer2DModel(**run["transformer"])
        encoders = [] if cached else [
            *(CLIPTextModelWithProjection(CLIPTextConfig(**c)) for c in run["clips"]),
            T5EncoderModel(T5Config(**run["t5"])), AutoencoderKL(**run["vae"])]
    finally:
        torch.set_default_dtype(torch.float32)
    for module in (transformer, *encoders):
        module.requires_grad_(False).eval()
    if run["family"] == "sd3":
        controlnet = SD3ControlNetModel.from_transformer(transformer, num_extra_conditioning_channels=0,
                                                         **run["controlnet"])
    else:
        config = transformer.config
        controlnet = FluxControlNetModel.from_transformer(
            transformer, attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
            **run["controlnet"])
    assert next(controlnet.parameters()).dtype == torch.float32  # (fp32 weights: mixed precision's master copy)
    controlnet.train()
    return transformer, controlnet, encoders


def training_step(run: dict, transformer, controlnet, encoders, optimizer, cached: bool, half: bool):
    """One step as the loop runs it: (the text and VAE encodings unless cached,) noise, the family's forward,
    the flow matching loss, backward, AdamW, gradients freed."""
    from cnhelpers.families import family_named

    family_name = run["family"]
    family = family_named(family_name)
    side = run["resolution"] // 8
    channels, width = run["vae"]["latent_channels"], run["t5"]["d_model"]
    pooled_width = sum(c["projection_dim"] for c in run["clips"])
    if cached:  # what the cache hands the step
        latents, condition = torch.randn(1, channels, side, side), torch.randn(1, channels, side, side)
        text = (torch.randn(1, (77 if family_name == "sd3" else 0) + run["t5_length"], width),
                torch.randn(1, pooled_width))
    else:
        with torch.no_grad():
            *clips, t5, vae = encoders
            pixels = torch.randn(2, 3, run["resolution"], run["resolution"], dtype=vae.dtype)
            both = vae.encode(pixels).latent_dist.sample()
            latents, condition = both[:1].float(), both[1:].float()
            clip_out = [c(torch.zeros(1, 77, dtype=torch.long), output_hidden_states=True) for c in clips]
            t5_states = t5(torch.zeros(1, run["t5_length"], dtype=torch.long))[0]
            pooled = torch.cat([o.text_embeds for o in clip_out], dim=-1)
            if family_name == "sd3":
                clip_states = torch.cat([o.hidden_states[-2] for o in clip_out], dim=-1)
                clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
                text = (torch.cat([clip_states, t5_states], dim=-2).float(), pooled.float())
            else:
                text = (t5_states.float(), pooled.float())
    sigma = torch.full((1, 1, 1, 1), 0.5)
    noise = torch.randn_like(latents)
    noisy = (1 - sigma) * latents + sigma * noise
    models = SimpleNamespace(denoiser=transformer, controlnet=controlnet, options={"guidance_scale": 3.5})
    noised = SimpleNamespace(latents=noisy, timesteps=torch.full((1,), 500.0))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
        inputs = family.step_inputs(models, SimpleNamespace(extra={}), noised, text, condition)
        prediction = family.predict(models, inputs)
    loss = (prediction.float() - (noise - latents)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_rung(run: dict, settings: dict, fake: bool = True) -> dict:
    """One rung, counted: the weights once loaded, and the peak of the second training step with its breakdown.
    ``fake=False`` runs the same on real tensors (a small ``run`` only: the test that checks the fake count)."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    from cnhelpers.course.memory import LiveTensorBytes

    started = time.perf_counter()
    torch.manual_seed(0)
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
        count = LiveTensorBytes()
        with count:
            transformer, controlnet, encoders = build_models(run, settings["half"], settings["cached"])
            if settings["checkpointing"]:
                transformer.enable_gradient_checkpointing()
                controlnet.enable_gradient_checkpointing()
            count.reset_peak()
            loaded = count.current_bytes
            optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
            training_step(run, transformer, controlnet, encoders, optimizer, settings["cached"], settings["half"])
            count.reset_peak()
            training_step(run, transformer, controlnet, encoders, optimizer, settings["cached"], settings["half"])
    return {"loaded_gb": loaded / 1e9, "peak_gb": count.peak_bytes / 1e9,
            "breakdown_gb": {k: v / 1e9 for k, v in count.peak_breakdown.items()},
            "params": {"transformer": sum(p.numel() for p in transformer.parameters()),
                       "controlnet": sum(p.numel() for p in controlnet.parameters()),
                       "encoders": sum(p.numel() for m in encoders for p in m.parameters())},
            "seconds": time.perf_counter() - started}


def markdown(rows: list[dict]) -> str:
    lines = [f"Counted memory ladder of ControlNet training on the transformer bases, batch 1 "
             f"({date.today().isoformat()}; `python benchmarks/transformer_ladder.py`; fake tensors, live bytes "
             "counted op by op over the second training step)", "",
             "| base | rung | what | weights loaded | training peak | of it: weights / gradients / optimizer / activations "
             "| upstream's README |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        b = row["breakdown_gb"]
        upstream = UPSTREAM_FLUX.get(row["rung"], "—") if row["family"] == "flux" else "—"
        lines.append(f"| {RUNS[row['family']]['name']} {RUNS[row['family']]['resolution']} px | {row['rung']} | "
                     f"{row['what']} | {row['loaded_gb']:.1f} GB | {row['peak_gb']:.1f} GB | "
                     f"{b['weights']:.1f} / {b['gradients']:.1f} / {b['optimizer state']:.1f} / "
                     f"{b['activations and temporaries']:.1f} | {upstream} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=tuple(RUNS), default=None)
    parser.add_argument("--rungs", default=None, help="which rungs, e.g. 1,4 (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    wanted = {int(n) for n in args.rungs.split(",")} if args.rungs else {number for number, _, _ in RUNGS}
    rows = []
    for family in args.family or list(RUNS):
        for number, what, settings in RUNGS:
            if number not in wanted:
                continue
            row = {"family": family, "rung": number, "what": what, **count_rung(RUNS[family], settings)}
            rows.append(row)
            print(f"{RUNS[family]['name']} rung {number} ({what}): loaded {row['loaded_gb']:.1f} GB, peak "
                  f"{row['peak_gb']:.1f} GB ({row['seconds']:.0f} s to count)", flush=True)
    table = markdown(rows)
    print("\n" + table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
