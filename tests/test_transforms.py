"""make_train_dataset's bad-input cases, streaming, and the own-data-set helpers (notebook 01)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnhelpers.course.fill import draw_scene, generated_scenes, write_fill_imagefolder
from cnhelpers.data import collate_fn, load_imagefolder, make_train_dataset
from cnhelpers.own_data import (
    build_controlnet_dataset,
    canny_conditioning,
    read_own_images,
    write_imagefolder,
)

pytestmark = pytest.mark.colab


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")


def _rows(images, conditioning=None, texts=None):
    """A Dataset with Image() features holding exactly these PIL images (or raw bytes)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    n = len(images)
    features = Features({"image": ImageFeature(), "conditioning_image": ImageFeature(), "text": Value("string")})
    return Dataset.from_dict({
        "image": images,
        "conditioning_image": conditioning or [Image.new("RGB", (16, 16))] * n,
        "text": texts or [f"example {i}" for i in range(n)],
    }, features=features)


@pytest.mark.parametrize("mode, colour", [("RGBA", (200, 30, 30, 128)), ("L", 77), ("P", 3), ("CMYK", (0, 255, 0, 0))])
def test_non_rgb_images_are_converted_to_three_channels(tokenizer, mode, colour):
    image = Image.new(mode, (16, 16), colour)
    conditioning = Image.new("L", (16, 16), 255)
    train = make_train_dataset(_rows([image], [conditioning]), tokenizer, resolution=16)
    example = train[0]
    assert example["pixel_values"].shape == (3, 16, 16)
    assert example["conditioning_pixel_values"].shape == (3, 16, 16)
    expected = torch.tensor(image.convert("RGB").getpixel((0, 0)), dtype=torch.float32) / 255 * 2 - 1
    assert torch.allclose(example["pixel_values"][:, 0, 0], expected, atol=1e-6)
    assert torch.equal(example["conditioning_pixel_values"], torch.ones(3, 16, 16))


def test_unreadable_image_names_its_row_and_column(tokenizer):
    good = io.BytesIO()
    Image.new("RGB", (16, 16)).save(good, format="PNG")
    images = [{"bytes": good.getvalue(), "path": None}, {"bytes": b"this is not a PNG", "path": None}]
    train = make_train_dataset(_rows(images), tokenizer, resolution=16)
    assert train[0]["pixel_values"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"Row 1: cannot read the 'image' image \(UnidentifiedImageError") as error:
        train[1]
    assert "0x" not in str(error.value)  # no memory address in the message


def test_unreadable_row_is_named_by_its_original_number_after_max_train_samples(tokenizer):
    good = io.BytesIO()
    Image.new("RGB", (16, 16)).save(good, format="PNG")
    images = [{"bytes": good.getvalue(), "path": None}] * 5 + [{"bytes": b"broken", "path": None}]
    train = make_train_dataset(_rows(images), tokenizer, resolution=16, max_train_samples=6, seed=0)
    with pytest.raises(ValueError, match="Row 5: cannot read"):
        collate_fn([train[i] for i in range(len(train))])


def test_unreadable_file_is_named_by_its_path(tmp_path, tokenizer):
    path = write_fill_imagefolder(tmp_path / "fill", 3, 16)
    (path / "conditioning_images" / "00002.png").write_bytes(b"truncated")
    train = make_train_dataset(load_imagefolder(path), tokenizer, resolution=16)
    with pytest.raises(ValueError, match=r"Row 2: cannot read the 'conditioning_image' image \(.*00002.png\)"):
        train[2]


def test_empty_captions_stay_empty_and_tokenize_to_padding(tokenizer):
    train = make_train_dataset(_rows([Image.new("RGB", (16, 16))] * 2, texts=["", "red circle"]), tokenizer,
                               resolution=16)
    empty, full = train[0]["input_ids"], train[1]["input_ids"]
    assert empty[0] == tokenizer.bos_token_id and (empty[1:] == tokenizer.pad_token_id).all()
    assert (full != tokenizer.pad_token_id).sum() == 3  # bos + two words (eos is the pad token)


def test_list_captions_go_through_make_train_dataset(tokenizer):
    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "conditioning_image": ImageFeature(),
                         "text": Sequence(Value("string"))})
    rows = Dataset.from_dict({"image": [Image.new("RGB", (16, 16))] * 2,
                              "conditioning_image": [Image.new("RGB", (16, 16))] * 2,
                              "text": [["red circle", "blue circle"], ["navy circle"]]}, features=features)
    train = make_train_dataset(rows, tokenizer, resolution=16, seed=0)
    decoded = {tokenizer.decode(train[0]["input_ids"], skip_special_tokens=True) for _ in range(30)}
    assert decoded == {"red circle", "blue circle"}
    assert tokenizer.decode(train[1]["input_ids"], skip_special_tokens=True) == "navy circle"


