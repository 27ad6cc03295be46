"""The training loop: Min-SNR, learning, checkpoints, resume, pruning, multi-process, errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, DDPMScheduler

from cnhelpers.checkpoints import list_checkpoints
from cnhelpers.config import UPSTREAM_FLAGS, build_parser, parse_args, training_args
from cnhelpers.course.fill import fill_example
from cnhelpers.loading import load_models
from cnhelpers.losses import controlnet_loss, diffusion_target, min_snr_weights
from cnhelpers.training import StepSetup, train, training_step

pytestmark = pytest.mark.not_colab(
    reason="the loop's arithmetic and flags; its calls into accelerate and diffusers run on Colab's versions in "
           "notebooks 03, 04 and 07, and the tests that need Colab's own are marked colab one by one")


@pytest.fixture(scope="module")
def validation_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("val") / "outline.png"
    fill_example(99, 0, 64)["conditioning_image"].save(path)
    return path


def tiny_args(tiny_base, fill_dir, output_dir, **flags):
    defaults = dict(pretrained_model_name_or_path=tiny_base, train_data_dir=fill_dir, output_dir=output_dir,
                    resolution=64, train_batch_size=4, learning_rate=1e-3, lr_warmup_steps=0, seed=0,
                    report_to="none", checkpointing_steps=1000)
    return training_args(**(defaults | flags))


def controlnet_state(path):
    return ControlNetModel.from_pretrained(path).state_dict()


# --- Min-SNR ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_equal_the_formulas(prediction_type):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    timesteps = torch.tensor([0, 10, 100, 500, 999])
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    gamma = 5.0
    expected = torch.minimum(snr, torch.tensor(gamma)) / (snr if prediction_type == "epsilon" else snr + 1)
    assert torch.allclose(min_snr_weights(scheduler, timesteps, gamma), expected, rtol=1e-5)


def test_min_snr_down_weights_the_easy_low_noise_timesteps():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    weights = min_snr_weights(scheduler, torch.tensor([1, 50, 400, 900]), 5.0)
    assert weights[0] < weights[1] < weights[2] and weights[0] < 0.01
    assert weights[3] == pytest.approx(1.0)  # SNR below γ: weight 1 for epsilon


def test_weighting_changes_the_loss_per_sample_not_per_pixel():
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    target = torch.zeros(2, 4, 8, 8)
    pred = torch.ones(2, 4, 8, 8)
    pred[1] *= 3  # sample 1 has 9x the error of sample 0
    timesteps = torch.tensor([1, 900])  # sample 0 easy (weight ~0), sample 1 hard (weight 1)
    unweighted = controlnet_loss(pred, target)
    weighted = controlnet_loss(pred, target, timesteps, scheduler, snr_gamma=5.0)
    assert unweighted == pytest.approx(5.0)
    w = min_snr_weights(scheduler, timesteps, 5.0)
    assert weighted == pytest.approx(float((w[0] * 1 + w[1] * 9) / 2), rel=1e-5)


def test_v_prediction_target_is_the_velocity():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    assert torch.equal(diffusion_target(scheduler, latents, noise, t), scheduler.get_velocity(latents, noise, t))
    assert torch.equal(diffusion_target(DDPMScheduler(), latents, noise, t), noise)


# --- Learning --------------------------------------------------------------------------------------

def fixed_batch(models, fill_dir, n=4):
    from cnhelpers.data import collate_fn, load_imagefolder, make_train_dataset

    return collate_fn(list(make_train_dataset(load_imagefolder(fill_dir), models.tokenizer, resolution=64,
                                              max_train_samples=n, seed=0)))


@torch.no_grad()
def fixed_noise_loss(models, batch, repeats=8):
    """The mean of training_step's loss over ``repeats`` draws of a fixed generator: the same noise each call."""
    setup = StepSetup(models)
    generator = torch.Generator().manual_seed(1)
    return sum(training_step(setup, batch, generator).item() for _ in range(repeats)) / repeats


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_base, fill_dir, tmp_path):
    args = tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_samples=4, max_train_steps=30)
    train(args)
    models = load_models(args.pretrained_model_name_or_path)
    batch = fixed_batch(models, fill_dir)
    initial = fixed_noise_loss(models, batch)
    models.controlnet = ControlNetModel.from_pretrained(tmp_path / "run")
    assert fixed_noise_loss(models, batch) < 0.95 * initial


