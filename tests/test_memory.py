"""Memory tricks do what they claim, and the ladder benchmark runs on a CPU."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import ControlNetModel, UNet2DConditionModel

from cnhelpers.config import training_args
import cnhelpers.training as training
from cnhelpers.course.memory import (
    LADDER,
    LADDER_VERSION,
    LiveGradientBytes,
    LiveTensorBytes,
    deepspeed_accelerate_config,
    load_ladder_results,
    missing_requirements,
    recommend_rung,
    rung_flags,
    write_deepspeed_config,
)
from cnhelpers.optim import check_optimizer_in_backward, make_optimizer

pytestmark = pytest.mark.not_colab(
    reason="torch's memory arithmetic and the ladder benchmark; notebooks 04 and 04b run on Colab's versions")

ROOT = Path(__file__).resolve().parents[1]
#: 8-bit AdamW is bitsandbytes' (cnhelpers' memory extra); Colab's runtime has none.
needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                        reason="bitsandbytes is not installed (pip install 'cnhelpers[memory]')")


def run_args(tiny_base, fill_dir, tmp_path, **flags):
    return training_args(**({"pretrained_model_name_or_path": tiny_base, "train_data_dir": fill_dir,
                             "output_dir": tmp_path / "run", "resolution": 64, "train_batch_size": 2,
                             "max_train_steps": 2, "seed": 0, "report_to": "none", "checkpointing_steps": 1000}
                            | flags))


def run(tiny_base, fill_dir, tmp_path, callback=None, **flags):
    return training.train(run_args(tiny_base, fill_dir, tmp_path, **flags), callback=callback)


def prepared_models(tiny_base, fill_dir, tmp_path, **flags):
    """The models as train() prepares them, through its own first two named steps."""
    args, accelerator = training.setup(run_args(tiny_base, fill_dir, tmp_path, **flags))
    return training.prepare_models(args, accelerator).models


def test_gradient_checkpointing_is_the_controlnets_as_upstream_and_the_frozen_unet_has_its_own_flag(
        tiny_base, fill_dir, tmp_path):
    models = prepared_models(tiny_base, fill_dir, tmp_path, gradient_checkpointing=True)
    assert models.controlnet.is_gradient_checkpointing and not models.unet.is_gradient_checkpointing
    models = prepared_models(tiny_base, fill_dir, tmp_path, checkpoint_frozen_unet=True)
    assert models.unet.is_gradient_checkpointing and not models.controlnet.is_gradient_checkpointing
    assert not prepared_models(tiny_base, fill_dir, tmp_path).unet.is_gradient_checkpointing


@needs_bitsandbytes
def test_8bit_adam_keeps_its_state_in_uint8():
    layer = torch.nn.Linear(128, 128)  # bitsandbytes keeps tensors under 4096 values in 32 bits
    optimizer = make_optimizer(layer.parameters(), learning_rate=5e-6, use_8bit=True)
    layer(torch.randn(4, 128)).sum().backward()
    optimizer.step()
    state = optimizer.state[layer.weight]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    assert type(optimizer).__name__ == "AdamW8bit"


def test_mixed_precision_halves_the_frozen_models_and_keeps_the_controlnet_fp32(tiny_base, fill_dir, tmp_path):
    models = prepared_models(tiny_base, fill_dir, tmp_path, mixed_precision="bf16")
    for frozen in ("unet", "vae", "text_encoder"):
        assert getattr(models, frozen).dtype == torch.bfloat16, frozen
    assert models.controlnet.dtype == torch.float32


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
                                          "offload_param_device": "none", "zero3_init_flag": False, "zero_stage": 2}
    assert deepspeed_accelerate_config(zero_stage=3)["deepspeed_config"]["zero_stage"] == 3


def test_the_flux_zero3_yaml_is_upstreams(tmp_path):
    from cnhelpers.course.memory import FLUX_ZERO3

    config = yaml.safe_load(write_deepspeed_config(tmp_path / "zero3.yaml", **FLUX_ZERO3).read_text())
    # examples/controlnet/README_flux.md's accelerate_config_zero3.yaml
    assert config["deepspeed_config"] == {"gradient_accumulation_steps": 8, "offload_optimizer_device": "cpu",
                                          "offload_param_device": "cpu", "zero3_init_flag": True,
                                          "zero3_save_16bit_model": True, "zero_stage": 3}
    assert (config["distributed_type"], config["mixed_precision"], config["num_processes"]) == ("DEEPSPEED", "bf16", 8)


def test_the_guides_rungs_have_the_guides_batch_sizes_and_flags():
    assert [r.number for r in LADDER] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # the guide: batch 4 by default (~38 GB); batch 1 with 4 accumulated (~20 GB); + checkpointing and 8-bit
    # Adam (16 GB); + xFormers and grads to None (12 GB; SDPA is PyTorch's default, on at every rung here)
    assert rung_flags(1) == {"cache": "never", "train_batch_size": 4}
    assert rung_flags(2) == {"cache": "never", "train_batch_size": 1, "gradient_accumulation_steps": 4}
    assert rung_flags(4) == rung_flags(2) | {"gradient_checkpointing": True, "use_8bit_adam": True,
                                             "set_grads_to_none": True}
    assert {r.number: r.guide_gb for r in LADDER if r.guide_gb} == {1: 38.0, 2: 20.0, 3: 16.0, 4: 12.0, 9: 8.0}
    assert rung_flags(4, use_xformers=True)["enable_xformers_memory_efficient_attention"]


def test_the_courses_rungs_add_unet_checkpointing_precision_and_the_cache_one_at_a_time():
    assert rung_flags(5) == rung_flags(4) | {"checkpoint_frozen_unet": True}
    assert rung_flags(7)["cache"] == "always" and rung_flags(7)["mixed_precision"] == "fp16"
    assert "mixed_precision" not in rung_flags(7, skipped={6})


def test_the_step_in_backward_rung_drops_what_it_cannot_do_and_offload_gets_it_back():
    assert rung_flags(8) == {"cache": "always", "train_batch_size": 1, "gradient_checkpointing": True,
                             "use_8bit_adam": True, "set_grads_to_none": True, "checkpoint_frozen_unet": True,
                             "mixed_precision": "bf16", "optimizer_in_backward": True, "max_grad_norm": 0}
    assert "mixed_precision" not in rung_flags(8, skipped={6})  # on a CPU: fp32, like rung 7 there
    # offload: the guide's 8 GB flags on rung 7's cache, DeepSpeed's CPU Adam for 8-bit Adam
    assert rung_flags(9) == {k: v for k, v in rung_flags(7).items() if k not in ("use_8bit_adam",
                                                                                 "checkpoint_frozen_unet")}


def test_half_bf16_runs_the_fp16_rungs_in_bf16_and_lets_a_cpu_run_them():
    assert rung_flags(6, half="bf16")["mixed_precision"] == "bf16"
    assert rung_flags(7, half="bf16") == rung_flags(7) | {"mixed_precision": "bf16"}
    assert rung_flags(8, half="bf16") == rung_flags(8)
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in missing_requirements(LADDER[5])
        assert missing_requirements(LADDER[5], half="bf16") is None
        assert "needs a CUDA GPU" in missing_requirements(LADDER[8], half="bf16")  # DeepSpeed's offload


def test_ladder_files_of_another_numbering_are_refused_and_unmeasured_rungs_stay_empty(tmp_path):
    rows = [{"rung": 7, "name": "+ cached latents and text embeddings", "peak_gb": 6.4},
            {"rung": 9, "name": "ZeRO-2 CPU offload (DeepSpeed), no 8-bit Adam", "peak_gb": 3.8}]
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"device": "GPU", "rows": rows}))
    new.write_text(json.dumps({"device": "GPU", "rows": rows, "ladder_version": LADDER_VERSION}))
    with pytest.raises(ValueError, match="ladder version 1, today's is"):
        load_ladder_results(old)
    rows = {row["rung"]: row for row in load_ladder_results(new)}
    assert rows[9]["peak_gb"] == 3.8 and rows[7]["peak_gb"] == 6.4
    assert rows[8]["peak_gb"] is None and rows[8]["skipped"] == "not measured yet"
    assert recommend_rung(list(rows.values()), 8)["rung"] == 7


def test_the_relabelled_2026_11_26_rows_ran_exactly_their_rungs_flags(benchmark_script):
    relabel_ladder = benchmark_script("relabel_ladder")

    for target, sources in relabel_ladder.SOURCES.items():
        stored = json.loads((relabel_ladder.RESULTS / target).read_text())
        assert stored == json.loads(json.dumps(relabel_ladder.relabel(target, sources)))  # regenerated, not edited
    h200 = {row["rung"]: row for row in load_ladder_results(relabel_ladder.RESULTS / next(iter(relabel_ladder.SOURCES)))}
    assert h200[1]["peak_gb"] is None  # batch 4 was never measured
    assert "run1" in h200[3]["source"] or "run1" in h200[3]["measured_as"]  # ControlNet-only checkpointing
    assert "run2" in h200[5]["measured_as"]  # the run that checkpointed the frozen UNet


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


# --- The optimizer step in backward -----------------------------------------------------------------

def test_step_in_backward_trains_the_same_weights_as_the_usual_step(tiny_base, fill_dir, tmp_path):
    # A warmup-then-cosine schedule: the first step has lr 0, so an optimizer the scheduler missed would differ.
    common = dict(max_train_steps=3, learning_rate=1e-3, lr_scheduler="cosine", lr_warmup_steps=1, max_grad_norm=0)
    run(tiny_base, fill_dir, tmp_path / "usual", **common)
    run(tiny_base, fill_dir, tmp_path / "fused", optimizer_in_backward=True, **common)
    usual = ControlNetModel.from_pretrained(tmp_path / "usual" / "run").state_dict()
    fused = ControlNetModel.from_pretrained(tmp_path / "fused" / "run").state_dict()
    initial = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")).state_dict()
    assert not all(torch.equal(usual[k], initial[k]) for k in usual)  # it trained
    assert all(torch.allclose(usual[k], fused[k], rtol=1e-5, atol=1e-7) for k in usual)


def test_step_in_backward_keeps_at_most_one_gradient_alive():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    sizes = [p.nbytes for p in model.parameters()]
    usual_live = LiveGradientBytes(model.parameters())
    model(torch.randn(4, 32)).square().mean().backward()
    assert usual_live.peak_bytes == sum(sizes)  # every gradient alive at the end of backward
    usual_live.remove()
    model.zero_grad(set_to_none=True)

    live = LiveGradientBytes(model.parameters())  # before the optimizer: its hooks see each gradient first
    optimizer = make_optimizer(model.parameters(), learning_rate=1e-2, in_backward=True)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 32)).square().mean().backward()
    assert len(live.timeline) == len(sizes) and live.peak_bytes == max(sizes)
    assert all(p.grad is None for p in model.parameters())
    assert not any(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # updated inside backward
    optimizer.step()


def test_live_tensor_bytes_counts_each_storage_until_it_is_freed_in_cuda_blocks():
    with LiveTensorBytes() as count:
        start = count.current_bytes
        a = torch.zeros(1000)  # 4000 bytes: 8 blocks of 512
        view = a[:10]  # shares a's storage: not counted again
        one_byte = torch.zeros(1, dtype=torch.uint8)  # a whole block
        assert count.current_bytes - start == 4096 + 512
        b = torch.ones(2000)  # 8000 bytes -> 8192
        del a, view
        assert count.current_bytes - start == 512 + 8192  # a's storage was freed with its last view
        del b, one_byte
        assert count.current_bytes == start
    assert count.peak_bytes - start == 4096 + 512 + 8192


def test_live_tensor_bytes_splits_a_training_step_into_weights_gradients_and_optimizer_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))  # made outside
    weights = sum(-(-p.nbytes // 512) * 512 for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(8, 256)
    with LiveTensorBytes() as count:
        for step in range(3):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 0:
                count.reset_peak()  # from here on the optimizer state exists
    assert count.current["weights"] == weights and count.current["gradients"] == 0
    assert count.current["optimizer state"] >= 2 * weights  # AdamW's two moments (and its step counters)
    assert count.peak_breakdown["gradients"] == weights  # at the peak, every gradient was alive
    assert count.peak_bytes == sum(count.peak_breakdown.values())


def test_live_tensor_bytes_sees_the_step_in_backward_free_the_gradient_buffer():
    def peak(optimizer_in_backward):
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
        optimizer = make_optimizer(model.parameters(), learning_rate=1e-2, in_backward=optimizer_in_backward)
        with LiveTensorBytes() as count:
            for step in range(2):
                model(torch.randn(2, 256)).square().mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step == 0:
                    count.reset_peak()
        return count.peak_bytes, sum(p.nbytes for p in model.parameters())

    (usual, gradients), (in_backward, _) = peak(False), peak(True)
    assert usual - in_backward >= 0.8 * gradients  # all but about one layer's gradient


@needs_bitsandbytes
def test_step_in_backward_with_8bit_adam_keeps_uint8_state_per_parameter():
    layer = torch.nn.Linear(128, 128)  # bitsandbytes keeps tensors under 4096 values in 32 bits
    optimizer = make_optimizer(layer.parameters(), learning_rate=1e-2, use_8bit=True, in_backward=True)
    layer(torch.randn(4, 128)).sum().backward()
    optimizer.step()
    weight_optimizer = optimizer.optimizers[0]
    assert type(weight_optimizer).__name__ == "AdamW8bit" and weight_optimizer.param_groups[0]["params"] == [layer.weight]
    assert weight_optimizer.state[layer.weight]["state1"].dtype == torch.uint8
    assert layer.weight.grad is None


def test_a_second_backward_before_the_step_is_an_error():
    layer = torch.nn.Linear(4, 4)
    optimizer = make_optimizer(layer.parameters(), learning_rate=1e-2, in_backward=True)
    layer(torch.randn(2, 4)).sum().backward()
    with pytest.raises(RuntimeError, match="cannot be accumulated over several backward passes"):
        layer(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    layer(torch.randn(2, 4)).sum().backward()  # a new step: fine


def fake_accelerator(**overrides):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    return SimpleNamespace(**({"distributed_type": DistributedType.NO, "num_processes": 1,
                               "gradient_accumulation_steps": 1, "mixed_precision": "no"} | overrides))


@pytest.mark.parametrize("max_grad_norm, accelerator, message", [
    (1.0, {}, "Pass --max_grad_norm 0"),
    (0, {"gradient_accumulation_steps": 4}, "Use --gradient_accumulation_steps 1"),
    (0, {"mixed_precision": "fp16"}, "Use --mixed_precision bf16"),
    (0, {"num_processes": 2}, "Launch one process"),
    (0, {"distributed_type": "DEEPSPEED", "num_processes": 2}, "does not combine with DeepSpeed"),
])
def test_what_the_step_in_backward_cannot_do_is_a_clear_error(max_grad_norm, accelerator, message):
    with pytest.raises(ValueError, match=message):
        check_optimizer_in_backward(fake_accelerator(**accelerator), max_grad_norm)
    check_optimizer_in_backward(fake_accelerator(**accelerator), max_grad_norm, in_backward=False)  # no flag: fine


def test_step_in_backward_refuses_clipping_before_loading_anything(tiny_base, fill_dir, tmp_path):
    with pytest.raises(ValueError, match="cannot clip gradients by their global norm"):  # in setup(): no model yet
        training.setup(run_args(tiny_base, fill_dir, tmp_path, optimizer_in_backward=True))  # max_grad_norm is 1
    run(tiny_base, fill_dir, tmp_path, optimizer_in_backward=True, max_grad_norm=0, mixed_precision="bf16")


@needs_bitsandbytes
def test_step_in_backward_resumes_exactly(tiny_base, fill_dir, tmp_path):
    # The per-parameter 8-bit states and the schedule come back from checkpoint-2: the run stops right
    # after saving it (same --max_train_steps, so the same schedule), then resumes.
    common = dict(optimizer_in_backward=True, max_grad_norm=0, use_8bit_adam=True, learning_rate=1e-3,
                  lr_scheduler="cosine", lr_warmup_steps=1, checkpointing_steps=2, max_train_steps=5)

    class Stop(Exception):
        pass

    def stop_at_step_2(logs):
        if logs["step"] == 2:
            raise Stop

    run(tiny_base, fill_dir, tmp_path / "straight", **common)
    with pytest.raises(Stop):
        run(tiny_base, fill_dir, tmp_path / "resumed", callback=stop_at_step_2, **common)
    run(tiny_base, fill_dir, tmp_path / "resumed", resume_from_checkpoint="latest", **common)
    straight = ControlNetModel.from_pretrained(tmp_path / "straight" / "run").state_dict()
    resumed = ControlNetModel.from_pretrained(tmp_path / "resumed" / "run").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@needs_bitsandbytes
def test_tiny_ladder_runs_on_cpu_and_skips_what_needs_a_gpu(tmp_path, benchmark_script):
    memory_ladder = benchmark_script("memory_ladder")

    out = tmp_path / "ladder.json"
    memory_ladder.main(["--arch", "tiny", "--rungs", "1,6,8", "--steps", "3", "--work", str(tmp_path / "w"),
                        "--json", str(out), "--markdown", str(tmp_path / "ladder.md")])
    rows = {row["rung"]: row for row in json.loads(out.read_text())["rows"]}
    assert all(rows[n]["peak_gb"] > 0 and rows[n]["s_per_step"] > 0 for n in (1, 8))
    if not torch.cuda.is_available():
        assert rows[6]["peak_gb"] is None and "needs a CUDA GPU" in rows[6]["skipped"]
        assert rows[8]["name"].endswith("(without rung 6)")
    table = (tmp_path / "ladder.md").read_text()
    assert "| 1 | fp32 AdamW, batch 4 (upstream's defaults) |" in table and "38 GB" in table


@pytest.fixture(scope="module")
def counted_ladder(tmp_path_factory, benchmark_script):
    """Rungs 7 and 8 (both fp16 rungs, run in bf16) counted tensor by tensor, one at a time: (the JSON, the
    markdown)."""
    memory_ladder = benchmark_script("memory_ladder")
    folder = tmp_path_factory.mktemp("counted")
    memory_ladder.main(["--arch", "tiny", "--rungs", "7,8", "--steps", "2", "--count-tensors", "--half", "bf16",
                        "--work", str(folder / "w"), "--json", str(folder / "ladder.json"),
                        "--markdown", str(folder / "ladder.md")])
    return json.loads((folder / "ladder.json").read_text()), (folder / "ladder.md").read_text()


@needs_bitsandbytes
def test_tiny_ladder_counts_tensors_with_a_breakdown_and_bf16_for_fp16(counted_ladder):
    ladder, markdown = counted_ladder
    rows = {row["rung"]: row for row in ladder["rows"]}
    assert "counted op by op" in ladder["measure"]
    assert all(rows[n]["mixed_precision"] == "bf16" and rows[n]["peak_gb"] > 0 for n in (7, 8))
    for row in rows.values():
        assert sum(row["breakdown_gb"].values()) == pytest.approx(row["peak_gb"])
        assert row["device_peak_gb"] > row["peak_gb"]  # here the process's peak RSS: Python and libraries too
    assert rows[7]["breakdown_gb"]["gradients"] > 0 and rows[8]["breakdown_gb"]["gradients"] == 0
    assert "What the counted peak is made of" in markdown


@needs_bitsandbytes
def test_tiny_ladder_counts_the_same_bytes_two_rungs_at_a_time(tmp_path, benchmark_script, counted_ladder):
    memory_ladder = benchmark_script("memory_ladder")

    out = tmp_path / "ladder-2.json"
    memory_ladder.main(["--arch", "tiny", "--rungs", "7,8", "--steps", "2", "--count-tensors", "--half", "bf16",
                        "--jobs", "2", "--work", str(tmp_path / "w2"), "--json", str(out)])
    side_by_side = json.loads(out.read_text())
    one_at_a_time = counted_ladder[0]
    assert "2 rungs at a time" in side_by_side["header"] and "2 rungs at a time" not in one_at_a_time["header"]

    def counted(ladder):
        return [(row["rung"], row["name"], row["peak_gb"], row["breakdown_gb"]) for row in ladder["rows"]
                if row["rung"] in (7, 8)]
    assert counted(side_by_side) == counted(one_at_a_time) and all(peak > 0 for _, _, peak, _ in counted(side_by_side))


def test_ladder_refuses_rungs_side_by_side_unless_it_counts_tensors(benchmark_script, capsys):
    memory_ladder = benchmark_script("memory_ladder")

    with pytest.raises(SystemExit) as stop:
        memory_ladder.main(["--arch", "tiny", "--jobs", "2"])
    assert stop.value.code == 2 and "use it with --count-tensors" in capsys.readouterr().err


def test_ladder_table_gives_the_eager_and_the_compiled_throughput_or_the_failure(benchmark_script):
    memory_ladder = benchmark_script("memory_ladder")
    table = memory_ladder.markdown_table([], {"batch": 8, "samples_per_s": 54.3, "peak_gb": 30.0}, "header",
                                         {"error": "timed out after 540 s"})
    assert "Throughput: 54.3 samples/s at batch 8, bf16, SDPA, cached latents (peak 30.00 GB)." in table
    assert "Throughput with --channels_last --torch_compile run failed: timed out after 540 s" in table
    assert "--torch_compile" not in memory_ladder.markdown_table([], None, "header")


def test_memory_breakdown_bars_stack_up_to_each_rungs_peak():
    import matplotlib

    matplotlib.use("Agg")
    from cnhelpers.course.plots import show_memory_breakdown

    rows = [{"rung": 6, "name": "six", "breakdown_gb": {"weights": 3.0, "gradients": 1.5, "activations": 1.0}},
            {"rung": 7, "name": "seven", "breakdown_gb": {"weights": 3.0, "gradients": 0.0, "activations": 1.25}},
            {"rung": 8, "name": "not counted"}]
    ax = show_memory_breakdown(rows, unit="MB")
    right_edges = {}
    for bar in ax.patches:
        y = round(bar.get_y(), 3)
        right_edges[y] = max(right_edges.get(y, 0), bar.get_x() + bar.get_width())
    assert sorted(right_edges.values()) == [4250.0, 5500.0]  # MB; the row without a breakdown is left out
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["weights", "gradients", "activations"]


def test_live_tensor_bytes_files_unused_weights_as_weights_and_ignores_other_devices():
    outside = torch.nn.Linear(64, 64)  # made before counting, never run: not counted
    with LiveTensorBytes(device="cpu") as count:
        used, unused = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)  # parameters made by operations
        used(torch.zeros(1, 64))
        assert count.current["weights"] == sum(-(-p.nbytes // 512) * 512 for p in used.parameters())
        total = count.current_bytes
        count.reset_peak()
        assert count.current["weights"] == 2 * sum(-(-p.nbytes // 512) * 512 for p in used.parameters())
        assert count.current_bytes == total  # filed differently, not counted again
        before = count.current_bytes
        torch.zeros(1000, device="meta")
        assert count.current_bytes == before
    with LiveTensorBytes(device="cuda") as on_gpu:
        torch.zeros(1000)
    assert on_gpu.peak_bytes == 0
