"""UViM end to end through the task API: one training step of stage I and stage II per task.

Stage II runs on a stage-I state built in-process; the slow test runs both stages through the
shared loop, handing the stage-I model over by its workdir.
"""

import importlib

import jax
import numpy as np
import pytest

from fsq_jax import data
from fsq_jax.train import frozen_from_variables
from uvim.tasks import Stage1Task, Stage2Task

BATCH = 8


def _key(seed: int) -> jax.Array:
    """Keys of the "unsafe_rbg" PRNG: much cheaper to compile on CPU than threefry."""
    return jax.random.key(seed, impl="unsafe_rbg")


def _config(task: str, arg: str):
    """The tiny preset shrunk further so a step compiles in seconds."""
    config = importlib.import_module(f"configs.uvim.{task}").get_config(arg)
    config.model.update(width=16, num_heads=2, mlp_dim=32, enc_depth=1, dec_depth=1,
                        patch_size=8, code_len=4)
    config.stage2.update(width=16, num_heads=2, mlp_dim=32, enc_depth=1, dec_depth=1,
                         patch_size=8)
    if task == "depth":
        config.output.bins = 16
    config.batch_size = config.eval_batch_size = BATCH
    config.total_steps = 4
    config.optimizer.update(schedule="constant", warmup_steps=0)
    config.evaluators.num_batches = 1
    return config


def _batch(config, split="train", index=0):
    iterator = iter(data.build(config.data, split, BATCH))
    for _ in range(index):
        next(iterator)
    return next(iterator)


@pytest.mark.parametrize("task, quantizer, inference", [("depth", "fsq", True),
                                                        ("colorization", "vq", False),
                                                        ("panoptic", "fsq", False)])
def test_one_step_of_each_stage(task, quantizer, inference):
    config1 = _config(task, f"{quantizer},tiny")
    batch = _batch(config1)
    task1 = Stage1Task(config1)
    # init + one step in one compilation (the loop jits them separately; same functions).
    state, metrics = jax.jit(lambda key, batch: task1.train_step(
        task1.init_state(key, batch), batch, key))(_key(0), batch)
    assert int(state.step) == 1
    assert np.isfinite(float(metrics["loss"])) and float(state.grad_norms["model"]) > 0
    if inference:
        evaluation = jax.jit(task1.eval_step)(state, batch, _key(2))
        assert 0 < float(evaluation["quantizer/codebook_usage_batch"]) <= 1

    config2 = _config(task, f"{quantizer},tiny,stage2")
    stage1_variables = {"params": state.params["model"], **state.model_state}
    task2 = Stage2Task(config2, frozen=frozen_from_variables(config1, "model",
                                                             stage1_variables))

    def two_steps(key, batch):
        initial = task2.init_state(key, batch)
        state, first = task2.train_step(initial, batch, key)
        state, _ = task2.train_step(state, batch, jax.random.fold_in(key, 1))
        return initial.params["stage2"], state, first

    before, state2, metrics2 = jax.jit(two_steps)(_key(3), batch)
    assert int(state2.step) == 2
    # A fresh decoder predicts uniformly over the vocabulary (zero-initialised logits).
    vocab = task1.codebook_size + 1
    assert float(metrics2["loss"]) == pytest.approx(np.log(vocab), rel=1e-4)
    # After the second step every stage-II parameter has received a gradient.
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, state2.params["stage2"])
    assert all(jax.tree.leaves(changed))
    # The frozen stage-I model is carried along unchanged.
    same = jax.tree.map(lambda a, b: bool(np.all(a == b)), stage1_variables,
                        state2.model_state["stage1"])
    assert all(jax.tree.leaves(same))
    if inference:  # image -> code (KV-cached decoding) -> stage-I decoder -> depth
        prediction, tokens = task2.predict(state2, batch, _key(5))
        assert tokens.shape == (BATCH, 4)
        assert int(tokens.min()) >= 0 and int(tokens.max()) < task1.codebook_size
        assert prediction["depth"].shape == batch["depth"].shape


@pytest.mark.slow
@pytest.mark.parametrize("task", ["depth", "colorization", "panoptic"])
def test_both_stages_through_the_loop(task, tmp_path):
    from fsq_jax.train import train_and_evaluate

    config1 = _config(task, "vq,tiny" if task == "panoptic" else "fsq,tiny")
    config1.log_every = config1.eval_every = config1.images_every = 2
    config1.checkpoint_every = 4
    config1.eval_steps = 1
    stage1_dir = str(tmp_path / "stage1")
    result = train_and_evaluate(config1, stage1_dir)
    assert result["step"] == 4
    assert any(name.startswith("oracle/codebook_usage") for name in result["evaluators"])

    config2 = _config(task, "vq,tiny,stage2" if task == "panoptic" else "fsq,tiny,stage2")
    config2.stage1_workdir = stage1_dir
    config2.eval_steps = 1
    result2 = train_and_evaluate(config2, str(tmp_path / "stage2"))
    assert result2["step"] == 4
    metric = {"depth": "uvim/rmse", "colorization": "uvim/psnr", "panoptic": "uvim/pq"}[task]
    assert np.isfinite(result2["evaluators"][metric])
    assert (tmp_path / "stage2" / "images").is_dir()
