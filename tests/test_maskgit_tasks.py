"""One real training step of each MaskGIT stage through the task API, and the sampling path."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.maskgit import tokenizer as tokenizer_configs
from configs.maskgit import transformer as transformer_configs
from fsq_jax import train
from fsq_jax.images import image_grid
from maskgit import tasks

BATCH = 8


def _shrink_stage1(config):
    """The tiny preset, narrower still so the test compiles quickly (same code paths)."""
    config.model.filters = 8
    config.model.embedding_dim = 16
    config.model.norm_groups = 4
    config.discriminator.max_filters = 16
    config.loss.discriminator_start = 0  # exercise the adversarial terms from step 0
    config.loss.lecam_weight = 0.1
    config.total_steps = 10
    return config


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, (BATCH,), dtype=np.int32),
    }


def _changed(a, b) -> bool:
    return any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _stage1(quantizer: str):
    config = _shrink_stage1(tokenizer_configs.get_config(f"{quantizer},tiny"))
    task = tasks.TokenizerTask(config)
    state = jax.jit(task.init_state)(jax.random.key(0), _batch())
    return config, task, state


@pytest.fixture(scope="module")
def stage1():
    return _stage1("fsq")


def test_tokenizer_train_step_updates_both_groups(stage1):
    _check_tokenizer_step(*stage1)


@pytest.mark.slow
def test_vq_tokenizer_train_step():
    _check_tokenizer_step(*_stage1("vq"))


def test_tokenizer_tokens_roundtrip(stage1):
    """tokenize -> decode_tokens reproduces the reconstruction of the quantized latents."""
    _, task, state = stage1
    state = state.replace(ema_params=state.params)
    images = jnp.asarray(_batch(3)["image"][:2])
    recon, out = jax.jit(task.reconstruct)(state, images)
    tokens = np.asarray(task.tokenize_fn(state)(np.asarray(images)))
    np.testing.assert_array_equal(tokens, out.indices)
    assert tokens.min() >= 0 and tokens.max() < 240
    from_tokens = jax.jit(lambda v, t: task.model.apply(v, t, method="decode_tokens"))(
        {"params": state.params["generator"]}, tokens)
    np.testing.assert_allclose(from_tokens, recon, atol=1e-4)


def _check_tokenizer_step(config, task, state):
    new_state, metrics = jax.jit(task.train_step)(state, _batch(1), jax.random.key(1))
    assert int(new_state.step) == 1
    assert _changed(state.params["generator"], new_state.params["generator"])
    assert _changed(state.params["discriminator"], new_state.params["discriminator"])
    for name in (
        "reconstruction_loss",
        "generator_adversarial_loss",
        "discriminator_loss",
        "r1_penalty",
        "lecam",
        "quantizer_loss",
    ):
        assert np.isfinite(float(metrics[name])), name
    assert float(metrics["adversarial_gate"]) == 1.0
    assert float(metrics["r1_penalty"]) > 0.0
    if config.quantizer.name == "vq":
        assert float(metrics["quantizer_loss"]) != 0.0  # commitment + codebook + entropy
    else:
        assert float(metrics["quantizer_loss"]) == 0.0  # FSQ has no auxiliary loss
    # EMA of the generator moved towards the new params (decay 0.99).
    assert _changed(state.ema_params["generator"], new_state.ema_params["generator"])
    eval_metrics = jax.jit(task.eval_step)(new_state, _batch(2), jax.random.key(2))
    assert np.isfinite(float(eval_metrics["psnr"]))
    grid = task.images(new_state, _batch(2), jax.random.key(3))["reconstructions"]
    assert grid.dtype == np.uint8 and grid.shape == (2 * 32, BATCH * 32, 3)


@pytest.mark.slow
def test_adversarial_warmup_freezes_the_discriminator(stage1):
    config, _, state = stage1
    config = _shrink_stage1(tokenizer_configs.get_config("fsq,tiny"))
    config.loss.discriminator_start = 5
    task = tasks.TokenizerTask(config)
    new_state, metrics = jax.jit(task.train_step)(state, _batch(1), jax.random.key(1))
    assert float(metrics["adversarial_gate"]) == 0.0
    assert not _changed(state.params["discriminator"], new_state.params["discriminator"])
    assert _changed(state.params["generator"], new_state.params["generator"])


def test_tokenizer_config_errors_name_the_field():
    config = tokenizer_configs.get_config("fsq,tiny")
    config.loss.reconstruction = "l3"
    with pytest.raises(ValueError, match=r"config.loss.reconstruction = 'l3': must be one of"):
        train.validate(config)
    config = tokenizer_configs.get_config("fsq,paper")  # asks for ResNet-50 weights
    # MaskGIT's vqgan_config: 0.1 x mean squared difference of ResNet-50 features (not logits).
    assert (config.loss.perceptual_network, config.loss.perceptual_weight,
            config.loss.perceptual_on_logits) == ("resnet50", 0.1, False)
    with pytest.raises(ValueError, match=r"loss.perceptual_weights"):
        tasks.TokenizerTask(config)


def test_r1_penalty_is_the_cost_times_the_mean_squared_gradient_norm():
    """MAGVIT's d_loss = d_adversarial + grad_penalty_cost * mean_b ||grad_x D(x_b)||^2. With a
    discriminator D(x) = <w_b, x> + c (per-image weights) the gradient of image b is w_b:
    channel weights (1, 2) and (3, 0) at each of n pixels give ||w_0||^2 = 5 n, ||w_1||^2 = 9 n
    by hand."""
    n = 2 * 2  # pixels of a 2x2 image with two channels
    weights = jnp.stack([jnp.tile(jnp.array([1.0, 2.0]), (2, 2, 1)),
                         jnp.tile(jnp.array([3.0, 0.0]), (2, 2, 1))])  # [2, 2, 2, 2]

    def discriminate(x):
        return jnp.sum(weights * x, axis=(1, 2, 3)) + 0.5

    real = jax.random.normal(jax.random.key(0), (2, 2, 2, 2))
    fake = jax.random.normal(jax.random.key(1), (2, 2, 2, 2))
    penalty = (5.0 * n + 9.0 * n) / 2  # mean over the batch of the squared gradient norms
    for cost in (10.0, 0.5):
        cfg = ml_collections.ConfigDict({"r1_weight": cost, "lecam_weight": 0.0})
        total, aux = tasks.discriminator_objective(discriminate, real, fake, cfg)
        np.testing.assert_allclose(aux["r1_penalty"], penalty, rtol=1e-6)
        np.testing.assert_allclose(total, aux["discriminator_loss"] + cost * penalty, rtol=1e-6)
    cfg = ml_collections.ConfigDict({"r1_weight": 0.0, "lecam_weight": 0.0})
    total, aux = tasks.discriminator_objective(discriminate, real, fake, cfg)
    assert float(total) == float(aux["discriminator_loss"])
    # The presets: MaskGIT's grad_penalty_cost 10 (paper); 0.5 (tiny, the old 0.5 * 1.0).
    assert tokenizer_configs.get_config("fsq,paper").loss.r1_weight == 10.0
    assert tokenizer_configs.get_config("fsq,tiny").loss.r1_weight == 0.5


def test_transformer_loss_is_a_per_example_mean_over_masked_tokens():
    """MaskGIT's weighted_sequence_cross_entropy_loss: label-smoothed cross entropy summed over
    each example's masked positions, divided by its count, then averaged over the batch; an
    example with few masked tokens weighs as much as one with many. Checked against numpy."""
    rng = np.random.default_rng(0)
    batch, seq_len, codes, smoothing = 3, 6, 5, 0.1
    logits = rng.normal(size=(batch, seq_len, codes)).astype(np.float32)
    tokens = rng.integers(0, codes, (batch, seq_len))
    mask = np.array([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [0, 1, 0, 1, 0, 1]], bool)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = (1 - smoothing) * np.eye(codes)[tokens] + smoothing / codes
    per_token = -(targets * log_probs).sum(-1)
    expected = np.mean([per_token[b][mask[b]].mean() for b in range(batch)])
    assert not np.isclose(expected, per_token[mask].mean())  # differs from a token mean
    loss, metrics = tasks.masked_token_loss(jnp.asarray(logits), jnp.asarray(tokens),
                                            jnp.asarray(mask), smoothing)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    nll = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(metrics["nll"],
                               np.mean([nll[b][mask[b]].mean() for b in range(batch)]), rtol=1e-5)
    np.testing.assert_allclose(metrics["mask_ratio"], mask.mean())


def test_transformer_train_step_and_samples(stage1):
    config1, _, state1 = stage1
    config = transformer_configs.get_config(f"{config1.quantizer.name},tiny")
    config.model.num_layers = 1
    config.model.hidden_size = 32
    config.model.mlp_dim = 64
    config.sampling.num_steps = 4
    config.optimizer.warmup_steps = 0  # a real update at step 0
    frozen = train.frozen_from_variables(config1, "generator",
                                         {"params": state1.params["generator"]})
    task = tasks.TransformerTask(config, frozen=frozen)
    state = jax.jit(task.init_state)(jax.random.key(0), _batch())
    batch = _batch(1)
    new_state, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
    assert int(new_state.step) == 1
    assert _changed(state.params["transformer"], new_state.params["transformer"])
    assert np.isfinite(float(metrics["loss"]))
    # The loss covers masked positions only, at least 45% of the tokens.
    assert 0.45 <= float(metrics["mask_ratio"]) <= 1.0
    # Stage I stays frozen.
    np.testing.assert_array_equal(
        jax.tree.leaves(new_state.model_state["tokenizer"])[0],
        jax.tree.leaves(state.model_state["tokenizer"])[0],
    )
    tokens = task.tokenize(new_state.model_state["tokenizer"], jnp.asarray(batch["image"]))
    assert tokens.shape == (BATCH, 64) and int(tokens.max()) < task.codebook_size
    eval_metrics = jax.jit(task.eval_step)(new_state, batch, jax.random.key(2))
    assert np.isfinite(float(eval_metrics["accuracy"]))
    grid = task.images(new_state, batch, jax.random.key(3))["samples"]
    rows = min(tasks.num_classes(config), 16)
    assert grid.dtype == np.uint8 and grid.shape == (rows * 32, 8 * 32, 3)


def test_image_grid_layout():
    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    grid = image_grid(images, rows=2)
    assert grid.shape == (4, 6, 3)
    np.testing.assert_array_equal(grid[2:4, 0:2], images[3])
    with pytest.raises(ValueError):
        image_grid(images, rows=4)
    big = image_grid(images, rows=3, min_size=4)  # 2x2 images enlarged twice
    assert big.shape == (12, 8, 3) and (big[:2, :2] == images[0, 0, 0]).all()


@pytest.mark.slow
def test_both_stages_on_the_loop_and_sample_cli(tmp_path):
    """Stage I and II through `train_and_evaluate`, then scripts/sample.py on the checkpoint."""
    import pathlib
    import subprocess
    import sys

    from PIL import Image

    config1 = _shrink_stage1(tokenizer_configs.get_config("fsq,tiny"))
    config1.update(total_steps=2, batch_size=8, eval_batch_size=8, eval_steps=1, log_every=1,
                   eval_every=0, images_every=0, checkpoint_every=0)
    config1.evaluators.update(fid=False, num_images=16, batch_size=8)
    tokenizer_dir = str(tmp_path / "tokenizer")
    results1 = train.train_and_evaluate(config1, tokenizer_dir)
    assert results1["step"] == 2
    assert 0.0 < results1["evaluators"]["codebook/usage"] <= 1.0

    config2 = transformer_configs.get_config("fsq,tiny")
    config2.update(total_steps=2, batch_size=8, eval_batch_size=8, eval_steps=1, log_every=1,
                   eval_every=0, images_every=0, checkpoint_every=0,
                   tokenizer_workdir=tokenizer_dir)
    config2.model.update(num_layers=1, hidden_size=32, mlp_dim=64)
    config2.evaluators.fid = False
    config2.optimizer.update(warmup_steps=0, schedule="constant")
    transformer_dir = str(tmp_path / "transformer")
    results2 = train.train_and_evaluate(config2, transformer_dir)
    assert results2["step"] == 2
    assert (pathlib.Path(transformer_dir) / "images").is_dir()

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "samples"
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "sample.py"), "--workdir", transformer_dir,
         "--out", str(out), "--num_images", "12", "--per_class", "2", "--num_steps", "3",
         "--batch_size", "8"], capture_output=True, text=True, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    classes = tasks.num_classes(config2)
    grid = np.asarray(Image.open(out / "samples_grid.png"))
    assert grid.shape == (classes * 32, 2 * 32, 3)
    with np.load(out / "samples.npz") as data:  # ADM format: arr_0 images, arr_1 labels
        assert sorted(data.files) == ["arr_0", "arr_1"]
        assert data["arr_0"].shape == (12, 32, 32, 3) and data["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(data["arr_1"], np.arange(12) % classes)


def test_tokenizer_grad_accumulation_takes_the_same_step(stage1):
    """`grad_accum_steps = 2`: the FSQ tokenizer (no batch statistics: GroupNorm, per-example
    losses, R1 a mean over examples) takes the step of the whole batch from two micro-batches:
    the same losses, parameters and LeCam EMAs to float tolerance."""
    config, task, state = stage1
    accumulated = config.copy_and_resolve_references()
    accumulated.grad_accum_steps = 2
    batch, rng = _batch(1), jax.random.key(1)
    whole, whole_metrics = jax.jit(task.train_step)(state, batch, rng)
    micro, micro_metrics = jax.jit(tasks.TokenizerTask(accumulated).train_step)(state, batch, rng)
    for name in ("reconstruction_loss", "generator_loss", "generator_adversarial_loss",
                 "discriminator_loss", "r1_penalty", "lecam", "logits_real", "logits_fake"):
        np.testing.assert_allclose(micro_metrics[name], whole_metrics[name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    lr = config.optimizers.generator.learning_rate
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.02 * lr),
                 (micro.params, micro.model_state), (whole.params, whole.model_state))
    assert _changed(micro.params, state.params)
