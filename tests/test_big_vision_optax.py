"""big_vision's Adafactor chain against a numpy re-implementation of its update rule.

The reference follows big_vision/optax.py (`make`: clip -> scale_by_adafactor -> lr -> weight
decay on kernels -> schedule -> negate) and big_vision/utils.py (`create_learning_rate_schedule`,
cosine with linear warmup), written from the Adafactor equations rather than from optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from fsq_jax import config_lib
from fsq_jax.train import big_vision_optax, optim

SHAPES = {
    "dense": {"kernel": (48, 40), "bias": (40,)},  # factored
    "conv": {"kernel": (3, 3, 40, 36)},  # factored over its last two axes, per 3x3 slice
    "small": {"kernel": (16, 8)},  # 8 < 32: full second moment
    "norm": {"scale": (40,)},
    "posemb": {"embedding": (1, 64, 40)},  # factored, and not a kernel: never decayed
}


def _tree(rng: np.random.Generator, scale: float = 1.0, shapes: dict = SHAPES) -> dict:
    return {module: {name: (scale * rng.normal(size=shape)).astype(np.float32)
                     for name, shape in leaves.items()} for module, leaves in shapes.items()}


def _schedule(step: int, total: int, warmup: int) -> float:
    """big_vision/utils.py create_learning_rate_schedule(decay_type="cosine", base=1.0)."""
    progress = np.clip((step - warmup) / float(total - warmup), 0.0, 1.0)
    value = 0.5 * (1.0 + np.cos(np.pi * progress))
    return value * min(1.0, step / warmup) if warmup else value


def _factored_axes(shape: tuple[int, ...], min_dim: int) -> tuple[int, int] | None:
    """The two largest axes (second-largest first) if both have at least `min_dim` entries."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda axis: shape[axis])
    return (order[-2], order[-1]) if shape[order[-2]] >= min_dim else None


class ReferenceAdafactor:
    """big_vision's update, one leaf at a time, in float64 (momentum storage emulated)."""

    def __init__(self, params, *, lr, wd, total, warmup, beta2_cap, exponent, min_dim,
                 momentum, momentum_dtype, grad_clip_norm, clipping_threshold, lr_mults=None):
        self.params = {m: {n: v.astype(np.float64) for n, v in leaves.items()}
                       for m, leaves in params.items()}
        self.settings = dict(lr=lr, wd=wd, total=total, warmup=warmup, beta2_cap=beta2_cap,
                             exponent=exponent, min_dim=min_dim, momentum=momentum,
                             momentum_dtype=momentum_dtype, grad_clip_norm=grad_clip_norm,
                             clipping_threshold=clipping_threshold)
        self.lr_mults = lr_mults or {}
        self.second, self.first, self.step = {}, {}, 0

    def _scale(self, key, grad):
        """Adafactor: grad / sqrt(V_hat), V_hat factored as R C^T / mean(R) when possible."""
        s = self.settings
        beta2 = min(s["beta2_cap"], 1.0 - (self.step + 1.0) ** (-s["exponent"]))
        squared = grad**2 + big_vision_optax.EPSILON
        axes = _factored_axes(grad.shape, s["min_dim"])
        if axes is None:
            v = self.second.get(key, np.zeros_like(grad))
            v = beta2 * v + (1 - beta2) * squared
            self.second[key] = v
            return grad / np.sqrt(v)
        # Move (row, column) axes last: [..., rows, columns].
        moved = np.moveaxis(squared, axes, (-2, -1))
        rows, columns = self.second.get(key, (0.0, 0.0))
        rows = beta2 * rows + (1 - beta2) * moved.mean(axis=-1)
        columns = beta2 * columns + (1 - beta2) * moved.mean(axis=-2)
        self.second[key] = (rows, columns)
        v_hat = rows[..., :, None] * columns[..., None, :] / rows.mean(-1)[..., None, None]
        return grad / np.sqrt(np.moveaxis(v_hat, (-2, -1), axes))

    def _momentum(self, key, update):
        s = self.settings
        if not s["momentum"]:
            return update
        stored = self.first.get(key, np.zeros_like(update))
        if s["momentum_dtype"] == "bfloat16":
            # JAX casts the Python decay to the accumulator's dtype (0.9 -> 0.8984375); the
            # accumulator is stored rounded to bfloat16; the returned update is float32.
            decay = float(ml_dtypes.bfloat16(s["momentum"]))
            new = (1 - s["momentum"]) * update + decay * stored
            self.first[key] = new.astype(ml_dtypes.bfloat16).astype(np.float64)
        else:
            new = (1 - s["momentum"]) * update + s["momentum"] * stored
            self.first[key] = new
        return new

    def update(self, grads):
        s = self.settings
        if s["grad_clip_norm"]:
            norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2)
                               for leaves in grads.values() for g in leaves.values()))
            factor = min(1.0, s["grad_clip_norm"] / norm)
        else:
            factor = 1.0
        schedule = _schedule(self.step, s["total"], s["warmup"])
        for module, leaves in grads.items():
            for name, grad in leaves.items():
                key = (module, name)
                update = self._scale(key, grad.astype(np.float64) * factor)
                if s["clipping_threshold"]:
                    rms = np.sqrt(np.mean(update**2))
                    update = update / max(1.0, rms / s["clipping_threshold"])
                update = self._momentum(key, update)
                lr = s["lr"] * self.lr_mults.get(module, 1.0)
                decay = s["wd"] * self.params[module][name] if name == "kernel" else 0.0
                self.params[module][name] = (self.params[module][name]
                                             - schedule * (lr * update + decay))
        self.step += 1