def test_an_empty_list_of_captions_is_a_clear_error(tokenizer):
    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "conditioning_image": ImageFeature(),
                         "text": Sequence(Value("string"))})
    rows = Dataset.from_dict({"image": [Image.new("RGB", (16, 16))], "conditioning_image": [Image.new("RGB", (16, 16))],
                              "text": [[]]}, features=features)
    with pytest.raises(ValueError, match="non-empty lists of strings"):
        make_train_dataset(rows, tokenizer, resolution=16)[0]


def _texts(train, tokenizer):
    return [tokenizer.decode(train[i]["input_ids"], skip_special_tokens=True) for i in range(len(train))]


@pytest.fixture(scope="module")
def fill_folder(tmp_path_factory):
    return write_fill_imagefolder(tmp_path_factory.mktemp("fill") / "d", 12, 16, seed=0)


def test_max_train_samples_with_a_seed_picks_the_same_rows_every_time(fill_folder, tokenizer):
    rows = load_imagefolder(fill_folder)
    first = make_train_dataset(rows, tokenizer, resolution=16, max_train_samples=5, seed=1)
    again = make_train_dataset(rows, tokenizer, resolution=16, max_train_samples=5, seed=1)
    other = make_train_dataset(rows, tokenizer, resolution=16, max_train_samples=5, seed=2)
    assert len(first) == 5
    assert _texts(first, tokenizer) == _texts(again, tokenizer) != _texts(other, tokenizer)
    assert len(make_train_dataset(rows, tokenizer, resolution=16, max_train_samples=100)) == 12


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_max_train_samples_must_be_a_positive_integer(fill_folder, tokenizer, bad):
    with pytest.raises(ValueError, match="max_train_samples must be a positive integer"):
        make_train_dataset(load_imagefolder(fill_folder), tokenizer, resolution=16, max_train_samples=bad)


def test_a_stream_gives_the_same_examples_as_the_data_set(fill_folder, tokenizer):
    from datasets import load_dataset
    from torch.utils.data import DataLoader

    stream = load_dataset(str(fill_folder), split="train", streaming=True)
    train = make_train_dataset(stream, tokenizer, resolution=16)
    batch = next(iter(DataLoader(train, batch_size=4, collate_fn=collate_fn)))
    expected = collate_fn([make_train_dataset(load_imagefolder(fill_folder), tokenizer, resolution=16)[i]
                           for i in range(4)])
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key


def test_a_stream_takes_a_seeded_subset_of_max_train_samples(fill_folder, tokenizer):
    from datasets import load_dataset

    def texts(seed):
        stream = load_dataset(str(fill_folder), split="train", streaming=True)
        train = make_train_dataset(stream, tokenizer, resolution=16, max_train_samples=4, seed=seed)
        return [tokenizer.decode(e["input_ids"], skip_special_tokens=True) for e in train]

    assert len(texts(0)) == 4
    assert texts(0) == texts(0) != texts(1)


def test_a_stream_checks_its_columns_by_name(fill_folder, tokenizer):
    from datasets import load_dataset

    stream = load_dataset(str(fill_folder), split="train", streaming=True)
    with pytest.raises(ValueError, match="its columns are: image, conditioning_image, text"):
        make_train_dataset(stream, tokenizer, resolution=16, image_column="target")


def test_a_broken_file_in_a_stream_names_its_row(tmp_path, tokenizer):
    from datasets import load_dataset

    path = write_fill_imagefolder(tmp_path / "fill", 3, 16)
    (path / "images" / "00001.png").write_bytes(b"broken")
    train = make_train_dataset(load_dataset(str(path), split="train", streaming=True), tokenizer, resolution=16,
                               )
    with pytest.raises(ValueError, match="Row 1: cannot read the 'image' image"):
        list(train)


# --- your own data set ------------------------------------------------------------------------------

def test_canny_gives_white_edges_on_black_where_the_picture_changes():
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, 16:] = 255
    edges = np.asarray(canny_conditioning(Image.fromarray(pixels), 100, 200))
    assert edges.shape == (32, 32, 3)
    assert set(np.unique(edges)) == {0, 255}
    edge_columns = set(np.nonzero(edges[..., 0].any(axis=0))[0])
    assert edge_columns and edge_columns <= {15, 16}


def test_lower_canny_thresholds_keep_more_edges():
    image, _ = draw_scene(0, 0, 96)
    counts = [(np.asarray(canny_conditioning(image, low, high)) > 0).sum()
              for low, high in ((30, 60), (100, 200), (300, 600))]
    assert counts[0] > counts[1] > counts[2] > 0


