"""Stage II's image encoder from a public ViT checkpoint (UViM: ViT-L/16 on ImageNet-21k).

big_vision's UViM stage-II configs start the encoder from `howto-i21k-L/16` (configs/proj/uvim/
train_*_pretrained.py: model_init = {"encoder": "howto-i21k-L/16"}, loaded by models/proj/uvim/
vtt.py `load` through models/vit.py `load`). This module maps that `.npz` onto `Stage2Model`'s
encoder by an explicit table and resamples its position embeddings to the model's grid.

Name table (`encoder_entries`), checkpoint -> Stage2Model param, i = block index. Names are
those of google-research/vision_transformer's files (big_vision's own layout in brackets).
No reshapes: Flax attention kernels are [width, heads, head_dim] / [heads, head_dim, width] on
both sides; only the position embedding changes (class-token row dropped, grid resampled).

  embedding/{kernel [p, p, 3, W], bias}            -> embed_patches/conv/{kernel, bias}
  Transformer/posembed_input/pos_embedding [1, 1+g*g, W]
    [pos_embedding [1, g*g, W]]                    -> posemb_encoder/embedding [1, G*G, W]
  Transformer/encoderblock_i/
    LayerNorm_0/{scale, bias}                      -> encoder/block_i/norm_attention/*
    MultiHeadDotProductAttention_1 [_0]/{query, key, value, out}/{kernel, bias}
                                                   -> encoder/block_i/attention/*
    LayerNorm_2 [LayerNorm_1]/{scale, bias}        -> encoder/block_i/norm_mlp/*
    MlpBlock_3 [MlpBlock_0]/Dense_{0,1}/{kernel, bias}
                                                   -> encoder/block_i/mlp/Dense_{0,1}/*
  Transformer/encoder_norm/{scale, bias}           -> encoder/norm/*

Not loaded (`IGNORED`): `cls` (UViM's encoder has no class token; big_vision vtt.py `load`
passes dont_load=("head/kernel", "head/bias", "cls")), the classifier `head/*` and an old
checkpoint's `pre_logits/*` (the classifier's representation layer; the encoder ends at
encoder_norm). The decoder is never in the checkpoint and keeps its random initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import scipy.ndimage

from fsq_jax.train import npz_init

# google-research/vision_transformer's published files (gs://vit_models/augreg/*.npz, the names
# big_vision's vit.py loads through fix_old_checkpoints), and big_vision's own ViT checkpoints.
LAYOUTS = {
    "vision_transformer": {"posemb": "Transformer/posembed_input/pos_embedding",
                           "attention": "MultiHeadDotProductAttention_1",
                           "norm_attention": "LayerNorm_0", "norm_mlp": "LayerNorm_2",
                           "mlp": "MlpBlock_3"},
    "big_vision": {"posemb": "pos_embedding", "attention": "MultiHeadDotProductAttention_0",
                   "norm_attention": "LayerNorm_0", "norm_mlp": "LayerNorm_1",
                   "mlp": "MlpBlock_0"},
}
IGNORED = ("cls", "head/.*", "pre_logits/.*")
FIELD = "stage2.encoder_init"


def detect_layout(arrays: Mapping[str, np.ndarray], origin: str = FIELD) -> str:
    """"vision_transformer" or "big_vision", from where the file keeps its position embedding."""
    for layout, names in LAYOUTS.items():
        if names["posemb"] in arrays:
            return layout
    raise npz_init.CheckpointMismatchError(
        f"{origin}: not a ViT checkpoint: no position embedding "
        f"({' or '.join(repr(n['posemb']) for n in LAYOUTS.values())})")


def resample_posemb(posemb: np.ndarray, grid: int) -> np.ndarray:
    """Position embeddings of a square patch grid, resampled to `grid` x `grid`.

    posemb: [1, n, width] with n = g*g, or 1 + g*g when its first row belongs to the class
    token (dropped, as big_vision models/vit.py fix_old_checkpoints splits it off and UViM's
    encoder has no class token). Resampling is big_vision's `resample_posemb`: scipy's
    `ndimage.zoom` with order=1 (bilinear, grid corners kept) on the [g, g, width] grid.

    Returns: [1, grid*grid, width]; the input's values, untouched, when g == grid.
    """
    n, width = posemb.shape[1], posemb.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        side = math.isqrt(n - 1)
        if side * side != n - 1:
            raise npz_init.CheckpointMismatchError(
                f"{FIELD}: position embedding of {n} tokens is neither a square grid nor a "
                "class token plus a square grid")
        posemb = posemb[:, 1:]
    if side == grid:
        return posemb
    zoomed = scipy.ndimage.zoom(posemb.reshape(side, side, width),
                                (grid / side, grid / side, 1), order=1)
    return zoomed.reshape(1, grid * grid, width)


def encoder_entries(*, width: int, depth: int, num_heads: int, mlp_dim: int, patch_size: int,
                    grid: int, layout: str) -> list[npz_init.Entry]:
    """The name/shape table of the encoder (see the module docstring), in load order."""
    names = LAYOUTS[layout]
    head_dim = width // num_heads
    entry = npz_init.Entry
    entries = [
        entry("embedding/kernel", (patch_size, patch_size, 3, width), "embed_patches/conv/kernel"),
        entry("embedding/bias", (width,), "embed_patches/conv/bias"),
        entry(names["posemb"], (1, None, width), "posemb_encoder/embedding",
              lambda posemb: resample_posemb(posemb, grid)),
    ]

    def norm(source: str, target: str) -> list[npz_init.Entry]:
        return [entry(f"{source}/{p}", (width,), f"{target}/{p}") for p in ("scale", "bias")]

    for i in range(depth):
        source, target = f"Transformer/encoderblock_{i}", f"encoder/block_{i}"
        entries += norm(f"{source}/{names['norm_attention']}", f"{target}/norm_attention")
        attention = f"{source}/{names['attention']}"
        for projection in ("query", "key", "value"):
            entries += [
                entry(f"{attention}/{projection}/kernel", (width, num_heads, head_dim),
                      f"{target}/attention/{projection}/kernel"),
                entry(f"{attention}/{projection}/bias", (num_heads, head_dim),
                      f"{target}/attention/{projection}/bias"),
            ]
        entries += [
            entry(f"{attention}/out/kernel", (num_heads, head_dim, width),
                  f"{target}/attention/out/kernel"),
            entry(f"{attention}/out/bias", (width,), f"{target}/attention/out/bias"),
        ]
        entries += norm(f"{source}/{names['norm_mlp']}", f"{target}/norm_mlp")
        mlp = f"{source}/{names['mlp']}"
        entries += [
            entry(f"{mlp}/Dense_0/kernel", (width, mlp_dim), f"{target}/mlp/Dense_0/kernel"),
            entry(f"{mlp}/Dense_0/bias", (mlp_dim,), f"{target}/mlp/Dense_0/bias"),
            entry(f"{mlp}/Dense_1/kernel", (mlp_dim, width), f"{target}/mlp/Dense_1/kernel"),
            entry(f"{mlp}/Dense_1/bias", (width,), f"{target}/mlp/Dense_1/bias"),
        ]
    entries += norm("Transformer/encoder_norm", "encoder/norm")
    return entries


def load_encoder(path: str, model) -> dict[str, np.ndarray]:
    """The encoder params of `model` (a `uvim.stage2.Stage2Model`) from the ViT `.npz` at `path`.

    Returns {'/'-joined Stage2Model param path: array} for `fsq_jax.train.npz_init.assign`.
    Raises npz_init.CheckpointMismatchError naming the first missing, mis-shaped or unexpected
    array.
    """
    origin = f"{FIELD} = {path!r}"
    arrays = npz_init.read_npz(path, origin)
    entries = encoder_entries(
        width=model.width, depth=model.enc_depth, num_heads=model.num_heads,
        mlp_dim=model.mlp_dim, patch_size=model.patch_size,
        grid=model.input_size // model.patch_size, layout=detect_layout(arrays, origin))
    return npz_init.map_arrays(arrays, entries, origin, ignore=IGNORED)
