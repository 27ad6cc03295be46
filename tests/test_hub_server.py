"""The test Hub server, driven by the real huggingface_hub client (and diffusers) over HTTP.

Every client runs in its own process whose environment points HF_ENDPOINT at the server and HF_HOME at an empty
folder: huggingface_hub reads both at import, so a fresh process is the supported way to point it elsewhere.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hub_repos import (
    FILL50K,
    FILL50K_OLD_ROWS,
    FILL50K_ROWS,
    OLD_UNET_SAMPLE_SIZE,
    SD15,
    SDXL,
    TINY_SD,
    VAE_FIX,
    hub_server,
    manifest,
)

pytestmark = pytest.mark.colab

__all__ = ["hub_server"]  # the fixture, imported explicitly

CUT_FILE = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(autouse=True)
def _fresh_server_state(hub_server):
    hub_server.clear_log()
    hub_server.clear_faults()
    yield
    hub_server.clear_faults()


def served(hub, repo_id, path, label="main"):
    repo_type = "datasets" if repo_id == FILL50K else "models"
    return hub.root / repo_type / repo_id / hub.commits[repo_id][label] / path


def test_snapshot_download_with_allow_patterns_fetches_exactly_the_matching_files(hub_server, tmp_path):
    result = hub_server.run_client(f"""
        from pathlib import Path
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download({SD15!r}, allow_patterns=["unet/*", "model_index.json"]))
        RESULT["folder"] = folder.name
        RESULT["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    """, tmp_path / "hf")
    expected = sorted(p for p in manifest(SD15) if p.startswith("unet/") or p == "model_index.json")
    assert len(expected) == 8
    assert result["folder"] == hub_server.commits[SD15]["main"]
    assert result["files"] == expected
    assert sorted(hub_server.fetched_files(SD15)) == expected  # each file's content sent exactly once
    log = hub_server.log
    assert sorted(e["file"] for e in log if e["method"] == "HEAD" and e["kind"] == "resolve") == expected
    assert [e["kind"] for e in log if e["kind"].startswith("api-")] == ["api-info", "api-tree"]


def test_files_with_identical_content_are_fetched_once(hub_server, tmp_path):
    # The tiny SDXL base's two tokenizers are the same files (SDXL's real vocab.json files are too).
    result = hub_server.run_client(f"""
        from pathlib import Path
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download({SDXL!r}, allow_patterns=["tokenizer/*", "tokenizer_2/*"]))
        RESULT["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    """, tmp_path / "hf")
    assert len(result["files"]) == 8
    fetched = hub_server.fetched_files(SDXL)
    assert len(fetched) == 4 and sorted(p.split("/")[1] for p in fetched) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]


def test_hf_hub_download_by_old_commit_sha_returns_the_old_content(hub_server, tmp_path):
    old, main = hub_server.commits[SD15]["old"], hub_server.commits[SD15]["main"]
    result = hub_server.run_client(f"""
        from huggingface_hub import hf_hub_download
        old = hf_hub_download({SD15!r}, "unet/config.json", revision={old!r})
        new = hf_hub_download({SD15!r}, "unet/config.json")
        RESULT.update(old=old, new=new, old_size=json.load(open(old))["sample_size"],
                      new_size=json.load(open(new))["sample_size"])
    """, tmp_path / "hf")
    assert result["old_size"] == OLD_UNET_SAMPLE_SIZE and result["new_size"] == 8
    assert f"/snapshots/{old}/unet/config.json" in result["old"]
    assert f"/snapshots/{main}/unet/config.json" in result["new"]
    assert [e["revision"] for e in hub_server.log if e["method"] == "GET" and e["kind"] == "resolve"] == [old, "main"]


