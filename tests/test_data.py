import json

import numpy as np
import pytest

from cnhelpers.course.fill import (
    BORDER_CUT_SHARE,
    INSIDE_MARGIN,
    MIN_OVERHANG,
    PALETTE,
    RADIUS_RANGE,
    Circle,
    anywhere_circle,
    border_overhang,
    draw_circle,
    ensure_fill_dataset,
    fill_example,
    is_cut_by_border,
    placed_circle,
    sample_circle,
    write_fill50k_raw,
    write_fill_imagefolder,
)
from cnhelpers.data import COLUMNS, load_fill50k, load_imagefolder


def _pixels(image):
    return np.asarray(image)


def test_generator_is_deterministic_for_a_seed():
    first = fill_example(seed=3, index=7, resolution=64)
    second = fill_example(seed=3, index=7, resolution=64)
    assert first["text"] == second["text"]
    assert np.array_equal(_pixels(first["image"]), _pixels(second["image"]))
    assert np.array_equal(_pixels(first["conditioning_image"]), _pixels(second["conditioning_image"]))


def test_different_seeds_give_different_data():
    texts = {seed: [sample_circle(seed, i).text for i in range(20)] for seed in (0, 1)}
    assert texts[0] != texts[1]


def test_a_circle_does_not_depend_on_how_many_are_drawn():
    later = [sample_circle(4, i) for i in range(50)]
    assert sample_circle(4, 37) == later[37]


@pytest.mark.parametrize("circle, cut", [
    (Circle(0.5, 0.5, 0.3, "red", "blue"), False),
    (Circle(0.5, 0.5, 0.5, "red", "blue"), False),  # touching every edge is not cut
    (Circle(0.1, 0.5, 0.2, "red", "blue"), True),  # past the left edge
    (Circle(0.5, 0.95, 0.1, "red", "blue"), True),  # past the bottom edge
    (Circle(0.0, 0.0, 0.08, "red", "blue"), True),  # a quarter disc in the corner
])
def test_is_cut_by_border_on_hand_made_circles(circle, cut):
    assert is_cut_by_border(circle) is cut


def test_border_overhang_is_the_reach_past_the_nearest_edge():
    assert border_overhang(Circle(0.1, 0.5, 0.25, "red", "blue")) == pytest.approx(0.15)
    assert border_overhang(Circle(0.5, 0.5, 0.3, "red", "blue")) == pytest.approx(-0.2)


def test_radii_cover_the_radius_range():
    radii = np.array([sample_circle(0, i).radius for i in range(3000)])
    low, high = RADIUS_RANGE
    assert radii.min() >= low and radii.max() <= high
    assert radii.min() < low + 0.01 and radii.max() > high - 0.01  # both ends are drawn


def test_the_border_cuts_the_documented_share_of_circles():
    n = 4000
    share = np.mean([is_cut_by_border(sample_circle(0, i)) for i in range(n)])
    tolerance = 4 * np.sqrt(BORDER_CUT_SHARE * (1 - BORDER_CUT_SHARE) / n)  # four binomial standard deviations
    assert share == pytest.approx(BORDER_CUT_SHARE, abs=tolerance)


def test_cut_circles_overhang_plainly_and_inside_ones_keep_the_margin():
    circles = [sample_circle(1, i) for i in range(2000)]
    overhangs = np.array([border_overhang(c) for c in circles])
    cut = overhangs > 0
    assert overhangs[cut].min() >= MIN_OVERHANG - 1e-12
    assert overhangs[~cut].max() <= -INSIDE_MARGIN + 1e-12
    centres = np.array([(c.cx, c.cy) for c in circles])
    assert centres.min() >= 0 and centres.max() <= 1  # a cut circle's centre stays in the frame


def test_anywhere_circles_put_their_centres_all_over_the_frame():
    circles = [anywhere_circle(0, i) for i in range(4000)]
    # Centre uniform in the frame, radius uniform in RADIUS_RANGE: the share the border cuts is
    # 1 - E[(1 - 2r)^2], in closed form below.
    low, high = RADIUS_RANGE
    expected = 1 - ((1 - 2 * low) ** 3 - (1 - 2 * high) ** 3) / (6 * (high - low))
    assert np.mean([is_cut_by_border(c) for c in circles]) == pytest.approx(expected, abs=0.03)
    centres = np.array([(c.cx, c.cy) for c in circles])
    assert centres.min() < 0.01 and centres.max() > 0.99


def test_placements_are_named_and_an_unknown_one_is_refused():
    assert placed_circle(3, 5, "course") == sample_circle(3, 5)
    assert placed_circle(3, 5, "anywhere") == anywhere_circle(3, 5)
    with pytest.raises(ValueError, match="Unknown placement 'corner': choose one of course, anywhere"):
        placed_circle(3, 5, "corner")


