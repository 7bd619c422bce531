"""Evaluation reads a split exactly once: every example scored once on 8 devices and on 2
processes, padding hidden from every accumulator, references cached, the ADM reference's
statistics used, and a progress line while features are extracted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import eval_protocol_worker as worker
import jax
import ml_collections
import numpy as np
import pytest
from test_fid import BlockMeanFeatures

from fsq_jax import data
from fsq_jax.data import scenes
from fsq_jax.eval import codebook_report, fid, prdc, references
from fsq_jax.eval.progress import Progress
from fsq_jax.train import evaluation, sharding

ROOT = Path(__file__).resolve().parents[1]


def _images(split: str, count: int) -> np.ndarray:
    size = worker.EVAL_SIZE if split == "validation" else worker.TRAIN_SIZE
    source = scenes.SceneSource(split, size, 16, seed=0)
    return np.stack([source[i]["image"] for i in range(count)])


def _context(data_fn=data.build, config=None) -> evaluation.EvalContext:
    return evaluation.EvalContext(sharding.create_mesh(), jax.random.key(0), 0, data_fn,
                                  worker.data_config() if config is None else config)


def _expected() -> dict:
    """What one pass over the 37 validation and 29 train scenes must give, computed directly."""
    extractor = BlockMeanFeatures()
    val, train = _images("validation", worker.EVAL_SIZE), _images("train", worker.TRAIN_SIZE)
    generated = fid.FeatureStats(48).update(extractor(val))
    real = fid.FeatureStats(48).update(extractor(train))
    codes = np.asarray(worker.codes(val))
    pr = prdc.precision_recall(extractor(train[:worker.PR_EXAMPLES]), extractor(val))
    means = [val[i * 16:(i + 1) * 16].astype(np.float32).mean() for i in range(2)]
    return {
        "ids": [worker.image_id(image) for image in val],
        "counts": np.bincount(codes, minlength=worker.NUM_CODES).tolist(),
        "usage": codebook_report.codebook_stats(np.bincount(codes, minlength=8))["usage"],
        "fid": fid.fid_from_stats(generated, real, allow_singular=True),
        "precision": pr["precision"], "recall": pr["recall"],
        "mean_pixel": float(np.mean(means)),
    }


def test_every_example_is_scored_once_on_8_devices(tmp_path):
    assert jax.device_count() == 8
    result = worker.evaluate(str(tmp_path))
    expected = _expected()
    assert result["num_examples"] == worker.EVAL_SIZE
    assert result["local"] == result["gathered"] == expected["ids"]  # in order, each once
    # Usage counts only the 37 real codes (the 11 padding rows repeat the last example).
    assert result["counts"] == expected["counts"] and sum(result["counts"]) == 37
    assert result["usage"]["num_examples"] == 37
    assert result["usage"]["usage"] == pytest.approx(expected["usage"])
    # FID statistics and precision/recall over exactly the real examples.
    assert result["fid"]["num_examples"] == 37
    assert result["fid"]["fid"] == pytest.approx(expected["fid"], rel=1e-9)
    assert result["fid"]["precision"] == expected["precision"]
    assert result["fid"]["recall"] == expected["recall"]
    extractor = BlockMeanFeatures()
    val = _images("validation", 37)
    padded = np.concatenate([val, np.repeat(val[-1:], 11, axis=0)])
    with_padding = fid.fid_from_stats(fid.FeatureStats(48).update(extractor(padded)),
                                      fid.FeatureStats(48).update(extractor(_images("train", 29))),
                                      allow_singular=True)
    assert abs(with_padding - expected["fid"]) > 1e-3  # the check would see padding
    # Eval-step averages: two full batches, the first 32 examples.
    assert result["eval"]["mean_pixel"] == pytest.approx(expected["mean_pixel"], rel=1e-6)


def test_eval_steps_never_average_a_padded_batch():
    context = _context()
    step = jax.jit(worker.batch_mean)
    metrics, first = evaluation.average_eval_steps(step, None, context, 16, 2)
    assert set(metrics) == {"mean_pixel"} and "mask" not in first
    # 3 batches of 16 need 48 examples; 37 would leave 11 rows of padding in the third.
    with pytest.raises(RuntimeError, match="need 48 examples, but the 'validation' data has 37"):
        evaluation.average_eval_steps(step, None, context, 16, 3)


def test_context_helpers_and_stand_in_data_functions():
    context = _context()
    batch = {"x": np.arange(4), "mask": np.array([True, True, False, False])}
    np.testing.assert_array_equal(context.real(batch)["x"], [0, 1])
    np.testing.assert_array_equal(context.real(np.arange(4) * 10, batch), [0, 10])
    np.testing.assert_array_equal(context.gather((np.arange(4),), batch)[0], [0, 1])
    assert context.count(batch) == 2
    # A data function without the evaluation mode: rows count as real up to num_examples.
    stand_in = lambda config, split, batch_size, **kwargs: iter(
        [{"x": np.arange(4)}, {"x": np.arange(4, 8)}, {"x": np.arange(8, 12)}])
    batches = list(_context(stand_in, ml_collections.ConfigDict()).batches(4, 6))
    assert [b["mask"].tolist() for b in batches] == [[True] * 4, [True, True, False, False]]
    with pytest.raises(ValueError, match="give num_examples"):
        list(_context(stand_in, ml_collections.ConfigDict()).batches(4))


def test_a_cached_reference_reads_no_data(tmp_path):
    calls = []

    def counting(config, split, batch_size, **kwargs):
        calls.append((split, kwargs.get("num_examples")))
        return data.build(config, split, batch_size, **kwargs)

    context = _context(counting)
    extractor = BlockMeanFeatures()
    reference = references.SplitReference("test/train/full", "train", pr_examples=5)
    first = reference.load(context, extractor, batch_size=8, cache_dir=tmp_path)
    assert calls == [("train", None)]  # the whole split, once
    assert first.count == 29 and first.features.shape == (5, 48)
    train = _images("train", 29)
    np.testing.assert_allclose(first.mu, extractor(train).mean(0), rtol=1e-6)
    np.testing.assert_array_equal(first.features, extractor(train[:5]))
    again = reference.load(context, extractor, batch_size=8, cache_dir=tmp_path)
    assert calls == [("train", None)]  # served from the cache
    np.testing.assert_array_equal(again.sigma, first.sigma)
    np.testing.assert_array_equal(again.features, first.features)
    # More precision/recall images than cached: only those are read, the statistics stay.
    more = references.SplitReference("test/train/full", "train", pr_examples=12)
    assert more.load(context, extractor, batch_size=8, cache_dir=tmp_path).features.shape == (
        12, 48)
    assert calls == [("train", None), ("train", 12)]
    # Statistics over the first N only: a different key, first N images.
    first_n = references.SplitReference("test/train/n10", "train", num_examples=10)
    assert first_n.load(context, extractor, batch_size=8, cache_dir=tmp_path).count == 10
    with pytest.raises(ValueError, match="invalid reference-statistics key"):
        references.SplitReference("../x")


def test_runs_side_by_side_compute_a_missing_reference_once(tmp_path):
    """Two runs (threads here; processes in the demo) that need the same uncached reference:
    the first computes it under the cache lock, the second waits and reads its files."""
    import threading

    calls = []
    inside = threading.Event()

    def slow_counting(config, split, batch_size, **kwargs):
        calls.append(split)
        inside.set()
        time.sleep(0.5)  # the second run arrives while the first is reading
        return data.build(config, split, batch_size, **kwargs)

    reference = references.SplitReference("test/train/full", "train", pr_examples=5)
    extractor = BlockMeanFeatures()
    loaded = {}

    def run(name):
        loaded[name] = reference.load(_context(slow_counting), extractor, batch_size=8,
                                      cache_dir=tmp_path)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    inside.wait(timeout=60)
    run("second")
    first.join()
    assert calls == ["train"]  # one pass over the split
    np.testing.assert_array_equal(loaded["first"].sigma, loaded["second"].sigma)
    np.testing.assert_array_equal(loaded["first"].features, loaded["second"].features)
    assert (tmp_path / "fid_stats" / "test__train__full.npz.lock").exists()


def _maskgit_config(tmp_path, reference=""):
    from configs.maskgit import transformer

    config = transformer.get_config("fsq,tiny")
    config.data.update(image_size=16, eval_size=37, train_size=29, read_threads=0)
    config.evaluators.update(num_images=20, batch_size=8, reference=reference)
    return config


def test_stage_two_fid_scores_against_an_adm_reference_file(tmp_path):
    """With `evaluators.reference` set, sampling FID uses the file's mu/sigma (not its images'
    statistics) and precision/recall its images, as the ADM suite does."""
    from maskgit import evaluation as maskgit_evaluation

    extractor = BlockMeanFeatures()
    reference_images = _images("train", 24)
    rng = np.random.default_rng(0)
    mu = extractor(reference_images).mean(0) + 0.05
    basis = rng.normal(size=(48, 48)) * 0.02
    sigma = basis @ basis.T + 1e-3 * np.eye(48)
    path = tmp_path / "VIRTUAL_tiny.npz"
    np.savez(path, arr_0=reference_images, mu=mu, sigma=sigma)
    config = _maskgit_config(tmp_path, str(path))
    evaluator = maskgit_evaluation.fid_evaluator(
        config, "sampling", lambda state, batch, rng, context: batch["image"],
        precision_recall=True, extractor=extractor, cache_dir=tmp_path / "cache")
    result = dict(evaluator.run(None, _context(config=config.data)))

    samples = extractor(_images("validation", 20))
    stats = fid.FeatureStats(48).update(samples)
    expected = fid.frechet_distance(stats.mean, stats.covariance, mu, sigma,
                                    eps=fid.DEFAULT_EPS)
    assert result["num_examples"] == 20
    assert result["fid"] == pytest.approx(expected, rel=1e-9)
    own = fid.fid_from_stats(stats, fid.FeatureStats(48).update(extractor(reference_images)),
                             allow_singular=True)
    assert abs(result["fid"] - own) > 1e-3  # not the statistics of arr_0
    pr = prdc.precision_recall(extractor(reference_images), samples)
    assert (result["precision"], result["recall"]) == (pr["precision"], pr["recall"])
    config.evaluators.reference = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        maskgit_evaluation.reference(config, True)


def test_both_stages_default_to_the_whole_train_split(tmp_path):
    """Reconstruction and sampling FID share one reference: statistics of the entire train split,
    unaugmented ("full" in the key); stage II also keeps the first num_images for
    precision/recall."""
    from configs.maskgit import tokenizer
    from maskgit import evaluation as maskgit_evaluation

    stage2 = _maskgit_config(tmp_path)
    stage2.evaluators.reference_images = 0
    stage1 = tokenizer.get_config("fsq,tiny")
    stage1.data.update(stage2.data)
    stage1.evaluators.reference_images = 0
    sampling = maskgit_evaluation.reference(stage2, precision_recall=True)
    reconstruction = maskgit_evaluation.reference(stage1, precision_recall=False)
    assert sampling.split == reconstruction.split == "train"
    assert sampling.num_examples is None and sampling.pr_examples == 20
    assert sampling.paths()[0] == reconstruction.paths()[0]  # the same statistics file
    key = sampling.key
    assert key.endswith("/full") and "/train/" in key and "seed0" in key and "16-center" in key
    stage2.data.seed = 1
    assert maskgit_evaluation.reference(stage2, True).key != key
    stage2.evaluators.reference_images = 10
    assert maskgit_evaluation.reference(stage2, True).key.endswith("/n10")


def test_progress_reports_rate_and_eta():
    lines, now = [], [0.0]
    progress = Progress("reference", 1000, every_s=10, log=lines.append, clock=lambda: now[0])
    now[0] = 5.0
    progress.update(100)  # too soon for a line
    now[0] = 20.0
    progress.update(100)
    now[0] = 40.0
    progress.done()
    assert lines == ["reference: started (1000 images)",
                     "reference: 200/1000 images, 10.0 images/s, ETA 1m20s",
                     "reference: 200 images in 40s (5.0 images/s)"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_score_every_example_once(tmp_path):
    """Two processes of 2 CPU devices each: the hosts read disjoint examples that together are
    the split, and every evaluator gives the single-process numbers on both."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    processes = [subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "eval_protocol_worker.py"),
         "--out", str(tmp_path / f"{index}.json"), "--cache_dir", str(tmp_path / "cache"),
         "--coordinator", f"localhost:{port}", "--num_processes", "2",
         "--process_id", str(index)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for index in range(2)]
    for process in processes:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-4000:]
    results = [json.loads((tmp_path / f"{index}.json").read_text()) for index in range(2)]
    assert [r["process_count"] for r in results] == [2, 2]
    expected = _expected()
    local = [set(r["local"]) for r in results]
    assert not local[0] & local[1]  # no example on both hosts
    assert sorted(results[0]["local"] + results[1]["local"]) == sorted(expected["ids"])
    single = worker.evaluate(str(tmp_path / "single"))
    for result in results:
        assert result["gathered"] == expected["ids"]
        assert result["counts"] == expected["counts"]
        assert result["usage"] == pytest.approx(single["usage"])
        assert result["fid"] == pytest.approx(single["fid"], rel=1e-9)
        assert result["eval"] == pytest.approx(single["eval"], rel=1e-6)
