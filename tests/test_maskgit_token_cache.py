"""Stage II's token cache: exact tokens, atomic builds, refusal of a foreign cache, and a train
step on cached tokens equal to one on the images they came from; the transformer's kernel and
dropout-generator options."""

import json
import os

import jax
import numpy as np
import pytest

from configs.maskgit import tokenizer as tokenizer_configs
from configs.maskgit import transformer as transformer_configs
from fsq_jax import config_lib, data, train
from maskgit import tasks, token_cache, transformer

TRAIN_SIZE = 40


@pytest.fixture(scope="module")
def stage1():
    config = tokenizer_configs.get_config("fsq,tiny")
    config.model.update(filters=8, embedding_dim=16, norm_groups=4)
    config.discriminator.max_filters = 16
    task = tasks.TokenizerTask(config)
    images = {"image": np.zeros((2, 32, 32, 3), np.uint8)}
    state = jax.jit(task.init_state)(jax.random.key(0), images)
    return config, {"params": state.params["generator"]}


def _stage2(stage1, cache_dir: str = "", **model):
    config1, variables = stage1
    config = transformer_configs.get_config("fsq,tiny")
    config.model.update(num_layers=1, hidden_size=32, mlp_dim=64, **model)
    config.optimizer.warmup_steps = 0
    config.data.train_size = TRAIN_SIZE
    config.token_cache.update(dir=cache_dir, batch_size=16)  # 40 = 16 + 16 + 8: a partial batch
    return tasks.TransformerTask(config,
                                 frozen=train.frozen_from_variables(config1, "generator",
                                                                    variables))


def test_cache_holds_the_exact_tokens_of_the_train_stream(stage1, tmp_path):
    task = _stage2(stage1, str(tmp_path / "cache"))
    lines = []
    source = task.open_token_cache(log=lines.append)
    assert len(source) == TRAIN_SIZE and lines[-1].startswith("token cache: 40/40 images")
    stream = next(data.build(task.config.data, "train", TRAIN_SIZE, shuffle=False))
    expected = np.asarray(task.tokenize(task.tokenizer_variables(), stream["image"]))
    cached = np.stack([source[i]["tokens"] for i in range(TRAIN_SIZE)])
    np.testing.assert_array_equal(cached, expected)
    np.testing.assert_array_equal([source[i]["label"] for i in range(TRAIN_SIZE)],
                                  stream["label"])
    assert cached.dtype == np.int32
    assert np.load(tmp_path / "cache" / "tokens.npy").dtype == np.uint16  # 240 codes
    # No staging directory is left behind; a second open reads the same cache without building.
    assert sorted(os.listdir(tmp_path)) == ["cache"]
    again = task.open_token_cache(log=lambda line: pytest.fail(f"rebuilt: {line}"))
    np.testing.assert_array_equal(again[3]["tokens"], source[3]["tokens"])


def test_train_batches_come_from_the_cache_in_the_data_order(stage1, tmp_path):
    task = _stage2(stage1, str(tmp_path / "cache"))
    batches = task.data_fn(task.config.data, "train", 8, start_step=0)
    first, second = next(batches), next(batches)
    assert set(first) == {"tokens", "label"} and first["tokens"].shape == (8, 64)
    resumed = next(task.data_fn(task.config.data, "train", 8, start_step=1))
    np.testing.assert_array_equal(resumed["tokens"], second["tokens"])
    # Validation batches stay images (evaluation tokenises them on the fly).
    assert "image" in next(task.data_fn(task.config.data, "validation", 8))


def test_step_on_cached_tokens_equals_step_on_their_images(stage1, tmp_path):
    task = _stage2(stage1)
    stream = next(data.build(task.config.data, "train", 8, shuffle=False))
    tokens = np.asarray(task.tokenize(task.tokenizer_variables(), stream["image"]))
    state = jax.jit(task.init_state)(jax.random.key(0), stream)
    step = jax.jit(task.train_step)
    from_images, m_images = step(state, stream, jax.random.key(1))
    from_tokens, m_tokens = step(state, {"tokens": tokens, "label": stream["label"]},
                                 jax.random.key(1))
    np.testing.assert_array_equal(float(m_images["loss"]), float(m_tokens["loss"]))
    for a, b in zip(jax.tree.leaves(from_images.params), jax.tree.leaves(from_tokens.params)):
        np.testing.assert_array_equal(a, b)