def test_written_data_set_is_reproducible(tmp_path):
    a = write_fill_imagefolder(tmp_path / "a", 6, 32, seed=5)
    b = write_fill_imagefolder(tmp_path / "b", 6, 32, seed=5)
    assert (a / "metadata.jsonl").read_text() == (b / "metadata.jsonl").read_text()
    for name in ("images/00003.png", "conditioning_images/00003.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize("resolution", [16, 64, 100, 512])
def test_generator_works_at_any_resolution(resolution):
    example = fill_example(seed=0, index=1, resolution=resolution)
    assert example["image"].size == example["conditioning_image"].size == (resolution, resolution)
    assert example["image"].mode == example["conditioning_image"].mode == "RGB"


def test_same_circle_at_every_resolution():
    circle = sample_circle(0, 4)
    small, _ = draw_circle(circle, 64)
    large, _ = draw_circle(circle, 512)
    centre = (int(circle.cx * 64), int(circle.cy * 64))
    assert small.getpixel(centre) == PALETTE[circle.colour]
    assert large.getpixel((centre[0] * 8 + 4, centre[1] * 8 + 4)) == PALETTE[circle.colour]


def test_image_is_a_filled_circle_and_conditioning_its_white_outline():
    circle = sample_circle(0, 2)
    image, conditioning = draw_circle(circle, 128)
    pixels, outline = _pixels(image), _pixels(conditioning)
    yy, xx = np.mgrid[:128, :128] + 0.5
    distance = np.hypot(xx - circle.cx * 128, yy - circle.cy * 128) / 128
    inside, outside = distance < circle.radius * 0.9, distance > circle.radius * 1.1
    assert (pixels[inside] == PALETTE[circle.colour]).all()
    assert (pixels[outside] == PALETTE[circle.background]).all()
    white = (outline == 255).all(axis=-1)
    assert white.any() and not white[inside].any() and not white[outside].any()
    assert set(np.unique(outline)) <= {0, 255}


def test_caption_names_the_circle_and_background_colours():
    circle = sample_circle(1, 0)
    assert circle.text == f"{circle.colour} circle with {circle.background} background"
    assert circle.colour != circle.background
    assert circle.colour in PALETTE and circle.background in PALETTE


def test_palette_is_public_and_rgb():
    assert len(PALETTE) >= 12
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in PALETTE.values())