def test_diffusers_from_pretrained_loads_the_tiny_weights_over_http(hub_server, tmp_path):
    old = hub_server.commits[SD15]["old"]
    result = hub_server.run_client(f"""
        import torch
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
        from safetensors.torch import load_file
        torch.set_num_threads(1)
        tiny = load_file({str(TINY_SD / "unet" / "diffusion_pytorch_model.safetensors")!r})

        def phase(name, load):
            ctl("DELETE", "/_test/log")
            model = load()
            RESULT[name] = fetched()
            return model

        unet = phase("unet", lambda: UNet2DConditionModel.from_pretrained({SD15!r}, subfolder="unet"))
        state = unet.state_dict()
        RESULT["unet_is_tiny"] = (sorted(state) == sorted(tiny)
                                  and all(torch.equal(state[k], v) for k, v in tiny.items()))
        fp16 = phase("fp16", lambda: UNet2DConditionModel.from_pretrained(
            {SD15!r}, subfolder="unet", variant="fp16", torch_dtype=torch.float16))
        RESULT["fp16_dtype"] = str(fp16.dtype)
        RESULT["fp16_is_tiny"] = all(torch.equal(fp16.state_dict()[k], v.half()) for k, v in tiny.items())
        old = phase("old", lambda: UNet2DConditionModel.from_pretrained({SD15!r}, subfolder="unet", revision={old!r}))
        RESULT["old_sample_size"] = old.config.sample_size
        pipe = phase("pipeline", lambda: StableDiffusionPipeline.from_pretrained(
            {SD15!r}, safety_checker=None, feature_extractor=None))
        RESULT["pipeline_parts"] = sorted(k for k, v in pipe.components.items() if v is not None)
        full = phase("full_pipeline", lambda: StableDiffusionPipeline.from_pretrained({SD15!r}))
        RESULT["safety_checker"] = type(full.safety_checker).__name__
        vae = phase("vae_fix", lambda: AutoencoderKL.from_pretrained({VAE_FIX!r}))
        RESULT["vae_fix_force_upcast"] = vae.config.force_upcast
    """, tmp_path / "hf", timeout=180)
    assert result["unet"] == ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert result["unet_is_tiny"]
    # variant="fp16": only the fp16 weights come over (config.json is in the cache: a HEAD, no GET)
    assert result["fp16"] == ["unet/diffusion_pytorch_model.fp16.safetensors"]
    assert result["fp16_dtype"] == "torch.float16" and result["fp16_is_tiny"]
    # revision=<old sha>: the old config; the weights blob (same ETag) is already cached
    assert result["old"] == ["unet/config.json"] and result["old_sample_size"] == OLD_UNET_SAMPLE_SIZE
    assert set(result["pipeline_parts"]) == {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}
    fetched = set(result["pipeline"])
    assert "model_index.json" in fetched and "text_encoder/model.safetensors" in fetched
    assert not any(p.endswith((".ckpt", ".bin")) or ".fp16." in p or "non_ema" in p or "v1-5-pruned" in p
                   for p in fetched), fetched
    assert result["safety_checker"] == "StableDiffusionSafetyChecker"
    assert set(result["full_pipeline"]) >= {"safety_checker/model.safetensors",
                                            "feature_extractor/preprocessor_config.json"}
    assert result["vae_fix"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert result["vae_fix_force_upcast"] is False


def test_dataset_train_jsonl_downloads_with_repo_type_dataset(hub_server, tmp_path):
    old = hub_server.commits[FILL50K]["old"]
    result = hub_server.run_client(f"""
        from huggingface_hub import hf_hub_download
        rows = hf_hub_download({FILL50K!r}, "train.jsonl", repo_type="dataset")
        old_rows = hf_hub_download({FILL50K!r}, "train.jsonl", repo_type="dataset", revision={old!r})
        RESULT.update(path=rows, rows=[json.loads(line) for line in open(rows)],
                      old_count=len(open(old_rows).readlines()))
    """, tmp_path / "hf")
    assert len(result["rows"]) == FILL50K_ROWS and result["old_count"] == FILL50K_OLD_ROWS
    assert set(result["rows"][0]) == {"text", "image", "conditioning_image"}
    assert "/datasets--fusing--fill50k/snapshots/" in result["path"]
    assert {e["path"].split("/")[1] for e in hub_server.log if e["kind"] == "resolve"} == {"datasets"}


def test_a_single_cut_in_a_small_file_is_retried_by_the_client_from_the_start(hub_server, tmp_path):
    # huggingface_hub 2.4 writes in 10 MiB chunks: the 100000 bytes before the cut never reached the disk.
    hub_server.add_fault(CUT_FILE, after_bytes=100_000, times=1, repo_id=SD15)
    result = hub_server.run_client(f"""
        from huggingface_hub import hf_hub_download
        RESULT["path"] = hf_hub_download({SD15!r}, {CUT_FILE!r})
    """, tmp_path / "hf")
    want = served(hub_server, SD15, CUT_FILE).read_bytes()
    assert Path(result["path"]).read_bytes() == want
    gets = [e for e in hub_server.log if e["method"] == "GET" and e["kind"] == "lfs"]
    assert [(e["status"], e["range"], e["bytes"]) for e in gets] == [(200, None, 100_000), (200, None, len(want))]


def test_a_cut_past_the_first_10_mib_is_resumed_with_a_range_request(hub_server, tmp_path):
    name, mib = "v1-5-pruned-emaonly.safetensors", 1024 * 1024
    want = served(hub_server, SD15, name).read_bytes()
    assert len(want) > 11 * mib
    hub_server.add_fault(name, after_bytes=11 * mib, times=1, repo_id=SD15)
    result = hub_server.run_client(f"""
        from huggingface_hub import hf_hub_download
        RESULT["path"] = hf_hub_download({SD15!r}, {name!r})
    """, tmp_path / "hf")
    assert hashlib.sha256(Path(result["path"]).read_bytes()).digest() == hashlib.sha256(want).digest()
    gets = [e for e in hub_server.log if e["method"] == "GET" and e["kind"] == "lfs"]
    assert [(e["status"], e["range"], e["bytes"]) for e in gets] == [
        (200, None, 11 * mib), (206, f"bytes={10 * mib}-", len(want) - 10 * mib)]


def test_a_connection_cut_mid_file_fails_and_a_second_try_completes_it(hub_server, tmp_path):
    # The server dies at byte 100000 of the file and stays so: the client's own resumes (5, a second apart) fail.
    hub_server.add_fault(CUT_FILE, after_bytes=100_000, times=None, repo_id=SD15)
    result = hub_server.run_client(f"""
        from pathlib import Path
        from huggingface_hub import hf_hub_download
        try:
            hf_hub_download({SD15!r}, {CUT_FILE!r})
        except Exception as error:
            RESULT["error"] = type(error).__module__ + "." + type(error).__name__
        cache = Path(os.environ["HF_HUB_CACHE"]) / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
        RESULT["left"] = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
        RESULT["offline"] = error_name(lambda: hf_hub_download({SD15!r}, {CUT_FILE!r}, local_files_only=True))
        ctl("DELETE", "/_test/faults")  # the server is back
        RESULT["path"] = hf_hub_download({SD15!r}, {CUT_FILE!r})
    """, tmp_path / "hf")
    # huggingface_hub 2.x downloads with httpx2, 1.x (Colab's) with httpx: the same error either way
    assert result["error"] in ("httpx2.RemoteProtocolError", "httpx.RemoteProtocolError")
    assert not any(p.startswith(("blobs/", "snapshots/")) for p in result["left"]), result["left"]  # no partial file
    assert result["offline"] == "LocalEntryNotFoundError"
    want = served(hub_server, SD15, CUT_FILE).read_bytes()
    assert Path(result["path"]).read_bytes() == want
    gets = [e for e in hub_server.log if e["method"] == "GET" and e["kind"] == "lfs"]
    # 1 try + 5 retries (each from byte 0: nothing reached the disk), then the whole file
    assert [(e["range"], e["bytes"], e.get("cut")) for e in gets] == (
        [(None, 100_000, True)] * 6 + [(None, len(want), None)])


def test_an_interrupted_snapshot_is_incomplete_offline_and_completes_online(hub_server, tmp_path):
    hub_server.add_fault(CUT_FILE, after_bytes=100_000, times=None, repo_id=SD15)
    result = hub_server.run_client(f"""
        from huggingface_hub import snapshot_download
        patterns = ["unet/*"]
        RESULT["error"] = error_name(lambda: snapshot_download({SD15!r}, allow_patterns=patterns))
        RESULT["offline"] = error_name(lambda: snapshot_download({SD15!r}, allow_patterns=patterns,
                                                                 local_files_only=True))
        ctl("DELETE", "/_test/faults")
        ctl("DELETE", "/_test/log")
        snapshot_download({SD15!r}, allow_patterns=patterns)
        RESULT["second"] = fetched()
        RESULT["offline_after"] = error_name(lambda: snapshot_download({SD15!r}, allow_patterns=patterns,
                                                                       local_files_only=True))
    """, tmp_path / "hf")
    assert result["error"] == "RemoteProtocolError"
    assert result["offline"] == "IncompleteSnapshotError"  # not a half snapshot passed off as complete
    assert result["second"] == [CUT_FILE]  # the other unet files were kept
    assert result["offline_after"] is None


def test_offline_snapshot_after_single_file_downloads_is_a_partial_folder(hub_server, tmp_path):
    # A huggingface_hub 2.4 quirk the loading code must respect: only snapshot_download caches the tree listing
    # (trees/<sha>.json) that lets local_files_only=True detect a partial snapshot. After single-file downloads
    # (as UNet2DConditionModel.from_pretrained(..., subfolder="unet") makes), it returns the partial folder.
    result = hub_server.run_client(f"""
        from pathlib import Path
        from huggingface_hub import hf_hub_download, snapshot_download
        hf_hub_download({SD15!r}, "unet/config.json")
        folder = Path(snapshot_download({SD15!r}, local_files_only=True))
        RESULT["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    """, tmp_path / "hf")
    assert result["files"] == ["unet/config.json"]


def test_unknown_repo_revision_and_file_raise_the_hub_errors(hub_server, tmp_path):
    result = hub_server.run_client(f"""
        from huggingface_hub import hf_hub_download, snapshot_download
        RESULT["repo_file"] = error_name(lambda: hf_hub_download("nobody/no-such-model", "config.json"))
        RESULT["repo_snapshot"] = error_name(lambda: snapshot_download("nobody/no-such-model"))
        RESULT["dataset"] = error_name(lambda: hf_hub_download({SD15!r}, "train.jsonl", repo_type="dataset"))
        RESULT["revision"] = error_name(lambda: hf_hub_download({SD15!r}, "model_index.json",
                                                                revision="no-such-branch"))
        RESULT["entry"] = error_name(lambda: hf_hub_download({SD15!r}, "no/such/file.json"))
    """, tmp_path / "hf")
    assert result == {"repo_file": "RepositoryNotFoundError", "repo_snapshot": "RepositoryNotFoundError",
                      "dataset": "RepositoryNotFoundError", "revision": "RevisionNotFoundError",
                      "entry": "RemoteEntryNotFoundError"}


def test_the_server_runs_as_a_script_and_writes_its_port(hub_server, tmp_path):
    port_file = tmp_path / "port"
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("hub_server.py")), "--root",
                                str(hub_server.root), "--port", "0", "--port-file", str(port_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while not port_file.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        port = int(port_file.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/datasets/{FILL50K}/revision/main", timeout=10) as r:
            info = json.loads(r.read())
        assert info["sha"] == hub_server.commits[FILL50K]["main"]
        assert sorted(s["rfilename"] for s in info["siblings"]) == sorted(manifest(FILL50K))
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_local_hub_logs_the_client_in_and_refuses_a_client_imported_before_it(tmp_path):
    """Notebook 09's stand-in for huggingface.co: local_hub() points the client at an empty Hub as user learner;
    creating a repo that exists answers as the Hub does (409 with the repo's url, which create_repo(exist_ok=True)
    reads: a second Run All pushes again); started after huggingface_hub was imported (its endpoint read at
    import), it says to restart the kernel."""
    code = """
import json, os
from cnhelpers.course.hub_server import local_hub
hub = local_hub()
from huggingface_hub import HfApi, constants
user = HfApi().whoami()["name"]
HfApi().create_repo("learner/a-repo")
again = str(HfApi().create_repo("learner/a-repo", exist_ok=True))  # a second push's create: the Hub's 409, its url
same = local_hub() is hub
constants.ENDPOINT = "https://huggingface.co"  # as if imported before local_hub() set HF_ENDPOINT
try:
    local_hub()
    refusal = None
except RuntimeError as error:
    refusal = str(error)
print(json.dumps({"user": user, "same": same, "again": again, "endpoint": os.environ["HF_ENDPOINT"], "refusal": refusal,
                  "repos": sorted(p.name for p in (hub.root / "models" / "learner").iterdir())}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["user"] == "learner" and result["same"] and result["repos"] == ["a-repo"]
    assert result["again"] == f"{result['endpoint']}/learner/a-repo"
    assert result["endpoint"].startswith("http://127.0.0.1:")
    assert result["refusal"].startswith("huggingface_hub was imported before the local Hub started")
    assert "restart the kernel" in result["refusal"]
