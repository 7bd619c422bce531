"""The public APIs (maskgit.api, uvim.api) and the README examples that use them, run as written.

The runs are real workdirs (config.json and a verified checkpoint written by the loop's
Checkpointer) of narrowed tiny presets, saved at initialisation: what matters here is that the
API reads a run and computes what the task computes, not what a trained model predicts. The
UViM ones (two stages to build and a decoder to compile) are in the slow set.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs.maskgit import tokenizer as tokenizer_configs
from fsq_jax import data, run_dir, train
from fsq_jax.images import load_images
from fsq_jax.train.evaluation import run_sharded

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(name: str) -> str:
    """The ```python block after `<!-- example: NAME -->` in the README."""
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```python\n(.*?)```",
                      README.read_text(), re.S)
    assert match, f"README.md has no example {name!r}"
    return match.group(1)


def _save_initial_run(config, workdir: str):
    """A run directory as training leaves it, holding the freshly initialised state."""
    train.validate(config)
    task = train.build_task(config)
    batch = next(data.build(config.data, "train", config.batch_size))
    state = jax.jit(task.init_state)(jax.random.key(1), batch)
    os.makedirs(workdir)
    run_dir.write_json(os.path.join(workdir, run_dir.CONFIG_FILE), run_dir.config_json(config))
    checkpointer = train.Checkpointer(os.path.join(workdir, run_dir.CHECKPOINT_DIR), 1, False)
    checkpointer.save(1, state)
    checkpointer.wait()
    checkpointer.close()
    return task, state


def _write_photo(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> None:
    """A non-square picture, so loading has to crop and resize it."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("maskgit")
    config = tokenizer_configs.get_config("fsq,tiny")
    config.model.update(filters=8, embedding_dim=16, norm_groups=4)
    config.discriminator.max_filters = 16
    config.batch_size = 8
    workdir = str(root / "runs" / "maskgit" / "fsq_tiny" / "tokenizer")
    task, state = _save_initial_run(config, workdir)
    return root, workdir, task, state


def test_tokenizer_api_encodes_and_decodes_as_the_task_does(tokenizer_run):
    from maskgit.api import Tokenizer

    _, workdir, task, state = tokenizer_run
    tokenizer = Tokenizer.from_workdir(workdir, batch_size=3)  # several jitted calls
    assert (tokenizer.image_size, tokenizer.downsample_factor, tokenizer.codebook_size) == (
        32, 4, 240)
    images = next(data.build(task.config.data, "validation", 7))["image"]
    indices = tokenizer.encode(images)
    assert indices.shape == (7, 8, 8) and indices.dtype == np.int32
    np.testing.assert_array_equal(indices, task.tokenize_fn(state)(images))
    restored = tokenizer.decode(indices)
    assert restored.shape == (7, 32, 32, 3) and restored.dtype == np.uint8
    variables = {"params": state.eval_params()["generator"]}  # FSQ keeps no quantizer state
    expected = run_sharded(lambda v, t: task.model.apply(v, t, method="decode_tokens"),
                           (variables,), indices)
    expected = np.asarray(jax.numpy.clip(jax.numpy.round((expected + 1) * 127.5), 0, 255))
    np.testing.assert_array_equal(restored, expected.astype(np.uint8))
    np.testing.assert_array_equal(tokenizer.reconstruct(images), restored)
    # Other multiples of the downsampling factor work too (a fully convolutional tokenizer).
    assert tokenizer.encode(np.zeros((1, 16, 24, 3), np.uint8)).shape == (1, 4, 6)


def test_tokenizer_api_refuses_bad_input_in_one_line(tokenizer_run, tmp_path):
    from maskgit.api import Tokenizer

    _, workdir, _, _ = tokenizer_run
    tokenizer = Tokenizer.from_workdir(workdir)
    with pytest.raises(ValueError, match="uint8 images"):
        tokenizer.encode(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="not a multiple of the tokenizer's 4 pixels"):
        tokenizer.encode(np.zeros((1, 30, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 240\)"):
        tokenizer.decode(np.full((1, 8, 8), 240))
    with pytest.raises(ValueError, match="not a directory"):
        Tokenizer.from_workdir(tmp_path / "nothing")


def test_load_images_crops_and_resizes(tmp_path):
    _write_photo(tmp_path / "a.png", 0, size=(48, 40))
    images = load_images([tmp_path / "a.png"], 16)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.uint8
    # Centre crop: the 40x40 middle of the 48x40 picture, resized (bicubic) to 16x16.
    expected = np.asarray(Image.open(tmp_path / "a.png").resize(
        (16, 16), Image.Resampling.BICUBIC, box=(4, 0, 44, 40)))
    np.testing.assert_array_equal(images[0], expected)


def test_readme_tokenizer_example_runs_as_written(tokenizer_run, monkeypatch):
    root, _, _, _ = tokenizer_run
    _write_photo(root / "my_photo.jpg", 1)
    monkeypatch.chdir(root)
    namespace: dict = {}
    exec(readme_example("tokenizer"), namespace)
    assert namespace["indices"].shape == (1, 8, 8)
    assert namespace["indices"].dtype == np.int32
    assert namespace["restored"].shape == (1, 32, 32, 3)
    assert namespace["restored"].dtype == np.uint8


def test_readme_projected_quantizer_example_runs_as_written():
    namespace: dict = {}
    exec(readme_example("projected"), namespace)
    assert namespace["reconstruction"].shape == (2, 32, 32, 3)
    assert namespace["indices"].shape == (2, 8, 8)
    assert int(namespace["indices"].max()) < 1000


def _uvim_config(arg: str):
    """The tiny depth preset, narrowed so the models compile in seconds."""
    config = importlib.import_module("configs.uvim.depth").get_config(arg)
    config.model.update(width=16, num_heads=2, mlp_dim=32, enc_depth=1, dec_depth=1,
                        patch_size=8, code_len=4)
    config.stage2.update(width=16, num_heads=2, mlp_dim=32, enc_depth=1, dec_depth=1,
                         patch_size=8)
    config.output.bins = 16
    config.batch_size = config.eval_batch_size = 8
    return config


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("uvim")
    stage1 = str(root / "runs" / "uvim" / "depth_fsq" / "stage1")
    _save_initial_run(_uvim_config("fsq,tiny"), stage1)
    config = _uvim_config("fsq,tiny,stage2")
    config.stage1_workdir = stage1
    workdir = str(root / "runs" / "uvim" / "depth_fsq" / "stage2")
    task, state = _save_initial_run(config, workdir)
    return root, workdir, task, state


@pytest.mark.slow
def test_depth_predictor_predicts_as_the_task_does(depth_run):
    from uvim.api import DepthPredictor, Predictor

    _, workdir, task, state = depth_run
    predictor = Predictor.from_workdir(workdir, batch_size=3)
    assert (predictor.output, predictor.image_size) == ("depth", 32)
    batch = next(data.build(task.config.data, "validation", 5))
    outputs = predictor.predict(batch["image"])
    assert set(outputs) == {"depth"} and outputs["depth"].shape == (5, 32, 32)
    # The task's own inference on the same checkpoint, one batch of the same chunks.
    for start in range(0, 5, 3):
        chunk = {k: v[start:start + 3] for k, v in batch.items()}
        expected, _ = task.predict(state, chunk, jax.random.fold_in(jax.random.key(0),
                                                                     start // 3))
        np.testing.assert_allclose(outputs["depth"][start:start + 3],
                                   np.asarray(expected["depth"]), rtol=1e-6)
    depth = DepthPredictor(predictor).predict(batch["image"])
    np.testing.assert_allclose(depth, outputs["depth"], rtol=1e-6)
    assert depth.dtype == np.float32
    low, high = task.config.output.min_depth, task.config.output.max_depth
    assert np.all((depth >= low) & (depth <= high))
    with pytest.raises(ValueError, match=r"uint8 images \[N, 32, 32, 3\]"):
        predictor.predict(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="not a UViM stage-II run"):
        Predictor.from_workdir(task.config.stage1_workdir)


@pytest.mark.slow
def test_readme_depth_example_runs_as_written(depth_run, monkeypatch):
    root, _, _, _ = depth_run
    _write_photo(root / "room.jpg", 2)
    monkeypatch.chdir(root)
    namespace: dict = {}
    exec(readme_example("depth"), namespace)
    assert namespace["depth"].shape == (1, 32, 32)
    assert namespace["depth"].dtype == np.float32
