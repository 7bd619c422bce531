"""Mesh, batch and FSDP shardings; the CSV writer and the progress line."""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from fsq_jax.train import sharding
from fsq_jax.train.actions import ReportProgress, format_duration, progress_line
from fsq_jax.train.writers import CsvWriter, write_pngs


def test_mesh_spans_all_devices_and_batches_split_along_data():
    mesh = sharding.create_mesh()
    assert mesh.shape == {"data": 8}
    batch = sharding.shard_batch(
        {"image": np.zeros((16, 4, 4, 3), np.uint8), "label": np.arange(16, dtype=np.int32)}, mesh
    )
    assert batch["image"].shape == (16, 4, 4, 3)
    assert batch["label"].sharding.spec == PartitionSpec("data")
    assert {s.data.shape[0] for s in batch["label"].addressable_shards} == {2}
    np.testing.assert_array_equal(np.asarray(batch["label"]), np.arange(16))


def test_shard_batch_names_the_bad_entry():
    mesh = sharding.create_mesh()
    with pytest.raises(ValueError, match=r"batch\['label'\] has 12 examples, not divisible by"):
        sharding.shard_batch({"label": np.zeros((12,))}, mesh)
    with pytest.raises(ValueError, match=r"batch\['x'\] is a scalar"):
        sharding.shard_batch({"x": np.float32(1.0)}, mesh)
    with pytest.raises(ValueError, match="batch size 12 must be divisible"):
        sharding.local_batch_size(12, mesh)


def test_fsdp_spec_shards_largest_divisible_dimension():
    assert sharding.fsdp_spec((3, 4096), 8) == PartitionSpec(None, "data")
    assert sharding.fsdp_spec((4096, 3), 8) == PartitionSpec("data", None)
    assert sharding.fsdp_spec((12, 1000), 8) == PartitionSpec(None, "data")
    assert sharding.fsdp_spec((7, 999), 8) == PartitionSpec()  # nothing divides
    assert sharding.fsdp_spec((8, 8), 8) == PartitionSpec()  # too small to bother
    assert sharding.fsdp_spec((4096,), 1) == PartitionSpec()


def test_state_shardings_replicate_or_fsdp():
    mesh = sharding.create_mesh()
    tree = {
        "big": jax.ShapeDtypeStruct((64, 128), jnp.float32),
        "small": jax.ShapeDtypeStruct((8,), jnp.float32),
    }
    replicated = sharding.state_shardings(tree, mesh, fsdp=False)
    assert replicated["big"].spec == PartitionSpec()
    fsdp = sharding.state_shardings(tree, mesh, fsdp=True)
    assert fsdp["big"].spec == PartitionSpec(None, "data")
    assert fsdp["small"].spec == PartitionSpec()
    array = jax.device_put(jnp.ones((64, 128)), fsdp["big"])
    assert {s.data.shape for s in array.addressable_shards} == {(64, 16)}


def test_csv_writer_merges_steps_adds_columns_and_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = CsvWriter(str(path))
    writer.write_scalars(1, {"train/loss": 1.0})
    writer.write_scalars(2, {"train/loss": 0.5})
    writer.write_scalars(2, {"eval/mse": 0.25})  # same step: same row, new column
    writer.write_scalars(3, {"train/loss": 0.4})
    writer.close()
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["eval/mse"] == "0.25" and rows[0]["eval/mse"] == ""
    resumed = CsvWriter(str(path), resume_step=2)  # the run restarts from step 2
    resumed.write_scalars(3, {"train/loss": 0.3})
    resumed.close()
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["train/loss"]) for r in rows] == [
        ("1", "1.0"),
        ("2", "0.5"),
        ("3", "0.3"),
    ]


def test_pngs_are_written_and_bad_images_named(tmp_path):
    (path,) = write_pngs(str(tmp_path), 7, {"grid a": np.zeros((4, 6, 3), np.uint8)})
    assert path.endswith("grid_a_00000007.png")
    with pytest.raises(ValueError, match="image 'x' must be uint8"):
        write_pngs(str(tmp_path), 1, {"x": np.zeros((4, 4, 3), np.float32)})


def test_progress_line_reports_rate_and_eta():
    assert progress_line(100, 1000, 10.0, {"loss": 0.5}) == (
        "step 100/1000 (10%) 10.00 steps/s ETA 1m30s | loss=0.5")
    assert format_duration(3725) == "1h02m05s"


def test_progress_report_leaves_timed_parts_out_of_the_rate():
    lines, seen = [], []

    def metrics(step, rate):
        seen.append((step, rate))
        return {"loss": 0.5}

    progress = ReportProgress(num_train_steps=1000, every_steps=100, metrics_fn=metrics,
                              print_fn=lines.append)
    progress(0, 100.0)  # starts the clock, reports nothing
    progress._time_per_part["eval"] += 2.0  # as a `progress.timed("eval")` block would
    for step in range(1, 101):
        progress(step, 100.0 + 12.0 * step / 100)
    assert seen == [(100, pytest.approx(10.0))]
    assert lines == ["step 100/1000 (10%) 10.00 steps/s ETA 1m30s | loss=0.5"]


def test_distributed_initialize_validates_and_is_a_no_op_alone(monkeypatch):
    from fsq_jax.train import distributed

    for name in (
        "JAX_COORDINATOR_ADDRESS",
        "SLURM_JOB_ID",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() == (0, 1)  # single process: nothing to join
    with pytest.raises(ValueError, match="must be given together"):
        distributed.initialize(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        distributed.initialize("localhost:1234", num_processes=2, process_id=2)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed._cluster_detected()  # a one-task SLURM job is a single process
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed._cluster_detected()