def test_canny_rejects_a_low_threshold_above_the_high_one():
    with pytest.raises(ValueError, match="0 <= low <= high"):
        canny_conditioning(Image.new("RGB", (8, 8)), 200, 100)


def test_generated_scenes_are_seeded_and_captioned():
    images, captions = generated_scenes(3, resolution=64, seed=0)
    again, _ = generated_scenes(3, resolution=64, seed=0)
    assert [im.size for im in images] == [(64, 64)] * 3 and all(im.mode == "RGB" for im in images)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))
    assert all(" house with a " in caption for caption in captions)
    assert generated_scenes(3, 64, seed=1)[1] != captions


def test_own_data_set_has_the_fill_columns_and_canny_conditioning():
    images, captions = generated_scenes(2, resolution=32)
    images[1] = images[1].convert("RGBA")
    dataset = build_controlnet_dataset(images, captions)
    assert dataset.column_names == ["image", "conditioning_image", "text"]
    assert dataset[1]["image"].mode == "RGB"
    assert np.array_equal(np.asarray(dataset[0]["conditioning_image"]), np.asarray(canny_conditioning(images[0])))
    assert dataset[1]["text"] == captions[1]


def test_own_data_set_needs_one_string_caption_per_image():
    images, _ = generated_scenes(2, resolution=16)
    with pytest.raises(ValueError, match="got 2 images but 1 captions"):
        build_controlnet_dataset(images, ["one"])
    with pytest.raises(ValueError, match="row 1 is NoneType"):
        build_controlnet_dataset(images, ["one", None])


def test_own_data_set_round_trips_through_save_to_disk_and_imagefolder(tmp_path, tokenizer):
    from datasets import load_from_disk

    images, captions = generated_scenes(3, resolution=32)
    dataset = build_controlnet_dataset(images, captions)
    dataset.save_to_disk(tmp_path / "arrow")
    folder = write_imagefolder(dataset, tmp_path / "folder")
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert rows[0] == {"file_name": "images/00000.png", "conditioning_image_file_name": "conditioning_images/00000.png",
                       "text": captions[0]}
    for loaded in (load_from_disk(tmp_path / "arrow"), load_imagefolder(folder)):
        assert loaded.column_names == ["image", "conditioning_image", "text"]
        assert loaded["text"] == captions
        assert np.array_equal(np.asarray(loaded[2]["image"]), np.asarray(images[2]))
        assert make_train_dataset(loaded, tokenizer, resolution=32)[0]["pixel_values"].shape == (3, 32, 32)


def test_write_imagefolder_names_a_missing_column(tmp_path):
    dataset = build_controlnet_dataset(*generated_scenes(1, resolution=16))
    with pytest.raises(ValueError, match="'prompt' is not a column"):
        write_imagefolder(dataset, tmp_path / "x", caption_column="prompt")
    assert not (tmp_path / "x").exists()


def test_own_pictures_are_read_with_captions_from_their_file_names(tmp_path):
    Image.new("RGBA", (20, 10), (255, 0, 0, 255)).save(tmp_path / "red_house.png")
    Image.new("L", (10, 10), 80).save(tmp_path / "grey-cat.jpg")
    (tmp_path / "notes.txt").write_text("not a picture")
    images, captions = read_own_images(tmp_path)
    assert captions == ["grey cat", "red house"]
    assert [im.mode for im in images] == ["RGB", "RGB"] and images[1].size == (20, 10)


def test_a_folder_without_pictures_says_which_files_count(tmp_path):
    with pytest.raises(ValueError, match="holds no pictures: put .png"):
        read_own_images(tmp_path)


def test_transform_check_accepts_the_right_answer_and_explains_wrong_ones(capsys):
    from cnhelpers.course.checks import check_transform_answer

    assert check_transform_answer((3, 512, 512), (-1, 1), (0, 1))
    assert not check_transform_answer((3, 512, 768), (-1, 1), (-1, 1))
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "scales the SHORT side" in out and "has no Normalize" in out


def test_canny_widget_redraws_the_edges_when_a_slider_moves():
    from cnhelpers.course.plots import canny_threshold_widget

    image, _ = draw_scene(0, 0, 64)
    widget = canny_threshold_widget(image, 100, 200)
    (low, high), message, (_, edges) = widget.children[0].children, widget.children[1], widget.children[2].children
    before = edges.value
    assert before and message.value == "canny low=100, high=200"
    low.value = 30
    assert edges.value != before and message.value == "canny low=30, high=200"
    low.value = 300
    assert "above high" in message.value
