"""Tokenizer losses: reconstruction, perceptual, non-saturating GAN with R1 and optional LeCam.

Each function is a literal translation of its equation; the stage-I task adds them with the
weights from `config.loss`. Perceptual feature networks need pretrained weights, which are never
downloaded: `inception` reuses the FID network of `fsq_jax.eval`, `lpips_vgg` / `resnet50` read a
user-supplied `.npz` (PyTorch state-dict names, see `load_perceptual`; for ResNet-50,
`python -m maskgit.perceptual_weights` converts torchvision's file, see docs/weights.md).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fsq_jax.config_lib import ConfigError, require
from fsq_jax.train import npz_init

PERCEPTUAL_NETWORKS = ("none", "inception", "lpips_vgg", "resnet50")
RECONSTRUCTION_LOSSES = ("l2", "l1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    """`loss.*` of the tokenizer: the weights of its reconstruction, perceptual, GAN and
    quantizer terms (the values and their sources are in configs/maskgit/tokenizer.py)."""

    reconstruction: Literal["l2", "l1"]
    reconstruction_weight: float
    perceptual_network: Literal["none", "inception", "lpips_vgg", "resnet50"]
    perceptual_weights: str  # .npz path for lpips_vgg / resnet50
    perceptual_weight: float
    # resnet50: compare the 1000 ImageNet logits (True) or the last [7, 7, 2048] feature map
    # (False, MaskGIT's vqgan_config perceptual_loss_on_logit; MAGVIT's configs set True).
    perceptual_on_logits: bool
    adversarial_weight: float  # generator's non-saturating loss weight
    discriminator_start: int  # step at which the adversarial terms switch on
    r1_weight: float  # R1 cost: r1_weight * E ||grad D(real)||^2 (MAGVIT grad_penalty_cost)
    lecam_weight: float  # 0 disables LeCam regularisation
    lecam_ema_decay: float
    quantizer_weight: float  # scales the quantizer's own aux loss

    def __post_init__(self):
        for field in ("reconstruction_weight", "perceptual_weight", "adversarial_weight",
                      "r1_weight", "lecam_weight", "quantizer_weight"):
            require(getattr(self, field) >= 0, field, "must be >= 0")
        require(self.discriminator_start >= 0, "discriminator_start", "must be >= 0")
        require(0.0 <= self.lecam_ema_decay < 1.0, "lecam_ema_decay", "must be in [0, 1)")


# ---------------------------------------------------------------------------------------------
# Reconstruction and GAN terms.


def reconstruction_loss(target: jax.Array, prediction: jax.Array, kind: str = "l2") -> jax.Array:
    """Mean squared (l2) or absolute (l1) error. target, prediction: [B, H, W, C] -> scalar."""
    diff = prediction.astype(jnp.float32) - target.astype(jnp.float32)
    if kind == "l2":
        return jnp.mean(jnp.square(diff))
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    raise ValueError(f"loss.reconstruction = {kind!r}: one of {RECONSTRUCTION_LOSSES}")


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator loss E[-log sigmoid(D(G(z)))]. fake_logits: [B] -> scalar."""
    return jnp.mean(jax.nn.softplus(-fake_logits.astype(jnp.float32)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """E[-log sigmoid(D(x))] + E[-log(1 - sigmoid(D(G(z))))]. logits: [B] -> scalar."""
    real = jax.nn.softplus(-real_logits.astype(jnp.float32))
    fake = jax.nn.softplus(fake_logits.astype(jnp.float32))
    return jnp.mean(real) + jnp.mean(fake)


def r1_penalty(discriminator_fn: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
    """R1 (Mescheder et al. 2018): E_x ||grad_x D(x)||^2 over real images (without the cost).

    discriminator_fn: images [B, H, W, C] -> logits [B]; real: [B, H, W, C] -> scalar.
    """
    grads = jax.grad(lambda x: jnp.sum(discriminator_fn(x)))(real)
    return jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)))


def lecam_regularizer(
    real_logits: jax.Array, fake_logits: jax.Array, ema_real: jax.Array, ema_fake: jax.Array
) -> jax.Array:
    """LeCam (Tseng et al. 2021): E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(G(z)))^2]."""
    real = jnp.square(jax.nn.relu(real_logits - ema_fake))
    fake = jnp.square(jax.nn.relu(ema_real - fake_logits))
    return jnp.mean(real) + jnp.mean(fake)


