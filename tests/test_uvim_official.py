"""big_vision's published UViM checkpoints: conversion into our stage I and stage II.

Synthetic `.npz` files come from reference Flax modules written here after big_vision
`models/proj/uvim/vit.py` (stage I: per-target `embedding_*` / `head_*`, `ctx_*_embedding`,
learned `pos_embedding_*`, ViT `encoder` / `decoder`, bilinear bottleneck resize, `encoder_head`,
standardised bottleneck, unit-norm codewords `dictionary / counts`, `decoder_stem`) and
`models/proj/uvim/vtt.py` (stage II: `EmbedPatches`, ViT encoder, `EncDecBlock<i>` without
attention biases, codes shifted by one behind a 0 start token), at small widths with the real
names, saved as big_vision saves them (`params/...`, `state/...`).
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fsq_jax import config_lib, quantizers, run_dir, train
from fsq_jax.train import resume
from fsq_jax.train.npz_init import CheckpointMismatchError
from uvim import api as uvim_api
from uvim import official, stage1, stage2, tasks
from uvim.outputs import build_output

SIZE, PATCH, WIDTH, HEADS, MLP, CODE_LEN, CODES, CODE_DIM = 16, 4, 32, 4, 64, 4, 32, 16
ENC_DEPTH, DEC_DEPTH = 1, 2
GRID = (SIZE // PATCH) ** 2


# -- reference modules (big_vision's names) ---------------------------------------------------


class MlpBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.gelu(nn.Dense(MLP)(x))  # Dense_0
        return nn.Dense(x.shape[-1])(y)  # Dense_1


class Encoder1DBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(y, y)
        return x + MlpBlock()(nn.LayerNorm()(x))


class ViTEncoder(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = Encoder1DBlock(name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(name="encoder_norm")(x)


def patchify(x):
    """[B, H, W, C] -> [B, N, C, P*P] (big_vision 'b (hn hp) (wn wp) c -> b (hn wn) c (hp wp)')."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, -1, c, PATCH * PATCH)


def resize_grid(x, side):
    b, n, c = x.shape
    old = round(n**0.5)
    return jax.image.resize(x.reshape(b, old, old, c), (b, side, side, c), "linear").reshape(
        b, side * side, c)


