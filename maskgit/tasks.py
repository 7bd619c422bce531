"""The two MaskGIT stages as tasks of the shared training loop.

`TokenizerTask` (stage I) trains the VQGAN / FSQ-GAN: generator and discriminator as two parameter
groups with their own optimisers, reconstruction + perceptual + adversarial + quantizer losses.
`TransformerTask` (stage II) trains the masked transformer on tokens of a frozen stage-I workdir,
tokenised on the fly inside the jitted step, and samples with parallel decoding and guidance.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fsq_jax import images as image_lib
from fsq_jax import quantizers
from fsq_jax.quantizers import RNG_STREAM, STATE_COLLECTION
from fsq_jax.train import optim
from fsq_jax.train.state import TrainState
from maskgit import decoding, discriminator, losses, masking, token_cache, tokenizer, transformer

Batch = Mapping[str, jax.Array]


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one uint8 [rows * H, cols * W, 3] grid (row-major, N = rows * cols)."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    if rows < 1 or n % rows:
        raise ValueError(f"image_grid: {n} images do not fill {rows} rows")
    cols = n // rows
    return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c
    )


def _mesh() -> jax.sharding.Mesh:
    from fsq_jax.train import sharding

    return sharding.create_mesh()


def _run_batch_sharded(fn: Callable[..., jax.Array], replicated_args: Sequence[Any],
                       batch: np.ndarray, *batch_args: Any) -> np.ndarray:
    """Runs jitted `fn(*replicated_args, batch, *batch_args)` with `batch` padded to a multiple
    of the device count and sharded over the mesh's data axis; returns host results, unpadded."""
    mesh = _mesh()
    devices = mesh.devices.size
    n = batch.shape[0]
    padded = math.ceil(n / devices) * devices
    if padded > n:
        batch = np.concatenate([batch, np.repeat(batch[-1:], padded - n, axis=0)])
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    out = fn(*replicated_args, jax.device_put(batch, sharding), *batch_args)
    return np.asarray(jax.device_get(out))[:n]


def _check_sections(config: ml_collections.ConfigDict, sections: Sequence[str]) -> None:
    for name in sections:
        if name not in config:
            raise ValueError(f"config.{name}: missing section (start from configs/maskgit/*.py)")


# ---------------------------------------------------------------------------------------------
# Stage I.


