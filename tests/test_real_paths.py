"""The real paths, over HTTP: SD 1.5, SDXL, the fp16-fix VAE and fill50k from a Hub-protocol server on 127.0.0.1.

Each run is the course's own CLI (or loader) in a fresh process whose huggingface_hub talks to the test Hub
(``HF_ENDPOINT``), as a learner's would talk to huggingface.co: nothing in the client is patched. The served
repositories have the real file trees (single-file checkpoints, ``.bin`` and ``fp16`` copies, safety checker)
with the course's tiny weights, and an older commit besides ``main``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub_repos import hub_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.colab

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
FILL50K = "fusing/fill50k"

#: What a training run of SD 1.5 reads, and nothing else.
SD15_NEEDED = {"model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
               "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
               "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
               "unet/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}
FILL50K_NEEDED = {"train.jsonl", "images.zip", "conditioning_images.zip"}


@pytest.fixture
def outline(tmp_path):
    from cnhelpers.course.fill import fill_example

    path = tmp_path / "outline.png"
    fill_example(99, 0, 64)["conditioning_image"].save(path)
    return path


def run_cli(hub, tmp_path, *flags, hf_home=None, **env):
    """``python -m cnhelpers.train`` in a fresh process pointed at the test Hub; returns the finished process."""
    command = [sys.executable, "-m", "cnhelpers.train", "--output_dir", str(tmp_path / "run"), "--resolution", "64",
               "--train_batch_size", "1", "--max_train_steps", "2", "--learning_rate", "1e-5", "--seed", "0",
               "--report_to", "none", "--checkpointing_steps", "1000", *map(str, flags)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=hub.env(hf_home or tmp_path / "hf", CN_BUILD_DIR=str(tmp_path / "build"), **env))


def fetched(hub, repo_id):
    return set(hub.fetched_files(repo_id))


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_the_guides_sd15_command_trains_fetching_only_the_files_it_reads(hub_server, tmp_path, outline):
    hub_server.clear_log()
    done = run_cli(hub_server, tmp_path, "--pretrained_model_name_or_path", SD15, "--dataset_name", FILL50K,
                   "--gradient_accumulation_steps", "4", "--validation_image", outline,
                   "--validation_prompt", "red circle with blue background", "--num_validation_images", "1",
                   "--validation_steps", "2", "--num_validation_inference_steps", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Trained 2 steps" in done.stdout
    assert fetched(hub_server, SD15) == SD15_NEEDED  # no .ckpt, no .bin, no fp16, no safety checker
    assert fetched(hub_server, FILL50K) == FILL50K_NEEDED
    assert (tmp_path / "run" / "validation" / "step-000002.png").is_file()


def test_variant_fp16_fetches_the_fp16_weights_and_no_others(hub_server, tmp_path):
    hub_server.clear_log()
    done = run_cli(hub_server, tmp_path, "--pretrained_model_name_or_path", SD15, "--dataset_name", FILL50K,
                   "--variant", "fp16", "--max_train_steps", "1")
    assert done.returncode == 0, done.stderr[-4000:]
    weights = {f for f in fetched(hub_server, SD15) if f.endswith(".safetensors")}
    assert weights == {"unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
                       "text_encoder/model.fp16.safetensors"}


def test_revision_loads_the_pinned_commit_not_main(hub_server, tmp_path):
    old = hub_server.commits[SD15]["old"]
    result = hub_server.run_client(f"""
        from cnhelpers.loading import load_models
        ctl("DELETE", "/_test/log")
        for revision in ({old!r}, None):
            RESULT[str(revision)] = load_models({SD15!r}, revision=revision).denoiser.config.sample_size
        RESULT["revisions"] = sorted({{e["path"].split("/resolve/")[1].split("/")[0]
                                       for e in ctl("GET", "/_test/log") if "/resolve/" in e["path"]}})
    """, tmp_path / "hf")
    assert result[old] == 16 and result["None"] == 8  # the old commit's UNet config differs from main's
    assert result["revisions"] == sorted([old, hub_server.commits[SD15]["main"]])  # files asked for by commit


def test_sdxl_with_the_fp16_fix_vae_trains_without_fetching_the_bases_vae(hub_server, tmp_path):
    hub_server.clear_log()
    done = run_cli(hub_server, tmp_path, "--pretrained_model_name_or_path", SDXL, "--dataset_name", FILL50K,
                   "--pretrained_vae_model_name_or_path", FP16_FIX_VAE, "--max_train_steps", "1")
    assert done.returncode == 0, done.stderr[-4000:]
    files = fetched(hub_server, SDXL)
    assert {"text_encoder_2/model.safetensors", "unet/diffusion_pytorch_model.safetensors"} <= files
    assert not [f for f in files if f.startswith(("vae", "vae_1_0")) or f.endswith((".ckpt", ".bin", ".msgpack", ".onnx"))
                or "fp16" in f or "/" not in f and f != "model_index.json"]
    assert fetched(hub_server, FP16_FIX_VAE) == {"config.json", "diffusion_pytorch_model.safetensors"}


def test_a_download_cut_mid_file_is_one_clear_line_and_the_next_run_completes_it(hub_server, tmp_path):
    hub_server.clear_faults()
    hub_server.add_fault("unet/diffusion_pytorch_model.safetensors", after_bytes=1000, times=None, repo_id=SD15)
    try:
        done = run_cli(hub_server, tmp_path, "--pretrained_model_name_or_path", SD15, "--dataset_name", FILL50K,
                       "--max_train_steps", "1", hf_home=tmp_path / "hf")
    finally:
        hub_server.clear_faults()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert last_line(done.stderr).startswith("error: The download of the model") and "run the same command again" in done.stderr
    again = run_cli(hub_server, tmp_path, "--pretrained_model_name_or_path", SD15, "--dataset_name", FILL50K,
                    "--max_train_steps", "1", hf_home=tmp_path / "hf")
    assert again.returncode == 0, again.stderr[-4000:]


def test_an_unreachable_hub_gives_the_offline_advice(hub_server, tmp_path):
    done = run_cli(hub_server, tmp_path, "--pretrained_model_name_or_path", SD15, "--dataset_name", FILL50K,
                   HF_ENDPOINT="http://127.0.0.1:9")  # the discard port: nothing listens there
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = last_line(done.stderr)
    assert line.startswith("error: Cannot get the model") and "CN_PROFILE=tiny" in line


def test_an_unknown_revision_names_the_flag(hub_server, tmp_path):
    done = run_cli(hub_server, tmp_path, "--pretrained_model_name_or_path", SD15, "--dataset_name", FILL50K,
                   "--revision", "no-such-branch")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "has no revision 'no-such-branch'" in last_line(done.stderr) and "--revision" in last_line(done.stderr)
