"""FID statistics and Fréchet distance: hand-worked Gaussians, the pytorch-fid formula, streaming,
caching and the FID evaluator (with a small stand-in feature network; the Inception parity is
in test_inception.py)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from fsq_jax.eval import evaluators, fid
from fsq_jax.train import EvalContext, sharding


class BlockMeanFeatures:
    """Stand-in for the Inception extractor: 4x4 block means of each channel -> 48-d features."""

    feature_dim = 48

    def __init__(self):
        self.calls = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        n, h, w, _ = images.shape
        x = images.astype(np.float64).reshape(n, 4, h // 4, 4, w // 4, 3).mean((2, 4))
        return (x.reshape(n, 48) / 255.0).astype(np.float32)


def _pytorch_fid(mu1, sigma1, mu2, sigma2) -> float:
    """The pytorch-fid formula, literally (scipy sqrtm, real part)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def _random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
@pytest.mark.filterwarnings("ignore:Matrix is singular")  # scipy's sqrtm on the singular case
def test_frechet_distance_hand_worked(method):
    # 1-D: N(0, 1) vs N(2, 4): 4 + 1 + 4 - 2 * sqrt(1 * 4) = 5.
    assert fid.frechet_distance([0.0], [[1.0]], [2.0], [[4.0]], method=method) == (
        pytest.approx(5.0, abs=1e-12))
    # Diagonal 2-D: |[1, 1]|^2 + (1 + 4) + (9 + 1) - 2 (sqrt(9) + sqrt(4)) = 2 + 15 - 10 = 7.
    value = fid.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.ones(2),
                                 np.diag([9.0, 1.0]), method=method)
    assert value == pytest.approx(7.0, abs=1e-12)
    # Singular S1 (no Cholesky factor): 1 + 13 - 2 * sqrt(1 * 4) = 10.
    value = fid.frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2),
                                 np.diag([4.0, 9.0]), method=method)
    assert value == pytest.approx(10.0, abs=1e-7)
    # Identical Gaussians: 0.
    rng = np.random.default_rng(0)
    sigma = _random_spd(rng, 5)
    assert abs(fid.frechet_distance(np.ones(5), sigma, np.ones(5), sigma, method=method)) < 1e-9


def test_frechet_distance_matches_pytorch_fid_formula_non_commuting():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = _random_spd(rng, 12), _random_spd(rng, 12)
    expected = _pytorch_fid(mu1, s1, mu2, s2)
    for method in ("eigh", "sqrtm"):
        assert fid.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(
            expected, rel=1e-10)


def test_eps_offset_follows_pytorch_fid_convention():
    """eps * I is added inside the square root only."""
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 4), _random_spd(rng, 4)
    mu = np.zeros(4)
    offset = 1e-2 * np.eye(4)
    covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset)).real
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid.frechet_distance(mu, s1, mu, s2, eps=1e-2) == pytest.approx(expected, rel=1e-10)


def test_feature_stats_streaming_and_merge_match_numpy():
    rng = np.random.default_rng(3)
    # A large common offset checks the numerical stability of the running update.
    x = (1e4 + rng.normal(size=(300, 6)) * np.arange(1, 7)).astype(np.float32)
    one_pass = fid.FeatureStats(6).update(x)
    streamed = fid.FeatureStats(6)
    for chunk in np.array_split(x, 7):
        streamed.update(chunk)
    merged = fid.FeatureStats(6).update(x[:100]).merge(fid.FeatureStats(6).update(x[100:]))
    merged.merge(fid.FeatureStats(6))  # merging an empty accumulator is a no-op
    expected_cov = np.cov(x.astype(np.float64), rowvar=False)
    for stats in (one_pass, streamed, merged):
        assert stats.count == 300
        np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.covariance, expected_cov, rtol=1e-9)


def test_feature_stats_save_load_roundtrip(tmp_path):
    x = np.random.default_rng(4).normal(size=(20, 3))
    stats = fid.FeatureStats(3).update(x)
    stats.save(tmp_path / "s.npz")
    loaded = fid.FeatureStats.load(tmp_path / "s.npz")
    assert loaded.count == 20
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.covariance, stats.covariance)
    with np.load(tmp_path / "s.npz") as data:  # pytorch-fid style keys for other tools
        np.testing.assert_allclose(data["sigma"], np.cov(x, rowvar=False), rtol=1e-12)


def test_singular_covariance_needs_opt_in_and_matches_exact_value():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10, 48)), rng.normal(size=(12, 48)) + 0.3
    sa, sb = fid.FeatureStats(48).update(a), fid.FeatureStats(48).update(b)
    with pytest.raises(ValueError, match="10 samples for 48-d"):
        fid.fid_from_stats(sa, sb)
    value = fid.fid_from_stats(sa, sb, allow_singular=True)
    # Exact value through Tr((S1 S2)^1/2) = sum of singular values of A1 A2^T.
    a1 = (a - a.mean(0)) / 3.0
    a2 = (b - b.mean(0)) / np.sqrt(11)
    diff = a.mean(0) - b.mean(0)
    exact = (diff @ diff + (a1**2).sum() + (a2**2).sum()
             - 2 * np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
    # The eps offset perturbs the square root by O(sqrt(eps)) per rank-deficient direction.
    assert value == pytest.approx(exact, rel=1e-3)
    without_offset = fid.frechet_distance(sa.mean, sa.covariance, sb.mean, sb.covariance)
    assert without_offset == pytest.approx(exact, rel=1e-7)  # sqrt of round-off in null space


def test_bad_inputs():
    stats = fid.FeatureStats(4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((3, 4), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        _ = fid.FeatureStats(4).update(np.zeros((1, 4))).covariance
    with pytest.raises(ValueError, match="covariances must be"):
        fid.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="method"):
        fid.frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), np.eye(1), method="svd")
    with pytest.raises(ValueError, match="cannot merge"):
        stats.merge(fid.FeatureStats(3))


