"""The two MaskGIT stages as tasks of the shared training loop.

`TokenizerTask` (stage I) trains the VQGAN / FSQ-GAN: generator and discriminator as two parameter
groups with their own optimisers, reconstruction + perceptual + adversarial + quantizer losses.
`TransformerTask` (stage II) trains the masked transformer on tokens of a frozen stage-I workdir,
tokenised on the fly inside the jitted step, and samples with parallel decoding and guidance.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fsq_jax import images as image_lib
from fsq_jax import quantizers
from fsq_jax.config_lib import LoopConfig, OptimizerConfig, require
from fsq_jax.quantizers import RNG_STREAM, STATE_COLLECTION
from fsq_jax.quantizers.registry import QuantizerConfig
from fsq_jax.train import accumulation, optim
from fsq_jax.train.checkpoint import restore_latest
from fsq_jax.train.evaluation import run_sharded
from fsq_jax.train.frozen import FrozenStage, frozen_from_variables, read_frozen_config
from fsq_jax.train.state import TrainState
from maskgit import (
    decoding,
    discriminator,
    evaluation,
    losses,
    masking,
    token_cache,
    tokenizer,
    transformer,
)

Batch = Mapping[str, jax.Array]


# ---------------------------------------------------------------------------------------------
# Stage I.


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerOptimizers:
    """`optimizers.*`: one optimiser per parameter group."""

    generator: OptimizerConfig
    discriminator: OptimizerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerTaskConfig(LoopConfig):
    """Stage I (configs/maskgit/tokenizer.py)."""

    model: tokenizer.TokenizerModelConfig
    quantizer: QuantizerConfig
    discriminator: discriminator.DiscriminatorConfig
    loss: losses.LossConfig
    optimizers: TokenizerOptimizers
    evaluators: evaluation.TokenizerEvaluators
    # Micro-batches per optimiser step (fsq_jax.train.accumulation): the step's gradients are
    # the mean over `batch_size / grad_accum_steps`-example micro-batches computed in turn, so
    # the optimiser still sees `batch_size` while activations are a micro-batch's.
    grad_accum_steps: int

    def __post_init__(self):
        super().__post_init__()
        require(self.grad_accum_steps >= 1, "grad_accum_steps", "must be >= 1")
        require(self.batch_size % self.grad_accum_steps == 0, "grad_accum_steps",
                f"must divide batch_size ({self.batch_size})")
        factor = tokenizer.downsample_factor(self.model)
        require(self.data.image_size % factor == 0, "data.image_size",
                f"must be a multiple of the tokenizer's downsampling factor {factor} "
                "(2 ** (len(model.channel_multipliers) - 1))")
        size = self.data.image_size
        require(size >= 8 and size & (size - 1) == 0, "data.image_size",
                "the discriminator needs a power of two >= 8")
        require(self.model.project_codes or self.quantizer.dim == self.model.embedding_dim,
                "model.project_codes", f"False needs the quantizer's code dim "
                f"({self.quantizer.dim}) to equal model.embedding_dim ({self.model.embedding_dim})")


# The metrics `discriminator_objective` returns.
DISCRIMINATOR_METRICS = ("discriminator_loss", "logits_real", "logits_fake", "r1_penalty", "lecam")


def discriminator_objective(discriminate: Callable[[jax.Array], jax.Array], real: jax.Array,
                            fake: jax.Array, cfg: ml_collections.ConfigDict,
                            lecam_ema: Mapping[str, jax.Array] | None = None
                            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The discriminator's loss and its metrics, as MAGVIT's vqgan_trainer.py `d_loss =
    d_adversarial_loss + grad_penalty + lecam_loss`.

    grad_penalty = `loss.r1_weight` * mean over the batch of ||grad_x D(x)||^2 on the real
    images: MAGVIT's losses.py `r1_gradient_penalty` (penalty_cost * mean(sum(square(grad)))),
    with MaskGIT's vqgan_config `grad_penalty_cost = 10`. The gradient is the vjp of the logits
    with ones, as there.

    Args:
      discriminate: images [B, H, W, 3] -> logits [B].
      real, fake: images [B, H, W, 3] (fake without gradient to the generator).
      cfg: `loss.*` (r1_weight, lecam_weight).
      lecam_ema: {"real", "fake"} EMAs of the mean logits when `lecam_weight > 0`.
    """
    real_logits, pullback = jax.vjp(discriminate, real)
    fake_logits = discriminate(fake)
    loss = losses.discriminator_loss(real_logits, fake_logits)
    total = loss
    aux = {"discriminator_loss": loss, "logits_real": jnp.mean(real_logits),
           "logits_fake": jnp.mean(fake_logits),
           "r1_penalty": jnp.zeros(()), "lecam": jnp.zeros(())}
    if cfg.r1_weight > 0:
        (grads,) = pullback(jnp.ones_like(real_logits))
        r1 = jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)))
        total = total + cfg.r1_weight * r1
        aux["r1_penalty"] = r1
    if cfg.lecam_weight > 0:
        lecam = losses.lecam_regularizer(real_logits, fake_logits, lecam_ema["real"],
                                         lecam_ema["fake"])
        total = total + cfg.lecam_weight * lecam
        aux["lecam"] = lecam
    return total, aux