def test_a_cache_for_other_inputs_is_refused_and_kept(stage1, tmp_path):
    directory = str(tmp_path / "cache")
    _stage2(stage1, directory).open_token_cache(log=lambda line: None)
    before = {name: os.path.getmtime(os.path.join(directory, name))
              for name in os.listdir(directory)}
    other = _stage2(stage1, directory)
    other.config.data.seed = 7
    with pytest.raises(token_cache.TokenCacheError, match=r"data.seed = 0, this run needs 7"):
        other.open_token_cache()
    config1, variables = stage1
    retrained = jax.tree.map(lambda x: x + 1e-3, variables)
    other = tasks.TransformerTask(_stage2(stage1, directory).config,
                                  frozen=train.frozen_from_variables(config1, "generator",
                                                                     retrained))
    with pytest.raises(token_cache.TokenCacheError, match=r"tokenizer_sha256"):
        other.open_token_cache()
    assert before == {name: os.path.getmtime(os.path.join(directory, name))
                      for name in os.listdir(directory)}


def test_incomplete_or_corrupt_caches_name_the_problem(stage1, tmp_path):
    directory = tmp_path / "cache"
    _stage2(stage1, str(directory)).open_token_cache(log=lambda line: None)
    meta = json.loads((directory / "meta.json").read_text())
    tokens = (directory / "tokens.npy").read_bytes()
    (directory / "tokens.npy").write_bytes(tokens[: len(tokens) // 2])
    with pytest.raises(token_cache.TokenCacheError, match=r"unreadable"):
        token_cache.TokenCacheSource(str(directory))
    (directory / "meta.json").unlink()
    with pytest.raises(token_cache.TokenCacheError, match=r"no meta.json"):
        token_cache.TokenCacheSource(str(directory))
    assert meta["num_examples"] == TRAIN_SIZE and isinstance(token_cache.TokenCacheError(""),
                                                             data.DataError)


def test_interrupted_build_leaves_nothing_that_looks_finished(stage1, tmp_path):
    task = _stage2(stage1, str(tmp_path / "cache"))
    calls = []

    def failing_tokenize(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.zeros((len(images), 8, 8), np.int32)

    meta = token_cache.expected_meta(task.config.data, "x", task.grid, task.codebook_size, 1)
    with pytest.raises(KeyboardInterrupt):
        token_cache.build(str(tmp_path / "cache"), task.config.data, failing_tokenize, meta, 16,
                          log=lambda line: None)
    assert os.listdir(tmp_path) == []


def test_config_errors_name_the_field(stage1):
    config = _stage2(stage1).config
    config.token_cache.passes = 0
    with pytest.raises(ValueError, match=r"config.token_cache.passes = 0: must be >= 1"):
        config_lib.check(config.token_cache, token_cache.TokenCacheConfig, "config.token_cache")

    def check_model(**fields):
        model = transformer_configs.get_config("fsq,tiny").model
        model.update(fields)
        config_lib.check(model, transformer.TransformerModelConfig, "config.model")

    with pytest.raises(ValueError, match=r"config.model.attention = 'flash': must be one of"):
        check_model(attention="flash")
    with pytest.raises(ValueError, match=r"needs model.dtype = 'bfloat16'"):
        check_model(attention="cudnn")
    with pytest.raises(ValueError, match=r"config.model.dropout_rng = 'philox'"):
        check_model(dropout_rng="philox")


def test_rbg_dropout_trains_and_keeps_the_dropout_rate(stage1):
    """rbg keys give other masks with the same law: the step runs, and dropout keeps ~90%."""
    config = transformer_configs.get_config("fsq,tiny").model
    config.dropout_rng = "rbg"
    rbg = transformer.dropout_key(jax.random.key(3), config)
    assert str(jax.random.key_impl(rbg)) == "rbg"
    kept = jax.random.bernoulli(rbg, 0.9, (200_000,)).mean()
    assert abs(float(kept) - 0.9) < 0.005
    task = _stage2(stage1, dropout_rng="rbg")
    stream = next(data.build(task.config.data, "train", 8, shuffle=False))
    state = jax.jit(task.init_state)(jax.random.key(0), stream)
    new_state, metrics = jax.jit(task.train_step)(state, stream, jax.random.key(1))
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
