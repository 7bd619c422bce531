"""Rematerialisation (`model.remat`, `stage2.remat`) changes memory, never the model: the same
parameter names, the same loss and the same gradients as without it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fsq_jax import config_lib, quantizers
from maskgit import tokenizer, transformer
from uvim import stage1, stage2
from uvim.outputs import build_output


def _assert_same_gradients(loss_fn, params_none, params_remat):
    """Equal param trees (names and shapes) and equal loss and gradients at the same params."""
    assert jax.tree.structure(params_none) == jax.tree.structure(params_remat)
    loss_a, grads_a = jax.jit(jax.value_and_grad(loss_fn[0]))(params_none)
    loss_b, grads_b = jax.jit(jax.value_and_grad(loss_fn[1]))(params_none)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _uvim_stage1(remat: str):
    config = config_lib.load("uvim/depth.py:fsq,tiny")
    config.model.update(dropout=0.1, remat=remat)
    output = build_output(config.output)
    return stage1.build(config.model, config.quantizer, output.target_channels())


@pytest.mark.parametrize("remat", ["dots", "block"])
def test_uvim_stage1_remat_keeps_names_and_gradients(remat):
    plain, rematerialised = _uvim_stage1("none"), _uvim_stage1(remat)
    rng = jax.random.key(0)
    targets = {"depth": jax.nn.one_hot(jax.random.randint(rng, (2, 32, 32), 0, 128), 128)}
    context = jax.random.uniform(rng, (2, 32, 32, 3), minval=-1, maxval=1)
    variables = stage1.init_variables(plain, rng)
    params = variables["params"]
    other = {k: v for k, v in variables.items() if k != "params"}
    remat_params = stage1.init_variables(rematerialised, rng)["params"]

    def loss(model):
        def fn(p):
            (logits, out), _ = model.apply(
                {"params": p, **other}, targets, context, train=True,
                rngs={"dropout": jax.random.key(1), quantizers.RNG_STREAM: jax.random.key(2)},
                mutable=[quantizers.STATE_COLLECTION])
            return jnp.mean(jnp.square(logits["depth"])) + out.loss
        return fn

    _assert_same_gradients((loss(plain), loss(rematerialised)), params, remat_params)


@pytest.mark.parametrize("remat", ["dots", "block"])
def test_uvim_stage2_remat_keeps_names_and_gradients(remat):
    config = config_lib.load("uvim/depth.py:fsq,tiny,stage2")
    config.stage2.dropout = 0.1
    models = [stage2.build(config.stage2.copy_and_resolve_references(), 1000, 16)]
    config.stage2.remat = remat
    models.append(stage2.build(config.stage2, 1000, 16))
    rng = jax.random.key(0)
    image = jax.random.uniform(rng, (2, 32, 32, 3), minval=-1, maxval=1)
    tokens = jax.random.randint(rng, (2, 16), 0, 1000)
    params = [stage2.init_variables(m, rng)["params"] for m in models]

    def loss(model):
        def fn(p):
            logits = model.apply({"params": p}, image, tokens, train=True,
                                 rngs={"dropout": jax.random.key(1)})
            return stage2.sequence_loss(logits, tokens)[0]
        return fn

    _assert_same_gradients((loss(models[0]), loss(models[1])), params[0], params[1])


@pytest.mark.parametrize("remat", ["dots", "block"])
def test_maskgit_transformer_remat_keeps_names_and_gradients(remat):
    base = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "mlp_dim": 64,
            "dropout_rate": 0.1, "attention_dropout": 0.1, "initializer_range": 0.02,
            "dtype": "float32",
            "attention": "xla", "dropout_rng": "threefry"}
    models = [transformer.MaskedTransformer(ml_collections.ConfigDict({**base, "remat": r}),
                                            16, 4, 9) for r in ("none", remat)]
    tokens = jax.random.randint(jax.random.key(0), (3, 9), 0, 17)
    labels = jnp.arange(3, dtype=jnp.int32)
    params = [m.init(jax.random.key(0), tokens, labels)["params"] for m in models]

    def loss(model):
        def fn(p):
            logits = model.apply({"params": p}, tokens, labels, train=True,
                                 rngs={"dropout": jax.random.key(1)})
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
        return fn

    _assert_same_gradients((loss(models[0]), loss(models[1])), params[0], params[1])


def test_remat_is_rejected_when_unknown():
    config = config_lib.load("uvim/depth.py:fsq,tiny")
    config.model.remat = "everything"
    with pytest.raises(config_lib.ConfigError, match=r"config.model.remat"):
        config_lib.check(config.model, stage1.Stage1Config, "config.model")
    config = config_lib.load("maskgit/tokenizer.py:fsq,tiny")
    config.model.remat = "layers"
    with pytest.raises(config_lib.ConfigError, match=r"config.model.remat"):
        config_lib.check(config.model, tokenizer.TokenizerModelConfig, "config.model")


@pytest.mark.parametrize("remat", ["dots", "block"])
@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
def test_tokenizer_remat_keeps_names_gradients_and_quantizer_state(quantizer, remat):
    config = config_lib.load(f"maskgit/tokenizer.py:{quantizer},tiny")
    if quantizer == "vq":
        config.quantizer.vq.use_ema = True  # mutable state updated inside the remat region
    models = []
    for setting in ("none", remat):
        config.model.remat = setting
        models.append(tokenizer.build(config.copy_and_resolve_references()))
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    rngs = {"params": jax.random.key(0), quantizers.RNG_STREAM: jax.random.key(1)}
    variables = [m.init(rngs, images, train=True) for m in models]
    assert jax.tree.structure(variables[0]) == jax.tree.structure(variables[1])
    # The blocks keep Flax's names for plain ResBlocks (checkpoints and maskgit/official.py
    # address `encoder/ResBlock_<i>`), not the lifted class's `CheckpointResBlock_<i>`.
    blocks = {name for part in ("encoder", "decoder") for name in variables[1]["params"][part]
              if "ResBlock" in name}
    assert blocks == {f"ResBlock_{i}" for i in range(3 + 1)}  # tiny: 3 levels x 1, + 1
    state = {k: v for k, v in variables[0].items() if k != "params"}

    def loss(model):
        def fn(p):
            (recon, out), updated = model.apply(
                {"params": p, **state}, images, train=True, mutable=[quantizers.STATE_COLLECTION],
                rngs={quantizers.RNG_STREAM: jax.random.key(2)})
            return jnp.mean(jnp.square(recon - images)) + out.loss, updated
        return fn

    results = [jax.jit(jax.value_and_grad(loss(m), has_aux=True))(variables[0]["params"])
               for m in models]
    (loss_a, updated_a), grads_a = results[0]
    (loss_b, updated_b), grads_b = results[1]
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    # float32 reassociation: within 1e-5 of each array's scale (the first conv's gradient sums
    # 32 x 32 x 2 terms; recomputed blocks may add them in another order).
    for a, b in zip(jax.tree.leaves((grads_a, updated_a)), jax.tree.leaves((grads_b, updated_b)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=max(1e-6, 1e-5 * float(np.abs(b).max())))
    assert jax.tree.leaves(updated_a) or quantizer == "fsq"
