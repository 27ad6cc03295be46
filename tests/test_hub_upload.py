"""The Hub round trip of a trained ControlNet against the loopback test Hub: ``--push_to_hub --hub_model_id
tester/my-controlnet`` creates the repository and uploads the weights, the model card with its validation grid and
``train_log.jsonl`` (the real huggingface_hub client: ``create_repo``, ``upload_folder`` -> preupload, LFS batch
and PUT, NDJSON commit); ``load_controlnet_pipeline(base, "tester/my-controlnet")`` then loads it back from the
Hub id and draws; the model card holds the condition-consistency figures the run logged. An upload that fails
mid-commit, or a server that stops once the upload has begun, leaves the run's output intact and ends with one
``error:`` line saying where the training is saved and the command that uploads it.

``HF_HUB_DISABLE_XET=1``: with ``hf_xet`` installed the client sends LFS files to Xet storage, which the test
server does not implement; without it the client uses the LFS batch protocol, as it did before Xet.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnhelpers.course.hub_server import start_server
from hub_repos import TINY_SD, HubFixture, hub_server  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.colab

TOKEN = "hf_tester_write"
UPLOADED = {"config.json", "diffusion_pytorch_model.safetensors", "README.md", "train_log.jsonl",
            "validation/step-000002.png"}


@pytest.fixture(scope="module")
def fill_dir(tmp_path_factory):
    from cnhelpers.course.fill import write_fill_imagefolder

    return write_fill_imagefolder(tmp_path_factory.mktemp("fill") / "data", num_examples=4, resolution=64)


@pytest.fixture(scope="module")
def outline(tmp_path_factory):
    from cnhelpers.course.fill import fill_example

    path = tmp_path_factory.mktemp("outline") / "outline.png"
    fill_example(99, 0, 64)["conditioning_image"].save(path)
    return path


def push_run(hub, tmp_path, fill_dir, outline, repo_id, background=False, base=TINY_SD, extra=()):
    command = [sys.executable, "-m", "cnhelpers.train", "--pretrained_model_name_or_path", str(base),
               "--train_data_dir", str(fill_dir), "--output_dir", str(tmp_path / "run"), "--resolution", "64",
               "--train_batch_size", "1", "--max_train_steps", "2", "--learning_rate", "1e-5", "--seed", "0",
               "--report_to", "none", "--checkpointing_steps", "1000", "--validation_image", str(outline),
               "--validation_prompt", "red circle with blue background", "--num_validation_images", "1",
               "--validation_steps", "2", "--num_validation_inference_steps", "2", "--validation_condition", "canny",
               "--push_to_hub", "--hub_model_id", repo_id, *extra]
    env = hub.env(tmp_path / "hf", CN_BUILD_DIR=str(tmp_path / "build"), HF_TOKEN=TOKEN,
                  HF_HUB_DISABLE_IMPLICIT_TOKEN="0", HF_HUB_DISABLE_XET="1")
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)


def served_files(hub, repo_id) -> dict[str, Path]:
    folder = hub.root / "models" / repo_id
    sha = json.loads((folder / "refs.json").read_text())["branches"]["main"]
    return {p.relative_to(folder / sha).as_posix(): p for p in (folder / sha).rglob("*") if p.is_file()}


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def test_push_to_hub_uploads_the_controlnet_card_grid_and_log_and_it_loads_back_from_the_hub_id(
        hub_server, tmp_path, fill_dir, outline):
    repo_id = "tester/my-controlnet"
    hub_server.clear_log()
    done = push_run(hub_server, tmp_path, fill_dir, outline, repo_id)
    assert done.returncode == 0, done.stderr[-4000:]
    kinds = [e["kind"] for e in hub_server.log if e["kind"] in ("whoami", "create", "preupload", "lfs-batch",
                                                                 "lfs-upload", "commit")]
    assert kinds[:2] == ["whoami", "create"] and "lfs-upload" in kinds and kinds[-1] == "commit"
    served = served_files(hub_server, repo_id)
    assert set(served) == UPLOADED | {".gitattributes"}  # no checkpoints, no lock file
    for name in UPLOADED:
        assert served[name].read_bytes() == (tmp_path / "run" / name).read_bytes(), name
    card = served["README.md"].read_text()
    assert "![validation](validation/step-000002.png)" in card
    logged = [json.loads(line) for line in served["train_log.jsonl"].read_text().splitlines()]
    score = [entry["consistency"] for entry in logged if "consistency" in entry]
    assert len(score) == 1 and f"| 2 | {score[0]:.3f} |" in card  # the score figures, as logged
    floor = [entry["consistency_without_controlnet"] for entry in logged if "consistency_without_controlnet" in entry]
    assert len(floor) == 1 and f"the same prompts and seeds): {floor[0]:.3f}." in card

    result = hub_server.run_client(f"""
        from cnhelpers.inference import load_controlnet_pipeline
        import torch
        ctl("DELETE", "/_test/log")
        pipe = load_controlnet_pipeline({str(TINY_SD)!r}, {repo_id!r})
        from PIL import Image
        image = pipe("red circle with blue background", Image.open({str(outline)!r}).convert("RGB"),
                     num_inference_steps=2, height=64, width=64,
                     generator=torch.Generator().manual_seed(0)).images[0]
        RESULT["size"] = list(image.size)
        RESULT["fetched"] = sorted(fetched({repo_id!r}))
    """, tmp_path / "hf-load", timeout=300)
    assert result["size"] == [64, 64]
    assert result["fetched"] == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_a_transformer_family_controlnet_pushes_and_loads_back_from_the_hub_id(hub_server, tmp_path, fill_dir,
                                                                              outline):
    """The round trip of an SD3 ControlNet (a DiT family): its weights, card (SD3's tags and base) and log are
    uploaded, and the SD3 pipeline loads it back by the Hub id and draws."""
    from cnhelpers.course.recipes import FAMILY_BASES

    base, repo_id = FAMILY_BASES["sd3"], "tester/my-sd3-controlnet"
    done = push_run(hub_server, tmp_path, fill_dir, outline, repo_id, base=base,
                    extra=("--max_sequence_length", "77", "--num_controlnet_layers", "2"))
    assert done.returncode == 0, done.stderr[-4000:]
    served = served_files(hub_server, repo_id)
    assert set(served) == UPLOADED | {".gitattributes"}
    assert json.loads(served["config.json"].read_text())["_class_name"] == "SD3ControlNetModel"
    card = served["README.md"].read_text()
    assert "sd3" in card.split("---")[1] and "![validation](validation/step-000002.png)" in card
    result = hub_server.run_client(f"""
        from cnhelpers.inference import load_controlnet_pipeline
        import torch
        ctl("DELETE", "/_test/log")
        pipe = load_controlnet_pipeline({str(base)!r}, {repo_id!r})
        from PIL import Image
        image = pipe("red circle with blue background", control_image=Image.open({str(outline)!r}).convert("RGB"),
                     num_inference_steps=2, height=64, width=64, max_sequence_length=77,
                     generator=torch.Generator().manual_seed(0)).images[0]
        RESULT["pipeline"] = type(pipe).__name__
        RESULT["layers"] = len(pipe.controlnet.transformer_blocks)
        RESULT["size"] = list(image.size)
        RESULT["fetched"] = sorted(fetched({repo_id!r}))
    """, tmp_path / "hf-load", timeout=300)
    assert result["pipeline"] == "StableDiffusion3ControlNetPipeline" and result["layers"] == 2
    assert result["size"] == [64, 64]
    assert result["fetched"] == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_an_upload_failing_mid_commit_keeps_the_output_and_is_one_line_naming_the_upload_command(
        hub_server, tmp_path, fill_dir, outline):
    repo_id = "tester/failed-upload"
    hub_server.clear_faults()
    hub_server.add_fault("<commit>", status=500, times=None, repo_id=repo_id)  # every retry of the commit fails
    try:
        done = push_run(hub_server, tmp_path, fill_dir, outline, repo_id)
    finally:
        hub_server.clear_faults()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-4000:]
    line = last_line(done.stderr)
    run = tmp_path / "run"
    assert line.startswith("error: The upload to the Hugging Face Hub failed")
    assert f"saved in {run}" in line and f"`hf upload {repo_id} {run} " in line
    for name in UPLOADED:
        assert (run / name).is_file(), name
    assert set(served_files(hub_server, repo_id)) == {".gitattributes"}  # created, nothing committed


def test_a_hub_server_that_stops_mid_upload_keeps_the_output_and_is_one_line_naming_the_upload_command(
        tmp_path, fill_dir, outline):
    """The server itself goes away once the upload has begun (its first preupload request): every later request of
    the client is refused, as by a Hub that went down."""
    (tmp_path / "hub-root").mkdir()
    server, url = start_server(tmp_path / "hub-root")  # a Hub of its own: the session's keeps serving the others
    hub = HubFixture(server, url, tmp_path / "hub-root", {})
    repo_id = "tester/server-stops"
    process = push_run(hub, tmp_path, fill_dir, outline, repo_id, background=True)
    try:
        deadline = time.time() + 400
        while not any(e["kind"] == "preupload" for e in hub.log) and process.poll() is None:
            assert time.time() < deadline, "the run never began its upload"
            time.sleep(0.05)
    finally:
        server.stop()
    stdout, stderr = process.communicate(timeout=400)
    assert process.returncode == 2 and "Traceback" not in stderr, stderr[-4000:]
    line = last_line(stderr)
    run = tmp_path / "run"
    assert line.startswith("error: The upload to the Hugging Face Hub failed"), line
    assert f"saved in {run}" in line and f"`hf upload {repo_id} {run} " in line
    for name in UPLOADED:
        assert (run / name).is_file(), name
    assert not any(e["kind"] == "commit" for e in hub.log)  # nothing was committed before the server stopped