def _images(seed: int, n: int, brightness: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (n, 4, 4, 3)).repeat(4, 1).repeat(4, 2)
    return np.clip(np.round(base * 255 * brightness), 0, 255).astype(np.uint8)


def test_reference_stats_are_cached(tmp_path):
    extractor = BlockMeanFeatures()
    calls = []
    images = _images(0, 60)

    def images_iter_fn():
        calls.append(1)
        return iter(np.array_split(images, 4))

    first = fid.reference_stats("scenes/validation/16", images_iter_fn, tmp_path,
                                extractor=extractor, max_samples=50)
    assert first.count == 50 and len(calls) == 1
    assert (tmp_path / "fid_stats" / "scenes__validation__16.npz").is_file()
    second = fid.reference_stats("scenes/validation/16", images_iter_fn, tmp_path,
                                 extractor=extractor)
    assert len(calls) == 1  # served from the cache
    np.testing.assert_array_equal(second.covariance, first.covariance)
    direct = fid.FeatureStats(48).update(extractor(images[:50]))
    np.testing.assert_allclose(first.covariance, direct.covariance, rtol=1e-10)
    with pytest.raises(ValueError, match="invalid reference-statistics key"):
        fid.reference_stats("../escape", images_iter_fn, tmp_path, extractor=extractor)


def test_colorization_fid_is_fid_of_the_two_sets():
    extractor = BlockMeanFeatures()
    colorized, originals = _images(1, 64, 0.8), _images(2, 64)
    expected = fid.fid_from_stats(fid.FeatureStats(48).update(extractor(colorized)),
                                  fid.FeatureStats(48).update(extractor(originals)))
    value = fid.colorization_fid(np.array_split(colorized, 3), np.array_split(originals, 2),
                                 extractor)
    assert value == pytest.approx(expected, rel=1e-9)
    assert fid.colorization_fid([originals], [originals], extractor) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        fid.colorization_fid([colorized / 255.0], [originals], extractor)


def _context(batches):
    """An EvalContext whose every split is `batches` (in order)."""
    data_fn = lambda config, split, batch_size, **kwargs: iter(batches)
    return EvalContext(sharding.create_mesh(), jax.random.key(0), 0, data_fn,
                       ml_collections.ConfigDict())


def test_fid_evaluator_yields_fid_precision_recall(tmp_path):
    extractor = BlockMeanFeatures()
    data = [{"image": _images(10 + i, 20)} for i in range(4)]
    context = _context(data)
    seen_rngs = []

    def generate_fn(state, batch, rng, context):
        seen_rngs.append(rng)
        return np.clip(batch["image"].astype(np.int32) + state, 0, 255).astype(np.uint8)

    def make(name, fn=generate_fn, key="test/ref/16", num=60, **kwargs):
        return evaluators.FIDEvaluator(name, fn, num_samples=num, batch_size=20,
                                       reference_key=key, cache_dir=tmp_path,
                                       extractor=extractor, **kwargs)

    evaluator = make("fid_eval")
    identical = dict(evaluator.run(0, context))
    assert set(identical) == {"num_examples", "fid", "precision", "recall"}
    assert identical["num_examples"] == 60
    assert identical["fid"] == pytest.approx(0.0, abs=1e-6)
    assert identical["precision"] == identical["recall"] == 1.0
    shifted = dict(evaluator.run(60, context))
    real = extractor(np.concatenate([d["image"] for d in data])[:60])
    fake = extractor(np.concatenate([generate_fn(60, d, None, None) for d in data])[:60])
    expected = fid.fid_from_stats(fid.FeatureStats(48).update(real),
                                  fid.FeatureStats(48).update(fake))
    assert shifted["fid"] == pytest.approx(expected, rel=1e-9)
    assert shifted["fid"] > 1e-3
    assert len({str(r) for r in seen_rngs[:3]}) == 3  # a distinct rng per batch
    np.testing.assert_array_equal(jax.random.key_data(seen_rngs[1]),
                                  jax.random.key_data(context.batch_rng(1)))
    with pytest.raises(ValueError, match="singular"):
        make("f", key="k", num=40)
    bad = make("f", fn=lambda s, b, r, c: b["image"] / 255.0, key="k")
    with pytest.raises(ValueError, match="generate_fn must return uint8"):
        dict(bad.run(0, context))
    fid_only = make("fid_only", compute_precision_recall=False)
    assert dict(fid_only.run(60, context)) == pytest.approx(
        {"num_examples": 60, "fid": shifted["fid"]}, rel=1e-9)
    assert (tmp_path / "fid_stats" / "test__ref__16__n60.npz").is_file()
    short = make("f", key="k2")
    with pytest.raises(ValueError, match="ran out"):
        dict(short.run(0, _context(data[:1])))
