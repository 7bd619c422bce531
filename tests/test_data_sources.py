"""TFDS sources (offline, tfds.testing.mock_data), image folders, panoptic decoding, resizing."""

import itertools
import logging

import numpy as np
import pytest
from PIL import Image

from fsq_jax import data
from fsq_jax.data import folder, preprocess, tfds_sources

# ---------------------------------------------------------------- preprocessing


def test_crop_windows():
    assert preprocess.crop_window(40, 60, "center") == (0, 10, 40, 40)
    assert preprocess.crop_window(60, 40, "center") == (10, 0, 40, 40)
    assert preprocess.crop_window(40, 60, "resize") == (0, 0, 40, 60)
    rng = np.random.default_rng(0)
    lefts = {preprocess.crop_window(40, 60, "random", rng)[1] for _ in range(50)}
    assert lefts <= set(range(21)) and len(lefts) > 5
    with pytest.raises(ValueError, match="crop mode 'zoom'"):
        preprocess.crop_window(4, 4, "zoom")


def test_nearest_resize_keeps_values_and_square_resize_flips_every_map_together():
    depth = np.arange(8 * 12, dtype=np.float32).reshape(8, 12)
    out = preprocess.resize_nearest(depth, (0, 2, 8, 8), 4)
    np.testing.assert_array_equal(out, depth[1::2, 3:11:2])
    image = np.zeros((8, 12, 3), np.uint8)
    image[:, :6] = 255  # left half white
    semantic = np.zeros((8, 12), np.int32)
    semantic[:, :6] = 7
    example = {"image": image, "depth": depth, "panoptic_semantic": semantic, "label": np.int64(3)}
    plain = preprocess.square_resize(example, 4, "center", flip=False)
    flipped = preprocess.square_resize(example, 4, "center", flip=True)
    for key in ("image", "depth", "panoptic_semantic", "gray"):
        np.testing.assert_array_equal(flipped[key], plain[key][:, ::-1])
    assert plain["label"] == 3 and plain["label"].dtype == np.int32
    assert set(np.unique(plain["panoptic_semantic"])) == {0, 7}
    assert plain["image"].shape == (4, 4, 3) and plain["gray"].shape == (4, 4, 1)
    assert plain["image"][0, 0, 0] > 200 and plain["image"][0, 3, 0] < 50
    with pytest.raises(ValueError, match="depth has shape"):
        preprocess.square_resize({"image": image, "depth": depth[:4]}, 4, "center", False)


# ---------------------------------------------------------------- COCO panoptic decoding


def test_decode_panoptic_maps_segments_to_classes_and_instances():
    ids = np.array([[0, 5, 5, 300], [70000, 70000, 300, 9]])  # 9 is not annotated
    png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    segment_ids = np.array([300, 5, 70000])
    labels = np.array([0, 85, 2])  # person (thing), a stuff class, car (thing)
    crowd = np.array([False, False, True])
    semantic, instance = tfds_sources.decode_panoptic(png, segment_ids, labels, crowd)
    np.testing.assert_array_equal(semantic, [[-1, 85, 85, 0], [2, 2, 0, -1]])
    # Instances: things numbered in segment order (crowd excluded); stuff, crowd and void are 0.
    np.testing.assert_array_equal(instance, [[0, 0, 0, 1], [0, 0, 1, 0]])
    # The crowd segment's pixels (id 70000) are marked, for PQ to ignore them.
    *maps, crowd_map = tfds_sources.decode_panoptic_with_crowd(png, segment_ids, labels, crowd)
    np.testing.assert_array_equal(crowd_map, [[False] * 4, [True, True, False, False]])
    np.testing.assert_array_equal(maps[0], semantic)
    np.testing.assert_array_equal(maps[1], instance)
    assert tfds_sources.COCO_PANOPTIC_CLASSES.num_classes == 133
    assert len(tfds_sources.COCO_PANOPTIC_CLASSES.thing_ids) == 80
    names = tfds_sources.COCO_PANOPTIC_CLASSES.names
    assert names[0] == "person" and names[79] == "toothbrush"
    assert names[80] == "banner" and names[132] == "rug-merged"


# ---------------------------------------------------------------- TFDS (offline mocks)


