"""The repositories the test Hub server (``tests/hub_server.py``) serves, and a pytest fixture that serves them.

``build_hub_root(root)`` writes, under ``root``, the four repositories the course names, each with the *real*
repository's file tree (``tests/hub_manifests/<org>__<name>.txt``, one path a line, ``#`` lines are comments)
and two commits, an older one and ``main``:

==========================================  ==========  =================================================
repository                                   type        what is real (loads), what is a stand-in
==========================================  ==========  =================================================
stable-diffusion-v1-5/stable-diffusion-v1-5  model       The course's tiny SD base (``cnhelpers/assets/tiny-sd``)
                                                         in every diffusers-format weight file: ``.safetensors``
                                                         and ``.bin`` (``torch.save`` state dicts), their
                                                         ``fp16`` variants (float16) and the ``non_ema`` variant
                                                         (the tiny weights + 1e-4, as non-EMA weights differ).
                                                         A tiny real ``StableDiffusionSafetyChecker`` (CLIP
                                                         vision, 32 wide; its thresholds set so it never flags an
                                                         image) and the real ``feature_extractor`` config, so the
                                                         real ``model_index.json`` (safety checker and
                                                         feature extractor listed) loads as a whole pipeline, and
                                                         ``safety_checker=None, feature_extractor=None`` works too.
                                                         Stand-ins: the single-file checkpoints
                                                         (``v1-5-pruned*.ckpt/.safetensors``), ``v1-inference.yaml``,
                                                         README, .gitattributes.
stabilityai/stable-diffusion-xl-base-1.0     model       The tiny SDXL base (``build_tiny_sdxl_base``) in unet/,
                                                         vae/, vae_1_0/ (the tiny VAE + 1e-4), text_encoder/,
                                                         text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/,
                                                         with float16 ``fp16`` variants. Stand-ins: Flax
                                                         ``.msgpack``, ONNX, OpenVINO, vae_encoder/vae_decoder,
                                                         the single-file checkpoints, the offset LoRA, images.
madebyollin/sdxl-vae-fp16-fix                model       The tiny SDXL VAE at the root (config.json with
                                                         ``force_upcast: false`` as the real repository's,
                                                         ``.safetensors`` and ``.bin``). Stand-ins: the
                                                         single-file ``sdxl.vae.safetensors``/``sdxl_vae.safetensors``,
                                                         README, images.
fusing/fill50k                               dataset     ``write_fill50k_raw(..., 32 examples, 64 px)``: train.jsonl,
                                                         images.zip, conditioning_images.zip. Stand-ins:
                                                         fill50k.py, README.md, .gitattributes.
stabilityai/stable-diffusion-3.5-medium      model       The tiny SD3 base (``build_tiny_sd3_base``) in the
                                                         diffusers folders, T5 (``text_encoder_3``) in two shards
                                                         with its ``model.safetensors.index.json`` as the real
                                                         one; ``tokenizer_3/special_tokens_map.json`` written
                                                         from the tiny T5 tokenizer. Stand-ins: the single-file
                                                         ``sd3.5_medium.safetensors``, ``text_encoders/*`` (the
                                                         ComfyUI encoders), ``spiece.model``, the workflows,
                                                         images, LICENSE.md.
black-forest-labs/FLUX.1-dev                 model       The tiny Flux base (``build_tiny_flux_base``); its
                                                         transformer in three shards and T5 (``text_encoder_2``)
                                                         in two, with their index files, as the real ones.
                                                         Stand-ins: ``flux1-dev.safetensors``, ``ae.safetensors``,
                                                         ``spiece.model``, ``dev_grid.jpg``, LICENSE.md.
                                                         **Gated** as on the Hub: file contents need the token
                                                         :data:`GATED_TOKEN` (401/403 ``GatedRepo`` otherwise).
==========================================  ==========  =================================================

Course files that the real repository does not have are *not* served (e.g. the tiny tokenizers'
``tokenizer.json``: the real SD 1.5 / SDXL repositories have only vocab.json + merges.txt, from which
``CLIPTokenizer`` builds the same tokenizer). Every stand-in has distinct content (the client fetches each
distinct ETag once); a stand-in ``.safetensors`` is a valid safetensors file holding one small ``stand_in``
tensor (SD 1.5's ``v1-5-pruned-emaonly.safetensors`` is 12 MiB: see ``BIG_STAND_INS``), a stand-in ``.json``
is valid JSON, other stand-ins are a line of text.

The older commit differs from ``main`` in files the course loads:

* SD 1.5 and SDXL: ``unet/config.json`` has ``sample_size`` 16 (``main``: the tiny base's 8). (Not the real
  SD 1.5 history's ``CLIPFeatureExtractor`` in model_index.json: transformers 5 no longer has that class.)
* fp16-fix: ``config.json`` has ``force_upcast: true`` (``main``: ``false``).
* fill50k: ``train.jsonl`` has the first 24 rows (``main``: 32); the archives are the same.

Commit shas are deterministic (sha1 of the repo id, the commit's label and the build key). A build is cached: a
second call with the same manifests, builder source and course assets returns at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
MANIFESTS = HERE / "hub_manifests"
TINY_SD = PROJECT / "cnhelpers" / "assets" / "tiny-sd"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from hub_server import start_server

BUILD_VERSION = "1"
MARKER = ".hub_build.json"

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
VAE_FIX = "madebyollin/sdxl-vae-fp16-fix"
FILL50K = "fusing/fill50k"
SD35 = "stabilityai/stable-diffusion-3.5-medium"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"
REPOS = {SD15: "models", SDXL: "models", VAE_FIX: "models", FILL50K: "datasets", SD35: "models", FLUX_DEV: "models"}
#: Gated repositories and the token that has accepted their licence (any other token gets 403, none 401).
GATED_TOKEN = "hf_tester_accepted"
GATED = {FLUX_DEV: [GATED_TOKEN]}

OLD_UNET_SAMPLE_SIZE = 16
# One big stand-in: huggingface_hub 2.4 writes a download to disk in 10 MiB chunks (constants.DOWNLOAD_CHUNK_SIZE),
# so only past the first chunk does a cut download resume with a Range request; the real checkpoints are GBs.
BIG_STAND_INS = {(SD15, "v1-5-pruned-emaonly.safetensors"): 12 * 1024 * 1024}
FILL50K_ROWS, FILL50K_OLD_ROWS, FILL50K_RESOLUTION = 32, 24, 64

# The real SD 1.5 feature extractor config (CLIP's image preprocessing); small, so served as is.
SD15_PREPROCESSOR_CONFIG = {
    "crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}
GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.onnx_data filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
*.jpg filter=lfs diff=lfs merge=lfs -text
"""