def adversarial_gate(step: jax.Array, start: int) -> jax.Array:
    """1.0 once `step >= start` else 0.0 (the adversarial warm-up)."""
    return (step >= start).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Perceptual loss: a frozen feature network and a distance between its features.


@dataclasses.dataclass(frozen=True)
class PerceptualNetwork:
    """A frozen feature network: `distance(params, real, fake) -> [B]` on images in [-1, 1]."""

    name: str
    distance: Callable[[Any, jax.Array, jax.Array], jax.Array]


def perceptual_loss(
    network: PerceptualNetwork, params: Any, real: jax.Array, fake: jax.Array
) -> jax.Array:
    """Mean perceptual distance. real, fake: [B, H, W, 3] in [-1, 1] -> scalar."""
    return jnp.mean(network.distance(params, real, fake))


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, stride: int = 1,
          padding: int | None = None) -> jax.Array:
    """NHWC convolution with a PyTorch-layout kernel [out, in, kh, kw] (converted on load)."""
    k = kernel.shape[0]
    pad = k // 2 if padding is None else padding
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y if bias is None else y + bias.astype(x.dtype)


def _torch_to_hwio(arrays: Mapping[str, np.ndarray]) -> dict[str, jnp.ndarray]:
    out = {}
    for key, value in arrays.items():
        value = np.asarray(value, np.float32)
        if value.ndim == 4:  # conv weight [out, in, kh, kw] -> [kh, kw, in, out]
            value = value.transpose(2, 3, 1, 0)
        out[key] = jnp.asarray(value)
    return out


def _require(arrays: Mapping[str, Any], keys: list[str], path: str, network: str) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(
            f"loss.perceptual_weights = {path!r}: not a {network} weight file, missing "
            f"{len(missing)} arrays (first: {missing[0]!r})"
        )


# LPIPS-VGG: torchvision VGG16 convs at these `features` indices, grouped into 5 slices whose
# last ReLU output LPIPS compares (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_VGG_SLICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
_LPIPS_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_LPIPS_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def lpips_vgg_keys() -> list[str]:
    """Array names expected in the LPIPS-VGG `.npz` (as `lpips.LPIPS(net='vgg').state_dict()`)."""
    keys = []
    for slice_index, layers in enumerate(_VGG_SLICES):
        for layer in layers:
            keys += [f"net.slice{slice_index + 1}.{layer}.weight",
                     f"net.slice{slice_index + 1}.{layer}.bias"]
    keys += [f"lin{i}.model.1.weight" for i in range(5)]
    return keys


def _lpips_vgg_distance(params: Mapping[str, jax.Array], real: jax.Array, fake: jax.Array
                        ) -> jax.Array:
    def features(x: jax.Array) -> list[jax.Array]:
        x = (x - _LPIPS_SHIFT) / _LPIPS_SCALE
        taps = []
        for slice_index, layers in enumerate(_VGG_SLICES):
            if slice_index > 0:
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                          "VALID")
            for layer in layers:
                prefix = f"net.slice{slice_index + 1}.{layer}"
                x = jax.nn.relu(_conv(x, params[prefix + ".weight"], params[prefix + ".bias"]))
            taps.append(x)
        return taps

    total = 0.0
    for i, (a, b) in enumerate(zip(features(real), features(fake))):
        a = a / (jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True)) + 1e-10)
        b = b / (jnp.sqrt(jnp.sum(b * b, axis=-1, keepdims=True)) + 1e-10)
        weight = params[f"lin{i}.model.1.weight"].reshape(-1)  # [C] (stored [1, C, 1, 1])
        total = total + jnp.mean(jnp.sum(jnp.square(a - b) * weight, axis=-1), axis=(1, 2))
    return total


