import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cnhelpers.course.flax_training import BIN_NAMES, text_model_prefixed, with_bin_weights


def test_text_model_prefix_is_added_only_to_clip_weights_saved_without_it():
    clip = {"model_type": "clip_text_model"}
    assert list(text_model_prefixed({"embeddings.x": 1}, clip)) == ["text_model.embeddings.x"]
    assert list(text_model_prefixed({"text_model.embeddings.x": 1}, clip)) == ["text_model.embeddings.x"]
    assert list(text_model_prefixed({"conv_in.weight": 1}, {"_class_name": "UNet2DConditionModel"})) == ["conv_in.weight"]


def _clip_base_saved_like_transformers_5(folder):
    """A model folder whose CLIP text encoder is saved as transformers 5 does: safetensors, no prefix."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16, projection_dim=32)
    model = CLIPTextModel(config).eval()
    (folder / "text_encoder").mkdir(parents=True)
    config.to_json_file(folder / "text_encoder" / "config.json")
    state = {k.removeprefix("text_model."): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "text_encoder" / "model.safetensors")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return model


def test_clip_weights_without_prefix_load_into_flax_with_their_values(tmp_path):
    from transformers import FlaxCLIPTextModel

    torch_model = _clip_base_saved_like_transformers_5(tmp_path / "base")
    converted = with_bin_weights(tmp_path / "base", tmp_path / "converted")
    assert (converted / "text_encoder" / BIN_NAMES["model.safetensors"]).is_file()
    assert not list(converted.rglob("*.safetensors"))

    flax_model = FlaxCLIPTextModel.from_pretrained(converted, subfolder="text_encoder", from_pt=True)
    ids = np.array([[1, 5, 7, 9, 2]])
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(flax_model(ids)[0]), expected, atol=1e-4)


def test_the_converted_copy_is_reused_until_the_base_changes(tmp_path):
    _clip_base_saved_like_transformers_5(tmp_path / "base")
    first = with_bin_weights(tmp_path / "base", tmp_path / "converted")
    marker = first / "text_encoder" / "marker"
    marker.write_text("kept")
    assert with_bin_weights(tmp_path / "base", tmp_path / "converted") == first and marker.exists()
    (tmp_path / "base" / "model_index.json").write_text(json.dumps({"_class_name": "Changed"}))
    with_bin_weights(tmp_path / "base", tmp_path / "converted")
    assert not marker.exists()


def test_bases_in_folders_of_the_same_name_get_copies_of_their_own(tmp_path):
    _clip_base_saved_like_transformers_5(tmp_path / "one" / "base")
    _clip_base_saved_like_transformers_5(tmp_path / "two" / "base")
    first, second = with_bin_weights(tmp_path / "one" / "base"), with_bin_weights(tmp_path / "two" / "base")
    assert first != second
    assert json.loads((first / "converted-from.json").read_text())["source"] == str((tmp_path / "one" / "base").resolve())
    assert json.loads((second / "converted-from.json").read_text())["source"] == str((tmp_path / "two" / "base").resolve())


def test_a_base_with_bin_weights_is_used_as_it_is(tiny_base_bin):
    assert with_bin_weights(tiny_base_bin) == tiny_base_bin


def test_a_folder_that_is_not_a_model_gets_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        with_bin_weights(tmp_path)


def test_flax_unet_from_pt_matches_the_pytorch_unet(tiny_base_bin, flax_base):
    from diffusers import UNet2DConditionModel

    torch_unet = UNet2DConditionModel.from_pretrained(tiny_base_bin, subfolder="unet").eval()
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    text = rng.standard_normal((2, 7, 64)).astype(np.float32)
    timesteps = np.array([10, 500], dtype=np.int32)
    with torch.no_grad():
        expected = torch_unet(torch.from_numpy(latents), torch.from_numpy(timesteps),
                              encoder_hidden_states=torch.from_numpy(text)).sample.numpy()
    unet = flax_base["unet"]
    got = unet.apply({"params": flax_base["unet_params"]}, latents, jnp.asarray(timesteps), text).sample
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-3)
