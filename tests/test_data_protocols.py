"""UViM's data settings: Inception crops, the NYU evaluation window, native-resolution ground
truth of evaluation examples (NYU 480x640 frames, variable-size COCO images with crowd regions),
and the train-split holdout; on synthetic examples at the real shapes and on TFDS mock data."""

import itertools

import numpy as np
import pytest

from fsq_jax import config_lib, data
from fsq_jax.data import preprocess

NYU = (480, 640)


def _nyu_example(rng):
    """A 480x640 NYU-like frame whose depth encodes its own position (row * 1000 + column)."""
    rows, cols = np.mgrid[:NYU[0], :NYU[1]]
    depth = (rows * 1000 + cols).astype(np.float32) / 1e5
    depth[:20] = 0.0  # the invalid border of projected Kinect depth
    return {"image": rng.integers(0, 256, (*NYU, 3), dtype=np.uint8), "depth": depth}


def _coco_example(rng, height, width):
    """A COCO-like example: stuff band, two thing instances, a crowd region and void."""
    semantic = np.full((height, width), 90, np.int32)
    instance = np.zeros((height, width), np.int32)
    crowd = np.zeros((height, width), bool)
    semantic[: height // 3], instance[: height // 3] = 0, 1
    semantic[-4:, :5], instance[-4:, :5] = 2, 2
    crowd_rows, crowd_cols = slice(height // 2, height // 2 + height // 5), slice(-width // 5, None)
    semantic[crowd_rows, crowd_cols] = 0  # a crowd of people
    crowd[crowd_rows, crowd_cols] = True
    semantic[height // 2, :3] = -1
    return {"image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "panoptic_semantic": semantic, "panoptic_instance": instance,
            "panoptic_crowd": crowd}


def test_inception_windows_follow_tensorflows_sampler():
    # big_vision's inception_box is tf.image.sample_distorted_bounding_box(area 5-100%, aspect
    # 0.75-1.33): compare the distributions of 1000 boxes of a 480x640 frame with TensorFlow's
    # (two-sample Kolmogorov-Smirnov). Sampling a uniform area instead (torchvision's
    # RandomResizedCrop) gives statistics of 0.10-0.18 here.
    tf = pytest.importorskip("tensorflow")
    from scipy import stats

    theirs = []
    for i in range(1000):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [*NYU, 3], tf.zeros([1, 0, 4]), seed=[i, 7], area_range=(0.05, 1.0),
            aspect_ratio_range=(0.75, 1.33), min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True)
        theirs.append((int(begin[0]), int(begin[1]), int(size[0]), int(size[1])))
    rng = np.random.default_rng(0)
    ours = np.array([preprocess.crop_window(*NYU, "inception", rng) for _ in range(1000)])
    theirs = np.array(theirs)
    for column, name in enumerate(("top", "left", "height", "width")):
        statistic = stats.ks_2samp(theirs[:, column], ours[:, column]).statistic
        assert statistic < 0.07, (name, statistic)
    top, left, height, width = ours.T
    area = height * width / (NYU[0] * NYU[1])
    assert area.min() >= 0.05 and area.max() <= 1.0
    assert np.all((width / height > 0.74) & (width / height < 1.34))
    # TensorFlow draws offsets in [0, H - h): the last offset never occurs.
    assert np.all(top + height <= NYU[0]) and np.all(left + width <= NYU[1])
    assert np.all((top < NYU[0] - height) | (height == NYU[0]))
    with pytest.raises(ValueError, match="needs an rng"):
        preprocess.crop_window(*NYU, "inception")


def test_inception_crop_is_stretched_to_the_square_with_every_map():
    rng = np.random.default_rng(1)
    example = _nyu_example(rng)
    out = preprocess.square_resize(example, 32, "inception", flip=True,
                                   rng=np.random.default_rng(5))
    top, left, height, width = preprocess.crop_window(*NYU, "inception",
                                                      np.random.default_rng(5))
    assert (height, width) != (NYU[0], NYU[0])  # not a square crop: stretched
    expected = preprocess.resize_nearest(example["depth"], (top, left, height, width), 32)
    np.testing.assert_array_equal(out["depth"], expected[:, ::-1])
    assert out["image"].shape == (32, 32, 3)


def test_nyu_eval_crop_keeps_big_visions_window_at_native_resolution():
    example = _nyu_example(np.random.default_rng(0))
    out = preprocess.square_resize(example, 32, "nyu_eval_crop", False,
                                   native_shape=(426, 560))
    # big_vision pp_ops.py nyu_eval_crop: rows 54..479, columns 41..600 (426x560).
    np.testing.assert_array_equal(out["native_depth"], example["depth"][54:480, 41:601])
    np.testing.assert_array_equal(out["native_shape"], [426, 560])
    rows = 54 + ((np.arange(32) + 0.5) * 426 / 32).astype(int)
    cols = 41 + ((np.arange(32) + 0.5) * 560 / 32).astype(int)
    np.testing.assert_array_equal(out["depth"], example["depth"][rows[:, None], cols])
    wider = preprocess.square_resize(example, 32, "nyu_eval_crop", False,
                                     native_shape=(440, 600))
    np.testing.assert_array_equal(wider["native_depth"][426:], 0.0)  # padding: invalid depth
    np.testing.assert_array_equal(wider["native_depth"][:, 560:], 0.0)
    with pytest.raises(ValueError, match="needs a 480x640 NYU frame, got 240x320"):
        preprocess.square_resize({"image": example["image"][::2, ::2]}, 32, "nyu_eval_crop",
                                 False)
    with pytest.raises(ValueError, match=r"does not fit data.eval_native_shape \(400, 560\)"):
        preprocess.square_resize(example, 32, "nyu_eval_crop", False, native_shape=(400, 560))
    with pytest.raises(ValueError, match="never flipped"):
        preprocess.square_resize(example, 32, "nyu_eval_crop", True, native_shape=(426, 560))


@pytest.mark.parametrize("shape", [(480, 640), (640, 427), (333, 500)])
def test_variable_size_panoptic_ground_truth_is_padded_with_void(shape):
    example = _coco_example(np.random.default_rng(2), *shape)
    out = preprocess.square_resize(example, 32, "resize", False, native_shape=(640, 640))
    height, width = shape
    np.testing.assert_array_equal(out["native_shape"], shape)
    for key, fill in (("panoptic_semantic", -1), ("panoptic_instance", 0),
                      ("panoptic_crowd", False)):
        native = out[f"native_{key}"]
        assert native.shape == (640, 640) and native.dtype == example[key].dtype
        np.testing.assert_array_equal(native[:height, :width], example[key])
        assert np.all(native[height:] == fill) and np.all(native[:, width:] == fill)
    assert out["panoptic_crowd"].shape == (32, 32) and out["panoptic_crowd"].any()


def test_eval_crop_defaults_follow_the_train_crop():
    assert preprocess.eval_crop_mode("random", "") == "center"  # as before
    assert preprocess.eval_crop_mode("inception", "") == "resize"  # UViM evaluates the image
    assert preprocess.eval_crop_mode("center", "") == "center"
    assert preprocess.eval_crop_mode("inception", "nyu_eval_crop") == "nyu_eval_crop"
    with pytest.raises(ValueError, match="eval crop mode 'random'"):
        preprocess.eval_crop_mode("center", "random")


def test_data_config_checks_the_protocol_fields():
    def check(**fields):
        config_lib.check(config_lib.data(**fields), config_lib.DataConfig, "config.data")

    check(source="tfds:coco/2017_panoptic", train_skip=4096, eval_native_shape=(640, 640))
    with pytest.raises(ValueError, match=r"config.data.train_skip = 4096: holds out train "):
        check(source="scenes", train_skip=4096)
    with pytest.raises(ValueError, match=r"config.data.eval_native_shape = \(640,\): must be"):
        check(eval_native_shape=(640,))
    with pytest.raises(ValueError, match=r"config.data.eval_crop = 'random'"):
        check(eval_crop="random")


# ---------------------------------------------------------------- the TFDS path (mock data)


@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=6):
        yield


def test_nyu_validation_batches_carry_the_cropped_native_depth(tfds_mock):
    config = data.default_config()
    config.update(source="tfds:nyu_depth_v2", image_size=32, crop="inception",
                  eval_crop="nyu_eval_crop", eval_native_shape=(426, 560))
    batch = next(data.build(config, "validation", 3, num_epochs=1))
    assert batch["native_depth"].shape == (3, 426, 560)
    source = data.TfdsSource("nyu_depth_v2", "validation")
    for i in range(3):
        frame = source[i]
        assert frame["depth"].shape == NYU  # the real shape
        np.testing.assert_array_equal(batch["native_depth"][i], frame["depth"][54:480, 41:601])
        expected = preprocess.square_resize(frame, 32, "nyu_eval_crop", False)
        np.testing.assert_array_equal(batch["image"][i], expected["image"])
    train = next(data.build(config, "train", 2))
    assert "native_depth" not in train and train["depth"].shape == (2, 32, 32)


def test_coco_validation_batches_carry_original_size_maps_and_crowds(tfds_mock):
    config = data.default_config()
    config.update(source="tfds:coco/2017_panoptic", image_size=32, crop="inception",
                  eval_native_shape=(64, 64))
    batch = next(data.build(config, "validation", 4, num_epochs=1))
    source = data.TfdsSource("coco/2017_panoptic", "validation")
    shapes = set()
    for i in range(4):
        example = source[i]
        height, width = example["image"].shape[:2]
        shapes.add((height, width))
        np.testing.assert_array_equal(batch["native_shape"][i], [height, width])
        for key in ("panoptic_semantic", "panoptic_instance", "panoptic_crowd"):
            np.testing.assert_array_equal(batch[f"native_{key}"][i, :height, :width],
                                          example[key])
        # Evaluation resizes the whole image (UViM's resize(512)), no crop, no flip.
        expected = preprocess.square_resize(example, 32, "resize", False)
        np.testing.assert_array_equal(batch["image"][i], expected["image"])
    assert len(shapes) > 1  # variable sizes


def test_train_skip_holds_out_the_first_train_examples(tfds_mock):
    config = data.default_config()
    config.update(source="tfds:coco/2017_panoptic", image_size=16, shuffle=False,
                  random_flip=False, crop="center", train_skip=2)
    assert data.num_examples(config, "train") == 4
    assert data.num_examples(config, "validation") == 6  # only the train split
    held = data.TfdsSource("coco/2017_panoptic", "train", skip=2)
    full = data.TfdsSource("coco/2017_panoptic", "train")
    np.testing.assert_array_equal(held[0]["image"], full[2]["image"])
    first = next(data.build(config, "train", 2))
    expected = preprocess.square_resize(full[2], 16, "center", False)
    np.testing.assert_array_equal(first["image"][0], expected["image"])
    stream = data.build(config, "train", 2)
    images = [b["image"] for b in itertools.islice(stream, 2)]  # one epoch: records 2..5
    np.testing.assert_array_equal(images[1][1],
                                  preprocess.square_resize(full[5], 16, "center", False)["image"])
    with pytest.raises(ValueError, match=r"data\.train_skip = 6: the 'coco/2017_panoptic' split"):
        data.TfdsSource("coco/2017_panoptic", "train", skip=6)