class TokenizerTask:
    """Stage I: VQGAN / FSQ-GAN with a StyleGAN discriminator.

    Parameter groups: "generator" (encoder, projections, quantizer params, decoder) and
    "discriminator". `model_state` holds the quantizer's collection, LeCam EMAs and the frozen
    perceptual network's weights (when one is configured).
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.check_config(config)
        self.model = tokenizer.build(config)
        self.discriminator = discriminator.Discriminator(config.discriminator)
        self.perceptual, self._perceptual_params = losses.load_perceptual(config.loss)

    # -- config hooks of the loop --------------------------------------------------------------
    @staticmethod
    def reference_config() -> ml_collections.ConfigDict:
        """Every field the task accepts (the tiny FSQ preset's values as type references)."""
        from configs.maskgit import tokenizer as tokenizer_configs

        return tokenizer_configs.get_config("fsq,tiny")

    @staticmethod
    def check_config(config: ml_collections.ConfigDict) -> None:
        """ValueError naming the first impossible field."""
        _check_sections(config, ("model", "quantizer", "discriminator", "loss", "optimizers",
                                 "data"))
        tokenizer.check_model_config(config.model)
        losses.check_config(config.loss)
        tokenizer.token_grid(config.model, config.data.image_size)
        discriminator.check_config(config.discriminator, config.data.image_size)
        for group in ("generator", "discriminator"):
            if group not in config.optimizers:
                raise ValueError(f"config.optimizers.{group}: missing optimiser section")

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
        real = image_lib.to_float(batch["image"])
        adversarial = cfg.adversarial_weight > 0
        active = state.step >= cfg.discriminator_start
        gate = active.astype(jnp.float32)
        d_params = state.params["discriminator"]
        disc = lambda params, x: self.discriminator.apply({"params": params}, x)

        def generator_loss(g_params):
            (recon, out), updated = self.model.apply(
                self._generator_variables(g_params, state.model_state), real, train=True,
                mutable=[STATE_COLLECTION], rngs={RNG_STREAM: rng},
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
        fake = jax.lax.stop_gradient(recon)

        def discriminator_objective(params):
            real_logits, pullback = jax.vjp(lambda x: disc(params, x), real)
            fake_logits = disc(params, fake)
            loss = losses.discriminator_loss(real_logits, fake_logits)
            total = loss
            aux = {"discriminator_loss": loss, "logits_real": jnp.mean(real_logits),
                   "logits_fake": jnp.mean(fake_logits),
                   "r1_penalty": jnp.zeros(()), "lecam": jnp.zeros(())}
            if cfg.r1_weight > 0:
                (grads,) = pullback(jnp.ones_like(real_logits))
                r1 = jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)))
                total = total + 0.5 * cfg.r1_weight * r1
                aux["r1_penalty"] = r1
            if cfg.lecam_weight > 0:
                ema = state.model_state["lecam"]
                lecam = losses.lecam_regularizer(real_logits, fake_logits, ema["real"], ema["fake"])
                total = total + cfg.lecam_weight * lecam
                aux["lecam"] = lecam
            return total, aux

        model_state = dict(state.model_state)
        if STATE_COLLECTION in updated:
            model_state[STATE_COLLECTION] = updated[STATE_COLLECTION]
        g_only = lambda: state.apply_gradients({"generator": g_grads}, model_state=model_state)
        if not adversarial:
            new_state = g_only()
            d_metrics: dict[str, jax.Array] = {}
        else:
            (_, d_metrics), d_grads = jax.value_and_grad(discriminator_objective, has_aux=True)(
                d_params)
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
            d_metrics["discriminator_grad_norm"] = optax.global_norm(d_grads)
        metrics = {**metrics, **d_metrics, "generator_loss": g_total,
                   "adversarial_gate": gate,
                   "generator_grad_norm": optax.global_norm(g_grads)}
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
        return {"reconstructions": image_grid(np.concatenate([originals, recon]), rows=2)}

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

    def tokenize_fn(self, state: TrainState) -> Callable[[np.ndarray], np.ndarray]:
        """Host function uint8 [B, H, W, 3] -> int32 tokens [B, h, w] (EMA generator)."""
        variables = self._generator_variables(state.eval_params()["generator"], state.model_state)
        return lambda images: _run_batch_sharded(self._jitted_tokenize, (variables,),
                                                 np.asarray(images))

    def reconstruct_fn(self, state: TrainState) -> Callable[[np.ndarray], np.ndarray]:
        """Host function uint8 [B, H, W, 3] -> uint8 reconstructions [B, H, W, 3]."""
        variables = self._generator_variables(state.eval_params()["generator"], state.model_state)
        return lambda images: _run_batch_sharded(self._jitted_reconstruct, (variables,),
                                                 np.asarray(images))

    def evaluators(self) -> list[Any]:
        """Reconstruction FID and codebook usage over `evaluators.num_images` validation images."""
        from maskgit import evaluation

        return evaluation.tokenizer_evaluators(self)


# ---------------------------------------------------------------------------------------------
# Stage II.


