"""UViM's evaluation protocols: NYU depth (big_vision evaluators/proj/uvim/nyu_depth.py), COCO
panoptic (coco_panoptic.py: panopticapi at the original resolution, crowd regions ignored) and
ColTran's FID-5k (coltran_fid.py), on synthetic examples at the real shapes and on TFDS mock
data, against references: jax.image.resize, panopticapi, TensorFlow's area resize."""

import contextlib
import hashlib
import importlib
import json
import re

import jax
import ml_collections
import numpy as np
import pytest

from fsq_jax import data, quantizers, train
from fsq_jax import images as image_lib
from fsq_jax.data import preprocess
from fsq_jax.eval import fid
from fsq_jax.train import evaluation
from uvim import coltran_fid
from uvim.outputs import depth, panoptic
from uvim.tasks import Stage1Task

NYU = (480, 640)


def _resize_like_big_vision(prediction, shape):
    """big_vision's `_resize_nearest`: jax.image.resize(..., "nearest") on the CPU."""
    return np.asarray(jax.image.resize(np.asarray(prediction), shape, "nearest"))


def _nyu_errors(prediction, truth, max_depth):
    """Per-image RMSE, AbsRel and delta1 of nyu_depth.py over 1e-3 < gt < max_depth."""
    valid = (truth > 1e-3) & (truth < max_depth)
    g, p = truth[valid].astype(np.float64), prediction[valid].astype(np.float64)
    return (np.sqrt(np.mean((g - p) ** 2)), np.mean(np.abs(g - p) / g),
            np.mean(np.maximum(g / p, p / g) < 1.25))


# ---------------------------------------------------------------- NYU depth


def test_nyu_depth_is_scored_on_the_native_crop():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        truth = rng.uniform(0.5, 9.0, NYU).astype(np.float32)
        truth[rng.random(NYU) < 0.1] = 0.0  # missing
        truth[rng.random(NYU) < 0.05] = 12.0  # beyond the range: not scored
        frames.append({"image": rng.integers(0, 256, (*NYU, 3), dtype=np.uint8),
                       "depth": truth})
    examples = [preprocess.square_resize(f, 64, "nyu_eval_crop", False, native_shape=(426, 560))
                for f in frames]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    prediction = rng.uniform(0.5, 9.0, (3, 64, 64)).astype(np.float32)
    metric = depth.DepthMetric(1e-3, 10.0)
    metric.update({"depth": prediction}, batch)
    result = metric.result()
    expected = np.mean([_nyu_errors(_resize_like_big_vision(prediction[i], (426, 560)),
                                    frames[i]["depth"][54:480, 41:601], 10.0)
                        for i in range(3)], axis=0)
    assert result["rmse"] == pytest.approx(expected[0], rel=1e-6)
    assert result["abs_rel"] == pytest.approx(expected[1], rel=1e-6)
    assert result["delta1"] == pytest.approx(expected[2], rel=1e-6)
    # At the model's resolution (the old protocol) the number differs.
    plain = depth.DepthMetric(1e-3, 10.0)
    plain.update({"depth": prediction}, {"depth": batch["depth"]})
    assert abs(plain.result()["rmse"] - result["rmse"]) > 1e-3


@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=6):
        yield


def _tiny(task, **data_fields):
    config = importlib.import_module(f"configs.uvim.{task}").get_config("fsq,tiny")
    config.model.update(width=16, num_heads=2, mlp_dim=32, enc_depth=1, dec_depth=1,
                        patch_size=8, code_len=4)
    config.data.update(image_size=32, read_threads=0, **data_fields)
    config.batch_size = config.eval_batch_size = 4
    config.evaluators.num_batches = 0  # the whole validation split
    return config


def _noisy_state(task, config):
    """A stage-I state with random weights everywhere (the heads start at zero)."""
    batch = next(data.build(config.data, "train", 4))

    @jax.jit
    def init(key):
        state = task.init_state(key, batch)
        leaves, tree = jax.tree.flatten(state.params["model"])
        keys = jax.random.split(key, len(leaves))
        noisy = [leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)
                 for leaf, k in zip(leaves, keys)]
        return state.replace(params={"model": jax.tree.unflatten(tree, noisy)})

    return init(jax.random.key(0, impl="unsafe_rbg"))