class TokenizerTask:
    """Stage I: VQGAN / FSQ-GAN with a StyleGAN discriminator.

    Parameter groups: "generator" (encoder, projections, quantizer params, decoder) and
    "discriminator". `model_state` holds the quantizer's collection, LeCam EMAs and the frozen
    perceptual network's weights (when one is configured).
    """

    config_schema = TokenizerTaskConfig

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.model = tokenizer.build(config)
        self.discriminator = discriminator.Discriminator(config.discriminator)
        self.perceptual, self._perceptual_params = losses.load_perceptual(config.loss)

    # -- the Task protocol -------------------------------------------------------------------
    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
        images = image_lib.to_float(batch["image"][:1])  # shapes only; keep init cheap
        g_rng, d_rng, q_rng = jax.random.split(rng, 3)
        variables = self.model.init({"params": g_rng, RNG_STREAM: q_rng}, images, train=True)
        d_params = self.discriminator.init(d_rng, images)["params"]
        model_state: dict[str, Any] = {}
        if STATE_COLLECTION in variables:
            model_state[STATE_COLLECTION] = variables[STATE_COLLECTION]
        if self.config.loss.lecam_weight > 0:
            model_state["lecam"] = {"real": jnp.zeros(()), "fake": jnp.zeros(())}
        if self.perceptual is not None:
            model_state["perceptual"] = jax.tree.map(jnp.asarray, self._perceptual_params)
        total = self.config.total_steps
        tx = {
            "generator": optim.build(self.config.optimizers.generator, total),
            "discriminator": optim.build(self.config.optimizers.discriminator, total),
        }
        return TrainState.create(
            {"generator": variables["params"], "discriminator": d_params}, tx,
            model_state=model_state, ema_decay=self.config.ema_decay,
        )

    def _generator_variables(self, params: Any, model_state: Mapping[str, Any]) -> dict:
        variables = {"params": params}
        if STATE_COLLECTION in model_state:
            variables[STATE_COLLECTION] = model_state[STATE_COLLECTION]
        return variables

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One simultaneous generator + discriminator update on `batch["image"]`.

        Before `loss.discriminator_start` the adversarial terms are multiplied by 0 and the
        discriminator's params and optimiser state are kept as they are (selected with
        `jnp.where`, not `lax.cond`: XLA:CPU runs convolutions inside conditionals an order of
        magnitude slower), so its optimiser starts fresh when the adversarial terms switch on.
        With `loss.adversarial_weight = 0` the discriminator is never evaluated.
        """
        cfg = self.config.loss
        adversarial = cfg.adversarial_weight > 0
        active = state.step >= cfg.discriminator_start
        gate = active.astype(jnp.float32)
        d_params = state.params["discriminator"]
        disc = lambda params, x: self.discriminator.apply({"params": params}, x)
        steps = self.config.get("grad_accum_steps", 1)  # absent from runs saved before it

        def micro_step(quantizer_state, micro_batch, index):
            """Gradients and metrics of one micro-batch (the whole batch when steps = 1)."""
            real = image_lib.to_float(micro_batch["image"])
            micro_rng = rng if steps == 1 else jax.random.fold_in(rng, index)
            model_state = dict(state.model_state)
            if quantizer_state is not None:
                model_state[STATE_COLLECTION] = quantizer_state

            def generator_loss(g_params):
                (recon, out), updated = self.model.apply(
                    self._generator_variables(g_params, model_state), real, train=True,
                    mutable=[STATE_COLLECTION], rngs={RNG_STREAM: micro_rng},
                )
                rec = losses.reconstruction_loss(real, recon, cfg.reconstruction)
                total = cfg.reconstruction_weight * rec + cfg.quantizer_weight * out.loss
                metrics = {"reconstruction_loss": rec, "quantizer_loss": out.loss}
                if self.perceptual is not None:
                    perc = losses.perceptual_loss(
                        self.perceptual, state.model_state["perceptual"], real, recon
                    )
                    total = total + cfg.perceptual_weight * perc
                    metrics["perceptual_loss"] = perc
                if adversarial:
                    adv = losses.generator_adversarial_loss(disc(d_params, recon))
                    total = total + gate * cfg.adversarial_weight * adv
                    metrics["generator_adversarial_loss"] = adv
                metrics.update({f"quantizer/{k}": v for k, v in out.metrics.items()})
                return total, (recon, updated, metrics)

            (g_total, (recon, updated, metrics)), g_grads = jax.value_and_grad(
                generator_loss, has_aux=True
            )(state.params["generator"])
            grads = {"generator": g_grads}
            metrics = {**metrics, "generator_loss": g_total}
            if adversarial:
                fake = jax.lax.stop_gradient(recon)

                def d_objective(params):
                    return discriminator_objective(functools.partial(disc, params), real, fake,
                                                   cfg, state.model_state.get("lecam"))

                (_, d_metrics), grads["discriminator"] = jax.value_and_grad(
                    d_objective, has_aux=True)(d_params)
                metrics.update(d_metrics)
            return updated.get(STATE_COLLECTION, quantizer_state), (grads, metrics)

        # `grad_accum_steps` micro-batches in turn (fsq_jax.train.accumulation): the mean of
        # their gradients is the whole batch's, with one micro-batch's activations at a time.
        quantizer_state, (grads, metrics) = accumulation.accumulate(
            micro_step, state.model_state.get(STATE_COLLECTION), batch, steps)
        updated = {} if quantizer_state is None else {STATE_COLLECTION: quantizer_state}
        g_grads = grads["generator"]
        g_total = metrics.pop("generator_loss")
        d_metrics = {k: metrics.pop(k) for k in list(metrics) if k in DISCRIMINATOR_METRICS}

        model_state = dict(state.model_state)
        if STATE_COLLECTION in updated:
            model_state[STATE_COLLECTION] = updated[STATE_COLLECTION]
        g_only = lambda: state.apply_gradients({"generator": g_grads}, model_state=model_state)
        if not adversarial:
            new_state = g_only()
        else:
            d_grads = grads["discriminator"]
            if cfg.lecam_weight > 0:
                decay = jnp.where(active, cfg.lecam_ema_decay, 1.0)
                ema = state.model_state["lecam"]
                model_state["lecam"] = {
                    "real": decay * ema["real"] + (1 - decay) * d_metrics["logits_real"],
                    "fake": decay * ema["fake"] + (1 - decay) * d_metrics["logits_fake"],
                }
            both = lambda: state.apply_gradients(
                {"generator": g_grads, "discriminator": d_grads}, model_state=model_state)
            new_state = jax.tree.map(lambda on, off: jnp.where(active, on, off), both(),
                                     g_only())
        metrics = {**metrics, **d_metrics, "generator_loss": g_total, "adversarial_gate": gate}
        return new_state, metrics

    def reconstruct(self, state: TrainState, images: jax.Array
                    ) -> tuple[jax.Array, quantizers.QuantizerOutput]:
        """Eval-mode reconstruction with the EMA generator. images: uint8 [B, H, W, 3] ->
        (float [B, H, W, 3] in ~[-1, 1], quantizer output)."""
        variables = self._generator_variables(
            state.eval_params()["generator"], state.model_state
        )
        return self.model.apply(variables, image_lib.to_float(images), train=False)

    def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array
                  ) -> dict[str, jax.Array]:
        del rng
        real = image_lib.to_float(batch["image"])
        recon, out = self.reconstruct(state, batch["image"])
        mse = jnp.mean(jnp.square(jnp.clip(recon, -1, 1) - real), axis=(1, 2, 3))
        psnr = jnp.mean(10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10)))  # range 2 -> peak^2 4
        metrics = {"reconstruction_l2": jnp.mean(mse),
                   "reconstruction_l1": losses.reconstruction_loss(real, recon, "l1"),
                   "psnr": psnr}
        metrics.update({f"quantizer/{k}": v for k, v in out.metrics.items()})
        return metrics

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]:
        """Originals (top row) over reconstructions (bottom row), up to 8 images."""
        del rng
        originals = np.asarray(batch["image"][:8])
        recon = self.reconstruct_fn(state)(originals)
        return {"reconstructions": image_lib.image_grid(np.concatenate([originals, recon]),
                                                        rows=2)}

    @functools.cached_property
    def _jitted_tokenize(self) -> Callable[..., jax.Array]:
        return jax.jit(lambda variables, images: self.model.apply(
            variables, image_lib.to_float(images), method="tokenize"))

    @functools.cached_property
    def _jitted_reconstruct(self) -> Callable[..., jax.Array]:
        def apply(variables, images):
            recon, _ = self.model.apply(variables, image_lib.to_float(images), train=False)
            return image_lib.to_uint8(recon)

        return jax.jit(apply)

    def tokenize_fn(self, state: TrainState, mesh: jax.sharding.Mesh | None = None
                    ) -> Callable[[np.ndarray], np.ndarray]:
        """Host function uint8 [B, H, W, 3] -> int32 tokens [B, h, w] (EMA generator), the
        batch split over `mesh` (default: every device)."""
        variables = self._generator_variables(state.eval_params()["generator"], state.model_state)
        return lambda images: run_sharded(self._jitted_tokenize, (variables,), images, mesh=mesh)

    def reconstruct_fn(self, state: TrainState, mesh: jax.sharding.Mesh | None = None
                       ) -> Callable[[np.ndarray], np.ndarray]:
        """Host function uint8 [B, H, W, 3] -> uint8 reconstructions [B, H, W, 3]."""
        variables = self._generator_variables(state.eval_params()["generator"], state.model_state)
        return lambda images: run_sharded(self._jitted_reconstruct, (variables,), images,
                                          mesh=mesh)

    def evaluators(self) -> list[Any]:
        """Reconstruction FID and codebook usage over `evaluators.num_images` validation images."""
        return evaluation.tokenizer_evaluators(self)


# ---------------------------------------------------------------------------------------------
# Stage II.


def num_classes(config: ml_collections.ConfigDict) -> int:
    """`config.num_classes`, or when 0 the data source's class count."""
    if config.num_classes > 0:
        return int(config.num_classes)
    from fsq_jax import data

    return int(data.num_classes(config.data))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerLossConfig:
    """`loss.*` of stage II."""

    label_smoothing: float

    def __post_init__(self):
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")


