"""``python -m cnhelpers.make_dataset``: a data set from a folder of your own pictures (cnhelpers/own_data.py's
builder, cnhelpers/make_dataset.py's command). Pictures are tiny (48x64 px), the resolution 64."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cnhelpers.make_dataset import main, make_dataset
from cnhelpers.own_data import (
    CONDITIONS,
    apply_condition,
    condition_function,
    fit_picture,
    open_picture,
    read_captions,
)

pytestmark = pytest.mark.colab  # the written folder is loaded with datasets and trained on

ROOT = Path(__file__).resolve().parents[1]


def circle_picture(size=(64, 64), centre=(32, 32), radius=16, colour=(220, 30, 30), background=(20, 20, 120)):
    image = Image.new("RGB", size, background)
    x, y = centre
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return image


def distance_from_centre(size=(64, 64), centre=(32, 32)):
    ys, xs = np.mgrid[:size[1], :size[0]]
    return np.hypot(xs - centre[0], ys - centre[1])


def write_pictures(folder: Path, names, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        circle_picture(size, (size[0] // 2, size[1] // 2), 12 + i % 5).save(folder / name)
    return folder


def run_cli(*argv, cwd=ROOT):
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cnhelpers.make_dataset", *map(str, argv)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def metadata(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


# Captions: the ecosystem's conventions, in order.

def test_captions_from_metadata_jsonl_first(tmp_path, capsys):
    pictures = write_pictures(tmp_path / "in", ["a.png", "b.png", "c.png"])
    (pictures / "a.txt").write_text("ignored: metadata.jsonl wins")
    (pictures / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "red circle"}) + "\n"
                                             + json.dumps({"file_name": "./b.png", "text": "blue circle"}) + "\n")
    make_dataset(pictures, tmp_path / "out", resolution=64)
    assert [row["text"] for row in metadata(tmp_path / "out")] == ["red circle", "blue circle", ""]
    assert "captions: from metadata.jsonl; 1 pictures had none" in capsys.readouterr().out


def test_captions_from_txt_files_beside_the_pictures(tmp_path, capsys):
    pictures = write_pictures(tmp_path / "in", ["a.png", "sub/b.png"])
    (pictures / "a.txt").write_text("a red circle\n")
    make_dataset(pictures, tmp_path / "out", resolution=64)
    assert [row["text"] for row in metadata(tmp_path / "out")] == ["a red circle", ""]
    assert "captions: from .txt files; 1 pictures had none" in capsys.readouterr().out


def test_captions_from_file_names_without_suffix(tmp_path, capsys):
    pictures = write_pictures(tmp_path / "in", ["red_house-2.jpg", "big-blue_car.png"])
    make_dataset(pictures, tmp_path / "out", resolution=64)
    assert [row["text"] for row in metadata(tmp_path / "out")] == ["big blue car", "red house 2"]
    out = capsys.readouterr().out
    assert "captions: from file names; 0 pictures had none" in out
    assert "subfolders included" in out


def test_read_captions_names_a_metadata_line_that_is_not_json(tmp_path):
    pictures = write_pictures(tmp_path / "in", ["a.png"])
    (pictures / "metadata.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_captions(pictures, [pictures / "a.png"])


def test_no_recursive_reads_the_folder_alone(tmp_path):
    pictures = write_pictures(tmp_path / "in", ["a.png", "sub/b.png"])
    assert make_dataset(pictures, tmp_path / "out", resolution=64, recursive=False, quiet=True).rows == 1


# The built-in conditions: size, mode, and what their name says.

@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_each_condition_keeps_the_size_and_gives_rgb(name):
    picture = circle_picture((48, 64), (24, 32), 14)
    condition = apply_condition(condition_function(name), picture, "x.png")
    assert condition.size == (48, 64) and condition.mode == "RGB"


def test_canny_of_a_circle_has_its_edges_on_the_circle():
    edges = np.asarray(condition_function("canny")(circle_picture()))[..., 0] > 0
    distance = distance_from_centre()
    assert edges.sum() > 50
    assert np.all(np.abs(distance[edges] - 16) <= 2)


def test_softedge_is_soft_and_on_the_circle():
    soft = np.asarray(condition_function("softedge")(circle_picture()))[..., 0]
    distance = distance_from_centre()
    assert soft.max() > 200 and len(np.unique(soft)) > 10  # grey levels, not a binary map
    assert np.all(soft[np.abs(distance - 16) > 4] == 0)  # nothing on the flat inside and outside
    assert soft[np.abs(distance - 16) <= 1].mean() > 100


def test_scribble_is_binary_thicker_than_canny_and_ignores_fine_texture():
    picture = circle_picture()
    rng = np.random.default_rng(0)
    noise = rng.integers(-6, 7, (64, 64, 3))
    noisy = Image.fromarray(np.clip(np.asarray(picture, int) + noise, 0, 255).astype(np.uint8))
    scribble = np.asarray(condition_function("scribble")(noisy))[..., 0]
    canny = np.asarray(condition_function("canny")(picture))[..., 0]
    assert set(np.unique(scribble)) <= {0, 255}
    assert (scribble > 0).sum() > 2 * (canny > 0).sum()
    assert np.all(np.abs(distance_from_centre()[scribble > 0] - 16) <= 5)


def test_grayscale_equals_the_luminance():
    picture = circle_picture()
    grey = np.asarray(condition_function("grayscale")(picture))
    assert np.array_equal(grey[..., 0], np.asarray(picture.convert("L")))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def checkerboard(size=64, square=2):
    ys, xs = np.mgrid[:size, :size]
    return Image.fromarray((((xs // square + ys // square) % 2) * 255).astype(np.uint8)).convert("RGB")


def halves(size=64):
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:, size // 2:] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name", ["blur", "lowres"])
def test_blur_and_lowres_drop_fine_detail_and_keep_large_shapes(name):
    condition = condition_function(name)
    fine = np.asarray(condition(checkerboard()), float)
    assert abs(fine.mean() - 127.5) < 4 and fine[16:48, 16:48].std() < 20  # 2-px squares: flat grey
    large = np.asarray(condition(halves()), float)
    assert large[:, :16].mean() < 10 and large[:, 48:].mean() > 245  # halves kept
    assert 0 < large[:, 28:36].mean() < 255  # their border softened


# Inputs of any mode, any shape.

def test_rgba_is_composited_on_white_or_black(tmp_path):
    rgba = Image.new("RGBA", (48, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse((8, 16, 40, 48), fill=(255, 0, 0, 255))
    rgba.save(tmp_path / "a.png")
    on_white, on_black = open_picture(tmp_path / "a.png"), open_picture(tmp_path / "a.png", background="black")
    assert on_white.mode == on_black.mode == "RGB"
    assert on_white.getpixel((0, 0)) == (255, 255, 255) and on_black.getpixel((0, 0)) == (0, 0, 0)
    assert on_white.getpixel((24, 32)) == on_black.getpixel((24, 32)) == (255, 0, 0)


def test_grey_palette_and_16_bit_pictures_become_rgb(tmp_path):
    Image.new("L", (48, 64), 100).save(tmp_path / "grey.png")
    palette = Image.new("P", (48, 64), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    transparent = palette.copy()
    transparent.info["transparency"] = 1
    transparent.save(tmp_path / "transparent.png", transparency=1)
    Image.fromarray(np.full((64, 48), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert open_picture(tmp_path / "grey.png").getpixel((0, 0)) == (100, 100, 100)
    assert open_picture(tmp_path / "palette.png").getpixel((0, 0)) == (10, 200, 30)
    assert open_picture(tmp_path / "transparent.png").getpixel((0, 0)) == (255, 255, 255)
    assert open_picture(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)


def test_every_mode_goes_through_the_command(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGBA", (48, 64), (0, 0, 0, 0)).save(folder / "rgba.png")
    Image.new("L", (48, 64), 100).save(folder / "grey.png")
    Image.new("P", (48, 64)).save(folder / "palette.gif")
    Image.new("CMYK", (48, 64)).save(folder / "cmyk.jpg")
    built = make_dataset(folder, tmp_path / "out", resolution=64, quiet=True)
    assert built.rows == 4 and not built.skipped
    for row in metadata(tmp_path / "out"):
        for column in ("file_name", "conditioning_image_file_name"):
            with Image.open(tmp_path / "out" / row[column]) as image:
                assert image.mode == "RGB" and image.size == (64, 64)


def test_crop_modes_on_a_non_square_picture():
    picture = Image.new("RGB", (48, 64), (200, 0, 0))
    picture.paste((0, 0, 200), (0, 0, 48, 6))  # a blue band at the top
    center = fit_picture(picture, 64, "center")
    assert center.size == (64, 64) and center.getpixel((32, 0))[0] > 150  # the band cropped away
    pad = fit_picture(picture, 64, "pad", background="black")
    assert pad.size == (64, 64) and pad.getpixel((0, 32)) == (0, 0, 0) and pad.getpixel((32, 32))[0] > 150
    assert pad.getpixel((32, 2))[2] > 150  # the whole picture kept, band included
    none = fit_picture(picture, 64, "none")
    assert none.size == (64, 85)


def test_the_crop_is_said(tmp_path, capsys):
    pictures = write_pictures(tmp_path / "in", ["a.png"])
    make_dataset(pictures, tmp_path / "out", resolution=64, crop="pad")
    assert "crop: pad (scaled so the long side is 64 px" in capsys.readouterr().out


# The written folder: what the trainers read.

def test_written_folder_loads_and_trains_two_steps(tmp_path, tiny_base):
    from cnhelpers.data import load_raw_dataset

    pictures = write_pictures(tmp_path / "in", [f"p{i}.png" for i in range(4)])
    for i in range(4):
        (pictures / f"p{i}.txt").write_text("red circle with navy background")
    result = run_cli(pictures, tmp_path / "data", "--resolution", "64", "--condition", "softedge")
    assert result.returncode == 0, result.stderr
    assert f"contact sheet: {tmp_path / 'data' / 'contact_sheet.png'}" in result.stdout
    assert Image.open(tmp_path / "data" / "contact_sheet.png").size == (4 * 64, 2 * 64)
    dataset = load_raw_dataset(train_data_dir=tmp_path / "data")
    assert dataset.num_rows == 4 and set(dataset.column_names) == {"image", "conditioning_image", "text"}
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    trained = subprocess.run(
        [sys.executable, "-m", "cnhelpers.train", "--pretrained_model_name_or_path", str(tiny_base),
         "--train_data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"), "--resolution", "64",
         "--train_batch_size", "2", "--max_train_steps", "2", "--report_to", "none", "--learning_rate", "1e-4",
         "--lr_warmup_steps", "0", "--seed", "0"], capture_output=True, text=True, timeout=300, env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "Trained 2 steps" in trained.stdout


# Bad input: named, never silent; errors in one line, exit status 2.

def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last, last


def test_an_unreadable_picture_is_skipped_counted_and_listed(tmp_path):
    pictures = write_pictures(tmp_path / "in", ["a.png", "b.png"])
    (pictures / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_cli(pictures, tmp_path / "out", "--resolution", "64")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 unreadable pictures" in result.stdout and "broken.jpg" in result.stdout
    assert (tmp_path / "out" / "skipped.txt").read_text().startswith("broken.jpg\t")
    assert len(metadata(tmp_path / "out")) == 2


def test_a_condition_of_the_wrong_size_is_one_line_naming_the_file(tmp_path):
    pictures = write_pictures(tmp_path / "in", ["a.png"])
    (tmp_path / "mine.py").write_text("def half(image):\n    return image.resize((32, 32)).convert('RGBA')\n")
    result = run_cli(pictures, tmp_path / "out", "--resolution", "64", "--condition", "mine:half", cwd=tmp_path)
    assert_one_error_line(result, "a.png", "returned a 32x32 RGBA image")
    assert not (tmp_path / "out").exists()


def test_your_own_condition_by_module_or_file(tmp_path):
    pictures = write_pictures(tmp_path / "in", ["a.png"])
    (tmp_path / "mine.py").write_text("from PIL import ImageOps\ndef invert(image):\n    return ImageOps.invert(image)\n")
    assert run_cli(pictures, tmp_path / "out", "--resolution", "64", "--condition", "mine:invert",
                   cwd=tmp_path).returncode == 0
    built = make_dataset(pictures, tmp_path / "out2", f"{tmp_path / 'mine.py'}:invert", resolution=64, quiet=True)
    row = metadata(built.output_dir)[0]
    image = np.asarray(Image.open(built.output_dir / row["file_name"]), int)
    assert np.array_equal(np.asarray(Image.open(built.output_dir / row["conditioning_image_file_name"]), int),
                          255 - image)


@pytest.mark.parametrize("setup, argv, fragments", [
    ("empty", [], ["holds no pictures"]),
    ("unreadable", [], ["no readable picture", "broken.jpg"]),
    ("pictures", ["--condition", "depth"], ["unknown condition 'depth'", "canny"]),
    ("pictures", ["--condition", "no_such_module:edges"], ["cannot import no_such_module"]),
    ("pictures", ["--condition", "json:no_such_function"], ["json has no function 'no_such_function'"]),
    ("full", [], ["exists and is not empty", "--overwrite"]),
    ("pictures", ["--hold_out", "1"], ["--hold_out 1 would leave none of the 1 pictures", "hold out fewer"]),
    ("metadata-latin1", [], ["metadata.jsonl line 2 is not UTF-8 (byte 0xe9", "iconv -f latin1"]),
    ("txt-latin1", [], ["a.txt line 1 is not UTF-8 (byte 0xe9", "iconv -f latin1"]),
])
def test_bad_input_is_one_error_line(tmp_path, setup, argv, fragments):
    pictures = tmp_path / "in"
    pictures.mkdir()
    if setup in ("pictures", "full", "metadata-latin1", "txt-latin1"):
        write_pictures(pictures, ["a.png"])
    if setup == "metadata-latin1":  # a caption saved as latin-1: never quietly altered
        (pictures / "metadata.jsonl").write_bytes(b'{"file_name": "b.png", "text": "x"}\n'
                                                 b'{"file_name": "a.png", "text": "caf\xe9"}\n')
    if setup == "txt-latin1":
        (pictures / "a.txt").write_bytes(b"caf\xe9 au lait")
    if setup == "unreadable":
        (pictures / "broken.jpg").write_bytes(b"not a jpeg")
    if setup == "full":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
    result = run_cli(pictures, tmp_path / "out", "--resolution", "64", *argv)
    assert_one_error_line(result, *fragments)
    if setup == "full":
        assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
        assert main([str(pictures), str(tmp_path / "out"), "--resolution", "64", "--overwrite"]) == 0
        assert not (tmp_path / "out" / "keep.txt").exists()
    else:
        assert not (tmp_path / "out").exists()


def test_held_out_pictures_stay_out_of_training_and_come_with_the_flags_that_validate_on_them(tmp_path, capsys):
    import shlex

    from cnhelpers.config import parse_args

    pictures = write_pictures(tmp_path / "in", [f"p{i}.png" for i in range(6)])
    for i in range(6):
        (pictures / f"p{i}.txt").write_text(f"circle number {i}")
    built = make_dataset(pictures, tmp_path / "data", "canny", resolution=64, hold_out=2)
    held = tmp_path / "data-held-out"
    assert built.held_out_dir == held and built.held_out == 2 and built.rows == 4
    printed = capsys.readouterr().out
    assert f"held out 2 pictures (not in the training rows) in {held}" in printed
    train_captions = [row["text"] for row in metadata(built.output_dir)]
    held_captions = [row["text"] for row in metadata(held)]
    assert held_captions == ["circle number 1", "circle number 4"]  # spread over the folder, not its last two
    assert sorted(train_captions + held_captions) == [f"circle number {i}" for i in range(6)]
    flags = shlex.split((held / "validation_flags.txt").read_text())  # as the shell reads them
    args = parse_args(["--pretrained_model_name_or_path", "base", "--output_dir", str(tmp_path / "run"),
                       "--train_data_dir", str(built.output_dir), *flags])
    assert [Path(p) for p in args.validation_image] == [held / "conditioning_images" / f"{i:05d}.png" for i in (0, 1)]
    assert args.validation_prompt == held_captions and args.validation_condition == "canny"
    for row in metadata(held):
        assert Image.open(held / row["conditioning_image_file_name"]).size == (64, 64)