# -- manifests ---------------------------------------------------------------------------------------------------

def manifest_path(repo_id: str) -> Path:
    return MANIFESTS / f"{repo_id.replace('/', '__')}.txt"


def manifest(repo_id: str) -> list[str]:
    """The real repository's file paths (comment lines and blank lines skipped)."""
    lines = manifest_path(repo_id).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def commit_sha(repo_id: str, label: str, key: str) -> str:
    return hashlib.sha1(f"cnhelpers-test-hub:{REPOS[repo_id]}/{repo_id}:{label}:{key}".encode()).hexdigest()


def build_key() -> str:
    """Changes when a manifest, this builder, the server or the course's tiny assets change."""
    h = hashlib.sha256(BUILD_VERSION.encode())
    for repo_id in REPOS:
        h.update(manifest_path(repo_id).read_bytes())
    h.update(Path(__file__).read_bytes())
    for path in sorted(TINY_SD.rglob("*")):
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(TINY_SD)}:{st.st_size}:{st.st_mtime_ns}".encode())
    # what builds the SDXL base and fill50k
    for name in ("course/tiny_sdxl.py", "course/tiny_bases.py", "tokenizer.py", "course/fill.py",
                 "course/tiny_transformers.py"):
        path = PROJECT / "cnhelpers" / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


# -- the course's builders (cnhelpers is being refactored: find them where they are) -----------------------------

def _course_function(name: str, preferred_module: str):
    try:
        return getattr(importlib.import_module(preferred_module), name)
    except (ImportError, AttributeError):
        pass
    for path in sorted((PROJECT / "cnhelpers").rglob("*.py")):
        if f"def {name}(" in path.read_text():
            parts = path.relative_to(PROJECT / "cnhelpers").with_suffix("").parts
            module = importlib.import_module(".".join(("cnhelpers", *parts)))
            if hasattr(module, name):
                return getattr(module, name)
    raise ImportError(f"cannot find cnhelpers' {name}() (looked in {preferred_module} and cnhelpers/**/*.py)")


