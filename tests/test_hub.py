import pytest

from cnhelpers.course.profiles import get_profile
from cnhelpers.course.tiny_bases import base_model_path
from cnhelpers.data import load_fill50k
from cnhelpers.hub import HubUnavailableError, looks_like_hub_id, resolve_pretrained

pytestmark = pytest.mark.colab


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache


def test_hub_id_while_offline_says_to_use_the_tiny_profile(offline):
    with pytest.raises(HubUnavailableError) as error:
        resolve_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    message = str(error.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "CN_PROFILE=tiny" in message and "HF_HUB_OFFLINE" in message


def test_sd15_profile_while_offline_fails_clearly(offline):
    with pytest.raises(HubUnavailableError, match="tiny profile"):
        base_model_path(get_profile("sd15"))


def test_fill50k_hub_id_while_offline_fails_clearly(offline):
    with pytest.raises(HubUnavailableError, match="fusing/fill50k"):
        load_fill50k("fusing/fill50k")


def test_local_folder_is_returned_as_is(tmp_path):
    assert resolve_pretrained(tmp_path) == tmp_path


def test_a_missing_path_that_is_no_hub_id_is_a_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        resolve_pretrained(tmp_path / "no" / "such" / "model")


def test_hub_id_shape():
    assert looks_like_hub_id("fusing/fill50k")
    assert not looks_like_hub_id("just-a-name")
    assert not looks_like_hub_id("/abs/path/x")