def test_outputs_load_in_diffusers_format_with_a_model_card(tiny_base, fill_dir, validation_image, tmp_path):
    args = tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=2, snr_gamma=5.0,
                     validation_prompt=["red circle with blue background"], validation_image=[validation_image],
                     num_validation_images=2, validation_steps=2, num_validation_inference_steps=2)
    result = train(args)
    assert result.global_step == 2 and len(result.history) == 2
    assert isinstance(ControlNetModel.from_pretrained(tmp_path / "run"), ControlNetModel)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Min-SNR γ | 5.0" in card and "validation/step-000002.png" in card
    from PIL import Image

    grid = Image.open(tmp_path / "run" / "validation" / "step-000002.png")
    assert grid.size == (64 * 3, 64)  # the conditioning image, then 2 generated images


def test_cached_and_uncached_paths_give_the_same_loss_on_the_same_batch_and_noise(tiny_base, fill_dir, tmp_path):
    from cnhelpers.cache import build_cache

    models = load_models(tiny_base)
    batch = fixed_batch(models, fill_dir)
    from cnhelpers.data import load_imagefolder, make_train_dataset

    dataset = make_train_dataset(load_imagefolder(fill_dir), models.tokenizer, resolution=64, max_train_samples=4,
                                 seed=0)
    examples, text_tables = build_cache(dataset, dataset.with_format(None)["text"], models.encode_prompts, models.vae,
                                        "cpu", disable_progress=True)
    cached_batch = torch.utils.data.default_collate([examples[i] for i in range(4)])
    with torch.no_grad():
        uncached = training_step(StepSetup(models), batch, torch.Generator().manual_seed(3))
        cached = training_step(StepSetup(models, text_tables=text_tables), cached_batch, torch.Generator().manual_seed(3))
        other_noise = training_step(StepSetup(models), batch, torch.Generator().manual_seed(4))
    # The conditioning image is stored as uint8 in the cache: a rounding of at most 1/510 per pixel.
    assert cached.item() == pytest.approx(uncached.item(), rel=1e-3)
    assert other_noise.item() != pytest.approx(uncached.item(), rel=1e-3)  # the loss does depend on the draws


# --- Checkpoints -----------------------------------------------------------------------------------

@pytest.mark.colab  # accelerate's save_state and load_state, in Colab's version
@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_reproduces_an_uninterrupted_run(tiny_base, fill_dir, tmp_path, accumulation):
    # 16 examples, batch 4: 4 batches an epoch, so the run crosses an epoch and resumes mid-epoch.
    # The shorter first run stands in for an interrupted one; --cache auto would choose by each run's length
    # (tests/test_cache.py), so the path is pinned: cached, and uncached with accumulation (its dropped prompts
    # are drawn per step too, so the resumed run drops the uninterrupted one's).
    common = dict(gradient_accumulation_steps=accumulation, checkpointing_steps=3 if accumulation == 1 else 1,
                  proportion_empty_prompts=0.3, cache="always" if accumulation == 1 else "never")
    train(tiny_args(tiny_base, fill_dir, tmp_path / "straight", max_train_steps=6 // accumulation + 1, **common))
    train(tiny_args(tiny_base, fill_dir, tmp_path / "resumed", max_train_steps=3 if accumulation == 1 else 2,
                    **common))
    train(tiny_args(tiny_base, fill_dir, tmp_path / "resumed", max_train_steps=6 // accumulation + 1,
                    resume_from_checkpoint="latest", **common))
    straight, resumed = controlnet_state(tmp_path / "straight"), controlnet_state(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_total_limit_keeps_the_newest_checkpoints(tiny_base, fill_dir, tmp_path):
    train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=6, checkpointing_steps=2,
                    checkpoints_total_limit=2))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-4", "checkpoint-6"]


def test_resuming_with_a_limit_prunes_the_old_run_too(tiny_base, fill_dir, tmp_path):
    train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=6, checkpointing_steps=2))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    result = train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=8, checkpointing_steps=2,
                             checkpoints_total_limit=2, resume_from_checkpoint="latest"))
    assert result.global_step == 8
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-6", "checkpoint-8"]


