"""A small convolutional autoencoder with a configurable quantizer between two projections.

The smallest real task for the shared loop: it trains in seconds on a CPU, exercises quantizer
state and rngs, and shows FSQ and VQ as a config swap (`configs/autoencoder.py:fsq,tiny` or
`vq,tiny`, or `--config.quantizer.name=vq`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fsq_jax import quantizers
from fsq_jax.config_lib import LoopConfig, OptimizerConfig, require
from fsq_jax.dtypes import DTYPES, DTypeName
from fsq_jax.eval.evaluators import CodebookUsageEvaluator
from fsq_jax.images import image_grid, to_float, to_uint8
from fsq_jax.quantizers.registry import QuantizerConfig
from fsq_jax.train import optim, sharding
from fsq_jax.train.state import TrainState

GROUP = "autoencoder"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoencoderModelConfig:
    """`model.*`: encoder width and depth (downsamplings) and the compute dtype."""

    width: int
    num_down: int
    compute_dtype: DTypeName

    def __post_init__(self):
        require(self.width >= 1, "width", "must be >= 1")
        require(self.num_down >= 0, "num_down", "must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoencoderEvaluators:
    """`evaluators.*`: codebook usage over this many validation batches (0 disables it)."""

    codebook_batches: int

    def __post_init__(self):
        require(self.codebook_batches >= 0, "codebook_batches", "must be >= 0 (0 disables it)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoencoderConfig(LoopConfig):
    """The autoencoder experiment (configs/autoencoder.py)."""

    model: AutoencoderModelConfig
    quantizer: QuantizerConfig
    optimizer: OptimizerConfig
    evaluators: AutoencoderEvaluators

    def __post_init__(self):
        super().__post_init__()
        factor = 2**self.model.num_down
        require(self.data.image_size % factor == 0, "data.image_size",
                f"must be divisible by {factor} (2**model.num_down)")


class Autoencoder(nn.Module):
    """images [B, H, W, 3] in [-1, 1] -> (reconstruction [B, H, W, 3], QuantizerOutput).

    Encoder: `num_down` stride-2 convolutions; a dense projection to the quantizer's dimension;
    the quantizer; a dense projection back; `num_down` transposed convolutions.
    """

    width: int
    num_down: int
    quantizer_config: Any
    dtype: Any = jnp.float32

    def setup(self):
        self.quantizer = quantizers.build(self.quantizer_config)
        self.code_dim = quantizers.code_dim(self.quantizer_config)

    def encode(self, images: jax.Array) -> jax.Array:
        x = nn.Conv(self.width, (3, 3), dtype=self.dtype, name="enc_in")(images)
        for i in range(self.num_down):
            x = nn.gelu(x)
            x = nn.Conv(
                self.width * 2 ** (i + 1),
                (4, 4),
                strides=(2, 2),
                dtype=self.dtype,
                name=f"enc_down{i}",
            )(x)
        x = nn.gelu(x)
        return nn.Dense(self.code_dim, dtype=jnp.float32, name="to_code")(x)

    def decode(self, quantized: jax.Array) -> jax.Array:
        x = nn.Dense(self.width * 2**self.num_down, dtype=self.dtype, name="from_code")(quantized)
        for i in reversed(range(self.num_down)):
            x = nn.gelu(x)
            x = nn.ConvTranspose(
                self.width * 2**i, (4, 4), strides=(2, 2), dtype=self.dtype, name=f"dec_up{i}"
            )(x)
        x = nn.gelu(x)
        return nn.Conv(3, (3, 3), dtype=jnp.float32, name="dec_out")(x)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False):
        z = self.encode(images)
        out = self.quantizer(z, train=train)
        return self.decode(out.quantized), out


class AutoencoderTask:
    """Reconstruct `image` batches through a quantized bottleneck (MSE + quantizer loss)."""

    config_schema = AutoencoderConfig

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.model = Autoencoder(
            width=config.model.width,
            num_down=config.model.num_down,
            quantizer_config=config.quantizer,
            dtype=DTYPES[config.model.compute_dtype],
        )
        self.ema_decay = config.ema_decay

    def _variables(self, state: TrainState, params: Any) -> dict[str, Any]:
        return {"params": params[GROUP], **state.model_state}

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        params_rng, quantizer_rng = jax.random.split(rng)
        images = to_float(batch["image"])
        variables = self.model.init(
            {"params": params_rng, quantizers.RNG_STREAM: quantizer_rng}, images, train=False
        )
        variables = dict(variables)
        params = variables.pop("params")
        tx = optim.build(self.config.optimizer, self.config.total_steps)
        return TrainState.create(
            {GROUP: params}, {GROUP: tx}, model_state=variables, ema_decay=self.ema_decay
        )

    def _apply(self, variables, images, rng, train: bool):
        mutable = [quantizers.STATE_COLLECTION] if train else False
        result = self.model.apply(
            variables, images, train=train, rngs={quantizers.RNG_STREAM: rng}, mutable=mutable
        )
        if train:
            (reconstruction, out), updates = result
            return reconstruction, out, dict(updates)
        reconstruction, out = result
        return reconstruction, out, {}

    def loss(
        self, params: Any, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, Any, dict[str, Any]]]:
        """MSE of the reconstruction (images in [-1, 1]) plus the quantizer's auxiliary loss.

        Returns (loss, (mse, QuantizerOutput, updated quantizer state)).
        """
        images = to_float(batch["image"])
        reconstruction, out, updates = self._apply(
            self._variables(state, {GROUP: params}), images, rng, train=True
        )
        mse = jnp.mean(jnp.square(reconstruction - images))
        return mse + out.loss, (mse, out, updates)

    def train_step(
        self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, (mse, out, updates)), grads = jax.value_and_grad(
            lambda params: self.loss(params, state, batch, rng), has_aux=True
        )(state.params[GROUP])
        model_state = {**state.model_state, **updates}
        new_state = state.apply_gradients({GROUP: grads}, model_state=model_state)
        metrics = {
            "loss": loss,
            "mse": mse,
            "quantizer_loss": out.loss,
            **{f"quantizer/{k}": v for k, v in out.metrics.items()},
        }
        return new_state, metrics

    def eval_step(
        self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
    ) -> dict[str, jax.Array]:
        images = to_float(batch["image"])
        reconstruction, out, _ = self._apply(
            self._variables(state, state.eval_params()), images, rng, train=False
        )
        mse = jnp.mean(jnp.square(reconstruction - images))
        # PSNR of [0, 255] images; the [-1, 1] range is 2 wide.
        psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
        return {
            "mse": mse,
            "psnr": psnr,
            "quantizer_loss": out.loss,
            **{f"quantizer/{k}": v for k, v in out.metrics.items()},
        }

    def evaluators(self) -> Sequence[Any]:
        """`codebook`: usage, perplexity and entropy of the codes over validation batches."""
        batches = self.config.evaluators.codebook_batches
        if batches == 0:
            return ()

        def indices(state: TrainState, batch: dict[str, np.ndarray], context: Any) -> np.ndarray:
            variables = self._variables(state, state.eval_params())
            return context.run(self._indices, (variables,), batch["image"])

        size = quantizers.codebook_size(self.config.quantizer)
        batch_size = self.config.eval_batch_size
        return (CodebookUsageEvaluator("codebook", indices, size, batch_size=batch_size,
                                       num_examples=batches * batch_size),)

    @functools.partial(jax.jit, static_argnums=0)
    def _indices(self, variables: dict[str, Any], images: jax.Array) -> jax.Array:
        _, out = self.model.apply(variables, to_float(images), train=False)
        return out.indices

    def images(
        self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
    ) -> dict[str, np.ndarray]:
        """`reconstructions`: up to 8 inputs (top row) above their reconstructions."""
        images = batch["image"][:8]
        reconstruction, _, _ = jax.jit(self._apply, static_argnames="train")(
            self._variables(state, state.eval_params()), to_float(images), rng, train=False
        )
        images, reconstruction = sharding.to_host((images, to_uint8(reconstruction)))
        return {"reconstructions": image_grid(np.concatenate([images, reconstruction]), rows=2)}


