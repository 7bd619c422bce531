"""UViM panoptic task: exact round trip of the 2-channel target, decoding of logits, PQ."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsq_jax import config_lib
from uvim.outputs import panoptic

MAX_INSTANCES = 6
CAPACITY = 36  # every segment of a 6x6 image gets its own number
_encode = jax.jit(functools.partial(panoptic.encode_panoptic, max_instances=MAX_INSTANCES,
                                    capacity=CAPACITY))


def _maps():
    """(semantic, instance) int32 [2, 6, 6]: classes -1..4, instance ids 0 or sparse positives."""
    semantic = hnp.arrays(np.int32, (2, 6, 6), elements=st.integers(-1, 4))
    ids = hnp.arrays(np.int32, (2, 6, 6), elements=st.sampled_from([0, 0, 3, 7, 42, 1000]))
    return st.tuples(semantic, ids)


@settings(max_examples=40, deadline=None)
@given(_maps())
def test_encoding_round_trips_exactly(maps):
    semantic, instance = maps
    instance = np.where(semantic < 0, 0, instance)  # void pixels carry no instance
    encoded = np.asarray(_encode(semantic, instance))
    assert encoded.dtype == np.int32 and encoded.shape == (2, 6, 6, 2)
    assert encoded.min() >= 0
    decoded_semantic, decoded_instance = map(np.asarray, panoptic.decode_panoptic(encoded))
    np.testing.assert_array_equal(decoded_semantic, semantic)
    for image in range(2):
        labelled = semantic[image] >= 0
        np.testing.assert_array_equal(decoded_instance[image] > 0, labelled)
        # Every (class, instance) segment, stuff included, is renamed by a bijection onto 1..K.
        old = list(zip(semantic[image][labelled].tolist(), instance[image][labelled].tolist()))
        pairs = set(zip(old, decoded_instance[image][labelled].tolist()))
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
        assert sorted(b for _, b in pairs) == list(range(1, len(pairs) + 1))
    # The canonical map is a fixed point, so decode(encode(x)) == x exactly on canonical maps.
    again = np.asarray(_encode(decoded_semantic, decoded_instance))
    np.testing.assert_array_equal(again, encoded)


def test_segments_are_numbered_by_big_visions_centre_key():
    # make_canonical sorts by x + H * y (main axis y, H the height): on a 2x8 map the segment
    # at (1, 0) (key 2) comes before the one at (0, 7) (key 7), though it lies a row lower.
    semantic = np.full((1, 2, 8), 1, np.int32)  # class 1 is stuff here: instance 0
    instance = np.zeros((1, 2, 8), np.int32)
    semantic[0, 0, 7], instance[0, 0, 7] = 2, 9
    semantic[0, 1, 0], instance[0, 1, 0] = 2, 4
    semantic[0, 0, 0] = -1  # void: 0
    canonical = np.asarray(_encode(semantic, instance))[0, ..., 1]
    assert canonical[1, 0] == 1 and canonical[0, 7] == 3
    # The stuff region (centre (7/13, 49/13), key 4.85) is a segment too, numbered between.
    assert canonical[0, 1] == 2 and canonical[0, 0] == 0
    np.testing.assert_array_equal(np.asarray(_encode(semantic, instance))[0, ..., 0],
                                  semantic[0] + 1)


def test_segments_beyond_the_slots_keep_their_number_but_have_no_target():
    config = ml_collections.ConfigDict({"name": "panoptic", "num_classes": 2,
                                        "max_instances": MAX_INSTANCES, "thing_classes": (1,)})
    task = panoptic.PanopticOutput(config)
    instance = np.arange(1, 10, dtype=np.int32).reshape(1, 3, 3)  # 9 one-pixel segments
    batch = {"panoptic_semantic": np.ones_like(instance), "panoptic_instance": instance}
    encoded = np.asarray(panoptic.encode_panoptic(instance * 0 + 1, instance, MAX_INSTANCES))
    np.testing.assert_array_equal(encoded[0, ..., 1], instance[0])  # raster order here
    targets = np.asarray(task.targets(batch)["instance"])
    in_slots = encoded[..., 1] < MAX_INSTANCES
    np.testing.assert_array_equal(targets.sum(-1), in_slots)  # UViM's one_hot of id >= 100
    # Those pixels add nothing to the loss but still count in its mean over all pixels.
    uniform = {"semantic": np.zeros((1, 3, 3, 3), np.float32),
               "instance": np.zeros((1, 3, 3, MAX_INSTANCES), np.float32)}
    _, terms = task.loss(uniform, batch)
    assert float(terms["loss_instance"]) == pytest.approx(5 / 9 * np.log(MAX_INSTANCES))
    # Beyond `capacity` (default 2 * slots = 12) segments are not numbered: the 12 smallest
    # (class, id) pairs keep their centre order, the rest share capacity + 1.
    many = np.arange(1, 17, dtype=np.int32).reshape(1, 4, 4)
    encoded = np.asarray(panoptic.encode_panoptic(many * 0 + 1, many, MAX_INSTANCES))
    np.testing.assert_array_equal(encoded[0, ..., 1], np.minimum(many[0], 13))


def test_logits_decode_by_summed_logits_per_slot():
    # Slot 1 covers the left half (4 pixels): 3 pixels say class index 2 (logit 10 vs 0), one
    # says index 1 (logit 1 vs 0, and -100 for index 2). Summed logits choose index 1
    # (1 > 0 > -70); summed probabilities would choose index 2 (~3 > ~0.58), so the rule is
    # big_vision's sum of logits.
    semantic_logits = np.zeros((1, 2, 4, 4), np.float32)
    semantic_logits[0, :, :2, 2] = 10.0
    semantic_logits[0, 0, 0, 2], semantic_logits[0, 0, 0, 1] = -100.0, 1.0
    semantic_logits[0, :, 2:, 0] = 5.0  # right half: void wins (20) ...
    semantic_logits[0, 1, 3, 1] = 15.0  # ... over one pixel's class 0 (15) in its slot
    instance_logits = np.zeros((1, 2, 4, 3), np.float32)
    instance_logits[0, :, :2, 1] = 10.0
    instance_logits[0, :, 2:, 0] = 10.0  # slot 0 votes like any other slot
    semantic, instance = map(
        np.asarray, panoptic.panoptic_from_logits(semantic_logits, instance_logits)
    )
    np.testing.assert_array_equal(semantic[0, :, :2], 0)  # class index 1 - 1: no split
    np.testing.assert_array_equal(semantic[0, :, 2:], -1)  # slot 0 voted void
    np.testing.assert_array_equal(instance[0], [[1, 1, 0, 0], [1, 1, 0, 0]])
    instance_logits[0, :, 2:, 2] = 20.0  # the right half is slot 2 now: one stuff-like segment
    semantic_logits[0, :, 2:, 3] = 6.0
    semantic, instance = map(
        np.asarray, panoptic.panoptic_from_logits(semantic_logits, instance_logits)
    )
    np.testing.assert_array_equal(semantic[0, :, 2:], 2)
    np.testing.assert_array_equal(instance[0, :, 2:], 2)


def _pq(pred_sem, pred_ins, true_sem, true_ins):
    metric = panoptic.PanopticQuality(num_classes=2, thing_classes=(1,))
    metric.update(
        {"semantic": np.asarray(pred_sem)[None], "instance": np.asarray(pred_ins)[None]},
        {"panoptic_semantic": np.asarray(true_sem)[None],
         "panoptic_instance": np.asarray(true_ins)[None]},
    )
    return metric.result()


def test_panoptic_quality_on_hand_made_examples():
    true_sem = np.zeros((4, 4), np.int32)
    true_ins = np.zeros((4, 4), np.int32)
    true_sem[:2, :2], true_ins[:2, :2] = 1, 1  # one 4-pixel "thing", the rest "stuff" class 0
    perfect = _pq(true_sem, true_ins, true_sem, true_ins)
    assert perfect["pq"] == pytest.approx(100.0)

    pred_sem, pred_ins = true_sem.copy(), true_ins.copy()
    pred_sem[1, 1], pred_ins[1, 1] = 0, 0  # thing IoU 3/4, stuff IoU 12/13
    result = _pq(pred_sem, pred_ins, true_sem, true_ins)
    assert result["pq"] == pytest.approx(100 * (0.75 + 12 / 13) / 2)
    assert result["pq_things"] == pytest.approx(75.0)

    pred_sem[3, 2:], pred_ins[3, 2:] = 1, 2  # plus a false-positive thing; stuff IoU 10/13
    result = _pq(pred_sem, pred_ins, true_sem, true_ins)
    assert result["pq_things"] == pytest.approx(100 * 0.75 * (1 / 1.5))
    assert result["pq"] == pytest.approx(100 * (0.5 + 10 / 13) / 2)
    assert result["rq"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_panoptic_quality_counts_every_predicted_slot_as_a_segment():
    # UViM numbers stuff segments too; panopticapi's 2-channel converter makes each
    # (class, slot) pair a segment, so a stuff region split over two slots is a match (the
    # larger part) and a false positive, not one merged segment.
    true_sem = np.zeros((4, 4), np.int32)
    true_ins = np.zeros((4, 4), np.int32)
    pred_ins = np.ones((4, 4), np.int32)
    pred_ins[3, :] = 2  # 4 of the 16 stuff pixels in another slot
    result = _pq(true_sem, pred_ins, true_sem, true_ins)
    assert result["pq"] == pytest.approx(100 * (12 / 16) / 1.5)
    assert _pq(true_sem, np.ones((4, 4), np.int32), true_sem, true_ins)["pq"] == pytest.approx(
        100.0)


def test_panoptic_quality_ignores_crowd_regions():
    # A crowd region of the thing class: predicted segments lying mostly on it are no false
    # positives, and it is no false negative (panopticapi pq_compute).
    true_sem = np.zeros((4, 4), np.int32)
    true_ins = np.zeros((4, 4), np.int32)
    crowd = np.zeros((4, 4), bool)
    true_sem[:2, :2], crowd[:2, :2] = 1, True
    pred_sem, pred_ins = true_sem.copy(), np.where(true_sem == 1, 3, 1)
    metric = panoptic.PanopticQuality(num_classes=2, thing_classes=(1,))
    batch = {"panoptic_semantic": true_sem[None], "panoptic_instance": true_ins[None],
             "panoptic_crowd": crowd[None]}
    metric.update({"semantic": pred_sem[None], "instance": pred_ins[None]}, batch)
    assert metric.result()["pq"] == pytest.approx(100.0) and "pq_things" not in metric.result()
    without_crowd = _pq(pred_sem, pred_ins, true_sem, true_ins)
    assert without_crowd["pq_things"] == pytest.approx(100.0)  # then an ordinary segment


def test_panoptic_quality_ignores_void():
    true_sem = np.full((2, 4), -1, np.int32)
    true_sem[:, :2] = 0
    zeros = np.zeros((2, 4), np.int32)
    pred_sem = np.zeros((2, 4), np.int32)  # stuff spills into the void: still a perfect match
    assert _pq(pred_sem, zeros, true_sem, zeros)["pq"] == pytest.approx(100.0)


def test_task_targets_loss_and_config_errors():
    config = ml_collections.ConfigDict(
        {"name": "panoptic", "num_classes": 3, "max_instances": 4, "thing_classes": (2,)}
    )
    task = panoptic.PanopticOutput(config)
    assert task.target_channels() == {"semantic": 4, "instance": 4}  # slot 0 is void
    semantic = np.array([[[0, 2], [-1, 2]]], np.int32)
    instance = np.array([[[0, 5], [0, 5]]], np.int32)
    batch = {"panoptic_semantic": semantic, "panoptic_instance": instance}

    @jax.jit
    def run(batch):
        targets = task.targets(batch)
        logits = {k: 50.0 * v for k, v in targets.items()}
        uniform = {k: 0.0 * v for k, v in targets.items()}
        return targets, task.loss(logits, batch)[0], task.loss(uniform, batch)[0], \
            task.predict(logits)

    targets, loss, uniform_loss, prediction = run(batch)
    assert targets["semantic"].shape == (1, 2, 2, 4) and targets["instance"].shape == (1, 2, 2, 4)
    assert float(loss) < 1e-6
    assert float(uniform_loss) == pytest.approx(np.log(4) + np.log(4), rel=1e-5)
    np.testing.assert_array_equal(prediction["semantic"], semantic)
    # The stuff pixel is segment 1 (centre key 0), the thing segment 2 (key 1 + 2 * 0.5).
    np.testing.assert_array_equal(prediction["instance"], [[[1, 2], [0, 2]]])
    metric = task.new_metric()
    metric.update(prediction, batch)
    assert metric.result()["pq"] == pytest.approx(100.0)
    config.thing_classes = (3,)
    with pytest.raises(ValueError, match=r"config.output.thing_classes = \(3,\): must lie in"):
        config_lib.check(config, panoptic.PanopticConfig, "config.output")