# -- weight files -------------------------------------------------------------------------------------------------

def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _convert(tensors: dict, *, dtype=None, shift: float = 0.0) -> dict:
    out = {}
    for key, value in tensors.items():
        if value.is_floating_point():
            if shift:
                value = value + shift
            if dtype is not None:
                value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def _save(tensors: dict, dst: Path) -> None:
    """``.safetensors`` as diffusers/transformers write it; ``.bin`` as a ``torch.save`` state dict."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, str(dst), metadata={"format": "pt"})
    else:
        import torch

        torch.save(tensors, dst)


def _weight_variants(folder: Path, weights_name: str, *, bin_name: str, non_ema: bool = False) -> None:
    """Next to ``folder/weights_name`` (safetensors, float32), write the fp16, .bin and non_ema variants."""
    import torch

    base = _load(folder / weights_name)
    stem = weights_name[: -len(".safetensors")]
    bin_stem = bin_name[: -len(".bin")]
    _save(_convert(base, dtype=torch.float16), folder / f"{stem}.fp16.safetensors")
    _save(base, folder / bin_name)
    _save(_convert(base, dtype=torch.float16), folder / f"{bin_stem}.fp16.bin")
    if non_ema:
        shifted = _convert(base, shift=1e-4)
        _save(shifted, folder / f"{stem}.non_ema.safetensors")
        _save(shifted, folder / f"{bin_stem}.non_ema.bin")


def _tiny_safety_checker(folder: Path) -> None:
    """A real StableDiffusionSafetyChecker, tiny; thresholds of 2 (cosine similarities are <= 1): never flags."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 1,
                     "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 1, "image_size": 224, "patch_size": 32},
        projection_dim=16,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = StableDiffusionSafetyChecker(config)
    finally:
        torch.random.set_rng_state(state)
    with torch.no_grad():
        model.concept_embeds_weights.fill_(2.0)
        model.special_care_embeds_weights.fill_(2.0)
    model.save_pretrained(folder)


def _shard(folder: Path, weights_name: str, shards: int, *, index_name: str) -> None:
    """Split ``folder/weights_name`` into ``shards`` files named as transformers/diffusers name them
    (``model-00001-of-00002.safetensors``) with their ``*.safetensors.index.json``; the single file goes."""
    tensors = _load(folder / weights_name)
    keys = sorted(tensors)
    stem = weights_name[: -len(".safetensors")]
    weight_map, total = {}, 0
    for number in range(shards):
        part = keys[number * len(keys) // shards:(number + 1) * len(keys) // shards]
        name = f"{stem}-{number + 1:05d}-of-{shards:05d}.safetensors"
        _save({key: tensors[key] for key in part}, folder / name)
        for key in part:
            weight_map[key] = name
            total += tensors[key].numel() * tensors[key].element_size()
    (folder / weights_name).unlink()
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2, sort_keys=True) + "\n")


