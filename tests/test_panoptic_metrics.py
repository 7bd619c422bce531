"""Panoptic quality: hand-worked cases and parity with panopticapi's pq_compute on generated
scenes with occlusions, void and crowd regions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fsq_jax.eval import panoptic

THINGS = (0, 1, 2)
STUFF = (3, 4, 5)


def _maps(*rows):
    """Rows of (semantic, instance) pairs -> int32 [1, H, W] maps."""
    sem = np.array([[p[0] for p in row] for row in rows], np.int32)[None]
    inst = np.array([[p[1] for p in row] for row in rows], np.int32)[None]
    return sem, inst


def test_hand_worked_tp_things_and_stuff():
    a, b, v = (0, 1), (3, 0), (-1, 0)
    gt = _maps([a] * 5 + [b] * 5)
    pred = _maps([a] * 4 + [b] * 6)
    result = panoptic.PanopticQuality(THINGS).update(*gt, *pred).result()
    # Thing IoU 4/5, stuff IoU 5/6, both matched: RQ = 1, SQ = PQ = IoU.
    assert result["pq_things"] == pytest.approx(0.8)
    assert result["pq_stuff"] == pytest.approx(5 / 6)
    assert result["pq"] == pytest.approx((0.8 + 5 / 6) / 2)
    assert result["rq"] == 1.0
    assert result["sq"] == pytest.approx(result["pq"])
    # Void: predicted pixels on ground-truth void leave the union.
    gt = _maps([v] * 4 + [a] * 6)
    pred = _maps([v] * 2 + [a] * 8)
    assert panoptic.PanopticQuality(THINGS).update(*gt, *pred).result()["pq"] == 1.0


def test_hand_worked_fp_fn_and_void_ignored_fp():
    a1, a2, b, v = (0, 1), (0, 2), (3, 0), (-1, 0)
    # GT: thing instance 1 (4 px), stuff (4 px), void (4 px).
    gt = _maps([a1] * 4 + [b] * 4 + [v] * 4)
    # Pred: instance split in two halves (IoU 2/4, not > 0.5 -> FN + 2 FP), stuff exact,
    # and a thing segment lying entirely on void (ignored, not a FP).
    pred = _maps([a1] * 2 + [a2] * 2 + [b] * 4 + [(1, 7)] * 4)
    metric = panoptic.PanopticQuality(THINGS).update(*gt, *pred)
    assert metric.stats[0] == {"iou": 0, "tp": 0, "fp": 2, "fn": 1}
    assert metric.stats[3] == {"iou": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert 1 not in metric.stats
    result = metric.result()
    assert result["pq_things"] == 0.0 and result["pq_stuff"] == 1.0
    assert result["pq"] == 0.5 and result["sq"] == 0.5  # SQ of a class without TP is 0
    assert result["rq"] == 0.5


def test_crowd_region_is_neither_fn_nor_fp():
    a, c = (0, 0), (0, 3)
    crowd = np.array([[[True] * 6 + [False] * 4]])
    gt = _maps([a] * 6 + [(4, 0)] * 4)
    pred = _maps([c] * 5 + [(4, 0)] * 5)  # a thing over the crowd region: ignored
    result = panoptic.PanopticQuality(THINGS).update(*gt, *pred, gt_crowd=crowd).result()
    assert result["pq_stuff"] == pytest.approx(4 / 5)
    assert math.isnan(result["pq_things"])  # no TP, FP or FN for things


def test_stuff_instance_ids_are_ignored_and_merge_matches_one_pass():
    gt = _maps([(3, 0)] * 4)
    pred = _maps([(3, 5), (3, 5), (3, 9), (3, 9)])  # stuff: one segment whatever the instance
    assert panoptic.PanopticQuality(THINGS).update(*gt, *pred).result()["pq"] == 1.0
    batch = _random_batch(np.random.default_rng(7), 4, 24, 24)
    one = panoptic.PanopticQuality(THINGS).update(*batch).result()
    split = panoptic.PanopticQuality(THINGS).update(*(x[:1] for x in batch)).merge(
        panoptic.PanopticQuality(THINGS).update(*(x[1:] for x in batch))).result()
    assert split == pytest.approx(one, nan_ok=True)


def test_bad_inputs():
    sem = np.zeros((1, 4, 4), np.int32)
    with pytest.raises(ValueError, match="shape"):
        panoptic.PanopticQuality(THINGS).update(sem, sem, sem[:, :2], sem[:, :2])
    with pytest.raises(ValueError, match="integers"):
        panoptic.PanopticQuality(THINGS).update(sem.astype(np.float32), sem, sem, sem)
    with pytest.raises(ValueError, match="non-negative"):
        panoptic.PanopticQuality([-2])
    with pytest.raises(ValueError, match="instance ids"):
        panoptic.PanopticQuality(THINGS).update(sem, sem - 1, sem, sem)


# ------------------------------------------------------------------------------------------
# Parity with panopticapi.
# ------------------------------------------------------------------------------------------


def _render(rng, h, w, rects, stuff_rows):
    sem = np.empty((h, w), np.int32)
    bounds = np.sort(rng.integers(1, h, len(stuff_rows) - 1))
    for cls, (lo, hi) in zip(stuff_rows, zip([0, *bounds], [*bounds, h])):
        sem[lo:hi] = cls
    inst = np.zeros((h, w), np.int32)
    for cls, instance, (y0, x0, y1, x1) in rects:  # later rectangles occlude earlier ones
        sem[y0:y1, x0:x1] = cls
        inst[y0:y1, x0:x1] = instance
    return sem, inst


def _random_rect(rng, h, w):
    y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
    return y0, x0, rng.integers(y0 + 3, h + 1), rng.integers(x0 + 3, w + 1)


def _jitter(rng, rect, h, w, amount):
    y0, x0, y1, x1 = (int(v + rng.integers(-amount, amount + 1)) for v in rect)
    y0, x0 = min(max(y0, 0), h - 2), min(max(x0, 0), w - 2)
    return y0, x0, min(max(y1, y0 + 1), h), min(max(x1, x0 + 1), w)


def _random_batch(rng, batch, h, w):
    """GT and prediction maps with occluding instances, void and crowd regions."""
    gts, gis, crowds, pss, pis = [], [], [], [], []
    for _ in range(batch):
        stuff = list(rng.choice(STUFF, rng.integers(1, 4)))
        rects = [(int(rng.choice(THINGS)), i + 1, _random_rect(rng, h, w))
                 for i in range(rng.integers(1, 7))]
        gt_sem, gt_inst = _render(rng, h, w, rects, stuff)
        crowd = np.zeros((h, w), bool)
        if rng.random() < 0.6:  # a crowd region of one thing class
            y0, x0, y1, x1 = _random_rect(rng, h, w)
            gt_sem[y0:y1, x0:x1] = rng.choice(THINGS)
            gt_inst[y0:y1, x0:x1] = 0
            crowd[y0:y1, x0:x1] = True
        for _ in range(rng.integers(0, 3)):  # void (unlabelled) patches
            y0, x0, y1, x1 = _random_rect(rng, h, w)
            gt_sem[y0:y1, x0:x1] = -1
            gt_inst[y0:y1, x0:x1] = 0
            crowd[y0:y1, x0:x1] = False
        pred_rects = [(int(rng.choice(THINGS)) if rng.random() < 0.15 else c, i,
                       _jitter(rng, r, h, w, int(rng.integers(0, 4))))
                      for c, i, r in rects if rng.random() < 0.85]
        pred_rects += [(int(rng.choice(THINGS)), 50 + j, _random_rect(rng, h, w))
                       for j in range(rng.integers(0, 3))]  # spurious instances
        pred_stuff = stuff if rng.random() < 0.7 else list(rng.choice(STUFF, len(stuff)))
        pred_sem, pred_inst = _render(rng, h, w, pred_rects, pred_stuff)
        if rng.random() < 0.3:  # unlabelled predicted pixels
            y0, x0, y1, x1 = _random_rect(rng, h, w)
            pred_sem[y0:y1, x0:x1] = -1
        gts.append(gt_sem)
        gis.append(gt_inst)
        crowds.append(crowd)
        pss.append(pred_sem)
        pis.append(pred_inst)
    return np.stack(gts), np.stack(gis), np.stack(pss), np.stack(pis), np.stack(crowds)


def _to_coco_panoptic(sem, inst, crowd, folder, name):
    """One image in COCO panoptic format: RGB-encoded segment ids PNG + segments_info."""
    from PIL import Image

    key = np.where(sem < 0, -1, (sem.astype(np.int64) * 2 + crowd) * 1000 + inst)
    ids = np.zeros(sem.shape, np.int64)
    segments = []
    for index, k in enumerate(k for k in np.unique(key) if k >= 0):
        segment_id = 1000 + 37 * index  # non-trivial ids across all three colour channels
        ids[key == k] = segment_id
        segments.append({"id": segment_id, "category_id": int(k // 1000 // 2) + 1,
                         "iscrowd": int(k // 1000 % 2), "area": int((key == k).sum())})
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(folder / f"{name}.png")
    return {"image_id": name, "file_name": f"{name}.png", "segments_info": segments}


def test_parity_with_panopticapi(tmp_path, capsys):
    evaluation = pytest.importorskip(
        "panopticapi.evaluation",
        reason="PARITY TEST NOT RUN: panopticapi is missing; `make extras` installs it")
    rng = np.random.default_rng(0)
    gt_sem, gt_inst, pred_sem, pred_inst, crowd = _random_batch(rng, 40, 32, 40)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    pairs = []
    for i in range(len(gt_sem)):
        gt_ann = _to_coco_panoptic(gt_sem[i], gt_inst[i], crowd[i], gt_dir, f"im{i}")
        pred_ann = _to_coco_panoptic(pred_sem[i], pred_inst[i], np.zeros_like(crowd[i]),
                                     pred_dir, f"im{i}")
        pairs.append((gt_ann, pred_ann))
    categories = {c + 1: {"id": c + 1, "name": str(c), "isthing": int(c in THINGS)}
                  for c in THINGS + STUFF}
    json.dumps(pairs)  # the annotations are plain JSON, as panopticapi reads them
    stat = evaluation.pq_compute_single_core(0, pairs, str(gt_dir), str(pred_dir), categories)
    expected = {}
    for suffix, isthing in (("", None), ("_things", True), ("_stuff", False)):
        averages, _ = stat.pq_average(categories, isthing=isthing)
        for metric in ("pq", "sq", "rq"):
            expected[metric + suffix] = averages[metric]
    capsys.readouterr()

    ours = panoptic.PanopticQuality(THINGS)
    for start in range(0, 40, 16):  # batches of 16, 16, 8
        s = slice(start, start + 16)
        ours.update(gt_sem[s], gt_inst[s], pred_sem[s], pred_inst[s], gt_crowd=crowd[s])
    result = ours.result()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
    # The generated cases exercise every rule: matches, misses, spurious and ignored segments.
    totals = {f: sum(s[f] for s in ours.stats.values()) for f in ("tp", "fp", "fn")}
    assert all(v > 10 for v in totals.values()), totals
    assert 0.2 < result["pq"] < 0.9
    for c, s in stat.pq_per_cat.items():
        assert (s.tp, s.fp, s.fn) == tuple(ours.stats.get(c - 1, {"tp": 0, "fp": 0, "fn": 0})[f]
                                           for f in ("tp", "fp", "fn"))


def _panopticapi(evaluation, tmp_path, gt_sem, gt_inst, crowd, pred_sem, pred_inst):
    """panopticapi's PQ (overall, things, stuff) of maps written in COCO panoptic format; every
    distinct (class, crowd, instance id) of a map is one segment."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    pairs = [(_to_coco_panoptic(gt_sem[i], gt_inst[i], crowd[i], gt_dir, f"im{i}"),
              _to_coco_panoptic(pred_sem[i], pred_inst[i], np.zeros_like(crowd[i]), pred_dir,
                                f"im{i}")) for i in range(len(gt_sem))]
    categories = {c + 1: {"id": c + 1, "name": str(c), "isthing": int(c in THINGS)}
                  for c in THINGS + STUFF}
    stat = evaluation.pq_compute_single_core(0, pairs, str(gt_dir), str(pred_dir), categories)
    expected = {}
    for suffix, isthing in (("", None), ("_things", True), ("_stuff", False)):
        averages, _ = stat.pq_average(categories, isthing=isthing)
        for metric in ("pq", "sq", "rq"):
            expected[metric + suffix] = averages[metric]
    return expected, stat


