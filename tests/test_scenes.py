"""Procedural scenes: determinism, shapes, exact consistency of depth, panoptic maps and label."""

import dataclasses
import math

import numpy as np
import pytest

from fsq_jax.data import scenes

KEYS = ("image", "label", "depth", "panoptic_semantic", "panoptic_instance", "gray")


def _ray(size: int, row: int, col: int) -> tuple[float, float, float]:
    """World direction (scaled to unit z-depth) of the ray through a pixel centre, from first
    principles: pinhole with focal FOCAL * size, principal point at the centre, pitched down."""
    focal = scenes.FOCAL * size
    right = (col + 0.5 - size / 2) / focal
    down = (row + 0.5 - size / 2) / focal
    sin, cos = math.sin(scenes.PITCH), math.cos(scenes.PITCH)
    return right, -down * cos - sin, -down * sin + cos


def _background_depth(size: int) -> np.ndarray:
    """Depth of the floor / backdrop without objects, per pixel, computed independently."""
    depth = np.empty((size, size))
    for row in range(size):
        _, dy, dz = _ray(size, row, 0)
        backdrop = scenes.BACKDROP_DEPTH / dz
        floor = scenes.CAMERA_HEIGHT / -dy if dy < 0 else math.inf
        depth[row] = floor if floor * dz < scenes.BACKDROP_DEPTH else backdrop
    return depth


def test_same_seed_split_index_gives_identical_arrays():
    first = scenes.render_scene(7, "train", 11, 64)
    second = scenes.render_scene(7, "train", 11, 64)
    assert set(first) == set(KEYS)
    for key in KEYS:
        np.testing.assert_array_equal(first[key], second[key])


def test_indices_splits_and_seeds_give_different_scenes():
    images = [
        scenes.render_scene(seed, split, index, 32)["image"]
        for seed, split, index in [
            (0, "train", 0),
            (0, "train", 1),
            (0, "validation", 0),
            (0, "test", 0),
            (1, "train", 0),
        ]
    ]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert not np.array_equal(images[i], images[j]), (i, j)


def test_splits_draw_different_layouts():
    # Same index in different splits must not share layouts (disjoint random streams).
    for index in range(20):
        layouts = [scenes.sample_layout(0, split, index) for split in scenes.SPLITS]
        assert layouts[0] != layouts[1] and layouts[0] != layouts[2] and layouts[1] != layouts[2]


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_shapes_and_dtypes(size):
    example = scenes.render_scene(0, "validation", 3, size)
    assert example["image"].shape == (size, size, 3) and example["image"].dtype == np.uint8
    assert example["label"].shape == () and example["label"].dtype == np.int32
    assert example["depth"].shape == (size, size) and example["depth"].dtype == np.float32
    for key in ("panoptic_semantic", "panoptic_instance"):
        assert example[key].shape == (size, size) and example[key].dtype == np.int32
    assert example["gray"].shape == (size, size, 1) and example["gray"].dtype == np.uint8
    assert 0 <= example["label"] < scenes.NUM_CLASSES


def test_at_least_ten_classes_all_occur():
    assert scenes.NUM_CLASSES >= 10
    assert len(set(scenes.THING_NAMES)) == scenes.NUM_CLASSES
    seen = {o.class_id for i in range(300) for o in scenes.sample_layout(0, "train", i).objects}
    assert seen == set(range(scenes.NUM_CLASSES))
    counts = [len(scenes.sample_layout(0, "train", i).objects) for i in range(300)]
    assert min(counts) >= 1 and max(counts) == 4


def test_gray_is_bt601_luminance_of_image():
    example = scenes.render_scene(2, "train", 5, 64)
    rgb = example["image"].astype(np.int64)
    expected = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000
    np.testing.assert_array_equal(example["gray"][..., 0], expected)


def test_stuff_pixels_have_exact_camera_depth_and_stuff_classes():
    size = 64
    background = _background_depth(size)
    for index in range(10):
        example = scenes.render_scene(0, "train", index, size)
        stuff = example["panoptic_instance"] == 0
        semantic = example["panoptic_semantic"]
        assert set(np.unique(semantic[stuff])) <= {scenes.SKY, scenes.GROUND}
        np.testing.assert_allclose(example["depth"][stuff], background[stuff], rtol=1e-5)
        # Ground is below the sky everywhere: floor pixels have z-depth from the ground plane.
        ground_rows = np.nonzero((semantic == scenes.GROUND).any(axis=1))[0]
        sky_rows = np.nonzero((semantic == scenes.SKY).any(axis=1))[0]
        assert sky_rows.max() < ground_rows.min()
        # Objects stand in front of what they hide.
        things = ~stuff
        assert np.all(example["depth"][things] < background[things])
        assert np.all(example["depth"] > 0)


def test_instances_carry_one_thing_class_and_label_is_largest_visible_object():
    checked_occlusions = 0
    for index in range(30):
        layout = scenes.sample_layout(3, "train", index)
        example = scenes.render_layout(layout, 64)
        instance, semantic = example["panoptic_instance"], example["panoptic_semantic"]
        ids = [i for i in np.unique(instance) if i > 0]
        for i in ids:
            classes = np.unique(semantic[instance == i])
            assert classes.tolist() == [layout.objects[i - 1].class_id]
        areas = [(instance == i).sum() for i in range(1, len(layout.objects) + 1)]
        expected = layout.objects[int(np.argmax(areas))].class_id  # ties: nearest (lowest id)
        assert example["label"] == expected
        checked_occlusions += sum(a > 0 for a in areas) < len(areas) or _overlaps(layout)
    assert checked_occlusions > 0


