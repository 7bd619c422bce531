"""Panoptic quality (PQ, SQ, RQ; overall, things, stuff) from semantic + instance maps.

Follows panopticapi's `pq_compute` (Kirillov et al. 2019), the metric UViM reports on COCO:
  * segments: a stuff class forms one segment per image; a thing class one segment per
    instance id. Negative semantic labels are void (unlabelled). With
    `segments_by_instance=True` every (class, instance id) pair is a segment, stuff included:
    what panopticapi's `converters/2channels2panoptic_coco_format.py` makes of UViM's
    two-channel predictions (big_vision evaluators/proj/uvim/coco_panoptic.py), whose stuff
    regions carry instance ids too;
  * a ground-truth and a predicted segment of the same class match when IoU > 0.5, where the
    union leaves out the predicted pixels that fall on ground-truth void;
  * unmatched ground-truth segments are false negatives, except crowd regions;
  * an unmatched predicted segment is a false positive unless more than half of it lies on
    void or on a crowd region of its class;
  * per class PQ = sum IoU(TP) / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = PQ / SQ; averaged
    over the classes with at least one TP, FP or FN (NaN when there is none).
Values are fractions in [0, 1] (multiply by 100 for the paper's tables).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_STAT_FIELDS = ("iou", "tp", "fp", "fn")


def _segment_ids(semantic: np.ndarray, instance: np.ndarray, is_thing: np.ndarray,
                 crowd: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense segment ids of one image.

    Returns (ids `[H, W]` with 0 = void and 1..S segments, class per id `[S + 1]`, crowd flag
    per id `[S + 1]`). Crowd pixels of a class form one crowd segment of that class. Instance
    ids split the classes where `is_thing` is True.
    """
    void = semantic < 0
    cls = np.where(void, 0, semantic).astype(np.int64)
    thing = is_thing[np.clip(cls, 0, len(is_thing) - 1)] & (cls < len(is_thing)) & ~void
    inst = np.where(thing, instance, 0).astype(np.int64)
    crowd_px = np.zeros_like(void) if crowd is None else (np.asarray(crowd, bool) & ~void)
    inst = np.where(crowd_px, 0, inst)
    span = int(inst.max()) + 1 if inst.size else 1
    key = (cls * 2 + crowd_px) * span + inst
    key = np.where(void, -1, key)
    uniq, ids = np.unique(key, return_inverse=True)
    ids = ids.reshape(key.shape)
    if uniq.size and uniq[0] == -1:  # void present: it takes id 0 already
        keys = uniq
    else:
        ids = ids + 1
        keys = np.concatenate([[-1], uniq])
    seg_class = np.where(keys < 0, -1, keys // span // 2)
    seg_crowd = np.where(keys < 0, False, (keys // span) % 2 == 1)
    return ids, seg_class, seg_crowd


class PanopticQuality:
    """Accumulates panoptic matching statistics per class over images.

    Args:
      thing_classes: class ids that are things (instances); every other class id is stuff.
        They pick the classes of `pq_things` and `pq_stuff`.
      segments_by_instance: every (class, instance id) pair is a segment, stuff included
        (False: instance ids split only the thing classes).
    """

    def __init__(self, thing_classes: Iterable[int], segments_by_instance: bool = False):
        self.thing_classes = frozenset(int(c) for c in thing_classes)
        if any(c < 0 for c in self.thing_classes):
            raise ValueError("thing class ids must be non-negative.")
        self.segments_by_instance = segments_by_instance
        self.stats: dict[int, dict[str, float]] = {}

    def _stat(self, cls: int) -> dict[str, float]:
        return self.stats.setdefault(int(cls), dict.fromkeys(_STAT_FIELDS, 0))

    def update(self, gt_semantic: np.ndarray, gt_instance: np.ndarray,
               pred_semantic: np.ndarray, pred_instance: np.ndarray,
               gt_crowd: np.ndarray | None = None) -> PanopticQuality:
        """Add a batch of images.

        Args:
          gt_semantic, pred_semantic: int `[B, H, W]` class ids, negative = void.
          gt_instance, pred_instance: int `[B, H, W]` instance ids (ignored for stuff classes).
          gt_crowd: optional bool `[B, H, W]`, True on crowd regions (COCO `iscrowd`).
        Returns self.
        """
        arrays = [np.asarray(a) for a in (gt_semantic, gt_instance, pred_semantic, pred_instance)]
        if gt_crowd is not None:
            arrays.append(np.asarray(gt_crowd))
        shape = arrays[0].shape
        if len(shape) != 3 or any(a.shape != shape for a in arrays):
            raise ValueError(f"all maps must share one [B, H, W] shape, got "
                             f"{[a.shape for a in arrays]}.")
        for a in arrays[:4]:
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"semantic and instance maps must be integers, got {a.dtype}.")
        if arrays[1].min(initial=0) < 0 or arrays[3].min(initial=0) < 0:
            raise ValueError("instance ids must be non-negative (0 for stuff and void).")
        top = max(int(arrays[0].max(initial=0)), int(arrays[2].max(initial=0)),
                  max(self.thing_classes, default=0))
        is_thing = np.zeros(top + 1, bool)
        is_thing[list(self.thing_classes)] = True
        if self.segments_by_instance:
            is_thing[:] = True
        for b in range(shape[0]):
            crowd = arrays[4][b] if gt_crowd is not None else None
            self._update_image(arrays[0][b], arrays[1][b], arrays[2][b], arrays[3][b], crowd,
                               is_thing)
        return self

    def _update_image(self, gt_sem, gt_inst, pred_sem, pred_inst, crowd, is_thing) -> None:
        gt_ids, gt_class, gt_crowd = _segment_ids(gt_sem, gt_inst, is_thing, crowd)
        pred_ids, pred_class, _ = _segment_ids(pred_sem, pred_inst, is_thing, None)
        n_gt, n_pred = len(gt_class), len(pred_class)
        inter = np.bincount((gt_ids * n_pred + pred_ids).ravel(),
                            minlength=n_gt * n_pred).reshape(n_gt, n_pred)
        gt_area, pred_area = inter.sum(1), inter.sum(0)
        pred_on_void = inter[0]  # predicted pixels over ground-truth void

        gt_matched = np.zeros(n_gt, bool)
        pred_matched = np.zeros(n_pred, bool)
        for g, p in zip(*np.nonzero(inter[1:, 1:])):
            g, p = g + 1, p + 1
            if gt_crowd[g] or gt_class[g] != pred_class[p]:
                continue
            union = pred_area[p] + gt_area[g] - inter[g, p] - pred_on_void[p]
            iou = inter[g, p] / union
            if iou > 0.5:
                stat = self._stat(gt_class[g])
                stat["tp"] += 1
                stat["iou"] += iou
                gt_matched[g] = pred_matched[p] = True

        crowd_of_class = {}
        for g in range(1, n_gt):
            if gt_crowd[g]:
                crowd_of_class[int(gt_class[g])] = g
            elif not gt_matched[g]:
                self._stat(gt_class[g])["fn"] += 1
        for p in range(1, n_pred):
            if pred_matched[p]:
                continue
            ignored = pred_on_void[p]
            crowd_segment = crowd_of_class.get(int(pred_class[p]))
            if crowd_segment is not None:
                ignored += inter[crowd_segment, p]
            if ignored / pred_area[p] > 0.5:
                continue
            self._stat(pred_class[p])["fp"] += 1

    def merge(self, other: PanopticQuality) -> PanopticQuality:
        for cls, stat in other.stats.items():
            mine = self._stat(cls)
            for field in _STAT_FIELDS:
                mine[field] += stat[field]
        return self

    def per_class(self) -> dict[int, dict[str, float]]:
        """`{class: {"pq", "sq", "rq"}}` for the classes seen."""
        out = {}
        for cls, s in sorted(self.stats.items()):
            denominator = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
            if denominator == 0:
                continue
            sq = s["iou"] / s["tp"] if s["tp"] else 0.0
            out[cls] = {"pq": s["iou"] / denominator, "sq": sq, "rq": s["tp"] / denominator}
        return out

    def result(self) -> dict[str, float]:
        """`pq, sq, rq` overall and `pq_things, ..., rq_stuff` (class means; NaN if no class)."""
        per_class = self.per_class()
        out = {}
        for suffix, keep in (("", lambda c: True), ("_things", lambda c: c in self.thing_classes),
                             ("_stuff", lambda c: c not in self.thing_classes)):
            chosen = [v for c, v in per_class.items() if keep(c)]
            for metric in ("pq", "sq", "rq"):
                out[metric + suffix] = (float(np.mean([v[metric] for v in chosen]))
                                        if chosen else float("nan"))
        return out