def _run(tx, params, grads_per_step):
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    for grads in grads_per_step:
        params, state = step(params, state, grads)
    return params, state


@pytest.mark.parametrize("momentum_dtype, grad_clip_norm, clipping_threshold, rtol", [
    ("float32", 0.0, 0.0, 1e-6),  # UViM stage II: no clipping at all
    ("float32", 1.0, 0.0, 1e-6),  # UViM stage I: global gradient clipping at 1.0
    ("float32", 0.0, 0.5, 1e-6),  # big_vision's optional block-RMS update clipping
    ("bfloat16", 1.0, 0.0, 1e-5),  # big_vision's momentum accumulator dtype
])
def test_matches_big_vision_update_rule(momentum_dtype, grad_clip_norm, clipping_threshold,
                                        rtol):
    rng = np.random.default_rng(0)
    params = _tree(rng)
    grads = [_tree(rng, scale=0.1 * (k + 1)) for k in range(9)]
    total, warmup = 9, 2
    # A cap of 0.6 binds from step 3 on (1 - 4^-0.8 = 0.67); UViM's 0.95 binds from step 42.
    config = config_lib.optimizer()
    config.update(name="big_vision_adafactor", learning_rate=1e-2, weight_decay=0.05,
                  weight_decay_pattern=".*/kernel$", schedule="cosine", warmup_steps=warmup,
                  beta2_cap=0.6, momentum=0.9, momentum_dtype=momentum_dtype,
                  grad_clip_norm=grad_clip_norm, clipping_threshold=clipping_threshold)
    final, _ = _run(optim.build(config, total), params, grads)

    reference = ReferenceAdafactor(
        params, lr=1e-2, wd=0.05, total=total, warmup=warmup, beta2_cap=0.6, exponent=0.8,
        min_dim=32, momentum=0.9, momentum_dtype=momentum_dtype,
        grad_clip_norm=grad_clip_norm, clipping_threshold=clipping_threshold)
    for g in grads:
        reference.update(g)
    for module, leaves in SHAPES.items():
        for name in leaves:
            np.testing.assert_allclose(final[module][name], reference.params[module][name],
                                       rtol=rtol, atol=1e-7, err_msg=f"{module}/{name}")
    # The parameters moved: the comparison is not between two unchanged trees.
    assert not np.allclose(final["dense"]["kernel"], params["dense"]["kernel"], atol=1e-3)


def test_state_is_factored_and_momentum_is_bfloat16():
    config = config_lib.optimizer()
    config.update(name="big_vision_adafactor", beta2_cap=0.95)
    params = jax.tree.map(jnp.asarray, _tree(np.random.default_rng(0)))
    state = optim.build(config, 10).init(params)
    factored, _, momentum = state[0]
    # Factored leaves keep one row and one column vector; the 16x8 kernel keeps a full matrix.
    assert factored.v_row["dense"]["kernel"].shape == (40,)
    assert factored.v_col["dense"]["kernel"].shape == (48,)
    assert factored.v_row["conv"]["kernel"].shape == (3, 3, 36)
    assert factored.v["small"]["kernel"].shape == (16, 8)
    assert momentum.ema["dense"]["kernel"].dtype == jnp.bfloat16