def _predict_one(task, state, example):
    batch = {k: v[None] for k, v in example.items() if not k.startswith("native_")}
    prediction, _ = task._reconstruct(state.params["model"], state.model_state, batch)
    return jax.tree.map(lambda x: np.asarray(x)[0], prediction)


def test_nyu_evaluator_reads_every_validation_frame_once(tfds_mock):
    # 6 mock frames of 480x640 in batches of 4: 4 + 2, each frame once, scored at 426x560.
    config = _tiny("depth", source="tfds:nyu_depth_v2", crop="inception",
                   eval_crop="nyu_eval_crop", eval_native_shape=(426, 560))
    train.validate(config)
    task = Stage1Task(config)
    state = _noisy_state(task, config)
    result = dict(task.evaluators()[0].run(state, evaluation.context_for(config)))
    source = data.TfdsSource("nyu_depth_v2", "validation")
    errors = []
    for i in range(len(source)):
        frame = source[i]
        assert frame["depth"].shape == NYU
        example = preprocess.square_resize(frame, 32, "nyu_eval_crop", False)
        predicted = _predict_one(task, state, example)["depth"]
        errors.append(_nyu_errors(_resize_like_big_vision(predicted, (426, 560)),
                                  frame["depth"][54:480, 41:601], config.output.max_depth))
    assert len(errors) == 6
    assert result["rmse"] == pytest.approx(np.mean(errors, axis=0)[0], rel=1e-5)


# ---------------------------------------------------------------- COCO panoptic


