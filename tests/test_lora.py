"""The LoRA ControlNet (--lora_rank, cnhelpers.lora): what trains, saving and loading back, checkpoints and resume,
the model card and the pipeline, and the refusals."""

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from cnhelpers.config import training_args
from cnhelpers.course.fill import fill_example
from cnhelpers.families import family_named
from cnhelpers.families.sd import FAMILY as SD
from cnhelpers.inference import generate, load_controlnet_pipeline
from cnhelpers.lora import (ADAPTER_FILE, FULL_MODULES_FILE, LORA_FOLDER, add_controlnet_lora, load_lora_controlnet,
                            save_controlnet)
from cnhelpers.training import train

pytestmark = pytest.mark.colab  # peft adapters in diffusers: add_adapter, save_lora_adapter, load_lora_adapter

COPIED, FULL = SD.lora_layout()


@pytest.fixture(scope="module")
def unet(tiny_base):
    return UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")


def outputs(controlnet, unet):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=generator)
    condition = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        down, mid = controlnet.eval()(x, torch.tensor([10, 700]), text, condition, return_dict=False)
    return [*down, mid]


def test_lora_trains_adapters_on_the_copied_blocks_and_the_controlnets_own_modules_in_full(unet):
    controlnet = ControlNetModel.from_unet(unet)
    total = sum(p.numel() for p in controlnet.parameters())
    counts = add_controlnet_lora(controlnet, (COPIED, FULL), rank=4)
    trainable = {name: p for name, p in controlnet.named_parameters() if p.requires_grad}
    assert counts["trainable"] == sum(p.numel() for p in trainable.values())
    assert counts["total"] - counts["adapter"] == total  # the adapters are all that is added
    for name, p in controlnet.named_parameters():
        top = name.split(".")[0]
        if top in FULL:  # conditioning embedding and zero convolutions: every weight trained, none adapted
            assert p.requires_grad and ".lora_" not in name, name
        else:
            assert p.requires_grad == (".lora_" in name), name
            assert ".lora_" not in name or top in COPIED, name
    assert counts["full"] == sum(p.numel() for n, p in trainable.items() if n.split(".")[0] in FULL)
    assert any(n.startswith("controlnet_cond_embedding.") for n in trainable)  # its conv_in is not adapted
    assert not any(".lora_" in n for n in trainable if n.startswith("controlnet_cond_embedding."))
    # each adapted layer W (out x in x k x k) adds A (r x in x k x k) and B (out x r): twice the rank, twice the count
    wider = ControlNetModel.from_unet(unet)
    assert add_controlnet_lora(wider, (COPIED, FULL), rank=8)["adapter"] == 2 * counts["adapter"]
    assert outputs(controlnet, unet)[0].abs().max() == 0  # B = 0 and zero convolutions: it starts adding nothing


def test_a_saved_lora_controlnet_loads_back_with_the_same_outputs_merged_and_as_adapters(unet, tmp_path):
    controlnet = ControlNetModel.from_unet(unet)
    add_controlnet_lora(controlnet, (COPIED, FULL), rank=4, alpha=8)
    with torch.no_grad():  # as if trained: every trainable weight moved
        for p in controlnet.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    expected = outputs(controlnet, unet)
    save_controlnet(controlnet, tmp_path / "net")
    assert (tmp_path / "net" / LORA_FOLDER / ADAPTER_FILE).is_file()
    merged = ControlNetModel.from_pretrained(tmp_path / "net")  # any ControlNet loader reads the merged weights
    adapters = load_lora_controlnet(unet, tmp_path / "net")  # from_unet + load_lora_adapter + the full modules
    assert adapters.peft_config["default"].r == 4 and adapters.peft_config["default"].lora_alpha == 8
    for loaded, tolerance in ((merged, 1e-5), (adapters, 0)):
        for got, want in zip(outputs(loaded, unet), expected, strict=True):
            assert torch.allclose(got, want, atol=tolerance, rtol=0)
    assert expected[0].abs().max() > 1e-3  # (the outputs compared are not all zero)
    sizes = {f.name: f.stat().st_size for f in (tmp_path / "net" / LORA_FOLDER).iterdir()}
    assert sizes[ADAPTER_FILE] < (tmp_path / "net" / "diffusion_pytorch_model.safetensors").stat().st_size / 10
    assert FULL_MODULES_FILE in sizes


@pytest.mark.parametrize("flags, message", [
    (dict(lora_rank=0), "--lora_rank must be at least 1, got 0"),
    (dict(lora_rank=4, lora_alpha=-1.0), "--lora_alpha must be positive, got -1"),
    (dict(lora_alpha=8.0), "--lora_alpha scales a LoRA's update: give --lora_rank too"),
])
def test_a_bad_lora_flag_is_one_line(flags, message, tmp_path):
    with pytest.raises(ValueError, match=message) as error:
        training_args(pretrained_model_name_or_path="base", train_data_dir=str(tmp_path), **flags)
    assert "\n" not in str(error.value)


def test_a_family_without_a_lora_layout_refuses_in_one_line():
    with pytest.raises(ValueError, match="--lora_rank is not supported for .*: leave --lora_rank out") as error:
        family_named("sd3").lora_layout()
    assert "\n" not in str(error.value)


def test_a_lora_run_checkpoints_resumes_exactly_writes_its_card_and_draws(tiny_base, fill_dir, tmp_path):
    def args(output_dir, steps, **flags):
        return training_args(pretrained_model_name_or_path=tiny_base, train_data_dir=fill_dir, output_dir=output_dir,
                             resolution=64, train_batch_size=4, learning_rate=1e-2, lr_warmup_steps=0, seed=0,
                             report_to="none", checkpointing_steps=1, max_train_steps=steps, lora_rank=4, **flags)

    train(args(tmp_path / "straight", 2))
    train(args(tmp_path / "resumed", 1))
    train(args(tmp_path / "resumed", 2, resume_from_checkpoint="latest"))
    straight = ControlNetModel.from_pretrained(tmp_path / "straight").state_dict()
    resumed = ControlNetModel.from_pretrained(tmp_path / "resumed").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    initial = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")).state_dict()
    assert not torch.equal(straight["down_blocks.0.resnets.0.conv1.weight"],  # the adapters moved a copied weight
                           initial["down_blocks.0.resnets.0.conv1.weight"])
    assert not torch.equal(straight["controlnet_mid_block.weight"], initial["controlnet_mid_block.weight"])
    checkpoint = tmp_path / "straight" / "checkpoint-1" / "controlnet"
    assert (checkpoint / LORA_FOLDER / ADAPTER_FILE).is_file() and ControlNetModel.from_pretrained(checkpoint)
    card = (tmp_path / "straight" / "README.md").read_text()
    assert "| LoRA rank (alpha) | 4 (4) |" in card and "load_lora_controlnet" in card
    pipeline = load_controlnet_pipeline(tiny_base, tmp_path / "straight")
    example = fill_example(99, 0, 64)
    image, = generate(pipeline, [example], num_inference_steps=2, guidance_scale=1.0)
    assert image.size == (64, 64)
    with pytest.raises(ValueError, match="a LoRA ControlNet's checkpoint: resume it with the --lora_rank"):
        flags = vars(args(tmp_path / "straight", 3, resume_from_checkpoint="checkpoint-1")) | {"lora_rank": None}
        train(training_args(**{k: v for k, v in flags.items() if v is not None}))