def test_a_crash_while_saving_leaves_no_checkpoint_behind(tiny_base, fill_dir, tmp_path, monkeypatch):
    import accelerate

    def crash(self, output_dir=None, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "optimizer.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=4, checkpointing_steps=2))
    assert list_checkpoints(tmp_path / "run") == []


def test_resume_from_a_missing_checkpoint_lists_the_ones_there(tiny_base, fill_dir, tmp_path):
    train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=2, checkpointing_steps=2))
    with pytest.raises(FileNotFoundError, match="checkpoints there: checkpoint-2"):
        train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=4,
                        resume_from_checkpoint="checkpoint-7"))


# Two processes on the CPU (accelerate launch --multi_gpu, ACCELERATE_USE_CPU=1, gloo): notebook 04's checked
# output shows the run reporting once ("Trained 4 steps; ControlNet saved ..." a single time) and a random state
# saved per process (random_states_0.pkl, random_states_1.pkl), in test-notebooks and on Colab's versions; the test
# that ran it a fourth time here is gone.


def test_processes_that_cannot_share_a_device_refuse_to_train_alone(tiny_base, fill_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the processes share the GPU")
    with pytest.raises(ValueError, match="ACCELERATE_USE_CPU=1"):
        train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=1))


@pytest.mark.not_colab(reason="DeepSpeed is in the course's requirements, not in Colab's stack")
def test_upstreams_flux_zero3_config_on_two_cpu_processes_is_refused_in_one_line(tmp_path):
    """accelerate 1.15 starts DeepSpeed only on a GPU backend: on CPUs each process would train alone, without ZeRO
    (and with ACCELERATE_USE_CPU=1 it silently runs plain data parallel). Each process says so in one line."""
    site = Path(__file__).resolve().parents[1] / "build" / "deepspeed-site"  # make setup installs it there
    if not (site / "deepspeed").is_dir():
        pytest.skip("DeepSpeed is not in build/deepspeed-site: run make setup")
    from cnhelpers.course.fill import write_fill_imagefolder
    from cnhelpers.course.memory import FLUX_ZERO3, write_deepspeed_config
    from cnhelpers.course.recipes import FAMILY_BASES

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine DeepSpeed runs")
    config = write_deepspeed_config(tmp_path / "zero3.yaml", **(FLUX_ZERO3 | {"num_processes": 2}))
    data = write_fill_imagefolder(tmp_path / "data", num_examples=2, resolution=64)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m",
               "cnhelpers.train", "--pretrained_model_name_or_path", str(FAMILY_BASES["flux"]), "--train_data_dir",
               str(data), "--output_dir", str(tmp_path / "run"), "--resolution", "64", "--train_batch_size", "1",
               "--max_train_steps", "1", "--cache", "always", "--max_sequence_length", "77", "--report_to", "none"]
    for use_cpu in ("", "1"):
        env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {
            "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(site),
            **({"ACCELERATE_USE_CPU": use_cpu} if use_cpu else {})}
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode != 0
        # one line from each process (their writes to the shared stderr may run together)
        assert done.stderr.count("error: Launched with a DeepSpeed config, but accelerate runs DeepSpeed on GPUs "
                                 "only") == 2, done.stderr[-3000:]
        assert done.stderr.count("ACCELERATE_USE_CPU is set") == (2 if use_cpu else 0)
        assert "[rank0]: Traceback" not in done.stderr and not (tmp_path / "run" / "config.json").exists()


# --- The CLI ---------------------------------------------------------------------------------------