@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=6):
        yield


@pytest.mark.parametrize(
    ("name", "extra_keys", "classes"),
    [
        ("imagenet2012", (), 1000),
        ("nyu_depth_v2", ("depth",), 1),
        ("coco/2017_panoptic", ("panoptic_semantic", "panoptic_instance", "panoptic_crowd"), 1),
    ],
)
def test_tfds_sources_give_project_keys_after_preprocessing(tfds_mock, name, extra_keys, classes):
    config = data.default_config()
    config.source = f"tfds:{name}"
    config.image_size = 24
    batches = list(itertools.islice(data.build(config, "train", 2), 2))
    batch = batches[0]
    assert set(batch) == {"image", "label", "gray", *extra_keys}
    assert batch["image"].shape == (2, 24, 24, 3) and batch["image"].dtype == np.uint8
    assert batch["gray"].shape == (2, 24, 24, 1) and batch["gray"].dtype == np.uint8
    assert batch["label"].shape == (2,) and batch["label"].dtype == np.int32
    assert np.all((batch["label"] >= 0) & (batch["label"] < classes))
    assert data.num_classes(config) == classes
    assert data.num_examples(config, "train") == 6
    if "depth" in extra_keys:
        assert batch["depth"].shape == (2, 24, 24) and batch["depth"].dtype == np.float32
        assert np.all(np.isfinite(batch["depth"])) and np.all(batch["depth"] >= 0)
    if "panoptic_semantic" in extra_keys:
        semantic, instance = batch["panoptic_semantic"], batch["panoptic_instance"]
        assert semantic.shape == instance.shape == (2, 24, 24)
        assert semantic.dtype == instance.dtype == np.int32
        assert np.all((semantic >= -1) & (semantic < 133)) and np.all(instance >= 0)
        assert np.all(instance[semantic == -1] == 0)
        crowd = batch["panoptic_crowd"]
        assert crowd.shape == (2, 24, 24) and crowd.dtype == bool
        assert not np.any(crowd & (semantic == -1)) and np.all(instance[crowd] == 0)
        assert data.panoptic_classes(config) is tfds_sources.COCO_PANOPTIC_CLASSES
    # Evaluation batches: the split in order, centre-cropped, never flipped.
    evaluation = next(data.build(config, "validation", 2, num_epochs=1))
    source = data.TfdsSource(name, "validation")
    for i in range(2):
        expected = preprocess.square_resize(source[i], 24, "center", flip=False)
        for key in expected:
            np.testing.assert_array_equal(evaluation[key][i], expected[key])
        if "depth" in extra_keys:  # nearest resampling: only depths of the source appear
            assert set(np.unique(evaluation["depth"][i])) <= set(np.unique(source[i]["depth"]))


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
    config = data.default_config()
    config.tfds_data_dir = str(tmp_path)
    config.source = "tfds:imagenet2012"
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.build(config, "train", 2)
    message = str(error.value)
    assert "tfds build imagenet2012" in message and "manual" in message
    assert str(tmp_path) in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    config.source = "tfds:nyu_depth_v2"
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build nyu_depth_v2"):
        data.build(config, "train", 2)
    assert not list(tmp_path.rglob("*.tfrecord*"))  # nothing was downloaded or generated
    config.source = "tfds:no_such_dataset_anywhere"
    with pytest.raises(data.DatasetNotPreparedError, match="no_such_dataset_anywhere"):
        data.build(config, "train", 2)


# ---------------------------------------------------------------- image folders


