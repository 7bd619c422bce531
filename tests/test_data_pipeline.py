"""fsq_jax.data.build on procedural scenes: batches, exact resume, host shards, epochs, config."""

import itertools

import numpy as np
import pytest

from fsq_jax import data
from fsq_jax.data import scenes


def _config(**overrides):
    config = data.default_config()
    config.image_size = 16
    config.train_size = 12
    config.eval_size = 10
    config.update(overrides)
    return config


def _take(iterator, count):
    return list(itertools.islice(iterator, count))


def _assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _ids(batch):
    """Identity of each example in a batch: its image bytes."""
    return [image.tobytes() for image in batch["image"]]


def test_default_config_fields_are_not_none():
    config = data.default_config()
    assert all(value is not None for value in config.values())
    assert config.source == "scenes" and config.image_size == 64 and config.on_corrupt == "fail"
    data.validate_config(config)


def test_batch_keys_shapes_and_dtypes():
    batch = next(data.build(_config(), "train", 4))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert batch["depth"].shape == (4, 16, 16) and batch["depth"].dtype == np.float32
    assert batch["panoptic_semantic"].dtype == np.int32
    assert batch["panoptic_instance"].shape == (4, 16, 16)
    assert batch["gray"].shape == (4, 16, 16, 1) and batch["gray"].dtype == np.uint8


def test_resume_reproduces_the_stream_across_epochs():
    config = _config()
    fresh = _take(data.build(config, "train", 4), 8)  # 3 batches per epoch: crosses two epochs
    for start in (1, 3, 5):
        resumed = _take(data.build(config, "train", 4, start_step=start), 8 - start)
        _assert_batches_equal(fresh[start:], resumed)


def test_every_epoch_is_a_fresh_permutation_of_the_split():
    config = _config()
    batches = _take(data.build(config, "train", 4), 6)
    source = scenes.SceneSource("train", 12, 16, seed=0)
    everything = sorted(source[i]["image"].tobytes() for i in range(12))
    epochs = [[i for b in batches[e * 3 : e * 3 + 3] for i in _ids(b)] for e in range(2)]
    assert sorted(epochs[0]) == everything and sorted(epochs[1]) == everything
    assert epochs[0] != epochs[1]  # reshuffled
    assert epochs[0] != [source[i]["image"].tobytes() for i in range(12)]  # shuffled at all


def test_seed_changes_the_order():
    first = next(data.build(_config(seed=1), "train", 4))
    second = next(data.build(_config(seed=2), "train", 4))
    assert _ids(first) != _ids(second)


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_shards_are_disjoint_and_concatenate_to_the_single_host_batch(process_count):
    config = _config(train_size=40)  # steps 1..3 stay within the first epoch
    single = _take(data.build(config, "train", 8, start_step=1), 3)
    hosts = [
        _take(
            data.build(
                config, "train", 8, start_step=1, process_index=p, process_count=process_count
            ),
            3,
        )
        for p in range(process_count)
    ]
    for step in range(3):
        parts = [hosts[p][step] for p in range(process_count)]
        assert all(part["image"].shape[0] == 8 // process_count for part in parts)
        for key in single[step]:
            np.testing.assert_array_equal(
                np.concatenate([p[key] for p in parts]), single[step][key]
            )
        ids = [set(_ids(part)) for part in parts]
        for i in range(process_count):
            for j in range(i + 1, process_count):
                assert not ids[i] & ids[j]


def test_one_epoch_of_an_eval_split_in_order_with_equal_batches_per_host():
    config = _config(eval_size=10)
    batches = list(data.build(config, "validation", 4, num_epochs=1))
    assert len(batches) == 2  # 10 examples, batch 4: the partial batch is dropped
    source = scenes.SceneSource("validation", 10, 16, seed=0)
    assert _ids(batches[0]) + _ids(batches[1]) == [source[i]["image"].tobytes() for i in range(8)]
    per_host = [
        list(data.build(config, "validation", 4, num_epochs=1, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert [len(h) for h in per_host] == [2, 2]
    # Shuffling an eval split is possible on request.
    shuffled = list(data.build(config, "validation", 4, num_epochs=1, shuffle=True))
    assert _ids(shuffled[0]) + _ids(shuffled[1]) != _ids(batches[0]) + _ids(batches[1])


def test_synchronous_and_threaded_reading_give_the_same_stream():
    threaded = _take(data.build(_config(read_threads=2), "train", 4), 4)
    synchronous = _take(data.build(_config(read_threads=0), "train", 4), 4)
    _assert_batches_equal(threaded, synchronous)


def test_dataset_facts_for_scenes():
    config = _config()
    assert data.num_classes(config) == scenes.NUM_CLASSES
    assert data.num_examples(config, "train") == 12
    assert data.num_examples(config, "test") == 10
    classes = data.panoptic_classes(config)
    assert classes.num_classes == scenes.NUM_CLASSES + 2 and classes.void == -1
    assert classes.stuff_ids == (scenes.SKY, scenes.GROUND)
    assert classes.names[scenes.SKY] == "sky" and classes.is_thing[0]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"source": "imagenet"}, "data.source"),
        ({"source": "tfds:"}, "data.source"),
        ({"image_size": 4}, "data.image_size"),
        ({"on_corrupt": "ignore"}, "data.on_corrupt"),
        ({"crop": "middle"}, "data.crop"),
        ({"min_objects": 3, "max_objects": 2}, "data.min_objects"),
        ({"train_size": 0}, "data.train_size"),
        ({"seed": -1}, "data.seed"),
    ],
)
def test_bad_config_fails_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        data.validate_config(_config(**overrides))
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        data.build(_config(**overrides), "train", 4)


