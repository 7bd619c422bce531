"""The shared loop on a tiny autoencoder: exact resume, NaN guard, corrupt checkpoints, devices."""

from __future__ import annotations

import csv
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorflow.compat.v1.train import summary_iterator

from configs import autoencoder as autoencoder_config
from fsq_jax import train
from fsq_jax.tasks.autoencoder import AutoencoderTask
from fsq_jax.tasks.synthetic import smooth_images
from fsq_jax.train import sharding
from fsq_jax.train.checkpoint import Checkpointer


def tiny_config(**overrides):
    config = autoencoder_config.get_config("fsq,tiny")
    config.total_steps = 8
    config.log_every = 2
    config.eval_every = 4
    config.images_every = 8
    config.checkpoint_every = 4
    config.eval_steps = 1
    config.optimizer.name = "adamw"
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 2
    config.optimizer.weight_decay = 1e-4
    config.ema_decay = 0.9
    config.evaluators.codebook_batches = 1
    for key, value in overrides.items():
        config[key] = value
    return config


class PoisonTask(AutoencoderTask):
    """The autoencoder with `loss * (1 + sum(batch["poison"]))`: exact when poison is 0.

    Every test here runs this same program, so the persistent compilation cache serves it
    after the first compile; NaN is injected through the data, not the program.
    """

    def loss(self, params, state, batch, rng):
        loss, aux = super().loss(params, state, batch, rng)
        return loss * (1.0 + jnp.sum(batch["poison"])), aux


class Data:
    """`smooth_images` plus a `poison` entry (NaN at `nan_steps`) and an optional crash."""

    def __init__(self, nan_steps=(), crash_at=None):
        self.nan_steps = set(nan_steps)
        self.crash_at = crash_at

    def __call__(self, data_config, split, batch_size, **kwargs):
        start = kwargs.get("start_step", 0)
        for offset, batch in enumerate(smooth_images(data_config, split, batch_size, **kwargs)):
            step = start + offset  # the batch of update number step + 1
            if split == "train" and step == self.crash_at:
                raise RuntimeError("simulated crash")
            poison = np.zeros((len(batch["image"]),), np.float32)
            if split == "train" and step + 1 in self.nan_steps:
                poison[:] = np.nan
            yield {**batch, "poison": poison}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Shares compiled programs between the runs of this module (same program, same shapes)."""
    options = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    previous = {name: getattr(jax.config, name) for name in options}
    jax.config.update(options[0], str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update(options[1], 0.0)
    jax.config.update(options[2], 0)
    yield
    for name, value in previous.items():
        jax.config.update(name, value)


def run(config, workdir, data_fn=None, **kwargs):
    return train.train_and_evaluate(
        config, str(workdir), PoisonTask(config), data_fn=data_fn or Data(), **kwargs
    )


def saved(workdir):
    _, tree = train.restore_latest(str(workdir))
    return tree


def assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted 8-step run (checkpoints at 4 and 8)."""
    workdir = tmp_path_factory.mktemp("reference")
    results = run(tiny_config(), workdir)
    return workdir, results


def test_outputs_of_a_run(reference_run):
    workdir, results = reference_run
    assert results["step"] == 8 and not results["preempted"]
    assert np.isfinite(results["eval"]["eval/mse"])
    assert 0.0 < results["evaluators"]["codebook/usage"] <= 1.0
    assert results["evaluators"]["codebook/perplexity"] >= 1.0
    with open(workdir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert all(np.isfinite(float(r["train/loss"])) for r in rows)
    assert rows[1]["eval/mse"] and not rows[0]["eval/mse"]
    (events,) = [name for name in os.listdir(workdir) if name.startswith("events.out.tfevents")]
    tags = {
        value.tag
        for event in summary_iterator(str(workdir / events))
        for value in event.summary.value
    }
    assert {"train/loss", "eval/mse", "steps_per_sec", "reconstructions"} <= tags
    image = np.asarray(Image.open(workdir / "images" / "reconstructions_00000008.png"))
    assert image.dtype == np.uint8 and image.shape == (32, 16 * 8, 3)
    stored = json.loads((workdir / "results.json").read_text())
    assert stored["step"] == 8
    # Where the wall time went: every timed part, the rest is training.
    seconds = stored["seconds"]
    assert {"total", "training", "eval", "images", "checkpoint", "compilation"} <= set(seconds)
    assert seconds["eval"] > 0 and seconds["compilation"] > 0
    assert sum(v for k, v in seconds.items() if k != "total") == pytest.approx(seconds["total"])
    assert json.loads((workdir / "config.json").read_text())["total_steps"] == 8
    assert Checkpointer(str(workdir / "checkpoints")).all_steps() == [4, 8]
    tree = saved(workdir)
    assert int(tree["step"]) == 8
    ema = jax.tree.leaves(tree["ema_params"])
    raw = jax.tree.leaves(tree["params"])
    assert len(ema) == len(raw) and any(not np.array_equal(e, r) for e, r in zip(ema, raw))


def test_resume_after_crash_is_bit_identical(reference_run, tmp_path):
    reference_dir, _ = reference_run
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(), tmp_path, data_fn=Data(crash_at=6))
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [4]
    results = run(tiny_config(), tmp_path)
    assert results["step"] == 8
    assert_trees_equal(saved(tmp_path), saved(reference_dir))
    with open(tmp_path / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [2, 4, 6, 8]  # the crashed run's row for step 6 is not duplicated


def test_nan_stops_with_step_and_metric_and_keeps_checkpoint(tmp_path):
    config = tiny_config()
    with pytest.raises(train.NonFiniteError, match=r"at step 6 in .*metric 'loss'") as info:
        run(config, tmp_path, Data(nan_steps=[6]))
    assert info.value.step == 6
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [4]
    tree = saved(tmp_path)
    assert int(tree["step"]) == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tree["params"]))