def test_imagefolder_loads_with_the_fill50k_columns(tmp_path):
    path = write_fill_imagefolder(tmp_path / "fill", 5, 32, seed=0)
    rows = [json.loads(line) for line in (path / "metadata.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"file_name", "conditioning_image_file_name", "text"}
    dataset = load_imagefolder(path)
    assert len(dataset) == 5
    assert set(dataset.column_names) == set(COLUMNS)
    assert dataset[2]["text"] == sample_circle(0, 2).text
    assert np.array_equal(_pixels(dataset[2]["image"]), _pixels(fill_example(0, 2, 32)["image"]))
    assert np.array_equal(_pixels(dataset[2]["conditioning_image"]),
                          _pixels(fill_example(0, 2, 32)["conditioning_image"]))


def test_raw_fill50k_loader_reads_a_local_copy_of_the_hub_layout(tmp_path):
    raw = write_fill50k_raw(tmp_path / "fill50k", 7, 32, seed=2)
    assert sorted(p.name for p in raw.iterdir()) == ["conditioning_images.zip", "images.zip", "train.jsonl"]
    dataset = load_fill50k(raw, cache_dir=tmp_path / "cache")
    assert dataset.column_names == list(COLUMNS)
    assert len(dataset) == 7
    assert dataset[4]["text"] == sample_circle(2, 4).text
    assert np.array_equal(_pixels(dataset[4]["conditioning_image"]),
                          _pixels(fill_example(2, 4, 32)["conditioning_image"]))
    assert len(load_fill50k(raw, max_samples=3, cache_dir=tmp_path / "cache")) == 3


def test_raw_loader_names_the_missing_files(tmp_path):
    raw = write_fill50k_raw(tmp_path / "fill50k", 2, 16)
    (raw / "images.zip").unlink()
    with pytest.raises(FileNotFoundError, match="missing images.zip"):
        load_fill50k(raw, cache_dir=tmp_path / "cache")


def test_raw_loader_names_the_row_whose_image_is_missing(tmp_path):
    raw = write_fill50k_raw(tmp_path / "fill50k", 3, 16)
    rows = (raw / "train.jsonl").read_text().splitlines()
    broken = json.loads(rows[1]) | {"image": "images/nope.png"}
    rows[1] = json.dumps(broken)
    (raw / "train.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(FileNotFoundError, match="row 1: image 'images/nope.png'"):
        load_fill50k(raw, cache_dir=tmp_path / "cache")


def test_ensure_fill_dataset_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CN_BUILD_DIR", str(tmp_path))
    path = ensure_fill_dataset(4, 32)
    stamp = (path / "metadata.jsonl").stat().st_mtime_ns
    assert ensure_fill_dataset(4, 32) == path
    assert (path / "metadata.jsonl").stat().st_mtime_ns == stamp


def test_ensure_fill_dataset_rewrites_a_set_of_an_older_generator(tmp_path, monkeypatch):
    monkeypatch.setenv("CN_BUILD_DIR", str(tmp_path))
    path = ensure_fill_dataset(4, 32)
    first_row = (path / "metadata.jsonl").read_text()
    (path / "metadata.jsonl").write_text(first_row.replace("circle", "square"))  # what an old generator left
    (path / "generator.json").write_text(json.dumps({"radius_range": [0.12, 0.32]}))
    assert ensure_fill_dataset(4, 32) == path
    assert (path / "metadata.jsonl").read_text() == first_row
    assert load_imagefolder(path).column_names == list(COLUMNS)  # the record file is not taken for data


def test_resolution_must_be_an_integer_of_at_least_8(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        write_fill_imagefolder(tmp_path / "x", 1, 4)
    assert not (tmp_path / "x").exists()


# --- make_train_dataset (notebook 01) --------------------------------------------------------------

import torch  # noqa: E402

from cnhelpers.data import check_resolution, collate_fn, make_train_dataset, pick_captions  # noqa: E402

pytestmark = pytest.mark.colab


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")


@pytest.fixture(scope="module")
def fill_rows(tmp_path_factory):
    return load_imagefolder(write_fill_imagefolder(tmp_path_factory.mktemp("fill") / "d", 6, 32, seed=0))


def test_train_examples_have_the_shapes_and_ranges_the_models_expect(fill_rows, tokenizer):
    train = make_train_dataset(fill_rows, tokenizer, resolution=32)
    batch = collate_fn([train[i] for i in range(4)])
    assert batch["pixel_values"].shape == batch["conditioning_pixel_values"].shape == (4, 3, 32, 32)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert batch["pixel_values"].min() < 0  # normalised to [-1, 1]
    assert batch["conditioning_pixel_values"].min() >= 0 and batch["conditioning_pixel_values"].max() <= 1
    assert batch["input_ids"].shape == (4, tokenizer.model_max_length)
    assert batch["input_ids"].dtype == torch.int64


def test_missing_column_lists_the_columns_that_are_there(fill_rows, tokenizer):
    with pytest.raises(ValueError, match="its columns are: image, conditioning_image, text"):
        make_train_dataset(fill_rows, tokenizer, resolution=32, caption_column="prompt")


@pytest.mark.parametrize("resolution", [30, 100, 0])
def test_resolution_not_divisible_by_8_is_rejected_with_the_reason(resolution):
    with pytest.raises(ValueError, match="multiple of 8: the VAE shrinks images 8x"):
        check_resolution(resolution)


def test_proportion_empty_prompts_empties_about_that_share():
    import random

    chosen = pick_captions(["a red circle"] * 2000, proportion_empty_prompts=0.3, rng=random.Random(0))
    assert 0.25 < chosen.count("") / 2000 < 0.35
    assert set(chosen) == {"", "a red circle"}


def test_list_captions_pick_one_when_training_and_the_first_otherwise():
    import random

    rng = random.Random(0)
    picked = {pick_captions([["a", "b", "c"]], rng=rng)[0] for _ in range(50)}
    assert picked == {"a", "b", "c"}
    assert pick_captions([["a", "b", "c"]], is_train=False) == ["a"]
    assert pick_captions([""]) == [""]


def test_caption_of_another_type_is_a_clear_error():
    with pytest.raises(ValueError, match="should contain strings or non-empty lists"):
        pick_captions([42])


def test_a_folder_without_split_names_is_loaded_by_naming_its_files_and_one_with_them_is_left_to_datasets(tmp_path):
    from cnhelpers.data import single_split_files

    plain = write_fill_imagefolder(tmp_path / "plain", 4, resolution=32)
    assert single_split_files(plain) == {"train": "**"}
    assert load_imagefolder(plain)["text"] == [json.loads(line)["text"] for line in
                                               (plain / "metadata.jsonl").read_text().splitlines()]
    (tmp_path / "split" / "test").mkdir(parents=True)
    assert single_split_files(tmp_path / "split") is None  # datasets would find a test split: it decides
    (tmp_path / "sharded" / "data").mkdir(parents=True)
    assert single_split_files(tmp_path / "sharded") is None