def _write_folder(root, corrupt=True):
    rng = np.random.default_rng(0)
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "nested").mkdir(parents=True)
    colours = {}
    for i in range(3):
        path = root / "cats" / f"c{i}.png"
        Image.fromarray(np.full((20, 30, 3), 40 + i, np.uint8)).save(path)
        colours[str(path)] = 0
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(
        root / "dogs" / "gray.jpg"
    )
    Image.fromarray(np.full((10, 10, 4), 200, np.uint8), mode="RGBA").save(
        root / "dogs" / "nested" / "alpha.webp"
    )
    (root / "dogs" / "notes.txt").write_text("not an image and not listed")
    if corrupt:
        (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root


def test_folder_layout_labels_and_splits(tmp_path):
    root = _write_folder(tmp_path / "images", corrupt=False)
    source = folder.FolderSource(str(root))
    assert source.class_names == ["cats", "dogs"]
    assert len(source) == 5
    assert [int(source[i]["label"]) for i in range(5)] == [0, 0, 0, 1, 1]
    assert all(source[i]["image"].shape[-1] == 3 for i in range(5))
    config = data.default_config()
    config.source = f"folder:{root}"
    assert data.num_classes(config) == 2 and data.num_examples(config, "train") == 5
    with pytest.raises(folder.FolderLayoutError, match=r"no validation/ \(or val/\) subfolder"):
        data.num_examples(config, "validation")  # never the training images
    # Split subfolders are used when present; loose images get label 0.
    (tmp_path / "split" / "val").mkdir(parents=True)
    (tmp_path / "split" / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "split" / "val" / "a.png")
    for name in ("b.png", "c.bmp"):
        Image.new("RGB", (8, 8)).save(tmp_path / "split" / "train" / name)
    assert len(folder.FolderSource(str(tmp_path / "split"), "validation")) == 1
    train = folder.FolderSource(str(tmp_path / "split"), "train")
    assert len(train) == 2 and train.num_classes == 1 and train[1]["label"] == 0
    Image.new("RGB", (8, 8)).save(root / "loose.png")
    with pytest.raises(ValueError, match="mixes class subfolders"):
        folder.FolderSource(str(root))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder.FolderSource(str(tmp_path / "missing"))


def test_folder_splits_share_the_train_class_ids(tmp_path):
    for split, classes in (("train", ("ant", "bee", "cow")), ("val", ("bee",))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (6, 6), (9, 9, 9)).save(tmp_path / split / name / "x.png")
    validation = folder.FolderSource(str(tmp_path), "validation")
    assert validation.class_names == ["ant", "bee", "cow"] and validation.labels == [1]
    (tmp_path / "val" / "dog").mkdir()
    Image.new("RGB", (6, 6)).save(tmp_path / "val" / "dog" / "y.png")
    with pytest.raises(ValueError, match="missing from the train split: dog"):
        folder.FolderSource(str(tmp_path), "validation")


def test_folder_batches_are_resized_and_deterministic(tmp_path):
    root = _write_folder(tmp_path / "images", corrupt=False)
    config = data.default_config()
    config.source = f"folder:{root}"
    config.image_size = 8
    first = list(itertools.islice(data.build(config, "train", 2), 4))
    again = list(itertools.islice(data.build(config, "train", 2, start_step=2), 2))
    assert first[0]["image"].shape == (2, 8, 8, 3) and first[0]["label"].dtype == np.int32
    for a, b in zip(first[2:], again):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_corrupt_file_fails_naming_its_path(tmp_path):
    root = _write_folder(tmp_path / "images")
    config = data.default_config()
    config.source = f"folder:{root}"
    config.image_size = 8
    batches = data.build(config, "train", 6, num_epochs=1, shuffle=False)
    with pytest.raises(data.CorruptImageError, match=r"broken\.png.*on_corrupt='skip'"):
        next(batches)


def test_corrupt_file_is_skipped_and_reported(tmp_path, caplog):
    root = _write_folder(tmp_path / "images")
    source = folder.FolderSource(str(root), on_corrupt="skip")
    broken = next(i for i, p in enumerate(source.paths) if p.endswith("broken.png"))
    with caplog.at_level(logging.WARNING, logger="fsq_jax.data.folder"):
        examples = [source[i] for i in range(len(source))]
    assert list(source.skipped) == [source.paths[broken]]
    assert "broken.png" in caplog.text
    # The broken file is replaced by the next readable one, never by a blank image.
    replacement = source[(broken + 1) % len(source)]
    np.testing.assert_array_equal(examples[broken]["image"], replacement["image"])
    assert all(e["image"].max() > 0 for e in examples)
    config = data.default_config()
    config.source = f"folder:{root}"
    config.image_size = 8
    config.on_corrupt = "skip"
    batches = list(data.build(config, "train", 3, num_epochs=1, shuffle=False))
    assert len(batches) == 2 and all(b["image"].shape == (3, 8, 8, 3) for b in batches)
