"""benchmarks/flops.py: the FLOP counter against hand formulas, and the split of a ControlNet training step.

Everything runs on meta tensors (shapes only): a few seconds on one CPU thread.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

pytestmark = pytest.mark.not_colab(reason="torch's FLOP counter on meta tensors: the same torch in both venvs")


@pytest.fixture(scope="module")
def flops(benchmark_script):
    return benchmark_script("flops")


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_counter_matches_the_hand_formula_for_a_conv_and_a_linear():
    torch.set_num_threads(1)
    b, c_in, c_out, k, side, features = 2, 3, 8, 3, 16, 10
    with torch.device("meta"):
        conv = torch.nn.Conv2d(c_in, c_out, k, padding=1)
        linear = torch.nn.Linear(c_out * side * side, features)
        x = torch.randn(b, c_in, side, side)
    conv_macs = b * c_out * side * side * c_in * k * k  # one multiply-add per weight per output pixel
    linear_macs = b * c_out * side * side * features

    h = conv(x)
    assert counted(lambda: conv(x)) == 2 * conv_macs
    assert counted(lambda: linear(h.flatten(1))) == 2 * linear_macs

    # Backward: the input needs no gradient, so only the weight gradients, one product each (2 MACs-worth).
    out = linear(conv(x).flatten(1))
    assert counted(lambda: out.sum().backward()) == 2 * linear_macs + 2 * linear_macs + 2 * conv_macs
    # (linear: grad of its input + grad of its weight; conv: grad of its weight only, its input is data)

    # Frozen weights, input needing a gradient: activation gradients only, one product per layer.
    conv.requires_grad_(False)
    linear.requires_grad_(False)
    x_grad = x.clone().requires_grad_()
    out = linear(conv(x_grad).flatten(1))
    assert counted(lambda: out.sum().backward()) == 2 * linear_macs + 2 * conv_macs


def test_attention_on_meta_is_counted_with_its_matmuls():
    b, heads, s_q, s_k, d = 2, 4, 64, 77, 32
    with torch.device("meta"):
        q = torch.randn(b, heads, s_q, d, requires_grad=True)
        k = torch.randn(b, heads, s_k, d, requires_grad=True)
        v = torch.randn(b, heads, s_k, d, requires_grad=True)
    forward = 2 * (2 * b * heads * s_q * s_k * d)  # QK^T and PV
    out = []
    assert counted(lambda: out.append(F.scaled_dot_product_attention(q, k, v))) == forward
    assert counted(lambda: out[0].sum().backward()) == 2 * forward  # grads of Q, K (via scores), V, scores


def test_tiny_step_splits_into_parts_that_add_up_and_the_frozen_unet_has_no_weight_gradients(flops):
    torch.set_num_threads(1)
    unet, controlnet = flops.build_models("tiny")
    parts = flops.count_training_step_flops(unet, controlnet, batch=2, resolution=64)
    assert set(parts) == {*flops.PARTS, "total"}
    assert all(parts[name]["flops"] > 0 for name in parts)
    assert parts["total"]["flops"] == sum(parts[name]["flops"] for name in flops.PARTS)
    assert parts["total"]["by_op"].get("bmm", 0) > 0  # attention is in the count
    assert all(p.grad is None for p in unet.parameters())

    # The split (residuals detached and their gradients fed back by hand) counts what the step does in one piece.
    controlnet.zero_grad(set_to_none=True)
    whole = flops.count_training_step_flops(unet, controlnet, batch=2, resolution=64, split=False)
    assert whole["total"]["flops"] == parts["total"]["flops"]

    # ControlNet: weight + activation gradients, about 2x its forward (its first layers' inputs need none).
    ratio = parts["controlnet_bwd"]["flops"] / parts["controlnet_fwd"]["flops"]
    assert 1.8 < ratio <= 2.0
    # Frozen UNet: activation gradients of the up path only, so less than its forward.
    ratio = parts["unet_bwd"]["flops"] / parts["unet_fwd"]["flops"]
    assert 0.3 < ratio < 1.0

    # With its weights trainable, the same UNet backward would cost more: the weight gradients.
    x = flops.step_inputs(unet, 2, 64)
    unet.requires_grad_(True)
    pred = unet(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"]).sample
    trainable_bwd = counted(lambda: pred.float().square().mean().backward())
    unet.requires_grad_(False)
    unet.zero_grad(set_to_none=True)
    assert trainable_bwd > 1.5 * parts["unet_bwd"]["flops"]


def test_mfu_reads_the_ladder_and_says_not_measured_elsewhere(flops, tmp_path):
    ladder = tmp_path / "ladder.json"
    ladder.write_text(json.dumps({"arch": "sd15", "resolution": 512, "batch": 1, "rows": [
        {"rung": 1, "name": "fp32 AdamW", "s_per_step": 0.5},
        {"rung": 2, "name": "+ gradient accumulation (4 micro-batches)", "s_per_step": 2.0},
        {"rung": 5, "name": "+ fp16 mixed precision", "s_per_step": None, "skipped": "needs a CUDA GPU"}],
        "throughput": {"batch": 8, "samples_per_s": 16.0}, "throughput_fast": {"batch": 8, "samples_per_s": 24.0}}))
    measured = flops.load_measurements([ladder])
    assert len(measured) == 4  # the skipped rung gives no row
    rows = [{"arch": "sd15", "label": "SD 1.5", "resolution": 512, "batch": 1, "flops_per_step": 1e12},
            {"arch": "sd15", "label": "SD 1.5", "resolution": 512, "batch": 8, "flops_per_step": 8e12},
            {"arch": "sdxl", "label": "SDXL base", "resolution": 1024, "batch": 1, "flops_per_step": 9e12}]
    mfu = flops.mfu_rows(rows, measured, peak=1e15, encoders={"vae_encoder": 1e12, "text_encoder": 0.0})
    by_what = {(r["arch"], r["batch"], r["measurement"].split(":")[0]): r for r in mfu}
    assert by_what[("sd15", 1, "rung 1 (ladder)")]["mfu"] == pytest.approx(1e12 * 2 / 1e15)
    rung2 = by_what[("sd15", 1, "rung 2 (ladder)")]
    assert rung2["micro_batches"] == 4 and rung2["mfu"] == pytest.approx(4e12 * 0.5 / 1e15)
    assert rung2["mfu_with_encoders"] == pytest.approx(8e12 * 0.5 / 1e15)  # uncached: + 4 VAE encodes
    throughputs = [r for r in mfu if r["batch"] == 8 and r["measurement"].startswith("throughput")]
    assert [r["mfu"] for r in throughputs] == pytest.approx([8e12 * 2 / 1e15, 8e12 * 3 / 1e15])
    assert "torch.compile" in throughputs[1]["measurement"]
    sdxl = by_what[("sdxl", 1, "not measured")]
    assert sdxl["mfu"] is None and sdxl["measured"] == "not measured"