def per_example_masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over each example's masked positions, then over the batch. values, mask: [B, N]."""
    weights = mask.astype(jnp.float32)
    per_example = jnp.sum(values * weights, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    return jnp.mean(per_example)


def masked_token_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array,
                      label_smoothing: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Stage II's loss and metrics: label-smoothed cross entropy of the image codes at the
    masked positions, averaged per example, then over the batch.

    MaskGIT's libml/losses.py `weighted_sequence_cross_entropy_loss` (sum(loss * weights, -1) /
    sum(weights, -1), then the mean; smoothing (1 - s) one_hot + s / K) with the masked
    positions as weights, as MAGVIT's maskgvt_trainer.py `train_step`; the softmax runs over the
    K image codes (MAGVIT slices `logits[..., :vq_codebook_size]` before it).

    Args:
      logits: float [B, N, K]; tokens: int [B, N] in [0, K); mask: bool [B, N] (True = masked,
        at least one per example as `masking.random_mask` draws them).

    Returns:
      (loss, {"loss", "nll", "accuracy", "mask_ratio"}), each a per-example masked mean.
    """
    logits = logits.astype(jnp.float32)
    targets = optax.smooth_labels(jax.nn.one_hot(tokens, logits.shape[-1]), label_smoothing)
    loss = per_example_masked_mean(optax.softmax_cross_entropy(logits, targets), mask)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    correct = (jnp.argmax(logits, -1) == tokens).astype(jnp.float32)
    return loss, {"loss": loss, "nll": per_example_masked_mean(nll, mask),
                  "accuracy": per_example_masked_mean(correct, mask),
                  "mask_ratio": jnp.mean(mask.astype(jnp.float32))}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerTaskConfig(LoopConfig):
    """Stage II (configs/maskgit/transformer.py)."""

    tokenizer_workdir: str  # the finished stage-I run whose tokens this stage models
    num_classes: int  # 0 = from the data source
    model: transformer.TransformerModelConfig
    masking: masking.MaskingConfig
    loss: TransformerLossConfig
    token_cache: token_cache.TokenCacheConfig
    sampling: decoding.SamplingConfig
    optimizer: OptimizerConfig
    evaluators: evaluation.TransformerEvaluators

    def __post_init__(self):
        super().__post_init__()
        require(self.num_classes >= 0, "num_classes", "must be >= 1 (or 0: from the data)")


class TransformerTask:
    """Stage II: class-conditional masked token modelling on a frozen stage-I tokenizer.

    One parameter group, "transformer". `model_state["tokenizer"]` holds the frozen tokenizer's
    variables, so a stage-II checkpoint samples images on its own.

    Args:
      config: the stage-II config.
      frozen: the stage-I run (`fsq_jax.train.load_frozen(config.tokenizer_workdir, ...)`, or
        `FrozenStage.in_memory(...)`); its variables are read when the state is first built.
    """

    config_schema = TransformerTaskConfig
    frozen_stage_field = "tokenizer_workdir"

    @staticmethod
    def check_frozen(config: TransformerTaskConfig, frozen: ml_collections.ConfigDict) -> None:
        """ValueError unless `frozen` is a tokenizer run whose token grid fits the images."""
        if "model" not in frozen or "quantizer" not in frozen or "discriminator" not in frozen:
            raise ValueError("not a MaskGIT tokenizer run (train stage I first: scripts/train.py "
                             "--config configs/maskgit/tokenizer.py:fsq,tiny --workdir ...)")
        tokenizer.token_grid(frozen.model, config.data.image_size)

    def __init__(self, config: ml_collections.ConfigDict, frozen: FrozenStage):
        self.config = config
        self.frozen = frozen
        self.tokenizer_config = frozen.config
        self.tokenizer = tokenizer.build(self.tokenizer_config)
        self.grid = tokenizer.token_grid(self.tokenizer_config.model, config.data.image_size)
        self.seq_len = self.grid[0] * self.grid[1]
        self.codebook_size = quantizers.codebook_size(self.tokenizer_config.quantizer)
        self.num_classes = num_classes(config)
        self.mask_id = transformer.mask_token_id(self.codebook_size)
        self.model = transformer.MaskedTransformer(
            config.model, self.codebook_size, self.num_classes, self.seq_len
        )

    @classmethod
    def from_workdir(cls, workdir: str) -> tuple[TransformerTask, dict[str, Any]]:
        """The task of a stage-II run and its newest checkpoint (host numpy dict), read without
        changing the workdir; the frozen tokenizer's variables come from that checkpoint and
        its architecture from `tokenizer_workdir/config.json`."""
        config, restored = restore_latest(workdir)
        if "tokenizer" not in (restored.get("model_state") or {}):
            raise ValueError(f"{workdir!r} is not a MaskGIT transformer run (no frozen tokenizer "
                             "in its checkpoint)")
        tokenizer_config = read_frozen_config(config.tokenizer_workdir,
                                              f"{workdir}/config.json: tokenizer_workdir")
        frozen = frozen_from_variables(tokenizer_config, "generator",
                                       restored["model_state"]["tokenizer"])
        return cls(config, frozen=frozen), restored

    # -- frozen tokenizer --------------------------------------------------------------------
    def tokenizer_variables(self) -> dict[str, Any]:
        """The frozen stage-I variables (EMA generator and quantizer state)."""
        return self.frozen.variables("generator", (STATE_COLLECTION,))

    def tokenize(self, tokenizer_variables: Any, images: jax.Array) -> jax.Array:
        """uint8 [B, H, W, 3] -> int32 tokens [B, N] (N = h * w), no gradient."""
        tokens = self.tokenizer.apply(
            tokenizer_variables, image_lib.to_float(images), method="tokenize"
        )
        return jax.lax.stop_gradient(tokens.reshape(tokens.shape[0], -1))

    # -- input: images, or tokens from a cache ------------------------------------------------
    def data_fn(self, data_config: ml_collections.ConfigDict, split: str, batch_size: int,
                **kwargs: Any) -> Iterator[dict[str, np.ndarray]]:
        """The loop's batches (`fsq_jax.data.build`'s signature): with `token_cache.dir` set,
        the train split comes from the token cache (built on first use), else images (always
        for evaluation: the FID reference reads the train images)."""
        from fsq_jax import data

        if split != "train" or not self.config.token_cache.dir or kwargs.get("evaluation"):
            return data.build(data_config, split, batch_size, **kwargs)
        return data.batches(self._token_source, data_config, split, batch_size, **kwargs)

    @functools.cached_property
    def _token_source(self) -> token_cache.TokenCacheSource:
        """Opened (or built) once per task: the loop asks for the train split more than once,
        and checking the cache hashes every tokenizer variable."""
        return self.open_token_cache()

    def open_token_cache(self, log: Callable[[str], None] = print
                         ) -> token_cache.TokenCacheSource:
        """The train tokens at `token_cache.dir`, tokenised now when the cache is absent."""
        cfg = self.config.token_cache
        variables = self.tokenizer_variables()
        meta = token_cache.expected_meta(self.config.data, token_cache.fingerprint(variables),
                                         self.grid, self.codebook_size, cfg.passes)
        tokenize = functools.partial(run_sharded, self._jitted_tokenize, (variables,))
        return token_cache.open_or_build(cfg.dir, self.config.data, tokenize, meta,
                                         cfg.batch_size, log)

    @functools.cached_property
    def _jitted_tokenize(self) -> Callable[..., jax.Array]:
        return jax.jit(self.tokenize)

    # -- the Task protocol -------------------------------------------------------------------
    def init_state(self, rng: jax.Array, batch: Batch) -> TrainState:
        tokens = jnp.zeros((1, self.seq_len), jnp.int32)
        labels = jnp.zeros((1,), jnp.int32)
        params = self.model.init(rng, tokens, labels, train=False)["params"]
        tx = optim.build(self.config.optimizer, self.config.total_steps)
        frozen = jax.tree.map(jnp.asarray, self.tokenizer_variables())
        return TrainState.create({"transformer": params}, {"transformer": tx},
                                 model_state={"tokenizer": frozen},
                                 ema_decay=self.config.ema_decay)

    def _masked_inputs(self, tokens: jax.Array, labels: jax.Array, rng: jax.Array,
                       drop_labels: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        mask_rng, label_rng = jax.random.split(rng)
        cfg = self.config.masking
        mask = masking.random_mask(mask_rng, tokens.shape[0], self.seq_len, cfg.min_ratio,
                                   cfg.schedule)
        inputs = jnp.where(mask, self.mask_id, tokens)
        rate = cfg.label_dropout if drop_labels else 0.0
        return inputs, masking.drop_labels(label_rng, labels, rate), mask

    def _loss(self, logits: jax.Array, tokens: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
        return masked_token_loss(logits, tokens, mask, self.config.loss.label_smoothing)

    def batch_tokens(self, state: TrainState, batch: Batch) -> jax.Array:
        """int32 tokens [B, N] of a batch: its "tokens" (from a token cache) when it has them,
        else its "image" tokenised by the frozen stage I."""
        if "tokens" in batch:
            tokens = batch["tokens"].astype(jnp.int32)
            return tokens.reshape(tokens.shape[0], -1)
        return self.tokenize(state.model_state["tokenizer"], batch["image"])

    def train_step(self, state: TrainState, batch: Batch, rng: jax.Array
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        """Tokenise (or read cached tokens), mask, predict the masked tokens, update."""
        tokens = self.batch_tokens(state, batch)
        mask_rng, dropout_rng = jax.random.split(rng)
        inputs, labels, mask = self._masked_inputs(tokens, batch["label"], mask_rng, True)
        dropout_rng = transformer.dropout_key(dropout_rng, self.config.model)

        def loss_fn(params):
            logits = self.model.apply({"params": params}, inputs, labels, train=True,
                                      rngs={"dropout": dropout_rng})
            return self._loss(logits, tokens, mask)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params["transformer"])
        return state.apply_gradients({"transformer": grads}), metrics

    def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array
                  ) -> dict[str, jax.Array]:
        tokens = self.batch_tokens(state, batch)
        inputs, labels, mask = self._masked_inputs(tokens, batch["label"], rng, False)
        logits = self.model.apply({"params": state.eval_params()["transformer"]}, inputs,
                                  labels, train=False)
        _, metrics = self._loss(logits, tokens, mask)
        return metrics

    # -- sampling ----------------------------------------------------------------------------
    def sample_images(self, params: Any, tokenizer_variables: Any, labels: jax.Array,
                      rng: jax.Array, sampling: ml_collections.ConfigDict | None = None
                      ) -> jax.Array:
        """Pure sampler: labels int32 [B] -> uint8 images [B, H, W, 3] (jit / shard freely)."""
        sampling = self.config.sampling if sampling is None else sampling
        logits_fn = lambda tokens, y: self.model.apply({"params": params}, tokens, y,
                                                       train=False)
        tokens = decoding.sample_tokens(
            logits_fn, labels, rng, sampling, seq_len=self.seq_len, mask_id=self.mask_id)
        images = self.tokenizer.apply(
            tokenizer_variables, tokens.reshape(-1, *self.grid), method="decode_tokens"
        )
        return image_lib.to_uint8(images)

    @functools.cached_property
    def _jitted_sampler(self) -> Callable[..., jax.Array]:
        return jax.jit(self.sample_images)

    def sample_fn(self, state: TrainState | Mapping[str, Any],
                  mesh: jax.sharding.Mesh | None = None
                  ) -> Callable[[np.ndarray, jax.Array], np.ndarray]:
        """Host sampler of a state (or a restored dict): (labels int32 [B], rng) -> uint8
        [B, H, W, 3]; compiled once per batch size, the batch split over `mesh` (default: every
        device)."""
        if isinstance(state, TrainState):
            params = state.eval_params()["transformer"]
            frozen = state.model_state["tokenizer"]
        else:
            params = (state["ema_params"] or state["params"])["transformer"]
            frozen = state["model_state"]["tokenizer"]
        jitted = self._jitted_sampler

        def sample(labels: np.ndarray, rng: jax.Array) -> np.ndarray:
            return run_sharded(jitted, (params, frozen), np.asarray(labels, np.int32), rng,
                               mesh=mesh)

        return sample

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]:
        """Class-conditional samples: one row per class (up to 16 classes), 8 per row."""
        del batch
        classes = min(self.num_classes, 16)
        labels = np.repeat(np.arange(classes, dtype=np.int32), 8)
        samples = self.sample_fn(state)(labels, rng)
        return {"samples": image_lib.image_grid(samples, rows=classes)}

    def evaluators(self) -> list[Any]:
        """Sampling FID, precision and recall against `evaluators.num_images` real images."""
        return evaluation.transformer_evaluators(self)


def iterate_labels(num_images: int, num_classes: int, batch_size: int) -> Iterator[np.ndarray]:
    """Balanced class labels (0, 1, ..., C-1, 0, 1, ...) in batches of `batch_size`."""
    labels = np.arange(num_images, dtype=np.int32) % num_classes
    for start in range(0, num_images, batch_size):
        yield labels[start:start + batch_size]