def test_weight_decay_follows_the_schedule_not_the_learning_rate():
    """Zero gradients: only decay moves params, by wd * schedule(t) * param, kernels only."""
    config = config_lib.optimizer()
    config.update(name="big_vision_adafactor", learning_rate=123.0, weight_decay=0.1,
                  weight_decay_pattern=".*/kernel$", schedule="linear", momentum=0.0)
    params = {"layer": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    # Zero gradients give 0 / sqrt(eps) = 0 adafactor updates.
    final, _ = _run(optim.build(config, 4), params, [zeros] * 2)
    # Linear schedule over 4 steps: 1.0 then 0.75.
    np.testing.assert_allclose(final["layer"]["kernel"], (1 - 0.1) * (1 - 0.075), rtol=1e-6)
    np.testing.assert_allclose(final["layer"]["bias"], 1.0)


def test_name_mask_uses_big_vision_names():
    mask = big_vision_optax.name_mask(".*/kernel$")(
        {"encoder": {"block_0": {"kernel": 0, "bias": 0}}, "kernel": 0})
    assert mask == {"encoder": {"block_0": {"kernel": True, "bias": False}}, "kernel": False}


@pytest.mark.parametrize("fields, message", [
    (dict(beta2_cap=0.0), "optimizer.beta2_cap = 0.0: must be in (0, 1]"),
    (dict(momentum_dtype="float16"), "optimizer.momentum_dtype = 'float16': must be one of"),
    (dict(weight_decay_pattern="("), "optimizer.weight_decay_pattern = '(': not a regular"),
    (dict(clipping_threshold=-1.0), "optimizer.clipping_threshold = -1.0"),
    (dict(min_dim_size_to_factor=0), "optimizer.min_dim_size_to_factor = 0"),
])
def test_bad_fields_are_named(fields, message):
    config = config_lib.optimizer(name="big_vision_adafactor", **fields)
    with pytest.raises(ValueError) as info:
        config_lib.check(config, config_lib.OptimizerConfig, "optimizer")
    assert message in str(info.value)


def test_stage2_encoder_multiplier_scales_the_rate_not_the_decay():
    """UViM stage II: lr_mults 0.1 on the encoder (big_vision train_*_pretrained.py), one global
    gradient clip over both parts, weight decay unscaled (big_vision/optax.py make)."""
    from uvim.tasks import stage2_optimizer

    shapes = {"encoder": {"kernel": (48, 40), "bias": (40,)},
              "embed_patches": {"kernel": (3, 3, 40, 36)},
              "posemb_encoder": {"embedding": (1, 64, 40)},
              "logits": {"kernel": (40, 33)}, "decoder_norm": {"scale": (40,)}}
    rng = np.random.default_rng(1)
    params = _tree(rng, shapes=shapes)
    grads = [_tree(rng, scale=0.3, shapes=shapes) for _ in range(6)]
    config = config_lib.optimizer()
    config.update(name="big_vision_adafactor", learning_rate=1e-2, weight_decay=0.05,
                  weight_decay_pattern=".*/kernel$", schedule="cosine", warmup_steps=1,
                  beta2_cap=0.6, momentum_dtype="float32", grad_clip_norm=1.0)
    final, _ = _run(stage2_optimizer(config, 0.1, 6), params, grads)
    reference = ReferenceAdafactor(
        params, lr=1e-2, wd=0.05, total=6, warmup=1, beta2_cap=0.6, exponent=0.8, min_dim=32,
        momentum=0.9, momentum_dtype="float32", grad_clip_norm=1.0, clipping_threshold=0.0,
        lr_mults={"encoder": 0.1, "embed_patches": 0.1, "posemb_encoder": 0.1})
    for g in grads:
        reference.update(g)
    for module, leaves in shapes.items():
        for name in leaves:
            np.testing.assert_allclose(final[module][name], reference.params[module][name],
                                       rtol=1e-6, atol=1e-7, err_msg=f"{module}/{name}")