def test_parity_with_panopticapi_when_every_slot_is_a_segment(tmp_path, capsys):
    # UViM predicts a slot for every pixel, stuff included; panopticapi's 2-channel converter
    # makes each (class, slot) pair a segment, so split stuff regions are separate segments.
    evaluation = pytest.importorskip(
        "panopticapi.evaluation",
        reason="PARITY TEST NOT RUN: panopticapi is missing; `make extras` installs it")
    rng = np.random.default_rng(1)
    gt_sem, gt_inst, pred_sem, pred_inst, crowd = _random_batch(rng, 30, 32, 40)
    stuff = np.isin(pred_sem, STUFF)
    split = rng.integers(4, 36, len(pred_sem))[:, None, None]  # a column per image
    columns = np.arange(pred_sem.shape[2])[None, None, :]
    pred_inst = np.where(stuff, np.where(columns < split, 7, 8), pred_inst).astype(np.int32)
    expected, stat = _panopticapi(evaluation, tmp_path, gt_sem, gt_inst, crowd, pred_sem,
                                  pred_inst)
    capsys.readouterr()
    ours = panoptic.PanopticQuality(THINGS, segments_by_instance=True)
    ours.update(gt_sem, gt_inst, pred_sem, pred_inst, gt_crowd=crowd)
    result = ours.result()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
    for c, s in stat.pq_per_cat.items():
        assert (s.tp, s.fp, s.fn) == tuple(ours.stats.get(c - 1, {"tp": 0, "fp": 0, "fn": 0})[f]
                                           for f in ("tp", "fp", "fn"))
    # Merging the split stuff regions (the thing-only rule) scores differently.
    merged = panoptic.PanopticQuality(THINGS).update(gt_sem, gt_inst, pred_sem, pred_inst,
                                                      gt_crowd=crowd).result()
    assert merged["pq_stuff"] > result["pq_stuff"] + 0.01
