"""The speed flags keep the arithmetic: ``--channels_last`` and ``--torch_compile`` train the losses and weights of
the default run, the compiled models stay the models accelerate and diffusers save, and the checks refuse what
cannot run. (Their refusals through the CLI are rows of test_bad_inputs.py.)"""

import shutil

import pytest
import torch
from diffusers import ControlNetModel

from cnhelpers.config import training_args
from cnhelpers.speed import check_torch_compile, compile_models, memory_layout, set_memory_layout
from cnhelpers.training import train

pytestmark = pytest.mark.not_colab(reason="torch.compile and memory layouts: the same torch in both venvs")

HAS_CXX = any(shutil.which(name) for name in ("g++", "c++", "clang++"))
#: The smallest UNet that still has every kind of layer the tiny base's has (a resnet, a transformer with self- and
#: cross-attention, the time embedding, the mid block; the ControlNet built from it adds its conditioning embedding
#: and zero convolutions): one block of 32 channels. A cold inductor compile writes a C++ kernel per fused group of
#: operations, so the compile test costs in proportion to the layers, and one block of each kind proves as much.
ONE_BLOCK_UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,), layers_per_block=1,
                             down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                             cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)


def tiny_args(tiny_base, fill_dir, output_dir, **flags):
    return training_args(pretrained_model_name_or_path=tiny_base, train_data_dir=fill_dir, output_dir=output_dir,
                         resolution=64, train_batch_size=4, learning_rate=1e-3, lr_warmup_steps=0, seed=0,
                         report_to="none", checkpointing_steps=1000, max_train_steps=3, **flags)


@pytest.fixture
def one_block_base(tiny_base, tmp_path):
    """The tiny base with its UNet swapped for :data:`ONE_BLOCK_UNET_CONFIG`'s (the VAE and text encoder kept)."""
    from diffusers import UNet2DConditionModel

    base = shutil.copytree(tiny_base, tmp_path / "one-block-sd")
    shutil.rmtree(base / "unet")
    torch.manual_seed(0)
    UNet2DConditionModel(**ONE_BLOCK_UNET_CONFIG).save_pretrained(base / "unet")
    return base


@pytest.mark.skipif(not HAS_CXX, reason="inductor writes C++ kernels on a CPU: no C++ compiler here")
def test_channels_last_and_inductor_train_the_losses_and_weights_of_the_default_run(one_block_base, fill_dir,
                                                                                    tmp_path):
    default = train(tiny_args(one_block_base, fill_dir, tmp_path / "default"))
    fast = train(tiny_args(one_block_base, fill_dir, tmp_path / "fast", channels_last=True, torch_compile="inductor"))
    losses = [h["loss"] for h in default.history]
    assert [h["loss"] for h in fast.history] == pytest.approx(losses, rel=1e-4)
    expected, trained = (ControlNetModel.from_pretrained(tmp_path / name).state_dict() for name in ("default", "fast"))
    assert sorted(trained) == sorted(expected)  # saved under the model's own keys, not a compiled wrapper's
    # 3 AdamW steps of 1e-3 move a weight by up to 3e-3; the two runs agree far below that
    assert max((trained[k] - expected[k]).abs().max().item() for k in expected) < 1e-4


def test_memory_layout_is_channels_last_for_the_conditioning_embedding_on_a_cpu_and_everywhere_when_asked():
    assert memory_layout(False, "cpu") == (torch.contiguous_format, torch.channels_last)
    assert memory_layout(False, "cuda") == (torch.contiguous_format, torch.contiguous_format)
    assert memory_layout(True, "cuda") == (torch.channels_last, torch.channels_last)


def test_set_memory_layout_lays_out_every_convolution_of_both_models(tiny_base):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet)
    set_memory_layout(unet, controlnet, channels_last=True, device_type="cpu")
    convs = [m.weight for model in (unet, controlnet) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    set_memory_layout(unet := UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet"),
                      controlnet := ControlNetModel.from_unet(unet), channels_last=False, device_type="cpu")
    assert unet.conv_in.weight.is_contiguous() and not controlnet.conv_in.weight.is_contiguous(
        memory_format=torch.channels_last)
    assert controlnet.controlnet_cond_embedding.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_compiled_models_keep_their_class_and_state_dict_keys():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU())
    keys = list(model.state_dict())
    compile_models("eager", None, model)
    assert type(model) is torch.nn.Sequential and list(model.state_dict()) == keys
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(model(x), model._call_impl(x))  # the compiled call computes what the module does
    compile_models(None, None, model)  # no backend: nothing changes


def test_check_torch_compile_accepts_the_backends_that_run_here():
    check_torch_compile(None, "cpu")
    check_torch_compile("aot_eager", "cpu")
    if HAS_CXX:
        check_torch_compile("inductor", "cpu")


def test_inductor_without_a_cxx_compiler_is_refused_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no compiler on PATH
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler .*`apt install g\+\+`"):
        check_torch_compile("inductor", "cpu")
    check_torch_compile("aot_eager", "cpu")  # writes no kernels: no compiler needed
