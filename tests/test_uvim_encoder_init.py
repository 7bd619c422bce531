"""Stage II's encoder from a ViT `.npz` in the published layouts (no download: synthetic files).

The files carry the real names and shapes of google-research/vision_transformer's AugReg
checkpoints (the `howto-i21k-L/16` big_vision's UViM configs load) and of big_vision's own ViTs,
at a tiny width. Loaded params must be the file's values bit for bit, and the encoder must
compute what big_vision's ViT encoder computes with them (a numpy forward pass).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import traverse_util

from fsq_jax.train import npz_init
from uvim import stage2, vit_checkpoint

WIDTH, HEADS, MLP, DEPTH, PATCH, INPUT = 32, 4, 64, 2, 4, 16
GRID = INPUT // PATCH
# The published names, written out here independently of uvim.vit_checkpoint: pre-attention
# norm, attention, pre-MLP norm, MLP of an encoder block, and the position embedding.
# vision_transformer: vit_jax/models_vit.py before Linen renaming (AugReg .npz files);
# big_vision: models/vit.py Encoder1DBlock's auto-names.
PUBLISHED = {
    "vision_transformer": {"posemb": "Transformer/posembed_input/pos_embedding",
                           "norm_attention": "LayerNorm_0",
                           "attention": "MultiHeadDotProductAttention_1",
                           "norm_mlp": "LayerNorm_2", "mlp": "MlpBlock_3"},
    "big_vision": {"posemb": "pos_embedding", "norm_attention": "LayerNorm_0",
                   "attention": "MultiHeadDotProductAttention_0", "norm_mlp": "LayerNorm_1",
                   "mlp": "MlpBlock_0"},
}


def _model(**overrides) -> stage2.Stage2Model:
    fields = dict(codebook_size=10, seq_len=4, input_size=INPUT, patch_size=PATCH, width=WIDTH,
                  enc_depth=DEPTH, dec_depth=1, mlp_dim=MLP, num_heads=HEADS, dropout=0.0)
    fields.update(overrides)
    return stage2.Stage2Model(**fields)


def vit_arrays(layout: str = "vision_transformer", *, grid: int = GRID, depth: int = DEPTH,
               width: int = WIDTH, seed: int = 0) -> dict[str, np.ndarray]:
    """A ViT checkpoint's arrays, names and shapes as published, with random values."""
    rng = np.random.default_rng(seed)
    names = PUBLISHED[layout]
    head_dim = width // HEADS

    def normal(*shape, scale=0.2):
        return (scale * rng.normal(size=shape)).astype(np.float32)

    arrays = {"embedding/kernel": normal(PATCH, PATCH, 3, width), "embedding/bias": normal(width),
              "cls": normal(1, 1, width), "head/kernel": normal(width, 21843, scale=0.01),
              "head/bias": normal(21843)}
    if layout == "vision_transformer":  # the class token's row first: [1, 1 + g*g, width]
        arrays[names["posemb"]] = normal(1, 1 + grid * grid, width)
    else:
        arrays[names["posemb"]] = normal(1, grid * grid, width)
    for i in range(depth):
        block = f"Transformer/encoderblock_{i}"
        for norm in (names["norm_attention"], names["norm_mlp"]):
            arrays[f"{block}/{norm}/scale"] = 1.0 + normal(width)
            arrays[f"{block}/{norm}/bias"] = normal(width)
        attention = f"{block}/{names['attention']}"
        for projection in ("query", "key", "value"):
            arrays[f"{attention}/{projection}/kernel"] = normal(width, HEADS, head_dim)
            arrays[f"{attention}/{projection}/bias"] = normal(HEADS, head_dim)
        arrays[f"{attention}/out/kernel"] = normal(HEADS, head_dim, width)
        arrays[f"{attention}/out/bias"] = normal(width)
        mlp = f"{block}/{names['mlp']}"
        arrays[f"{mlp}/Dense_0/kernel"] = normal(width, MLP)
        arrays[f"{mlp}/Dense_0/bias"] = normal(MLP)
        arrays[f"{mlp}/Dense_1/kernel"] = normal(MLP, width)
        arrays[f"{mlp}/Dense_1/bias"] = normal(width)
    arrays["Transformer/encoder_norm/scale"] = 1.0 + normal(width)
    arrays["Transformer/encoder_norm/bias"] = normal(width)
    return arrays


def _write(tmp_path, arrays, name="vit.npz") -> str:
    path = str(tmp_path / name)
    np.savez(path, **arrays)
    return path


def _loaded_params(model, path, seed=1):
    params = stage2.init_variables(model, jax.random.key(seed))["params"]
    return params, npz_init.assign(params, vit_checkpoint.load_encoder(path, model), "test")


