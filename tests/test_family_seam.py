"""The family seam: a base's family is detected from its own files, and only the family modules know a family."""

import ast
import inspect
import json
import re
from pathlib import Path

import pytest

from cnhelpers.families import FAMILIES, detect_family, family_named
from cnhelpers.families.family import Family

pytestmark = pytest.mark.colab

PACKAGE = Path(__file__).resolve().parents[1] / "cnhelpers"

#: What asks which family a base is: a family's name, or what a family is recognised by (SDXL's "text_time").
FAMILY_WORDS = re.compile(r"sdxl|sd3|flux|text_time|addition_embed_type|StableDiffusion(XL|3)", re.IGNORECASE)


def family_names_in_code(path: Path) -> list[tuple[int, str]]:
    """``(line, name)`` for each identifier (a variable, attribute, function or import) and each word-like string
    constant of the module ``path`` that names a family. Prose (docstrings, help texts, comments) and constants
    in capitals (lists of an upstream script's flags) are not asked."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.asname or alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not re.search(r"\s", node.value):
            names = [node.value]
        found += [(node.lineno, name) for name in names if FAMILY_WORDS.search(name) and not name.isupper()]
    return sorted(set(found))


def family_tests_outside_the_families(package: Path) -> list[str]:
    """``file:line: name`` for each place in the core (not ``families/``, not ``course/``) that names a family."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] in ("families", "course"):
            continue
        found += [f"{relative}:{line}: {name}" for line, name in family_names_in_code(path)]
    return found


def test_no_core_module_outside_the_families_names_a_family():
    assert family_tests_outside_the_families(PACKAGE) == []


def test_the_family_rule_catches_a_branch_on_a_family(tmp_path):
    (tmp_path / "families").mkdir()
    (tmp_path / "families" / "sdxl.py").write_text("def is_sdxl_unet(unet): ...\n")
    (tmp_path / "training.py").write_text("if models.sdxl:\n    pass\n")
    (tmp_path / "loading.py").write_text('"""SDXL is a family."""\nif unet.config.get("addition_embed_type") == "text_time":'
                                         '\n    SDXL_FLAGS = ()\n')
    assert family_tests_outside_the_families(tmp_path) == ["loading.py:2: addition_embed_type", "loading.py:2: text_time",
                                                            "training.py:1: sdxl"]


def write_index(folder: Path, class_name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, "unet": ["diffusers", "X"]}))
    return folder


@pytest.mark.parametrize("class_name, family", [
    ("StableDiffusionPipeline", "sd"), ("StableDiffusionControlNetPipeline", "sd"),
    ("StableDiffusionXLPipeline", "sdxl"), ("StableDiffusionXLControlNetPipeline", "sdxl"),
    ("StableDiffusion3Pipeline", "sd3"), ("StableDiffusion3ControlNetPipeline", "sd3"),
    ("FluxPipeline", "flux"), ("FluxControlNetPipeline", "flux"),
])
def test_the_family_comes_from_the_pipeline_that_model_index_names(tmp_path, class_name, family):
    assert detect_family(write_index(tmp_path / "base", class_name)).name == family


def test_the_tiny_bases_are_detected_as_what_they_are(tiny_base, tmp_path):
    from cnhelpers.course.tiny_sdxl import build_tiny_sdxl_base

    assert detect_family(tiny_base).name == "sd"
    assert detect_family(build_tiny_sdxl_base(tmp_path / "tiny-sdxl")).name == "sdxl"


def test_an_unknown_pipeline_is_refused_in_one_line_naming_the_known_families(tmp_path):
    with pytest.raises(ValueError) as error:
        detect_family(write_index(tmp_path / "base", "KandinskyPipeline"))
    message = str(error.value)
    assert "\n" not in message and "'KandinskyPipeline'" in message
    assert all(f"{family.name} (" in message for family in FAMILIES)


def abstract_methods() -> list[str]:
    """The methods of :class:`Family` that a family must implement (their default raises NotImplementedError)."""
    return sorted(name for name, value in vars(Family).items()
                  if callable(value) and "raise NotImplementedError" in inspect.getsource(value))


def test_every_family_implements_every_method_the_loop_asks_for():
    assert {"claims", "load", "objective", "predict", "encode_prompts", "validation_pipeline"} <= \
        set(abstract_methods())
    for family in FAMILIES:
        assert family.name and family.components and family.pipeline_name
        assert [m for m in abstract_methods() if getattr(type(family), m) is getattr(Family, m)] == []
        assert family_named(family.name) is family


@pytest.mark.parametrize("parts, family", [
    (("unet", "text_encoder"), "sd"), (("transformer", "text_encoder_2", "text_encoder_3"), "sd3"),
    (("transformer", "text_encoder_2"), "flux"),
])
def test_a_base_without_model_index_is_told_by_its_parts(tmp_path, parts, family):
    for part in parts:
        (tmp_path / "base" / part).mkdir(parents=True)
    assert detect_family(tmp_path / "base").name == family


def test_each_family_flag_belongs_to_a_parser_flag_and_objective_flags_are_flags():
    from cnhelpers.config import build_parser

    dests = {action.dest for action in build_parser()._actions}
    for family in FAMILIES:
        assert set(family.flags) <= dests and set(family.objective_flags) <= set(family.flags), family.name


def test_a_family_loads_only_its_parts_and_sdxl_keeps_its_vae_in_float32_under_fp16():
    import torch

    sd, sdxl = family_named("sd"), family_named("sdxl")
    assert set(sd.components) < set(sdxl.components)
    assert not sd.vae_in_float32(torch.float16, replaced_vae=False)
    assert sdxl.vae_in_float32(torch.float16, replaced_vae=False)
    assert not sdxl.vae_in_float32(torch.float16, replaced_vae=True)
    assert not sdxl.vae_in_float32(torch.bfloat16, replaced_vae=False)


def test_the_data_sets_tokenize_holds_the_tokenizers_and_no_model(tiny_base):
    """A data set's transform captures ``tokenize_fn()``; datasets hashes (pickles) a transform for its fingerprint
    each run, so it must not reach the models' weights."""
    import pickle

    import torch
    from transformers import CLIPTokenizer

    from cnhelpers.families.family import Models

    tokenizer = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    weights = torch.nn.Linear(512, 512)  # 1 MB of float32, standing in for every model of the base
    models = Models(family=family_named("sd"), tokenizers={"tokenizer": tokenizer},
                    text_encoders={"text_encoder": weights}, vae=weights, denoiser=weights, noise_scheduler=None,
                    controlnet=weights)
    tokenize = models.tokenize_fn()
    captions = ["a red circle on a blue background"]
    assert torch.equal(tokenize(captions)["input_ids"], models.family.tokenize(models, captions)["input_ids"])
    assert len(pickle.dumps(tokenize)) < len(pickle.dumps(tokenizer)) + 100_000 < len(pickle.dumps(weights))


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_conditioning_embedding_init_is_refused_on_a_transformer_base_saying_why(name):
    from cnhelpers.families import check_family_flags

    with pytest.raises(ValueError, match="--conditioning_embedding_init does not apply .* zero-initialised layer"):
        check_family_flags(family_named(name), {"conditioning_embedding_init": "kaiming"})
    check_family_flags(family_named("sdxl"), {"conditioning_embedding_init": "kaiming"})  # SDXL's is SD's embedding
