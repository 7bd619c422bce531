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
_encode = jax.jit(functools.partial(panoptic.encode_panoptic, max_instances=MAX_INSTANCES))


def _maps():
    """(semantic, instance) int32 [2, 6, 6]: classes -1..4, instance ids 0 or sparse positives."""
    semantic = hnp.arrays(np.int32, (2, 6, 6), elements=st.integers(-1, 4))
    ids = hnp.arrays(np.int32, (2, 6, 6), elements=st.sampled_from([0, 0, 3, 7, 42, 1000]))
    return st.tuples(semantic, ids)


@settings(max_examples=40, deadline=None)
@given(_maps())
def test_encoding_round_trips_exactly(maps):
    semantic, instance = maps
    encoded = np.asarray(_encode(semantic, instance))
    assert encoded.dtype == np.int32 and encoded.shape == (2, 6, 6, 2)
    assert encoded.min() >= 0 and encoded[..., 1].max() <= MAX_INSTANCES
    decoded_semantic, decoded_instance = map(np.asarray, panoptic.decode_panoptic(encoded))
    np.testing.assert_array_equal(decoded_semantic, semantic)
    for image in range(2):
        old, new = instance[image], decoded_instance[image]
        np.testing.assert_array_equal(old > 0, new > 0)
        # Instance ids are renamed by a bijection onto 1..K: the segmentation is unchanged.
        pairs = {(int(a), int(b)) for a, b in zip(old[old > 0], new[new > 0])}
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
        assert sorted(b for _, b in pairs) == list(range(1, len(pairs) + 1))
    # The canonical map is a fixed point, so decode(encode(x)) == x exactly on canonical maps.
    again = np.asarray(_encode(decoded_semantic, decoded_instance))
    np.testing.assert_array_equal(again, encoded)


def test_canonical_order_is_by_centre_of_mass():
    instance = np.zeros((1, 4, 4), np.int32)
    instance[0, 3, 3] = 9  # bottom right: last
    instance[0, 0, 2:] = 5  # top row right: first (centre (0, 2.5))
    instance[0, 1:3, 0] = 2  # left column: second (centre (1.5, 0))
    semantic = np.where(instance > 0, 1, 0).astype(np.int32)
    encoded = np.asarray(_encode(semantic, instance))
    canonical = encoded[0, ..., 1]
    assert canonical[0, 2] == 1 and canonical[1, 0] == 2 and canonical[3, 3] == 3
    assert canonical[0, 0] == 0  # stuff
    np.testing.assert_array_equal(encoded[..., 0], semantic + 1)


def test_instances_beyond_the_slots_are_dropped():
    instance = np.arange(1, 17, dtype=np.int32).reshape(1, 4, 4)  # 16 single-pixel instances
    encoded = np.asarray(_encode(np.ones_like(instance), instance))
    assert sorted(np.unique(encoded[..., 1]).tolist()) == list(range(MAX_INSTANCES + 1))


def test_logits_decode_to_consistent_instances():
    # Instance 1 covers the left half; its pixels vote class 2 (3 pixels) against class 1 (1).
    semantic_logits = np.full((1, 2, 4, 4), -10.0, np.float32)
    semantic_logits[0, :, :2, 3] = 10.0  # class 2 (index 3 with void at 0)
    semantic_logits[0, 0, 0, 3], semantic_logits[0, 0, 0, 2] = -10.0, 10.0  # one vote class 1
    semantic_logits[0, :, 2:, 1] = 10.0  # right half: class 0, no instance
    instance_logits = np.full((1, 2, 4, 3), -10.0, np.float32)
    instance_logits[0, :, :2, 1] = 10.0
    instance_logits[0, :, 2:, 0] = 10.0
    semantic, instance = map(
        np.asarray, panoptic.panoptic_from_logits(semantic_logits, instance_logits)
    )
    np.testing.assert_array_equal(semantic[0, :, :2], 2)  # the whole instance takes class 2
    np.testing.assert_array_equal(semantic[0, :, 2:], 0)
    np.testing.assert_array_equal(instance[0], [[1, 1, 0, 0], [1, 1, 0, 0]])


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
    assert targets["semantic"].shape == (1, 2, 2, 4) and targets["instance"].shape == (1, 2, 2, 5)
    assert float(loss) < 1e-6
    assert float(uniform_loss) == pytest.approx(np.log(4) + np.log(5), rel=1e-5)
    np.testing.assert_array_equal(prediction["semantic"], semantic)
    np.testing.assert_array_equal(prediction["instance"], [[[0, 1], [0, 1]]])
    metric = task.new_metric()
    metric.update(prediction, batch)
    assert metric.result()["pq"] == pytest.approx(100.0)
    config.thing_classes = (3,)
    with pytest.raises(ValueError, match=r"config.output.thing_classes = \(3,\): must lie in"):
        config_lib.check(config, panoptic.PanopticConfig, "config.output")
