"""The fast path's choice (``--cache auto``): taken when the run reads every example at least once and the cache
fits; a short run on a large data set encodes only what it reads."""

import pytest
import torch
from datasets import Dataset
from safetensors.torch import save_file

from cnhelpers.cache import use_cache
from cnhelpers.training import examples_read

pytestmark = pytest.mark.not_colab(reason="arithmetic on counts; the cached and uncached runs themselves are "
                                          "tested in test_family_regression, test_sd3 and test_sdxl")

TEXT_SHAPE = (77, 32)


def rows(n: int) -> Dataset:
    return Dataset.from_dict({"text": [f"caption {i % 3}" for i in range(n)]})


def choice(mode: str, n: int, read: int | None, **kwargs) -> bool:
    return use_cache(mode, rows(n), caption_column="text", resolution=64, text_shape=TEXT_SHAPE,
                     examples_read=read, **kwargs)


def test_auto_caches_a_run_that_reads_every_example_at_least_once():
    assert choice("auto", 64, 64) and choice("auto", 64, 640) and choice("auto", 64, None)


def test_auto_leaves_the_cache_off_for_a_run_that_reads_fewer_examples_than_the_set_holds():
    assert not choice("auto", 2048, 4 * 16)
    # --max_train_samples shrinks the set the cache would encode
    assert choice("auto", 2048, 4 * 16, max_train_samples=64)


def test_always_and_never_are_not_second_guessed():
    assert choice("always", 2048, 16) and not choice("never", 64, 6400)


def test_examples_read_counts_the_whole_run_per_process_so_a_resumed_run_takes_its_starts_path():
    class Args:
        max_train_steps, train_batch_size, gradient_accumulation_steps = 100, 4, 2
        resume_from_checkpoint = "latest"

    assert examples_read(Args) == 800
    Args.max_train_steps = None  # counted in epochs: every example at least once
    assert examples_read(Args) is None


def test_a_checkpoint_holds_the_runs_choice_and_a_resumed_auto_repeats_it(tmp_path):
    from types import SimpleNamespace

    from cnhelpers.checkpoints import checkpoint_run_facts, write_manifest
    from cnhelpers.training import cache_mode

    checkpoint = tmp_path / "checkpoint-3"
    (checkpoint / "controlnet").mkdir(parents=True)
    (checkpoint / "controlnet" / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, checkpoint / "controlnet" / "diffusion_pytorch_model.safetensors")
    write_manifest(checkpoint, 3, {"cached": False})
    assert checkpoint_run_facts(checkpoint) == {"cached": False}
    args = SimpleNamespace(cache="auto", output_dir=str(tmp_path), resume_from_checkpoint="latest")
    assert cache_mode(args) == "never"  # however many examples the extended run reads
    write_manifest(checkpoint, 3, {"cached": True})
    assert cache_mode(args) == "always"
    write_manifest(checkpoint, 3)  # a checkpoint from before the choice was written: the rule decides
    assert cache_mode(args) == "auto"
    assert cache_mode(SimpleNamespace(cache="never", output_dir=str(tmp_path), resume_from_checkpoint="latest")) \
        == "never"