def _numpy_vit_encoder(arrays, layout, image):
    """big_vision's UViM encoder (vtt.py encode, vit.py Encoder) in float64 numpy."""
    names = PUBLISHED[layout]
    a = {k: v.astype(np.float64) for k, v in arrays.items()}

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-6) * a[f"{prefix}/scale"] + a[f"{prefix}/bias"]

    def gelu(x):  # flax.linen.gelu (tanh approximation), as vit.py's MlpBlock uses
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    b = image.shape[0]
    patches = image.reshape(b, GRID, PATCH, GRID, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("bghpqc,pqcw->bghw", patches, a["embedding/kernel"]) + a["embedding/bias"]
    posemb = a[names["posemb"]]
    x = x.reshape(b, GRID * GRID, WIDTH) + (posemb[:, 1:] if layout == "vision_transformer"
                                           else posemb)
    for i in range(DEPTH):
        block = f"Transformer/encoderblock_{i}"
        att = f"{block}/{names['attention']}"
        y = layer_norm(x, f"{block}/{names['norm_attention']}")
        q, k, v = (np.einsum("bnw,whd->bnhd", y, a[f"{att}/{p}/kernel"]) + a[f"{att}/{p}/bias"]
                   for p in ("query", "key", "value"))
        logits = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(q.shape[-1])
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = np.einsum("bhnm,bmhd->bnhd", weights, v)
        x = x + np.einsum("bnhd,hdw->bnw", y, a[f"{att}/out/kernel"]) + a[f"{att}/out/bias"]
        mlp = f"{block}/{names['mlp']}"
        y = layer_norm(x, f"{block}/{names['norm_mlp']}")
        y = gelu(y @ a[f"{mlp}/Dense_0/kernel"] + a[f"{mlp}/Dense_0/bias"])
        x = x + y @ a[f"{mlp}/Dense_1/kernel"] + a[f"{mlp}/Dense_1/bias"]
    return layer_norm(x, "Transformer/encoder_norm")


@pytest.mark.parametrize("layout", sorted(PUBLISHED))
def test_loaded_encoder_is_the_checkpoint_bit_for_bit(tmp_path, layout):
    arrays = vit_arrays(layout)
    model = _model()
    initial, loaded = _loaded_params(model, _write(tmp_path, arrays))
    flat = traverse_util.flatten_dict(loaded, sep="/")
    names = PUBLISHED[layout]
    entries = vit_checkpoint.encoder_entries(width=WIDTH, depth=DEPTH, num_heads=HEADS,
                                             mlp_dim=MLP, patch_size=PATCH, grid=GRID,
                                             layout=layout)
    for entry in entries:
        expected = arrays[entry.source]
        if entry.source == names["posemb"] and layout == "vision_transformer":
            expected = expected[:, 1:]  # the class token's row is not loaded
        assert flat[entry.target].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(flat[entry.target]), expected,
                                      err_msg=entry.target)
    # Every encoder param is in the table; the decoder keeps its initialisation.
    encoder = {k for k in flat if k.split("/")[0] in ("embed_patches", "posemb_encoder",
                                                       "encoder")}
    assert encoder == {entry.target for entry in entries}
    initial_flat = traverse_util.flatten_dict(initial, sep="/")
    for key in set(flat) - encoder:
        np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(initial_flat[key]))

    # The mapping means what big_vision's ViT means: same encoder output as a numpy ViT.
    image = np.random.default_rng(2).uniform(-1, 1, (2, INPUT, INPUT, 3)).astype(np.float32)
    encoded = model.apply({"params": loaded}, jnp.asarray(image), method=stage2.Stage2Model.encode)
    np.testing.assert_allclose(np.asarray(encoded), _numpy_vit_encoder(arrays, layout, image),
                               rtol=1e-4, atol=1e-4)


def test_position_embeddings_are_resampled_like_big_vision(tmp_path):
    """A 224-px checkpoint (grid 14 + class token) on a larger grid: bilinear, corners kept."""
    ramp = np.arange(4, dtype=np.float64)
    # A linear function of the grid position, which order-1 zoom reproduces exactly.
    values = (0.5 * ramp[:, None, None] - 0.25 * ramp[None, :, None]
              + np.linspace(-1, 1, WIDTH)[None, None, :])
    posemb = np.concatenate([np.full((1, 1, WIDTH), 9.0), values.reshape(1, 16, WIDTH)], 1)
    resampled = vit_checkpoint.resample_posemb(posemb.astype(np.float32), 7)
    assert resampled.shape == (1, 49, WIDTH)
    new = np.linspace(0, 3, 7)  # zoom maps corners to corners
    expected = (0.5 * new[:, None, None] - 0.25 * new[None, :, None]
                + np.linspace(-1, 1, WIDTH)[None, None, :])
    np.testing.assert_allclose(resampled.reshape(7, 7, WIDTH), expected, atol=1e-5)
    # It is big_vision's resample_posemb (scipy.ndimage.zoom, order 1) on the grid part.
    grid = posemb[0, 1:].reshape(4, 4, WIDTH).astype(np.float32)
    np.testing.assert_array_equal(
        resampled, scipy.ndimage.zoom(grid, (7 / 4, 7 / 4, 1), order=1).reshape(1, 49, WIDTH))
    # Through the loader: a grid-2 checkpoint into the grid-4 model.
    arrays = vit_arrays(grid=2)
    _, loaded = _loaded_params(_model(), _write(tmp_path, arrays))
    np.testing.assert_array_equal(
        np.asarray(loaded["posemb_encoder"]["embedding"]),
        vit_checkpoint.resample_posemb(arrays["Transformer/posembed_input/pos_embedding"], 4))
    with pytest.raises(npz_init.CheckpointMismatchError, match="neither a square grid"):
        vit_checkpoint.resample_posemb(np.zeros((1, 7, WIDTH), np.float32), 4)