class Oracle(nn.Module):
    """UViM stage I with big_vision's parameter names; `targets` = big_vision names -> C."""

    targets: tuple[tuple[str, int], ...]

    def setup(self):
        self.embeddings = {k: nn.DenseGeneral((WIDTH,), axis=(-2, -1), name=f"embedding_{k}")
                           for k, _ in self.targets}
        self.heads = {k: nn.DenseGeneral((c, PATCH * PATCH), name=f"head_{k}")
                      for k, c in self.targets}
        conv = dict(kernel_size=(PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID")
        self.ctx_enc = nn.Conv(WIDTH, **conv, name="ctx_enc_embedding")
        self.ctx_dec = nn.Conv(WIDTH, **conv, name="ctx_dec_embedding")
        init = nn.initializers.normal(0.1)
        self.pos_enc = self.param("pos_embedding_encoder", init, (1, GRID, WIDTH))
        self.pos_dec = self.param("pos_embedding_decoder", init, (1, GRID, WIDTH))
        self.encoder = ViTEncoder(ENC_DEPTH, name="encoder")
        self.decoder = ViTEncoder(DEC_DEPTH, name="decoder")
        self.encoder_head = nn.Dense(CODE_DIM)
        self.decoder_stem = nn.Dense(WIDTH)
        self.dictionary = self.variable("state", "dictionary", lambda: jnp.ones((CODES, CODE_DIM)))
        self.counts = self.variable("state", "counts", lambda: jnp.ones((CODES,)))

    def codewords(self):
        e = self.dictionary.value / self.counts.value[:, None]
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    def _ctx(self, conv, ctx):
        y = conv(ctx)
        return y.reshape(y.shape[0], -1, WIDTH)

    def encode(self, x, ctx):
        h = sum(self.embeddings[k](x[k]) for k, _ in self.targets) + self._ctx(self.ctx_enc, ctx)
        h = self.encoder(h + self.pos_enc)
        h = jax.nn.standardize(self.encoder_head(resize_grid(h, int(CODE_LEN**0.5))), axis=-1)
        e = self.codewords()
        distances = jnp.sum(h * h, -1, keepdims=True) - 2 * h @ e.T + jnp.sum(e * e, -1)
        return h, jnp.argmin(distances, -1)

    def decode(self, ids, ctx):
        h = resize_grid(self.decoder_stem(self.codewords()[ids]), int(GRID**0.5))
        h = self.decoder(h + self._ctx(self.ctx_dec, ctx) + self.pos_dec)
        return {k: self.heads[k](h) for k, _ in self.targets}

    def __call__(self, x, ctx):
        return self.decode(self.encode(x, ctx)[1], ctx)


class EncDecBlock(nn.Module):
    @nn.compact
    def __call__(self, y, encoded, mask):
        x = nn.LayerNorm(name="LayerNorm1")(y)
        x = y + nn.SelfAttention(num_heads=HEADS, use_bias=False, name="SelfAttn")(x, mask=mask)
        z = nn.LayerNorm(name="LayerNorm2")(x)
        z = x + nn.MultiHeadDotProductAttention(num_heads=HEADS, use_bias=False,
                                                name="CrossAttn")(z, encoded)
        return z + MlpBlock(name="MLP")(nn.LayerNorm(name="LayerNorm3")(z))


class VttDecoder(nn.Module):
    @nn.compact
    def __call__(self, encoded, targets, pos_emb):
        inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # shift right, 0 first
        y = nn.Embed(CODES + 1, WIDTH, name="EmbedTargets")(inputs) + pos_emb[:, : CODE_LEN]
        mask = nn.make_causal_mask(targets)
        for i in range(DEC_DEPTH):
            y = EncDecBlock(name=f"EncDecBlock{i}")(y, encoded, mask)
        return nn.Dense(CODES + 1, name="LogitsDense")(nn.LayerNorm(name="LayerNorm")(y))


class Vtt(nn.Module):
    """image [B, H, W, 3], tokens [B, L] (code + 1) -> logits [B, L, K + 1]."""

    def setup(self):
        init = nn.initializers.normal(0.1)
        self.pos_enc = self.param("pos_embedding_encoder", init, (1, GRID, WIDTH))
        self.pos_dec = self.param("pos_embedding_decoder", init, (1, CODE_LEN, WIDTH))
        self.encoder = ViTEncoder(ENC_DEPTH, name="encoder")
        self.decoder = VttDecoder(name="decoder")
        self.conv = nn.Conv(WIDTH, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID",
                            name="EmbedPatches")

    def __call__(self, image, tokens):
        patches = self.conv(image)
        encoded = self.encoder(patches.reshape(patches.shape[0], -1, WIDTH) + self.pos_enc)
        return self.decoder(encoded, tokens, self.pos_dec)


def _random_tree(tree, seed, scale=0.3):
    rng = np.random.default_rng(seed)
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree.unflatten(treedef, [
        ((1.0 if "scale" in jax.tree_util.keystr(path) else 0.0)
         + scale * rng.standard_normal(leaf.shape)).astype(np.float32) for path, leaf in paths])


def _flat(tree, prefix=""):
    return {prefix + k: np.asarray(v)
            for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# -- configs and files -------------------------------------------------------------------------


def _small(config, task):
    config.data.image_size = SIZE
    config.model.update(input_size=SIZE, patch_size=PATCH, width=WIDTH, enc_depth=ENC_DEPTH,
                        dec_depth=DEC_DEPTH, mlp_dim=MLP, num_heads=HEADS, code_len=CODE_LEN)
    config.stage2.update(input_size=SIZE, patch_size=PATCH, width=WIDTH, enc_depth=ENC_DEPTH,
                         dec_depth=DEC_DEPTH, mlp_dim=MLP, num_heads=HEADS)
    config.quantizer.vq.update(codebook_size=CODES, dim=CODE_DIM)
    if task == "depth":
        config.output.bins = 8
    return config


def configs(task):
    return tuple(_small(config_lib.load(f"uvim/{task}.py:vq,paper,{stage},official"), task)
                 for stage in ("stage1", "stage2"))


def _their_targets(task):
    ours = build_output(configs(task)[0].output).target_channels()
    return tuple((official.TARGET_NAMES[name], c) for name, c in ours.items())


def _oracle_variables(oracle, seed):
    targets = {k: jax.ShapeDtypeStruct((1, GRID, c, PATCH * PATCH), jnp.float32)
               for k, c in oracle.targets}
    ctx = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
    shapes = jax.eval_shape(oracle.init, jax.random.key(0), targets, ctx)
    rng = np.random.default_rng(seed + 100)
    counts = rng.uniform(0.5, 40.0, (CODES,)).astype(np.float32)
    dictionary = (rng.standard_normal((CODES, CODE_DIM)) * counts[:, None]).astype(np.float32)
    return {"params": _random_tree(shapes["params"], seed),
            "state": {"dictionary": dictionary, "counts": counts}}


@pytest.fixture(scope="module")
def panoptic_stage1(tmp_path_factory):
    oracle = Oracle(_their_targets("panoptic"))
    variables = _oracle_variables(oracle, 0)
    path = str(tmp_path_factory.mktemp("uvim") / "panoptic_stageI_params.npz")
    np.savez(path, **_flat(variables["params"], "params/"), **_flat(variables["state"], "state/"))
    return oracle, variables, path


@pytest.fixture(scope="module")
def vtt_files(tmp_path_factory):
    vtt = Vtt()
    shapes = jax.eval_shape(vtt.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32),
                            jax.ShapeDtypeStruct((1, CODE_LEN), jnp.int32))
    params = _random_tree(shapes["params"], 7)
    path = str(tmp_path_factory.mktemp("uvim") / "depth_stageII_params.npz")
    np.savez(path, **_flat(params))  # big_vision shares stage II params without a prefix
    return vtt, params, path


def _panoptic_batch(seed):
    rng = np.random.default_rng(seed)
    semantic = rng.integers(-1, 133, (2, SIZE, SIZE)).astype(np.int32)
    instance = rng.integers(0, 6, (2, SIZE, SIZE)).astype(np.int32)
    image = rng.integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.uint8)
    return {"image": image, "panoptic_semantic": semantic, "panoptic_instance": instance}


# -- stage I -----------------------------------------------------------------------------------


def test_stage1_conversion_copies_every_leaf_bit_for_bit(panoptic_stage1):
    _, variables, path = panoptic_stage1
    config = configs("panoptic")[0]
    ours = official.load_stage1(path, config)
    params = _flat(ours["params"])
    theirs = _flat(variables["params"])
    for name in ("semantic", "instance"):
        bv = official.TARGET_NAMES[name]
        assert _bits_equal(params[f"embed_{name}/kernel"], theirs[f"embedding_{bv}/kernel"])
        assert _bits_equal(params[f"head_{name}/bias"], theirs[f"head_{bv}/bias"])
    for i in range(DEC_DEPTH):
        for leaf in ("query/kernel", "out/bias"):
            assert _bits_equal(
                params[f"decoder/block_{i}/attention/{leaf}"],
                theirs[f"decoder/encoderblock_{i}/MultiHeadDotProductAttention_0/{leaf}"])
    assert _bits_equal(params["to_code/kernel"], theirs["encoder_head/kernel"])
    assert _bits_equal(params["context_decoder/conv/kernel"], theirs["ctx_dec_embedding/kernel"])
    assert len(params) == len(theirs)  # one for one
    state = _flat(ours["quantizer_state"])
    dictionary, counts = variables["state"]["dictionary"], variables["state"]["counts"]
    assert _bits_equal(state["quantizer/codebook"], dictionary / counts[:, None])
    np.testing.assert_allclose(state["quantizer/ema_count"], counts * 0.005, rtol=1e-6)


def test_converted_stage1_computes_the_reference_function(panoptic_stage1):
    oracle, variables, path = panoptic_stage1
    config = configs("panoptic")[0]
    output = build_output(config.output)
    model = stage1.build(config.model, config.quantizer, output.target_channels())
    ours = official.load_stage1(path, config)
    batch = _panoptic_batch(0)
    targets, context = output.targets(batch), output.context(batch)
    theirs_in = {official.TARGET_NAMES[k]: patchify(v) for k, v in targets.items()}
    bottleneck, ids = oracle.apply(variables, theirs_in, context, method=Oracle.encode)
    out = model.apply(ours, targets, context, method=stage1.Stage1Model.encode)
    np.testing.assert_array_equal(out.indices, ids)
    # The VQ lookup in numpy: the standardised bottleneck's nearest unit codeword.
    e = variables["state"]["dictionary"] / variables["state"]["counts"][:, None]
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    z = np.asarray(bottleneck, np.float64)
    np.testing.assert_array_equal(
        np.argmin(((z[..., None, :] - e) ** 2).sum(-1), -1), np.asarray(out.indices))
    logits = model.apply(ours, ids, context, method=stage1.Stage1Model.decode_indices)
    ref = oracle.apply(variables, ids, context, method=Oracle.decode)
    for name, value in logits.items():
        np.testing.assert_allclose(patchify(value), ref[official.TARGET_NAMES[name]],
                                   atol=5e-5, rtol=5e-5)


def test_stage1_mismatches_name_the_field_or_leaf(panoptic_stage1):
    path = panoptic_stage1[2]
    config = configs("panoptic")[0]
    config.quantizer.vq.standardize = False
    with pytest.raises(CheckpointMismatchError, match=r"quantizer.vq.standardize = False"):
        official.load_stage1(path, config)
    config = configs("panoptic")[0]
    config.output.max_instances = 101  # 101 instance channels; big_vision's file has 100
    with pytest.raises(CheckpointMismatchError,
                       match=r"'embedding_instances/kernel' has shape \(100, 16, 32\), expected "
                             r"\(101, 16, 32\)"):
        official.load_stage1(path, config)
    arrays = official.read_arrays(path, "f")
    del arrays["state/counts"]
    with pytest.raises(CheckpointMismatchError, match=r"f: missing array 'state/counts'"):
        official.convert_stage1(arrays, configs("panoptic")[0], "f")


def test_pre_linen_block_names_are_read(panoptic_stage1, tmp_path):
    path = panoptic_stage1[2]
    names = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
             "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
    renamed = {}
    for key, value in official.read_arrays(path, "f").items():
        for new, old in names.items():
            key = key.replace(f"/{new}/", f"/{old}/")
        renamed[key.replace("encoder/", "Encoder/", 1) if key.startswith("encoder/") else key] = (
            value)
    old_path = tmp_path / "old.npz"
    np.savez(old_path, **{f"params/{k}" if not k.startswith("state/") else k: v
                          for k, v in renamed.items()})
    assert official.block_layout(official.read_arrays(str(old_path), "f")) == "pre_linen"
    a = official.load_stage1(path, configs("panoptic")[0])
    b = official.load_stage1(str(old_path), configs("panoptic")[0])
    assert all(_bits_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# -- stage II ----------------------------------------------------------------------------------


def test_converted_stage2_computes_the_reference_logits(vtt_files):
    vtt, params, path = vtt_files
    config = configs("depth")[1].stage2
    ours = official.load_stage2(path, config, CODES, CODE_LEN)
    flat = _flat(ours)
    biases = r"decoder_block_\d+/(self|cross)_attention/.*/bias"
    assert not [k for k in flat if re.fullmatch(biases, k)]
    theirs = _flat(params)
    assert _bits_equal(flat["embed_tokens/embedding"][:CODES],
                       theirs["decoder/EmbedTargets/embedding"][1:])
    assert _bits_equal(flat["embed_tokens/embedding"][CODES],
                       theirs["decoder/EmbedTargets/embedding"][0])
    assert _bits_equal(flat["logits/kernel"][:, :CODES],
                       theirs["decoder/LogitsDense/kernel"][:, 1:])
    rng = np.random.default_rng(3)
    image = jnp.asarray(rng.uniform(-1, 1, (2, SIZE, SIZE, 3)), jnp.float32)
    codes = jnp.asarray(rng.integers(0, CODES, (2, CODE_LEN)), jnp.int32)
    model = stage2.build(config, CODES, CODE_LEN)
    got = model.apply({"params": ours}, image, codes)
    ref = vtt.apply({"params": params}, image, codes + 1)
    np.testing.assert_allclose(got[..., :CODES], ref[..., 1:], atol=5e-5, rtol=5e-5)
    np.testing.assert_allclose(got[..., CODES], ref[..., 0], atol=5e-5, rtol=5e-5)


def test_stage2_with_attention_biases_is_refused_naming_the_leaf(vtt_files):
    _, _, path = vtt_files
    config = configs("depth")[1].stage2
    config.decoder_attention_bias = True
    with pytest.raises(CheckpointMismatchError,
                       match=r"nothing in the checkpoint for our parameter "
                             r"'decoder_block_0/cross_attention/key/bias'"):
        official.load_stage2(path, config, CODES, CODE_LEN)


# -- run directories ---------------------------------------------------------------------------


def test_write_runs_give_a_stage2_run_that_predicts(vtt_files, tmp_path):
    """Depth: a stage-I file from the reference oracle, the stage-II file above."""
    oracle = Oracle(_their_targets("depth"))
    variables = _oracle_variables(oracle, 1)
    stage1_path = str(tmp_path / "depth_stageI_params.npz")
    np.savez(stage1_path, **_flat(variables["params"], "params/"),
             **_flat(variables["state"], "state/"))
    config1, config2 = configs("depth")
    runs = official.write_runs(str(tmp_path / "out"), stage1_path, config1, vtt_files[2],
                               config2)
    config, restored = train.restore_latest(runs["stage2"])
    assert config.stage1_workdir == str(tmp_path / "out" / "stage1")
    ours = official.load_stage2(vtt_files[2], config2.stage2, CODES, CODE_LEN)
    assert all(_bits_equal(a, b) for a, b in zip(jax.tree.leaves(ours),
                                                 jax.tree.leaves(restored["params"]["stage2"])))
    frozen = train.load_frozen(config.stage1_workdir, "stage1_workdir")
    task = tasks.Stage2Task(config, frozen)
    batch = {"image": np.zeros((2, SIZE, SIZE, 3), np.uint8),
             "depth": np.ones((2, SIZE, SIZE), np.float32)}
    prediction, tokens = task.predict_fn(restored["params"]["stage2"],
                                         restored["model_state"]["stage1"], batch,
                                         jax.random.key(0))
    assert tokens.shape == (2, CODE_LEN) and prediction["depth"].shape == (2, SIZE, SIZE)
    assert quantizers.codebook_size(frozen.config.quantizer) == CODES
    # uvim.api reads the converted stage II as one of ours (greedy decoding: the same bins;
    # the jitted bin centres may differ in the last float32 bit).
    api = uvim_api.DepthPredictor.from_workdir(runs["stage2"])
    np.testing.assert_allclose(api.predict(batch["image"]), prediction["depth"], rtol=1e-6)
    # Rerunning either run with its own config is no config change (and nothing is finished:
    # no results yet), and stage II validates with the converted stage I as its frozen stage.
    for run in runs.values():
        stored = run_dir.read_config(run)
        assert resume.check_config(stored, run) == {}
        assert resume.finished_results(stored, run) is None
    train.validate(config)


@pytest.mark.slow
def test_evaluate_runs_our_protocol_on_the_converted_runs(vtt_files, tmp_path):
    oracle = Oracle(_their_targets("depth"))
    variables = _oracle_variables(oracle, 2)
    stage1_path = str(tmp_path / "s1.npz")
    np.savez(stage1_path, **_flat(variables["params"], "params/"),
             **_flat(variables["state"], "state/"))
    config1, config2 = configs("depth")
    runs = official.write_runs(str(tmp_path / "out"), stage1_path, config1, vtt_files[2],
                               config2)
    config = run_dir.read_config(runs["stage2"])
    config.data.source = "scenes"  # no NYU here: procedural scenes with exact depth
    config.eval_batch_size, config.eval_steps = 8, 1
    config.evaluators.num_batches = 1
    results = train.evaluate(config, runs["stage2"])
    assert results["step"] == config.total_steps
    assert np.isfinite(results["evaluators"]["uvim/rmse"])


@pytest.mark.parametrize("task", ["depth", "colorization", "panoptic"])
def test_official_presets_validate_with_big_visions_settings(task, tmp_path):
    stage1_cfg = config_lib.load(f"uvim/{task}.py:vq,paper,stage1,official")
    train.validate(stage1_cfg)
    assert stage1_cfg.quantizer.vq.standardize and stage1_cfg.quantizer.vq.l2_normalize
    assert (stage1_cfg.quantizer.vq.codebook_size, stage1_cfg.quantizer.vq.dim) == (4096, 768)
    run_dir.write_json(str(tmp_path / "config.json"), run_dir.config_json(stage1_cfg))
    stage2_cfg = config_lib.load(f"uvim/{task}.py:vq,paper,stage2,official")
    stage2_cfg.stage1_workdir = str(tmp_path)
    train.validate(stage2_cfg)
    assert not stage2_cfg.stage2.decoder_attention_bias
    channels = build_output(stage1_cfg.output).target_channels()
    assert channels == {"depth": {"depth": 256}, "colorization": {"color": 3},
                        "panoptic": {"semantic": 134, "instance": 100}}[task]
    with pytest.raises(ValueError, match="'official' is big_vision's published VQ model"):
        config_lib.load(f"uvim/{task}.py:fsq,paper,official")