# ResNet-50 (torchvision layout). MAGVIT's perceptual loss (google-research/magvit,
# videogvt/train_lib/losses.py calculate_perceptual_loss_on_pretrained and
# pretrained_model_utils.py get_pretrained_embs): both images bilinearly resized to 224x224, then
# l2_loss = the mean squared difference of the ResNet-50 logits (perceptual_loss_on_logit=True in
# its configs) or of the last feature map. MAGVIT's own ResNet-50 weights are not public; ours
# are torchvision's ImageNet weights, hence torchvision's padding and input normalisation.
_RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET50_IMAGE_SIZE = 224  # magvit pretrained_model_utils.RESNET_IMG_SIZE


def resnet50_shapes(with_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Name -> shape of `torchvision.models.resnet50().state_dict()` (no num_batches_tracked).

    with_head: include the classifier `fc.weight` [1000, 2048] and `fc.bias` [1000].
    """
    def bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{n}": (channels,)
                for n in ("weight", "bias", "running_mean", "running_var")}

    shapes = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    in_channels = 64
    for stage, blocks in enumerate(_RESNET50_BLOCKS):
        width = 64 * 2**stage
        for block in range(blocks):
            prefix = f"layer{stage + 1}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, in_channels, 1, 1)
            shapes.update(bn(f"{prefix}.bn1", width))
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            shapes.update(bn(f"{prefix}.bn2", width))
            shapes[f"{prefix}.conv3.weight"] = (4 * width, width, 1, 1)
            shapes.update(bn(f"{prefix}.bn3", 4 * width))
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (4 * width, in_channels, 1, 1)
                shapes.update(bn(f"{prefix}.downsample.1", 4 * width))
            in_channels = 4 * width
    if with_head:
        shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def resnet50_keys() -> list[str]:
    """Array names expected in the ResNet-50 `.npz` (as `torchvision.models.resnet50()`)."""
    return list(resnet50_shapes())


def resnet50_entries(with_head: bool = True) -> list[npz_init.Entry]:
    """The `.npz` -> params table: same names; conv kernels [out, in, kh, kw] -> [kh, kw, in, out]
    and the classifier [1000, 2048] -> [2048, 1000]; BatchNorm vectors as they are."""
    def transform(shape: tuple[int, ...]):
        if len(shape) == 4:
            return lambda w: np.asarray(w, np.float32).transpose(2, 3, 1, 0)
        if len(shape) == 2:
            return lambda w: np.asarray(w, np.float32).T
        return lambda w: np.asarray(w, np.float32)

    return [npz_init.Entry(name, shape, name, transform(shape))
            for name, shape in resnet50_shapes(with_head).items()]


def load_resnet50(path: str, with_head: bool = True,
                  origin: str = "loss.perceptual_weights") -> dict[str, jax.Array]:
    """The ResNet-50 params from a torchvision-named `.npz`; CheckpointMismatchError names the first
    missing, mis-shaped or unexpected array (BatchNorm's num_batches_tracked is ignored)."""
    arrays = npz_init.read_npz(path, f"{origin} = {path!r}")
    ignore = [r".*\.num_batches_tracked"] + ([] if with_head else [r"fc\..*"])
    mapped = npz_init.map_arrays(arrays, resnet50_entries(with_head), f"{origin} = {path!r}",
                                 ignore=ignore)
    return {name: jnp.asarray(value) for name, value in mapped.items()}


def resnet50_apply(params: Mapping[str, jax.Array], images: jax.Array
                   ) -> tuple[jax.Array, jax.Array | None]:
    """torchvision's ResNet-50 in eval mode on images in [-1, 1].

    images: [B, H, W, 3], bilinearly resized to 224x224 first (as MAGVIT does).
    Returns the last feature map [B, 7, 7, 2048] and the logits [B, 1000] (None without `fc`).
    """
    b = images.shape[0]
    if images.shape[1:3] != (RESNET50_IMAGE_SIZE, RESNET50_IMAGE_SIZE):
        images = jax.image.resize(images, (b, RESNET50_IMAGE_SIZE, RESNET50_IMAGE_SIZE, 3),
                                  "bilinear")
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = ((images + 1.0) / 2.0 - mean) / std

    def bn(y: jax.Array, prefix: str) -> jax.Array:
        scale = params[prefix + ".weight"] / jnp.sqrt(params[prefix + ".running_var"] + 1e-5)
        return (y - params[prefix + ".running_mean"]) * scale + params[prefix + ".bias"]

    x = jax.nn.relu(bn(_conv(x, params["conv1.weight"], stride=2, padding=3), "bn1"))
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))
    for stage, blocks in enumerate(_RESNET50_BLOCKS):
        for block in range(blocks):
            prefix = f"layer{stage + 1}.{block}"
            stride = 2 if (block == 0 and stage > 0) else 1
            y = jax.nn.relu(bn(_conv(x, params[prefix + ".conv1.weight"]), prefix + ".bn1"))
            y = jax.nn.relu(bn(_conv(y, params[prefix + ".conv2.weight"], stride=stride),
                               prefix + ".bn2"))
            y = bn(_conv(y, params[prefix + ".conv3.weight"]), prefix + ".bn3")
            if block == 0:
                x = bn(_conv(x, params[prefix + ".downsample.0.weight"], stride=stride),
                       prefix + ".downsample.1")
            x = jax.nn.relu(x + y)
    if "fc.weight" not in params:
        return x, None
    return x, jnp.mean(x, axis=(1, 2)) @ params["fc.weight"] + params["fc.bias"]