def _t5_special_tokens_map(folder: Path) -> None:
    """The ``special_tokens_map.json`` the real T5 tokenizer folders have (transformers 5 no longer writes one)."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    special = {key: config[key] for key in ("eos_token", "pad_token", "unk_token") if key in config}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


# -- stand-ins ---------------------------------------------------------------------------------------------------

def stand_in(repo_id: str, path: str) -> bytes:
    """Distinct small content for a file the course never loads, valid in its format where cheap."""
    note = f"stand-in for {repo_id}/{path} (cnhelpers test hub): not the real file"
    name = path.rsplit("/", 1)[-1]
    if name == ".gitattributes":
        return (GITATTRIBUTES + f"# {note}\n").encode()
    if name == "README.md":
        return f"---\nlicense: other\ntags:\n- cnhelpers-test-stand-in\n---\n# {repo_id}\n\n{note}.\n".encode()
    if name.endswith(".json"):
        return (json.dumps({"_stand_in_for": f"{repo_id}/{path}", "_note": note}, indent=2) + "\n").encode()
    if name.endswith(".safetensors"):
        import numpy as np
        from safetensors.numpy import save

        seed = int.from_bytes(hashlib.sha256(note.encode()).digest()[:4], "little")
        size = BIG_STAND_INS.get((repo_id, path), 8)
        data = np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)
        return save({"stand_in": data}, metadata={"stand_in_for": f"{repo_id}/{path}"})
    return (note + "\n").encode()


# -- building -----------------------------------------------------------------------------------------------------

def _tree(folder: Path) -> dict[str, Path]:
    """A built folder's files by path, less the course's model card (the served README.md is a stand-in)."""
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file() and p.name != "README.md"}


def _course_sources(work: Path) -> dict[str, dict[str, Path | bytes]]:
    """Per repository, the course's files by repository path (main commit)."""
    import torch

    torch.set_num_threads(1)
    sources: dict[str, dict[str, Path | bytes]] = {}

    # SD 1.5: the tiny base, its variants, a tiny safety checker
    sd = work / "tiny-sd"
    shutil.copytree(TINY_SD, sd)
    _weight_variants(sd / "unet", "diffusion_pytorch_model.safetensors", bin_name="diffusion_pytorch_model.bin",
                     non_ema=True)
    _weight_variants(sd / "vae", "diffusion_pytorch_model.safetensors", bin_name="diffusion_pytorch_model.bin")
    _weight_variants(sd / "text_encoder", "model.safetensors", bin_name="pytorch_model.bin")
    _tiny_safety_checker(sd / "safety_checker")
    _weight_variants(sd / "safety_checker", "model.safetensors", bin_name="pytorch_model.bin")
    (sd / "feature_extractor").mkdir()
    (sd / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps(SD15_PREPROCESSOR_CONFIG, indent=2) + "\n")
    model_index = json.loads((TINY_SD / "model_index.json").read_text())
    for key in ("image_encoder", "requires_safety_checker"):  # the real file has neither
        model_index.pop(key, None)
    model_index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    model_index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (sd / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
    sources[SD15] = _tree(sd)

    # SDXL: the tiny SDXL base, fp16 variants, vae_1_0
    build_tiny_sdxl_base = _course_function("build_tiny_sdxl_base", "cnhelpers.course.tiny_sdxl")
    xl = Path(build_tiny_sdxl_base(work / "tiny-sdxl"))
    for folder, name in (("unet", "diffusion_pytorch_model.safetensors"),
                         ("vae", "diffusion_pytorch_model.safetensors"),
                         ("text_encoder", "model.safetensors"), ("text_encoder_2", "model.safetensors")):
        _save(_convert(_load(xl / folder / name), dtype=torch.float16),
              xl / folder / name.replace(".safetensors", ".fp16.safetensors"))
    (xl / "vae_1_0").mkdir()
    shutil.copy2(xl / "vae" / "config.json", xl / "vae_1_0" / "config.json")
    vae_1_0 = _convert(_load(xl / "vae" / "diffusion_pytorch_model.safetensors"), shift=1e-4)
    _save(vae_1_0, xl / "vae_1_0" / "diffusion_pytorch_model.safetensors")
    _save(_convert(vae_1_0, dtype=torch.float16), xl / "vae_1_0" / "diffusion_pytorch_model.fp16.safetensors")
    sources[SDXL] = _tree(xl)

    # the fp16-fix VAE: the tiny SDXL VAE at the root
    vae_config = json.loads((xl / "vae" / "config.json").read_text())
    vae_config["force_upcast"] = False  # as the real repository's config.json
    sources[VAE_FIX] = {
        "config.json": (json.dumps(vae_config, indent=2, sort_keys=True) + "\n").encode(),
        "diffusion_pytorch_model.safetensors": xl / "vae" / "diffusion_pytorch_model.safetensors",
    }
    vae_bin = work / "vae-fix" / "diffusion_pytorch_model.bin"
    _save(_load(xl / "vae" / "diffusion_pytorch_model.safetensors"), vae_bin)
    sources[VAE_FIX]["diffusion_pytorch_model.bin"] = vae_bin

    # fill50k: the raw layout
    write_fill50k_raw = _course_function("write_fill50k_raw", "cnhelpers.course.fill")
    fill = Path(write_fill50k_raw(work / "fill50k", num_examples=FILL50K_ROWS, resolution=FILL50K_RESOLUTION))
    sources[FILL50K] = {name: fill / name for name in ("train.jsonl", "images.zip", "conditioning_images.zip")}

    # SD3.5 medium and FLUX.1-dev: the tiny transformer bases, sharded where the real weights are
    build_tiny_sd3_base = _course_function("build_tiny_sd3_base", "cnhelpers.course.tiny_transformers")
    build_tiny_flux_base = _course_function("build_tiny_flux_base", "cnhelpers.course.tiny_transformers")
    sd3 = Path(build_tiny_sd3_base(work / "tiny-sd3"))
    _shard(sd3 / "text_encoder_3", "model.safetensors", 2, index_name="model.safetensors.index.json")
    _t5_special_tokens_map(sd3 / "tokenizer_3")
    sources[SD35] = _tree(sd3)
    flux = Path(build_tiny_flux_base(work / "tiny-flux"))
    _shard(flux / "transformer", "diffusion_pytorch_model.safetensors", 3,
           index_name="diffusion_pytorch_model.safetensors.index.json")
    _shard(flux / "text_encoder_2", "model.safetensors", 2, index_name="model.safetensors.index.json")
    _t5_special_tokens_map(flux / "tokenizer_2")
    sources[FLUX_DEV] = _tree(flux)
    return sources


def _old_commit_changes(repo_id: str, main: dict[str, Path | bytes]) -> dict[str, bytes]:
    """The files that differ in the older commit."""
    def read(path):
        source = main[path]
        return source if isinstance(source, bytes) else Path(source).read_bytes()

    def edit_json(path, **changes):
        data = json.loads(read(path))
        data.update(changes)
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    if repo_id in (SD15, SDXL):
        return {"unet/config.json": edit_json("unet/config.json", sample_size=OLD_UNET_SAMPLE_SIZE)}
    if repo_id == VAE_FIX:
        return {"config.json": edit_json("config.json", force_upcast=True)}
    if repo_id == FILL50K:
        rows = read("train.jsonl").decode().splitlines(keepends=True)
        return {"train.jsonl": "".join(rows[:FILL50K_OLD_ROWS]).encode()}
    return {}


def _place(source: Path | bytes, dst: Path, links: dict) -> None:
    """Write bytes, or hard-link a file already placed (the two commits share unchanged files)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, bytes):
        dst.write_bytes(source)
        return
    key = str(source)
    if key in links:
        try:
            os.link(links[key], dst)
            return
        except OSError:
            pass
    shutil.copyfile(source, dst)
    links[key] = dst


def build_hub_root(root: str | Path) -> dict[str, dict[str, str]]:
    """Build (or reuse) the served repositories under ``root``.

    Returns ``{repo_id: {"old": sha, "main": sha}}``. The layout is the one ``hub_server`` serves:
    ``root/{models|datasets}/<org>/<name>/refs.json`` and ``.../<sha>/<files>``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = build_key()
    with open(root / ".hub_build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = root / MARKER
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("key") == key:
                return done["commits"]
        marker.unlink(missing_ok=True)
        for repo_type in ("models", "datasets"):
            shutil.rmtree(root / repo_type, ignore_errors=True)
        commits: dict[str, dict[str, str]] = {}
        with tempfile.TemporaryDirectory(prefix="hub-build-", dir=root) as tmp:
            sources = _course_sources(Path(tmp))
            for repo_id, repo_type in REPOS.items():
                paths = manifest(repo_id)
                main = {path: sources[repo_id].get(path) or stand_in(repo_id, path) for path in paths}
                old = dict(main, **_old_commit_changes(repo_id, sources[repo_id]))
                shas = {"old": commit_sha(repo_id, "old", key), "main": commit_sha(repo_id, "main", key)}
                folder = root / repo_type / repo_id
                links: dict = {}
                for label, tree in (("old", old), ("main", main)):
                    for path, source in tree.items():
                        _place(source, folder / shas[label] / path, links)
                (folder / "refs.json").write_text(json.dumps({
                    "branches": {"main": shas["main"]},
                    "tags": {},
                    **({"gated": {"tokens": GATED[repo_id]}} if repo_id in GATED else {}),
                    "commits": [
                        {"id": shas["main"], "title": "Update (cnhelpers test hub)",
                         "date": "2024-06-01T12:00:00.000Z"},
                        {"id": shas["old"], "title": "Initial commit (cnhelpers test hub)",
                         "date": "2023-01-01T12:00:00.000Z"},
                    ],
                }, indent=2) + "\n")
                commits[repo_id] = shas
        marker.write_text(json.dumps({"key": key, "commits": commits}, indent=2) + "\n")
        return commits


# -- the fixture --------------------------------------------------------------------------------------------------

CLIENT_PRELUDE = '''
import json, os, sys, urllib.request
def ctl(method, path, body=None):
    """Call the server's /_test controls (clear the log, set or clear faults) from the client process."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(os.environ["HF_ENDPOINT"] + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")
def fetched(repo_id=None):
    return [e["file"] for e in ctl("GET", "/_test/log") if e["method"] == "GET" and e["kind"] in ("resolve", "lfs")
            and e["status"] in (200, 206) and (repo_id is None or e["repo_id"] == repo_id)]
def error_name(call):
    try:
        call()
    except Exception as error:
        return type(error).__name__
    return None
RESULT = {}
'''


class HubFixture:
    """What the ``hub_server`` fixture yields: the running server and helpers to drive the real client."""

    def __init__(self, server, url: str, root: Path, commits: dict):
        self.server, self.url, self.root, self.commits = server, url, root, commits

    @property
    def log(self) -> list[dict]:
        """Every request so far: dicts with method, path, kind, repo_type, repo_id, revision, file, status, bytes."""
        return self.server.requests()

    def clear_log(self) -> None:
        self.server.clear_log()

    def fetched_files(self, repo_id: str | None = None) -> list[str]:
        """Files whose content was sent (GET of resolve or of the stand-in CDN), in request order."""
        return self.server.fetched_files(repo_id)

    def add_fault(self, file: str, **kwargs) -> None:
        self.server.add_fault(file, **kwargs)

    def clear_faults(self) -> None:
        self.server.clear_faults()

    def env(self, hf_home: str | Path, **extra: str) -> dict[str, str]:
        """The environment of a client process pointed at this server, with its own empty HF_HOME."""
        hf_home = Path(hf_home)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("HF_") and k not in ("HUGGINGFACE_HUB_CACHE", "HUGGING_FACE_HUB_TOKEN")}
        env.update(HF_ENDPOINT=self.url, HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   HF_HUB_DISABLE_IMPLICIT_TOKEN="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                       [str(PROJECT), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]))
        env.update(extra)
        return env

    def run_client(self, code: str, hf_home: str | Path, timeout: float = 120, **extra_env: str) -> dict:
        """Run ``code`` in a fresh Python process whose huggingface_hub reads this server's HF_ENDPOINT at import.

        The code fills the dict ``RESULT`` (JSON-serialisable); ``ctl(method, path, body)``, ``fetched(repo_id)``
        and ``error_name(call)`` are predefined. Returns ``RESULT``; a failing process fails the test.
        """
        script = CLIENT_PRELUDE + textwrap.dedent(code) + "\nprint('@@RESULT@@' + json.dumps(RESULT))\n"
        process = subprocess.run([sys.executable, "-c", script], env=self.env(hf_home, **extra_env), check=False,
                                 capture_output=True, text=True, timeout=timeout, cwd=str(PROJECT))
        for line in reversed(process.stdout.splitlines()):
            if line.startswith("@@RESULT@@"):
                return json.loads(line[len("@@RESULT@@"):])
        raise AssertionError(f"client process failed (rc {process.returncode}):\n{process.stdout[-3000:]}\n"
                             f"{process.stderr[-6000:]}")


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory):
    """The test Hub on 127.0.0.1 (port chosen by the system), serving ``build_hub_root``'s repositories.

    ``CN_TEST_HUB_ROOT=/some/folder`` keeps the built repositories between sessions (the build is cached there).
    """
    root = Path(os.environ.get("CN_TEST_HUB_ROOT") or tmp_path_factory.mktemp("hub-root"))
    started = time.time()
    commits = build_hub_root(root)
    server, url = start_server(root)
    hub = HubFixture(server, url, root, commits)
    hub.build_seconds = time.time() - started
    try:
        yield hub
    finally:
        server.stop()


@contextlib.contextmanager
def serving(root: str | Path):
    """Outside pytest: ``with serving(root) as hub: ...`` builds and serves, then stops."""
    commits = build_hub_root(root)
    server, url = start_server(root)
    try:
        yield HubFixture(server, url, Path(root), commits)
    finally:
        server.stop()


if __name__ == "__main__":  # python tests/hub_repos.py ROOT: build (or reuse) and print the commits
    print(json.dumps(build_hub_root(sys.argv[1] if len(sys.argv) > 1 else "build/test-hub"), indent=2))