def test_cli_accepts_every_upstream_flag_with_upstream_defaults():
    parser = build_parser()
    dests = {a.dest: a for a in parser._actions}
    assert len(UPSTREAM_FLAGS) == 52
    missing = [f for f in UPSTREAM_FLAGS if f not in dests]
    assert missing == []
    defaults = {"output_dir": "controlnet-model", "resolution": 512, "train_batch_size": 4, "num_train_epochs": 1,
                "checkpointing_steps": 500, "learning_rate": 5e-6, "lr_scheduler": "constant", "lr_warmup_steps": 500,
                "lr_num_cycles": 1, "lr_power": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
                "adam_weight_decay": 1e-2, "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "logging_dir": "logs",
                "report_to": "tensorboard", "num_validation_images": 4, "validation_steps": 100,
                "tracker_project_name": "train_controlnet", "proportion_empty_prompts": 0,
                "gradient_accumulation_steps": 1, "dataloader_num_workers": 0, "image_column": "image",
                "conditioning_image_column": "conditioning_image", "caption_column": "text"}
    assert {k: dests[k].default for k in defaults} == defaults
    assert dests["snr_gamma"].default is None


def test_the_guides_command_parses(tmp_path):
    args = parse_args(["--pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5",
                       "--output_dir=out", "--dataset_name=fusing/fill50k", "--resolution=512",
                       "--learning_rate=1e-5", "--validation_image", "a.png", "b.png",
                       "--validation_prompt", "red circle with blue background", "cyan circle with brown background",
                       "--train_batch_size=1", "--gradient_accumulation_steps=4", "--gradient_checkpointing",
                       "--use_8bit_adam", "--set_grads_to_none", "--report_to", "tensorboard", "--snr_gamma", "5"])
    assert args.gradient_accumulation_steps == 4 and args.snr_gamma == 5.0 and len(args.validation_image) == 2


def test_unknown_flag_is_named_with_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--pretrained_model_name_or_path", "x", "--train_data_dir", "d", "--snr_gama", "5"])
    assert "--snr_gama (did you mean --snr_gamma?)" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--mixed_precision", "fp16"], "fp16 needs a CUDA GPU"),
    (["--validation_prompt", "a", "b", "--validation_image", "x.png", "y.png", "z.png"],
     "2 validation prompts but 3 validation images"),
    (["--validation_prompt", "a"], "--validation_image must be given too"),
    (["--resolution", "100"], "multiple of 8"),
    (["--proportion_empty_prompts", "1.5"], r"in \[0, 1\]"),
    (["--dataset_name", "fusing/fill50k"], "only one of --dataset_name and --train_data_dir"),
])
def test_contradictory_flags_are_clear_errors(flags, message):
    if "fp16" in flags and torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    with pytest.raises(ValueError, match=message):
        parse_args(["--pretrained_model_name_or_path", "x", "--train_data_dir", "d", *flags])


@pytest.mark.colab  # the Hub client, in Colab's version
def test_push_to_hub_while_offline_fails_before_training(tiny_base, fill_dir, tmp_path, monkeypatch):
    from cnhelpers.hub import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="train without --push_to_hub"):
        train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=2, push_to_hub=True))
    assert not (tmp_path / "run" / "config.json").exists()


def test_cli_reports_errors_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cnhelpers.train", "--pretrained_model_name_or_path", "x",
                           "--train_data_dir", "d", "--resolution", "100"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: resolution=100 is not a positive multiple of 8")


