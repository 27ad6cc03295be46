import numpy as np
import pytest
from PIL import Image

from cnhelpers.course.fill import fill_example
from cnhelpers.course.flax_training import conditioning_array, image_array, numpy_batches


def test_images_become_channels_first_arrays_in_the_models_ranges():
    example = fill_example(0, 0, 64)
    image, conditioning = image_array(example["image"], 64), conditioning_array(example["conditioning_image"], 64)
    assert image.shape == conditioning.shape == (3, 64, 64)
    assert image.dtype == conditioning.dtype == np.float32
    assert image.min() >= -1 and image.max() <= 1 and conditioning.min() == 0 and conditioning.max() == 1
    np.testing.assert_allclose(image, np.asarray(example["image"]).transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)


def test_a_wide_image_is_resized_by_its_short_side_then_center_cropped():
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, 32:64] = 255  # a white middle third
    array = conditioning_array(Image.fromarray(wide), 16)
    assert array.shape == (3, 16, 16)
    assert array[:, :, 1:-1].min() > 0.99  # the crop kept the white middle (its edges blurred by the resize)
    np.testing.assert_allclose(array[:, :, 0], array[:, :, -1])  # and cut both sides alike


def test_batches_are_seeded_and_drop_the_incomplete_last_batch():
    rows = [fill_example(0, i, 64) for i in range(10)]

    class Tokenizer:  # just enough of a CLIP tokenizer
        model_max_length = 5

        def __call__(self, texts, **kwargs):
            class Out:
                input_ids = np.array([[len(t)] * 5 for t in texts])
            return Out()

    first = numpy_batches(rows, Tokenizer(), resolution=64, batch_size=4, seed=1)
    again = numpy_batches(rows, Tokenizer(), resolution=64, batch_size=4, seed=1)
    batches = [next(first) for _ in range(3)]  # 10 rows: 2 full batches per epoch, then a new epoch
    assert [b["pixel_values"].shape for b in batches] == [(4, 3, 64, 64)] * 3
    assert batches[0]["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(batches[0]["pixel_values"], next(again)["pixel_values"])
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(numpy_batches(rows[:3], Tokenizer(), resolution=64, batch_size=4))