def _coco_png(sem, inst, crowd, folder, name):
    """One image in COCO panoptic format: every (class, crowd, instance) a segment."""
    from PIL import Image

    key = np.where(sem < 0, -1, (sem.astype(np.int64) * 2 + crowd) * 1000 + inst)
    ids = np.zeros(sem.shape, np.int64)
    segments = []
    for index, k in enumerate(k for k in np.unique(key) if k >= 0):
        ids[key == k] = 1000 + 37 * index
        segments.append({"id": 1000 + 37 * index, "category_id": int(k // 1000 // 2) + 1,
                         "iscrowd": int(k // 1000 % 2), "area": int((key == k).sum())})
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(folder / f"{name}.png")
    return {"image_id": name, "file_name": f"{name}.png", "segments_info": segments}


def _panopticapi_pq(tmp_path, truths, predictions, num_classes, things):
    """panopticapi pq_compute_single_core over (semantic, instance, crowd) ground truths and
    (semantic, slot) predictions of any sizes; returns {"pq", "pq_things", "pq_stuff"} in %."""
    evaluation_api = pytest.importorskip("panopticapi.evaluation")
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    pairs = [(_coco_png(*truth, gt_dir, f"im{i}"),
              _coco_png(*prediction, np.zeros_like(prediction[0], bool), pred_dir, f"im{i}"))
             for i, (truth, prediction) in enumerate(zip(truths, predictions))]
    categories = {c + 1: {"id": c + 1, "name": str(c), "isthing": int(c in things)}
                  for c in range(num_classes)}
    json.dumps(pairs)
    stat = evaluation_api.pq_compute_single_core(0, pairs, str(gt_dir), str(pred_dir),
                                                 categories)
    out = {}
    for suffix, isthing in (("", None), ("_things", True), ("_stuff", False)):
        with contextlib.suppress(ZeroDivisionError):  # no class of that kind was seen
            out["pq" + suffix] = 100 * stat.pq_average(categories, isthing=isthing)[0]["pq"]
    return out


def _coco_example(rng, height, width):
    """Stuff bands, thing instances, a crowd region of class 0 and void, at height x width."""
    semantic = np.full((height, width), 5, np.int32)
    semantic[height // 2:] = 4
    instance = np.zeros((height, width), np.int32)
    for i in range(1, 4):
        y, x = rng.integers(0, height - 60), rng.integers(0, width - 80)
        semantic[y:y + 60, x:x + 80], instance[y:y + 60, x:x + 80] = i % 3, i
    crowd = np.zeros((height, width), bool)
    crowd[-90:-10, -120:-20] = True
    semantic[crowd], instance[crowd] = 0, 0
    semantic[:12, :40] = -1
    return {"image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "panoptic_semantic": semantic, "panoptic_instance": instance,
            "panoptic_crowd": crowd}


def test_coco_panoptic_is_panopticapi_at_the_original_size(tmp_path):
    rng = np.random.default_rng(3)
    shapes = [(480, 640), (640, 427), (333, 500)]
    examples = [_coco_example(rng, *shape) for shape in shapes]
    size = 64
    processed = [preprocess.square_resize(e, size, "resize", False, native_shape=(640, 640))
                 for e in examples]
    batch = {k: np.stack([p[k] for p in processed]) for k in processed[0]}
    # A prediction at 64x64: the resized truth, every segment in its own slot, plus errors:
    # a stuff region split over two slots, a wrong class patch, a spurious thing on the crowd.
    encoded = np.asarray(panoptic.encode_panoptic(batch["panoptic_semantic"],
                                                  batch["panoptic_instance"], 100))
    semantic, slot = encoded[..., 0] - 1, encoded[..., 1].copy()
    slot[0, 40:] = np.where(semantic[0, 40:] >= 0, 60, slot[0, 40:])
    semantic[1, 5:15, 5:25] = 2
    semantic[2, -8:-3, -10:-4], slot[2, -8:-3, -10:-4] = 0, 70
    slot = np.where(semantic < 0, 0, slot)
    output = panoptic.PanopticOutput(ml_collections.ConfigDict(
        {"name": "panoptic", "num_classes": 6, "max_instances": 100, "thing_classes": (0, 1, 2)}))
    metric = output.new_metric()
    metric.update({"semantic": semantic, "instance": slot}, batch)
    result = metric.result()
    truths = [(e["panoptic_semantic"], e["panoptic_instance"], e["panoptic_crowd"])
              for e in examples]
    predictions = [(_resize_like_big_vision(semantic[i], shape),
                    _resize_like_big_vision(slot[i], shape)) for i, shape in enumerate(shapes)]
    expected = _panopticapi_pq(tmp_path, truths, predictions, 6, (0, 1, 2))
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
    assert 20 < result["pq"] < 95
    # Without the crowd map the spurious thing on the crowd would be a false positive.
    no_crowd = {k: v for k, v in batch.items() if "crowd" not in k}
    plain = output.new_metric()
    plain.update({"semantic": semantic, "instance": slot}, no_crowd)
    assert plain.result()["pq_things"] < result["pq_things"] - 1


COCO_SHAPES = ((480, 640), (640, 427), (333, 500), (427, 640), (375, 500), (612, 612))


def _coco_records(seed):
    """COCO panoptic TFDS records at real image sizes: RGB-encoded segment ids, contiguous
    labels (things 0..79, stuff 80..132) and crowd flags, as tfds coco/2017_panoptic has them."""
    rng = np.random.default_rng(seed)
    records = []
    for image_id, shape in enumerate(COCO_SHAPES):
        example = _coco_example(rng, *shape)
        semantic = np.where(example["panoptic_semantic"] >= 4,
                            example["panoptic_semantic"] + 80, example["panoptic_semantic"])
        key = np.where(semantic < 0, -1, (semantic * 2 + example["panoptic_crowd"]) * 1000
                       + example["panoptic_instance"])
        ids, objects = np.zeros(shape, np.int64), {"id": [], "label": [], "is_crowd": []}
        keys = [k for k in np.unique(key) if k >= 0]
        segment_ids = rng.choice(2**24 - 1, len(keys), replace=False) + 1  # distinct, nonzero
        for k, segment_id in zip(keys, segment_ids.tolist()):
            ids[key == k] = segment_id
            objects["id"].append(segment_id)
            objects["label"].append(int(k // 2000))
            objects["is_crowd"].append(bool(k // 1000 % 2))
        png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        records.append({"image": example["image"], "image/id": image_id, "panoptic_image": png,
                        "panoptic_objects": {k: np.asarray(v) for k, v in objects.items()}})
    return records


def test_coco_evaluator_reads_the_whole_split_at_original_sizes(tmp_path):
    # tfds.data_source mocked with COCO-format records at real sizes (with crowd regions): the
    # evaluator reads all 6 once, in batches of 4 + 2, and scores at the original sizes.
    tfds = pytest.importorskip("tensorflow_datasets")
    records = {"train": _coco_records(0), "validation": _coco_records(1)}
    with tfds.testing.mock_data(
            policy=tfds.testing.MockPolicy.USE_CODE,
            as_data_source_fn=lambda builder, split, **kwargs: records[split]):
        config = _tiny("panoptic", source="tfds:coco/2017_panoptic", crop="inception",
                       eval_native_shape=(640, 640))
        config.output.update(num_classes=133, thing_classes=tuple(range(80)), max_instances=8)
        train.validate(config)
        task = Stage1Task(config)
        state = _noisy_state(task, config)
        result = dict(task.evaluators()[0].run(state, evaluation.context_for(config)))
        source = data.TfdsSource("coco/2017_panoptic", "validation")
        examples = [source[i] for i in range(len(source))]
    truths, predictions = [], []
    for example in examples:
        shape = example["image"].shape[:2]
        assert example["panoptic_crowd"].any()
        predicted = _predict_one(task, state, preprocess.square_resize(example, 32, "resize",
                                                                       False))
        truths.append((example["panoptic_semantic"], example["panoptic_instance"],
                       example["panoptic_crowd"]))
        predictions.append((_resize_like_big_vision(predicted["semantic"], shape),
                            _resize_like_big_vision(predicted["instance"], shape)))
    expected = _panopticapi_pq(tmp_path, truths, predictions, 133, tuple(range(80)))
    assert "pq" in expected
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key


# ---------------------------------------------------------------- ColTran FID-5k


def test_shipped_coltran_lists_are_big_visions():
    # big_vision/evaluators/proj/uvim/coltran_fid_data/{eval,reference}_file_names.txt
    digests = {coltran_fid.EVAL_FILES: "b0627a4677d206b64905ec4d70760f50"
                                       "f7b09363f65e624957c3d1cccb49eb89",
               coltran_fid.REFERENCE_FILES: "3d59b1214977c0021158d4264b3b18e4"
                                            "af1ff71cd24d22f6bedd39f57658f172"}
    names = {}
    for path, digest in digests.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        names[path] = coltran_fid.read_file_names(path)
        assert len(names[path]) == coltran_fid.NUM_IMAGES
        assert all(re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", n) for n in names[path])
    assert not set(names[coltran_fid.EVAL_FILES]) & set(names[coltran_fid.REFERENCE_FILES])


@pytest.mark.parametrize("shape, size", [((37, 53, 3), 16), ((30, 41, 3), 64), ((64, 64, 3), 32)])
def test_area_resize_is_tensorflows(shape, size):
    tf = pytest.importorskip("tensorflow")
    image = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    theirs = tf.image.resize(image, (size, size), method="area", antialias=True).numpy()
    np.testing.assert_allclose(coltran_fid.area_resize(image, size), theirs, rtol=1e-5,
                               atol=1e-3)


def test_coltran_preprocessing_and_quantisation():
    image = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    # resize_with_crop_or_pad to the short side: columns 10..39; 30 -> 30 is the identity.
    np.testing.assert_array_equal(coltran_fid.coltran_image(image, 30), image[:, 10:40])
    tall = np.random.default_rng(2).integers(0, 256, (51, 20, 3), dtype=np.uint8)
    np.testing.assert_array_equal(coltran_fid.coltran_image(tall, 20), tall[15:35])
    constant = np.stack([np.full((32, 32, 3), v, np.float32) for v in (-1.0, 0.0, 1.0, 0.5)])
    quantised = coltran_fid.quantize_colorization(constant)
    assert quantised.shape == (4, 256, 256, 3) and quantised.dtype == np.uint8
    np.testing.assert_array_equal(quantised[:, 0, 0, 0], [0, 128, 255, 192])  # round((y+1)128)


class _Context:
    def batch_rng(self, index):
        return jax.random.key(index)


def _features(images):
    """A small stand-in for Inception: mean colour and brightness spread per image."""
    x = np.asarray(images, np.float64)
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2, 3))[:, None]], axis=1)


def _records(rng, count):
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in rng.permutation(count) + 1]
    records = [{"file_name": name,
                "image": rng.integers(0, 256, (int(rng.integers(20, 40)),
                                               int(rng.integers(20, 40)), 3), dtype=np.uint8)}
               for name in names]
    return records, {r["file_name"]: i for i, r in enumerate(records)}


def test_fid_5k_colourises_the_listed_files_and_compares_with_the_reference_list(tmp_path):
    rng = np.random.default_rng(4)
    records, positions = _records(rng, 30)
    names = [r["file_name"] for r in records]
    eval_list, reference_list = tmp_path / "eval.txt", tmp_path / "reference.txt"
    eval_names, reference_names = names[3:15], names[17:27]
    eval_list.write_text("\n".join(eval_names))
    reference_list.write_text("\n".join(reference_names))
    colour_data = coltran_fid.ColtranFidData(records, positions, 32, eval_list, reference_list)
    seen = []

    def perfect_colouriser(state, batch, rng, context):
        seen.append(batch)
        return {"image": np.asarray(image_lib.to_float(batch["image"]))}

    evaluator = coltran_fid.ColtranFidEvaluator(perfect_colouriser, colour_data, batch_size=5,
                                                extractor=_features)
    result = dict(evaluator.run(None, _Context()))
    assert [len(b["image"]) for b in seen] == [5, 5, 2]
    inputs = np.concatenate([b["image"] for b in seen])
    by_name = {r["file_name"]: r["image"] for r in records}
    expected_inputs = np.stack([coltran_fid.coltran_image(by_name[n], 32) for n in eval_names])
    np.testing.assert_array_equal(inputs, expected_inputs)  # the listed files, in order
    np.testing.assert_array_equal(np.concatenate([b["gray"] for b in seen]),
                                  preprocess.luminance(expected_inputs))
    colourised = _features(coltran_fid.quantize_colorization(
        np.asarray(image_lib.to_float(expected_inputs))))
    reference = _features(np.stack([coltran_fid.coltran_image(by_name[n], 256)
                                    for n in reference_names]))
    expected = fid.frechet_distance(colourised.mean(0), np.cov(colourised, rowvar=False),
                                    reference.mean(0), np.cov(reference, rowvar=False))
    assert result["fid"] == pytest.approx(expected, rel=1e-6)
    assert result["fid"] > 1.0  # different images: the sets are disjoint

    reference_list.write_text("\n".join(names[10:20]))
    with pytest.raises(ValueError, match="share 5 files"):
        coltran_fid.ColtranFidData(records, positions, 32, eval_list, reference_list)
    reference_list.write_text("ILSVRC2012_val_99999999.JPEG")
    with pytest.raises(ValueError, match="1 files of the ColTran lists are not in the source"):
        coltran_fid.ColtranFidData(records, positions, 32, eval_list, reference_list)


def test_fid_5k_reads_tfds_by_file_name(tfds_mock, tmp_path):
    source = data.tfds_sources.open_source("imagenet2012", "validation")
    names = [str(source[i]["file_name"]) for i in range(6)]
    (tmp_path / "eval.txt").write_text("\n".join(names[:3]))
    (tmp_path / "reference.txt").write_text("\n".join(names[3:]))
    colour_data = coltran_fid.ColtranFidData.from_tfds(
        32, eval_files=tmp_path / "eval.txt", reference_files=tmp_path / "reference.txt")
    assert colour_data.eval_positions == [0, 1, 2]
    batch = colour_data.eval_batch(colour_data.eval_positions)
    assert batch["image"].shape == (3, 32, 32, 3) and batch["gray"].shape == (3, 32, 32, 1)
    np.testing.assert_array_equal(batch["image"][1],
                                  coltran_fid.coltran_image(source[1]["image"], 32))
    assert colour_data.reference_batch([3]).shape == (1, 256, 256, 3)


def test_colorization_presets_pick_the_fid_protocol():
    module = importlib.import_module("configs.uvim.colorization")
    paper = module.get_config("fsq,paper")
    assert paper.output.fid == "coltran"
    names = [e.name for e in Stage1Task(paper).evaluators()]
    assert names == ["oracle", "coltran_fid"]
    assert [e.name for e in Stage1Task(module.get_config("fsq,tiny")).evaluators()] == ["oracle"]
    paper.data.source = "tfds:imagenet_v2"
    with pytest.raises(ValueError, match=r"config.output.fid = 'coltran': 'coltran' scores"):
        train.validate(paper)
    assert quantizers.codebook_size(paper.quantizer) == 4375