def test_optimizer_state_takes_its_parameters_memory_layout_after_loading():
    from cnhelpers.optim import match_state_layout

    param = torch.nn.Parameter(torch.randn(8, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    optimizer = torch.optim.AdamW([param], fused=True)
    param.grad = torch.randn_like(param)
    optimizer.step()
    saved = optimizer.state[param]["exp_avg"].contiguous()  # as a run in the default layout would save it
    optimizer.state[param]["exp_avg"] = saved.clone()
    match_state_layout(optimizer)
    restored = optimizer.state[param]["exp_avg"]
    assert restored.stride() == param.stride()
    assert torch.equal(restored, saved)


# --- The loop's contract: args untouched, one fit check, a finished run stays finished ----------------

def test_train_leaves_its_args_as_they_were_so_a_second_run_scales_the_same(tiny_base, fill_dir, tmp_path):
    args = tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=1, scale_lr=True, learning_rate=1e-4)
    before = dict(vars(args))
    first, second = train(args), train(args)
    assert vars(args) == before
    assert first.history[0]["lr"] == second.history[0]["lr"] == pytest.approx(1e-4 * 4)  # x batch 4, 1 process


def test_a_controlnet_made_for_another_base_is_refused_naming_both_shapes(tiny_base, fill_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    other = UNet2DConditionModel(**{**unet.config, "block_out_channels": (32, 32), "norm_num_groups": 16})
    ControlNetModel.from_unet(other).save_pretrained(tmp_path / "other-controlnet")
    with pytest.raises(ValueError, match=r"its block_out_channels is \[32, 32\], the base UNet's is \[64, 64\]"):
        train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=1,
                        controlnet_model_name_or_path=tmp_path / "other-controlnet"))
    assert list_checkpoints(tmp_path / "run") == [] and not (tmp_path / "run" / "config.json").exists()


def test_resuming_a_finished_run_trains_nothing_and_changes_nothing(tiny_base, fill_dir, tmp_path):
    args = tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=4, checkpointing_steps=4)
    train(args)
    before = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in sorted((tmp_path / "run").rglob("*"))
              if p.is_file()}
    again = train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=4, checkpointing_steps=4,
                            resume_from_checkpoint="latest"))
    assert again.global_step == 4 and again.history == []
    after = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in sorted((tmp_path / "run").rglob("*"))
             if p.is_file()}
    # the same files, byte for byte: weights, config, checkpoints, log, model card (the CLI's own run of this
    # was a repeat: tests/test_resume.py keeps the CLI's SIGKILL resume)
    assert sorted(after) == sorted(before) and all(after[k] == before[k] for k in before), \
        [k for k in before if after.get(k) != before[k]]


def test_the_log_of_a_resumed_run_holds_every_step_once(tiny_base, fill_dir, tmp_path):
    import json

    train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=5, checkpointing_steps=3))
    log = tmp_path / "run" / "train_log.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    # as after a crash at step 5: the checkpoint of step 3 is the newest, the log runs past it
    train(tiny_args(tiny_base, fill_dir, tmp_path / "run", max_train_steps=6, checkpointing_steps=3,
                    resume_from_checkpoint="checkpoint-3"))
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_notebook_03s_hand_written_loop_ends_with_the_weights_of_train(tiny_base, fill_dir, tmp_path, monkeypatch):
    """The cells tagged hand-loop, run as they are, and train() with the same flags: bit-identical weights."""
    import json

    from cnhelpers.course import recipes
    from cnhelpers.course.profiles import get_profile

    cells = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "03_training_loop.ipynb").read_text())
    loop = ["".join(c["source"]) for c in cells["cells"] if "hand-loop" in c.get("metadata", {}).get("tags", [])]
    assert len(loop) == 2
    profile = get_profile("tiny", train_batch_size=4)
    monkeypatch.setattr(recipes, "ensure_fill_dataset", lambda *a, **k: fill_dir)  # 16 examples, not 2048
    namespace = {"profile": profile, "base": tiny_base, "build_dir": lambda: tmp_path, "HAND_STEPS": 5, "SEED": 0,
                 "torch": torch}
    for source in loop:
        exec(source, namespace)
    assert namespace["global_step"] == 5
    reference = train(recipes.course_training_args(profile, tiny_base, tmp_path / "by-train", max_train_steps=5, seed=0))
    by_train = controlnet_state(reference.output_dir)
    by_hand = namespace["accelerator"].unwrap_model(namespace["controlnet"]).state_dict()
    assert all(torch.equal(by_hand[name], by_train[name]) for name in by_train)
    assert [entry["loss"] for entry in reference.history] == namespace["hand_losses"]