def test_nan_skip_policy_counts_and_continues(tmp_path):
    config = tiny_config(nan_policy="skip")
    results = run(config, tmp_path, Data(nan_steps=[3, 5]))
    assert results["step"] == 8 and results["skipped_updates"] == 2
    tree = saved(tmp_path)
    assert int(tree["step"]) == 8
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(tree["params"]))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["skipped_updates"]) == 2


def test_truncated_checkpoint_falls_back_to_previous(reference_run, tmp_path):
    reference_dir, _ = reference_run
    shutil.copytree(reference_dir / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(reference_dir / "config.json", tmp_path / "config.json")
    step_dir = tmp_path / "checkpoints" / "8"
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != "fsq_manifest.json"]
    victim = max(files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    reports = []
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    step, _ = checkpointer.restore_latest(report=reports.append)
    checkpointer.close()
    assert step == 4
    assert len(reports) == 1 and "step 8" in reports[0] and victim.name in reports[0]
    assert os.listdir(tmp_path / "checkpoints_corrupt")[0].startswith("8-")
    # Training resumes from step 4 and rewrites the lost checkpoint exactly.
    run(tiny_config(), tmp_path)
    assert_trees_equal(saved(tmp_path), saved(reference_dir))


def test_eight_devices_match_one(tmp_path):
    assert jax.device_count() == 8
    config = tiny_config(eval_every=0, images_every=0, eval_steps=0)
    one = sharding.create_mesh(jax.devices()[:1])
    eight = sharding.create_mesh(jax.devices())
    run(config, tmp_path / "one", mesh=one)
    run(config, tmp_path / "eight", mesh=eight)
    a, b = saved(tmp_path / "one"), saved(tmp_path / "eight")
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


@pytest.mark.slow
def test_fsdp_matches_replicated(reference_run, tmp_path):
    reference_dir, _ = reference_run
    config = tiny_config(fsdp=True)
    run(config, tmp_path / "fsdp")
    a, b = saved(reference_dir), saved(tmp_path / "fsdp")
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def test_restore_latest_with_target_gives_typed_state(reference_run):
    workdir, _ = reference_run
    config = tiny_config()
    task = AutoencoderTask(config)
    batch = next(smooth_images(config.data, "train", 8))
    abstract = jax.eval_shape(task.init_state, jax.random.PRNGKey(0), batch)
    loaded_config, state = train.restore_latest(str(workdir), target=abstract)
    assert isinstance(state, train.TrainState) and int(state.step) == 8
    assert state.tx is abstract.tx and state.ema_decay == 0.9
    assert loaded_config.total_steps == 8
    assert_trees_equal(state.params, saved(workdir)["params"])


def test_evaluate_changes_nothing_in_the_workdir(reference_run):
    workdir, _ = reference_run
    listing = lambda: sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    before = listing()
    config = tiny_config()
    results = train.evaluate(config, str(workdir), PoisonTask(config), data_fn=Data())
    assert results["step"] == 8 and np.isfinite(results["eval"]["eval/mse"])
    assert listing() == before  # read only: results.json, checkpoints, everything as it was


def test_a_tasks_own_data_fn_feeds_the_loop_unless_one_is_passed(reference_run, tmp_path):
    """A task's `data_fn` (e.g. stage II's token cache) replaces fsq_jax.data.build; the result
    equals passing the same function explicitly."""

    class OwnDataTask(PoisonTask):
        data_fn = Data()

    config = tiny_config()
    results = train.train_and_evaluate(config, str(tmp_path), OwnDataTask(config))
    reference_dir, reference = reference_run
    assert results["train"] == reference["train"]
    assert_trees_equal(saved(tmp_path)["params"], saved(reference_dir)["params"])