def _overlaps(layout: scenes.SceneLayout) -> bool:
    masks = [
        scenes.render_layout(dataclasses.replace(layout, objects=(o,)), 64)["panoptic_instance"] > 0
        for o in layout.objects
    ]
    return any(
        (masks[i] & masks[j]).any() for i in range(len(masks)) for j in range(i + 1, len(masks))
    )


def test_nearer_objects_occlude_farther_ones_per_pixel():
    """z-buffer: the composite equals the per-pixel minimum over objects rendered alone."""
    size, overlapping_pixels = 64, 0
    for index in range(40):
        layout = scenes.sample_layout(1, "train", index, min_objects=3, max_objects=4)
        example = scenes.render_layout(layout, size)
        alone = []
        for obj in layout.objects:
            single = scenes.render_layout(dataclasses.replace(layout, objects=(obj,)), size)
            alone.append(np.where(single["panoptic_instance"] > 0, single["depth"], np.inf))
        alone = np.stack(alone)
        hits = np.isfinite(alone).sum(axis=0)
        overlapping_pixels += int((hits >= 2).sum())
        covered = hits > 0
        nearest = np.argmin(alone, axis=0) + 1
        np.testing.assert_array_equal(example["panoptic_instance"][covered], nearest[covered])
        np.testing.assert_array_equal(example["panoptic_instance"][~covered], 0)
        np.testing.assert_array_equal(example["depth"][covered], alone.min(axis=0)[covered])
        classes = np.array([o.class_id for o in layout.objects])
        np.testing.assert_array_equal(
            example["panoptic_semantic"][covered], classes[nearest[covered] - 1]
        )
        # Instance ids are numbered by distance: 1 is the nearest object.
        assert [o.z for o in layout.objects] == sorted(o.z for o in layout.objects)
    assert overlapping_pixels > 100  # the scenes really contain occlusions


def test_sphere_depth_matches_analytic_ray_intersection():
    size = 64
    sphere = scenes.SceneObject(
        "sphere", "rubber", 0, x=0.3, z=4.0, radius=0.5, height=1.0, yaw=0.0, colour=(0.8, 0.2, 0.1)
    )
    layout = dataclasses.replace(scenes.sample_layout(0, "train", 0), objects=(sphere,))
    example = scenes.render_layout(layout, size)
    rows, cols = np.nonzero(example["panoptic_instance"] == 1)
    assert len(rows) > 50
    centre = np.array([0.3, 0.5, 4.0])
    origin = np.array([0.0, scenes.CAMERA_HEIGHT, 0.0])
    for row, col in zip(rows, cols):
        d = np.array(_ray(size, row, col))
        oc = origin - centre
        a, b, c = d @ d, 2 * d @ oc, oc @ oc - 0.25
        t = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
        assert example["depth"][row, col] == pytest.approx(t, rel=1e-5)
    assert example["label"] == 0


def test_sky_is_a_smooth_vertical_gradient():
    example = scenes.render_scene(0, "train", 4, 64)
    sky_rows = np.nonzero((example["panoptic_semantic"] == scenes.SKY).all(axis=1))[0]
    assert len(sky_rows) > 5
    sky = example["image"][sky_rows].astype(int)
    assert np.all(sky == sky[:, :1])  # constant along each row
    assert np.abs(np.diff(sky[:, 0], axis=0)).max() <= 6  # no noise between rows


def test_scene_source_random_access():
    source = scenes.SceneSource("validation", 5, 32, seed=3)
    assert len(source) == 5
    np.testing.assert_array_equal(
        source[4]["image"], scenes.render_scene(3, "validation", 4, 32)["image"]
    )
    with pytest.raises(IndexError, match="out of range"):
        source[5]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split 'training'"):
        scenes.render_scene(0, "training", 0, 32)
    with pytest.raises(ValueError, match="image_size"):
        scenes.render_scene(0, "train", 0, 4)
    with pytest.raises(ValueError, match="min_objects"):
        scenes.SceneSource("train", 10, 32, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="index"):
        scenes.render_scene(0, "train", -1, 32)


@pytest.mark.slow
def test_many_scenes_at_every_resolution_are_consistent():
    """Invariants over many scenes and all resolutions (slow: a few thousand renders)."""
    for size in (32, 128, 256):
        background = _background_depth(size)
        for index in range(60):
            layout = scenes.sample_layout(5, "test", index)
            example = scenes.render_layout(layout, size)
            instance, semantic = example["panoptic_instance"], example["panoptic_semantic"]
            stuff = instance == 0
            np.testing.assert_allclose(example["depth"][stuff], background[stuff], rtol=1e-5)
            assert np.all(example["depth"][~stuff] < background[~stuff])
            classes = np.array([o.class_id for o in layout.objects])
            np.testing.assert_array_equal(semantic[~stuff], classes[instance[~stuff] - 1])
            alone = np.stack(
                [
                    np.where(s["panoptic_instance"] > 0, s["depth"], np.inf)
                    for s in (
                        scenes.render_layout(dataclasses.replace(layout, objects=(o,)), size)
                        for o in layout.objects
                    )
                ]
            )
            covered = np.isfinite(alone).any(axis=0)
            np.testing.assert_array_equal(instance[covered], np.argmin(alone, 0)[covered] + 1)