def test_bad_build_arguments_are_named():
    with pytest.raises(ValueError, match="not divisible by process_count"):
        data.build(_config(), "train", 6, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        data.build(_config(), "train", 4, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="start_step"):
        data.build(_config(), "train", 4, start_step=-1)
    with pytest.raises(ValueError, match="split 'val'"):
        data.build(_config(), "val", 4)
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        data.build(_config(eval_size=10), "test", 16, num_epochs=1)


# ------------------------------------------------------------------------- evaluation passes
def _real_ids(batch):
    return [ident for ident, real in zip(_ids(batch), batch["mask"]) if real]


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_an_evaluation_pass_reads_every_example_once_on_any_host_count(process_count):
    config = _config(eval_size=37)
    source = scenes.SceneSource("validation", 37, 16, seed=0)
    expected = [source[i]["image"].tobytes() for i in range(37)]
    hosts = [data.build(config, "validation", 16, evaluation=True, process_index=p,
                        process_count=process_count) for p in range(process_count)]
    assert all(h.num_examples == 37 and h.num_batches == 3 for h in hosts)
    hosts = [list(h) for h in hosts]
    assert [len(h) for h in hosts] == [3] * process_count  # equal batches on every host
    seen = []
    for step in range(3):  # global order: host 0's slice, host 1's, ... of each batch
        for p in range(process_count):
            batch = hosts[p][step]
            assert batch["image"].shape[0] == batch["mask"].shape[0] == 16 // process_count
            assert batch["mask"].dtype == bool
            seen += _real_ids(batch)
    assert seen == expected  # in order, none twice, none missing
    padding = sum(int((~b["mask"]).sum()) for h in hosts for b in h)
    assert padding == 3 * 16 - 37


def test_an_evaluation_pass_stops_at_num_examples_and_refuses_shuffling():
    config = _config(eval_size=37)
    stream = data.build(config, "validation", 8, evaluation=True, num_examples=20)
    batches = list(stream)
    assert stream.num_examples == 20 and len(batches) == 3
    assert [int(b["mask"].sum()) for b in batches] == [8, 8, 4]
    source = scenes.SceneSource("validation", 37, 16, seed=0)
    assert [i for b in batches for i in _real_ids(b)] == [
        source[i]["image"].tobytes() for i in range(20)]
    # More than the split holds: the whole split, once.
    assert data.build(config, "validation", 8, evaluation=True, num_examples=99).num_examples == 37
    with pytest.raises(ValueError, match="once in order"):
        data.build(config, "validation", 8, evaluation=True, shuffle=True)
    with pytest.raises(ValueError, match="once in order"):
        data.build(config, "validation", 8, evaluation=True, num_epochs=1)
    with pytest.raises(ValueError, match="only for evaluation"):
        data.build(config, "validation", 8, num_examples=8)
    with pytest.raises(ValueError, match="num_examples = 0"):
        data.build(config, "validation", 8, evaluation=True, num_examples=0)


def test_the_train_split_read_for_evaluation_is_not_augmented(tmp_path):
    """Random crops and flips are for training only: evaluating the train split sees each image
    once, centre-cropped and unflipped, in file order."""
    from PIL import Image

    from fsq_jax.data import preprocess

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for index in range(7):
        (root / "train" / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (20, 32, 3), dtype=np.uint8)  # wide: crops differ
        Image.fromarray(pixels).save(root / "train" / f"class{index % 2}" / f"{index}.png")
    config = _config(source=f"folder:{root}", crop="random", random_flip=True)
    source = data.open_source(config, "train")
    centre = [preprocess.square_resize(source[i], 16, "center", False)["image"]
              for i in range(len(source))]
    batches = list(data.build(config, "train", 4, evaluation=True))
    images = [image for b in batches for image, real in zip(b["image"], b["mask"]) if real]
    assert len(images) == 7
    for image, expected in zip(images, centre):
        np.testing.assert_array_equal(image, expected)
    # The training stream of the same split, unshuffled, is augmented (so the check can fail).
    trained = next(data.build(config, "train", 4, shuffle=False))["image"]
    assert any(not np.array_equal(a, b) for a, b in zip(trained, centre))
