"""SD3.5 medium and FLUX.1-dev over HTTP: a 2-step run from each hub id against the loopback test Hub (the real
file trees, the tiny SD3 and Flux bases), fetching only the files it reads; FLUX.1-dev is gated as on the Hub, and
without access the run stops with one line saying to accept the licence and log in.
"""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from hub_repos import FLUX_DEV, GATED_TOKEN, SD35, hub_server, manifest  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.colab

#: What a run of each base reads, and nothing else: model_index.json, then per part its configs, tokenizer files
#: and safetensors weights (all shards and their index), not the single-file checkpoints, ComfyUI encoders or
#: spiece.model.
CLIP_TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
T5_TOKENIZER = ("special_tokens_map.json", "tokenizer.json", "tokenizer_config.json")
SD35_NEEDED = {
    "model_index.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
    "text_encoder_3/config.json", "text_encoder_3/model-00001-of-00002.safetensors",
    "text_encoder_3/model-00002-of-00002.safetensors", "text_encoder_3/model.safetensors.index.json",
    *(f"tokenizer/{name}" for name in CLIP_TOKENIZER), *(f"tokenizer_2/{name}" for name in CLIP_TOKENIZER),
    *(f"tokenizer_3/{name}" for name in T5_TOKENIZER),
    "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
}
FLUX_NEEDED = {
    "model_index.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model-00001-of-00002.safetensors",
    "text_encoder_2/model-00002-of-00002.safetensors", "text_encoder_2/model.safetensors.index.json",
    *(f"tokenizer/{name}" for name in CLIP_TOKENIZER), *(f"tokenizer_2/{name}" for name in T5_TOKENIZER),
    "transformer/config.json", *(f"transformer/diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)),
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def fill_dir(tmp_path_factory):
    from cnhelpers.course.fill import write_fill_imagefolder

    return write_fill_imagefolder(tmp_path_factory.mktemp("fill") / "data", num_examples=4, resolution=64)


def run_cli(hub, tmp_path, base, fill_dir, **env):
    command = [sys.executable, "-m", "cnhelpers.train", "--pretrained_model_name_or_path", base,
               "--train_data_dir", str(fill_dir), "--output_dir", str(tmp_path / "run"), "--resolution", "64",
               "--train_batch_size", "1", "--max_train_steps", "2", "--learning_rate", "1e-5", "--seed", "0",
               "--report_to", "none", "--checkpointing_steps", "1000"]
    return subprocess.run(command, capture_output=True, text=True, timeout=400,
                          env=hub.env(tmp_path / "hf", CN_BUILD_DIR=str(tmp_path / "build"), **env))


def snapshot_files(hf_home: Path, repo_id: str) -> set[str]:
    snapshots = list((hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir())
    assert len(snapshots) == 1
    return {p.relative_to(snapshots[0]).as_posix() for p in snapshots[0].rglob("*") if p.is_file()}


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_the_served_trees_are_the_manifests_and_flux_is_gated(hub_server):
    for repo_id, gated in ((SD35, False), (FLUX_DEV, "manual")):
        with urllib.request.urlopen(f"{hub_server.url}/api/models/{repo_id}", timeout=10) as response:
            info = json.loads(response.read())
        assert sorted(s["rfilename"] for s in info["siblings"]) == sorted(manifest(repo_id))
        assert info["gated"] == gated


@pytest.mark.parametrize("repo_id, needed", [(SD35, SD35_NEEDED), (FLUX_DEV, FLUX_NEEDED)], ids=["sd35", "flux"])
def test_a_two_step_run_from_the_hub_id_fetches_only_the_files_it_reads(hub_server, tmp_path, fill_dir, repo_id,
                                                                        needed):
    hub_server.clear_log()
    # FLUX.1-dev is gated: the learner has accepted the licence and logged in (the token the server grants)
    done = run_cli(hub_server, tmp_path, repo_id, fill_dir, HF_TOKEN=GATED_TOKEN, HF_HUB_DISABLE_IMPLICIT_TOKEN="0")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Trained 2 steps" in done.stdout
    # every file it reads is in the snapshot, and nothing else (identical files are fetched once: a subset)
    assert snapshot_files(tmp_path / "hf", repo_id) == needed
    assert set(hub_server.fetched_files(repo_id)) <= needed
    assert (tmp_path / "run" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("token", [None, "hf_tester_not-accepted"], ids=["anonymous-401", "not-accepted-403"])
def test_a_gated_base_without_access_is_one_line_saying_to_accept_the_licence_and_log_in(hub_server, tmp_path,
                                                                                         fill_dir, token):
    env = {"HF_TOKEN": token, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0"} if token else {}
    hub_server.clear_log()
    done = run_cli(hub_server, tmp_path, FLUX_DEV, fill_dir, **env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-4000:]
    line = last_line(done.stderr)
    assert line.startswith(f"error: '{FLUX_DEV}' is a gated model: accept its licence on {hub_server.url}/{FLUX_DEV}")
    assert "`hf auth login`" in line
    statuses = {e["status"] for e in hub_server.log if e["kind"] == "resolve" and e["repo_id"] == FLUX_DEV}
    assert statuses == {401 if token is None else 403}
    assert not hub_server.fetched_files(FLUX_DEV)


@pytest.mark.parametrize("profile, repo_id, family", [("sd3", SD35, "sd3"), ("flux", FLUX_DEV, "flux")])
def test_the_transformer_profiles_load_their_real_bases_and_their_recipes_are_cli_flags(hub_server, tmp_path,
                                                                                        profile, repo_id, family):
    result = hub_server.run_client(f"""
        from cnhelpers.config import changed_flags, parse_args
        from cnhelpers.course.profiles import get_profile
        from cnhelpers.course.recipes import command_line, course_flags
        from cnhelpers.course.tiny_bases import base_model_path
        from cnhelpers.families import check_family_flags, detect_family
        profile = get_profile({profile!r})
        base = base_model_path(profile)  # the parts of the Hub repository the course loads
        family = detect_family(base)
        RESULT["hub_id"], RESULT["family"] = profile.pretrained_model_name_or_path, family.name
        flags = course_flags(profile, profile.pretrained_model_name_or_path, "out", family=family)
        args = parse_args(command_line(flags).split()[3:])  # the recipe, as the CLI reads it
        check_family_flags(family, changed_flags(args))  # and as the base's family takes it (no Min-SNR here)
        RESULT["snr_gamma"] = args.snr_gamma
        RESULT["recipe"] = [args.resolution, args.train_batch_size, args.gradient_accumulation_steps,
                            args.learning_rate, args.mixed_precision, args.lr_scheduler]
    """, tmp_path / "hf", timeout=300, HF_TOKEN=GATED_TOKEN, HF_HUB_DISABLE_IMPLICIT_TOKEN="0")
    assert result["hub_id"] == repo_id and result["family"] == family and result["snr_gamma"] is None
    # upstream's README commands (README_sd3.md, README_flux.md)
    assert result["recipe"] == {"sd3": [1024, 1, 4, 1e-5, "no", "constant"],
                                "flux": [512, 1, 16, 1e-5, "bf16", "cosine"]}[profile]