def load_tokenizer(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """Loads a stage-I workdir: (its config, eval-mode variables of the EMA generator).

    Raises ValueError naming `tokenizer_workdir` when it is not a finished stage-I run.
    """
    from fsq_jax.train import restore_latest

    if not workdir or not os.path.isdir(workdir):
        raise ValueError(
            f"config.tokenizer_workdir = {workdir!r}: not a directory; train stage I first "
            "(scripts/train.py --config configs/maskgit/tokenizer.py:fsq,tiny --workdir ...)"
        )
    try:
        config, restored = restore_latest(workdir)
    except FileNotFoundError as error:
        raise ValueError(f"config.tokenizer_workdir = {workdir!r}: {error}") from None
    if "model" not in config or "quantizer" not in config:
        raise ValueError(f"config.tokenizer_workdir = {workdir!r}: not a MaskGIT tokenizer run")
    params = restored["ema_params"] or restored["params"]
    variables = {"params": params["generator"]}
    model_state = restored.get("model_state") or {}
    if model_state.get(STATE_COLLECTION):
        variables[STATE_COLLECTION] = model_state[STATE_COLLECTION]
    return config, variables


def num_classes(config: ml_collections.ConfigDict) -> int:
    """`config.num_classes`, or when 0 the data source's class count."""
    if config.num_classes > 0:
        return int(config.num_classes)
    from fsq_jax import data

    return int(data.num_classes(config.data))


def _as_tuple_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lists from JSON back to tuples, so module configs stay hashable."""
    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return tuple(value)
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return ml_collections.ConfigDict(convert(config.to_dict()))


class TransformerTask:
    """Stage II: class-conditional masked token modelling on a frozen stage-I tokenizer.

    One parameter group, "transformer". `model_state["tokenizer"]` holds the frozen tokenizer's
    variables, so a stage-II checkpoint samples images on its own.
    """

    def __init__(self, config: ml_collections.ConfigDict,
                 tokenizer_config: ml_collections.ConfigDict | None = None,
                 tokenizer_variables: Mapping[str, Any] | None = None):
        """`tokenizer_config`/`tokenizer_variables` override `config.tokenizer_workdir`
        (both or neither); by default the workdir's config is read now and its checkpoint
        when the state is first initialised."""
        self.config = config
        self.check_config(config)
        if (tokenizer_config is None) != (tokenizer_variables is None):
            raise ValueError("pass both tokenizer_config and tokenizer_variables, or neither")
        if tokenizer_config is None:
            from fsq_jax.train.loop import _read_config

            workdir = config.tokenizer_workdir
            try:
                tokenizer_config = _read_config(workdir)
            except FileNotFoundError as error:
                raise ValueError(
                    f"config.tokenizer_workdir = {workdir!r}: {error}; train stage I first"
                ) from None
        self.tokenizer_config = _as_tuple_config(tokenizer_config)
        self._tokenizer_variables = tokenizer_variables
        self.tokenizer = tokenizer.build(self.tokenizer_config)
        self.grid = tokenizer.token_grid(self.tokenizer_config.model, config.data.image_size)
        self.seq_len = self.grid[0] * self.grid[1]
        self.codebook_size = quantizers.codebook_size(self.tokenizer_config.quantizer)
        self.num_classes = num_classes(config)
        self.mask_id = transformer.mask_token_id(self.codebook_size)
        self.null_class = self.num_classes
        self.model = transformer.MaskedTransformer(
            config.model, self.codebook_size, self.num_classes, self.seq_len
        )

    @staticmethod
    def reference_config() -> ml_collections.ConfigDict:
        """Every field the task accepts (the tiny FSQ preset's values as type references)."""
        from configs.maskgit import transformer as transformer_configs

        return transformer_configs.get_config("fsq,tiny")

    @staticmethod
    def check_config(config: ml_collections.ConfigDict) -> None:
        """ValueError naming the first impossible field."""
        _check_sections(config, ("model", "masking", "loss", "sampling", "optimizer", "data"))
        transformer.check_model_config(config.model)
        decoding.check_config(config.sampling)
        if config.masking.schedule not in masking.SCHEDULES:
            raise ValueError(
                f"masking.schedule = {config.masking.schedule!r}: one of {masking.SCHEDULES}"
            )
        if not 0.0 <= config.masking.min_ratio < 1.0:
            raise ValueError(f"masking.min_ratio = {config.masking.min_ratio}: must be in [0, 1)")
        if not 0.0 <= config.masking.label_dropout < 1.0:
            raise ValueError(
                f"masking.label_dropout = {config.masking.label_dropout}: must be in [0, 1)"
            )
        if not 0.0 <= config.loss.label_smoothing < 1.0:
            raise ValueError(
                f"loss.label_smoothing = {config.loss.label_smoothing}: must be in [0, 1)"
            )
        if config.num_classes < 0:
            raise ValueError(
                f"config.num_classes = {config.num_classes}: must be >= 1 (or 0: from the data)"
            )
        if "token_cache" in config:
            token_cache.check_config(config.token_cache)

    # -- frozen tokenizer --------------------------------------------------------------------
    def tokenizer_variables(self) -> dict[str, Any]:
        """The frozen stage-I variables (loaded from `config.tokenizer_workdir` on first use)."""
        if self._tokenizer_variables is None:
            _, self._tokenizer_variables = load_tokenizer(self.config.tokenizer_workdir)
        return dict(self._tokenizer_variables)

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
        the train split comes from the token cache (built on first use), else images."""
        from fsq_jax import data

        cache_dir = self.config.token_cache.dir if "token_cache" in self.config else ""
        if split != "train" or not cache_dir:
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
        tokenize = functools.partial(_run_batch_sharded, self._jitted_tokenize, (variables,))
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
        if drop_labels and cfg.label_dropout > 0:
            drop = jax.random.bernoulli(label_rng, cfg.label_dropout, labels.shape)
            labels = jnp.where(drop, self.null_class, labels)
        return inputs, labels.astype(jnp.int32), mask

    def _loss(self, logits: jax.Array, tokens: jax.Array, mask: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Label-smoothed cross entropy averaged over masked positions only."""
        smoothing = self.config.loss.label_smoothing
        targets = optax.smooth_labels(jax.nn.one_hot(tokens, self.codebook_size), smoothing)
        per_token = optax.softmax_cross_entropy(logits, targets)
        weights = mask.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(weights), 1.0)
        loss = jnp.sum(per_token * weights) / count
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
        correct = (jnp.argmax(logits, -1) == tokens).astype(jnp.float32)
        return loss, {"loss": loss, "nll": jnp.sum(nll * weights) / count,
                      "accuracy": jnp.sum(correct * weights) / count,
                      "mask_ratio": jnp.mean(weights)}

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
        metrics["grad_norm"] = optax.global_norm(grads)
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
            logits_fn, labels, rng, sampling, seq_len=self.seq_len, mask_id=self.mask_id,
            null_class=self.null_class,
        )
        images = self.tokenizer.apply(
            tokenizer_variables, tokens.reshape(-1, *self.grid), method="decode_tokens"
        )
        return image_lib.to_uint8(images)

    @functools.cached_property
    def _jitted_sampler(self) -> Callable[..., jax.Array]:
        return jax.jit(self.sample_images)

    def sample_fn(self, state: TrainState | Mapping[str, Any]
                  ) -> Callable[[np.ndarray, jax.Array], np.ndarray]:
        """Host sampler of a state (or a restored dict): (labels int32 [B], rng) -> uint8
        [B, H, W, 3]; compiled once per batch size, batch sharded over all devices."""
        if isinstance(state, TrainState):
            params = state.eval_params()["transformer"]
            frozen = state.model_state["tokenizer"]
        else:
            params = (state["ema_params"] or state["params"])["transformer"]
            frozen = state["model_state"]["tokenizer"]
        jitted = self._jitted_sampler

        def sample(labels: np.ndarray, rng: jax.Array) -> np.ndarray:
            return _run_batch_sharded(lambda p, t, y, r: jitted(p, t, y, r), (params, frozen),
                                      np.asarray(labels, np.int32), rng)

        return sample

    def images(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, np.ndarray]:
        """Class-conditional samples: one row per class (up to 16 classes), 8 per row."""
        del batch
        classes = min(self.num_classes, 16)
        labels = np.repeat(np.arange(classes, dtype=np.int32), 8)
        samples = self.sample_fn(state)(labels, rng)
        return {"samples": image_grid(samples, rows=classes)}

    def evaluators(self) -> list[Any]:
        """Sampling FID, precision and recall against `evaluators.num_images` real images."""
        from maskgit import evaluation

        return evaluation.transformer_evaluators(self)


def iterate_labels(num_images: int, num_classes: int, batch_size: int) -> Iterator[np.ndarray]:
    """Balanced class labels (0, 1, ..., C-1, 0, 1, ...) in batches of `batch_size`."""
    labels = np.arange(num_images, dtype=np.int32) % num_classes
    for start in range(0, num_images, batch_size):
        yield labels[start:start + batch_size]
