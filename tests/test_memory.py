"""Memory tricks do what they claim, and the ladder benchmark runs on a CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

import cnhelpers.training as training
from cnhelpers.cli import training_args
from cnhelpers.data import write_fill_imagefolder
from cnhelpers.memory import (LADDER, deepspeed_accelerate_config, make_optimizer, recommend_rung, rung_flags,
                              write_deepspeed_config)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fill_dir(tmp_path_factory):
    return write_fill_imagefolder(tmp_path_factory.mktemp("data") / "fill", 8, 64, seed=0)


@pytest.fixture
def captured_models(monkeypatch):
    """Keep the models that train() loads, to inspect them after the run."""
    captured = {}
    load = training.load_models

    def load_and_keep(args):
        models = load(args)
        captured.update(zip(("tokenizer", "text_encoder", "vae", "unet", "scheduler", "controlnet"), models))
        return models

    monkeypatch.setattr(training, "load_models", load_and_keep)
    return captured


def run(tiny_base, fill_dir, tmp_path, callback=None, **flags):
    args = training_args(**({"pretrained_model_name_or_path": tiny_base, "train_data_dir": fill_dir,
                             "output_dir": tmp_path / "run", "resolution": 64, "train_batch_size": 2,
                             "max_train_steps": 2, "seed": 0, "report_to": "none", "checkpointing_steps": 1000}
                            | flags))
    return training.train(args, callback=callback)


def test_gradient_checkpointing_flag_turns_it_on(tiny_base, fill_dir, tmp_path, captured_models):
    run(tiny_base, fill_dir, tmp_path, gradient_checkpointing=True)
    assert captured_models["controlnet"].is_gradient_checkpointing
    assert captured_models["unet"].is_gradient_checkpointing  # the gradient flows through it


def test_8bit_adam_keeps_its_state_in_uint8():
    layer = torch.nn.Linear(128, 128)  # bitsandbytes keeps tensors under 4096 values in 32 bits
    args = training_args(pretrained_model_name_or_path="x", train_data_dir="d", use_8bit_adam=True)
    optimizer = make_optimizer(args, layer.parameters())
    layer(torch.randn(4, 128)).sum().backward()
    optimizer.step()
    state = optimizer.state[layer.weight]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    assert type(optimizer).__name__ == "AdamW8bit"


def test_mixed_precision_halves_the_frozen_models_and_keeps_the_controlnet_fp32(
        tiny_base, fill_dir, tmp_path, captured_models):
    run(tiny_base, fill_dir, tmp_path, mixed_precision="bf16")
    for frozen in ("unet", "vae", "text_encoder"):
        assert captured_models[frozen].dtype == torch.bfloat16, frozen
    assert captured_models["controlnet"].dtype == torch.float32


@pytest.mark.parametrize("cache, vae_calls_in_loop", [("always", 0), ("never", 2)])
def test_cached_latents_mean_no_vae_forward_inside_the_loop(tiny_base, fill_dir, tmp_path, monkeypatch,
                                                           cache, vae_calls_in_loop):
    from diffusers import AutoencoderKL

    calls = {"n": 0}
    encode = AutoencoderKL.encode

    def counting_encode(self, *args, **kwargs):
        calls["n"] += 1
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting_encode)
    seen = []
    run(tiny_base, fill_dir, tmp_path, cache=cache, max_train_steps=3,
        callback=lambda logs: seen.append(calls["n"]))
    assert seen[-1] - seen[0] == vae_calls_in_loop  # encodes during steps 2 and 3


def test_deepspeed_yaml_has_the_guides_keys(tmp_path):
    path = write_deepspeed_config(tmp_path / "ds.yaml", gradient_accumulation_steps=4)
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["compute_environment"] == "LOCAL_MACHINE"
    assert config["mixed_precision"] == "fp16"
    assert config["deepspeed_config"] == {"gradient_accumulation_steps": 4, "offload_optimizer_device": "cpu",
                                          "offload_param_device": "cpu", "zero3_init_flag": False, "zero_stage": 2}
    assert deepspeed_accelerate_config(zero_stage=3)["deepspeed_config"]["zero_stage"] == 3


def test_ladder_rungs_add_up_and_offload_drops_8bit_adam():
    assert [r.number for r in LADDER] == [1, 2, 3, 4, 5, 6, 7]
    assert rung_flags(1) == {"cache": "never"}
    assert rung_flags(4) == {"cache": "never", "gradient_accumulation_steps": 4, "gradient_checkpointing": True,
                             "use_8bit_adam": True, "set_grads_to_none": True}
    assert rung_flags(6)["cache"] == "always" and rung_flags(6)["mixed_precision"] == "fp16"
    assert "use_8bit_adam" not in rung_flags(7)
    assert rung_flags(4, use_xformers=True)["enable_xformers_memory_efficient_attention"]
    assert "mixed_precision" not in rung_flags(6, skipped={5})


def test_recommend_rung_picks_the_first_that_fits():
    rows = [{"rung": 1, "peak_gb": 30.0}, {"rung": 3, "peak_gb": 14.0}, {"rung": 5, "peak_gb": None},
            {"rung": 6, "peak_gb": 5.0}]
    assert recommend_rung(rows, 40)["rung"] == 1
    assert recommend_rung(rows, 16)["rung"] == 3
    assert recommend_rung(rows, 8)["rung"] == 6
    assert recommend_rung(rows, 4) is None


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed")
def test_missing_xformers_is_a_clear_error(tiny_base, fill_dir, tmp_path):
    with pytest.raises(ValueError, match="xformers is not installed.*SDPA"):
        run(tiny_base, fill_dir, tmp_path, enable_xformers_memory_efficient_attention=True)


def test_tiny_ladder_runs_on_cpu_and_skips_what_needs_a_gpu(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import memory_ladder

    out = tmp_path / "ladder.json"
    memory_ladder.main(["--arch", "tiny", "--rungs", "1,3,5,6", "--steps", "3", "--work", str(tmp_path / "w"),
                        "--json", str(out), "--markdown", str(tmp_path / "ladder.md")])
    rows = {row["rung"]: row for row in json.loads(out.read_text())["rows"]}
    assert all(rows[n]["peak_gb"] > 0 and rows[n]["s_per_step"] > 0 for n in (1, 3, 6))
    if not torch.cuda.is_available():
        assert rows[5]["peak_gb"] is None and "needs a CUDA GPU" in rows[5]["skipped"]
        assert rows[6]["name"].endswith("(without rung 5)")
    table = (tmp_path / "ladder.md").read_text()
    assert "| 1 | fp32 AdamW |" in table and "38 GB" in table