def _mismatch(tmp_path, arrays, model=None) -> str:
    path = _write(tmp_path, arrays)
    with pytest.raises(npz_init.CheckpointMismatchError) as info:
        vit_checkpoint.load_encoder(path, model or _model())
    message = str(info.value)
    assert message.startswith(f"stage2.encoder_init = {path!r}: ")
    return message


def test_files_that_do_not_fit_are_refused_naming_the_first_mismatch(tmp_path):
    arrays = vit_arrays()
    del arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/bias"]
    assert ("missing array 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/bias' "
            "(for encoder/block_1/attention/key/bias)") in _mismatch(tmp_path, arrays)
    # A wider ViT (say B/16 for an L/16 model) fails at its first array.
    assert ("array 'embedding/kernel' has shape (4, 4, 3, 48), expected (4, 4, 3, 32)"
            in _mismatch(tmp_path, vit_arrays(width=48)))
    # A deeper ViT is refused rather than truncated.
    assert ("unexpected array 'Transformer/encoderblock_2/LayerNorm_0/bias'"
            in _mismatch(tmp_path, vit_arrays(depth=3)))
    # A different head count changes the attention kernels' shapes.
    assert ("'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel' has shape "
            "(32, 4, 8), expected (32, 2, 16)" in _mismatch(tmp_path, vit_arrays(),
                                                           _model(num_heads=2)))
    assert "not a ViT checkpoint" in _mismatch(tmp_path, {"conv1.weight": np.zeros(3)})
    with pytest.raises(npz_init.CheckpointMismatchError, match="no such file"):
        vit_checkpoint.load_encoder(str(tmp_path / "absent.npz"), _model())


def test_assign_refuses_unknown_paths_and_shapes():
    params = {"a": {"kernel": jnp.zeros((2, 3))}}
    with pytest.raises(npz_init.CheckpointMismatchError, match="no parameter 'a/bias'"):
        npz_init.assign(params, {"a/bias": np.zeros(3)}, "test")
    with pytest.raises(npz_init.CheckpointMismatchError,
                       match=r"a/kernel would get shape \(3, 2\)"):
        npz_init.assign(params, {"a/kernel": np.zeros((3, 2))}, "test")


def test_stage2_task_loads_the_encoder_and_slows_only_a_loaded_one(tmp_path):
    """`stage2.encoder_init` through the task; the paper's lr multiplier needs a checkpoint."""
    import importlib

    from fsq_jax import data
    from fsq_jax.train import frozen_from_variables
    from uvim.tasks import Stage1Task, Stage2Task

    config = importlib.import_module("configs.uvim.depth").get_config("fsq,tiny")
    config.model.update(width=16, num_heads=2, mlp_dim=32, enc_depth=1, dec_depth=1,
                        patch_size=8, code_len=4)
    config.stage2.update(width=WIDTH, num_heads=HEADS, mlp_dim=MLP, enc_depth=DEPTH,
                         dec_depth=1, patch_size=PATCH)  # 32x32 images: an 8x8 grid
    config.output.bins = 16
    batch = next(iter(data.build(config.data, "train", 2)))
    key = jax.random.key(0, impl="unsafe_rbg")
    stage1_state = jax.jit(Stage1Task(config).init_state)(key, batch)
    frozen = frozen_from_variables(config, "model", {"params": stage1_state.params["model"],
                                                     **stage1_state.model_state})

    paper_like = importlib.import_module("configs.uvim.depth").get_config("fsq,tiny,stage2")
    paper_like.model, paper_like.stage2 = config.model, config.stage2
    paper_like.output.bins = 16
    paper_like.stage2.encoder_lr_multiplier = 0.1
    with pytest.raises(ValueError, match=r"stage2\.encoder_init is empty"):
        Stage2Task(paper_like, frozen=frozen)

    arrays = vit_arrays(grid=4)  # a coarser checkpoint grid, resampled to 8x8
    paper_like.stage2.encoder_init = _write(tmp_path, arrays)
    task = Stage2Task(paper_like, frozen=frozen)
    state = jax.jit(task.init_state)(key, batch)
    encoder = state.params["stage2"]["encoder"]
    np.testing.assert_array_equal(
        np.asarray(encoder["block_1"]["mlp"]["Dense_0"]["kernel"]),
        arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel"])
    np.testing.assert_array_equal(
        np.asarray(state.params["stage2"]["posemb_encoder"]["embedding"]),
        vit_checkpoint.resample_posemb(arrays["Transformer/posembed_input/pos_embedding"], 8))