def _resnet50_distance(params: Mapping[str, jax.Array], real: jax.Array, fake: jax.Array,
                       on_logits: bool = True) -> jax.Array:
    """Per-example mean squared difference of logits (or feature maps): [B]."""
    features, logits = resnet50_apply(params, jnp.concatenate([real, fake]))
    compared = logits if on_logits else features
    feats_real, feats_fake = jnp.split(compared.astype(jnp.float32), 2)
    squared = jnp.square(feats_real - feats_fake)
    return jnp.mean(squared.reshape(squared.shape[0], -1), axis=-1)


def _inception_network() -> tuple[PerceptualNetwork, Any]:
    """The FID InceptionV3 of `fsq_jax.eval` (pool3 features, squared L2) if its weights exist."""
    from fsq_jax.eval import inception

    try:
        model, variables = inception.load()
    except FileNotFoundError as error:
        raise ConfigError(
            "loss.perceptual_network = 'inception': the FID InceptionV3 weights are not in the "
            "cache; run `make inception` once (offline afterwards) or set "
            f"loss.perceptual_network = 'none' ({error})"
        ) from error

    def distance(params: Any, real: jax.Array, fake: jax.Array) -> jax.Array:
        # The network takes float images in [0, 255].
        features = model.apply(params, (jnp.concatenate([real, fake]) + 1.0) * 127.5)
        feats_real, feats_fake = jnp.split(features, 2)
        return jnp.sum(jnp.square(feats_real - feats_fake), axis=-1)

    return PerceptualNetwork("inception", distance), variables


def load_perceptual(config: ml_collections.ConfigDict) -> tuple[PerceptualNetwork | None, Any]:
    """The perceptual network and its frozen params named by `config` (the `loss.*` fields).

    Returns (None, None) for "none". For "lpips_vgg" / "resnet50", `perceptual_weights` must be an
    `.npz` holding the PyTorch state dict (`lpips_vgg_keys()` / `resnet50_shapes()` name the
    arrays); a missing or incomplete file is a ValueError naming the field.
    """
    name = config.perceptual_network
    if name == "none":
        return None, None
    if name == "inception":
        return _inception_network()
    if name not in PERCEPTUAL_NETWORKS:
        raise ValueError(f"loss.perceptual_network = {name!r}: one of {PERCEPTUAL_NETWORKS}")
    path = config.perceptual_weights
    if not path or not os.path.exists(path):
        raise ConfigError(
            f"loss.perceptual_weights = {path!r}: loss.perceptual_network = {name!r} needs its "
            "pretrained weights as a local .npz (they are never downloaded); set the path or use "
            "loss.perceptual_network = 'none'"
        )
    if name == "resnet50":
        on_logits = bool(config.get("perceptual_on_logits", True))
        distance = functools.partial(_resnet50_distance, on_logits=on_logits)
        return PerceptualNetwork(name, distance), load_resnet50(path, with_head=on_logits)
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    _require(arrays, lpips_vgg_keys(), path, name)
    params = _torch_to_hwio({k: arrays[k] for k in lpips_vgg_keys()})
    return PerceptualNetwork(name, _lpips_vgg_distance), params
