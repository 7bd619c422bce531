"""The job pool that trains the demo's and the sweep's runs side by side (one process each)."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest

from fsq_jax.train import concurrent_runs
from fsq_jax.train.concurrent_runs import Job, JobFailedError, JobPool, JobsStoppedError


def python_job(name: str, code: str) -> Job:
    return Job(name, [sys.executable, "-c", code])


def recording_job(name: str, log_dir, seconds: float = 0.3) -> Job:
    """A job that writes when it ran (start, end) into `<log_dir>/<name>.json`."""
    code = (f"import json, time; s = time.time(); print('hello from {name}'); "
            f"time.sleep({seconds}); print('bye'); "
            f"json.dump([s, time.time()], open({str(log_dir / (name + '.json'))!r}, 'w'))")
    return python_job(name, code)


def intervals(log_dir, names):
    return [json.loads((log_dir / f"{name}.json").read_text()) for name in names]


def max_overlap(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = best = 0
    for _, delta in events:
        running += delta
        best = max(best, running)
    return best


def test_every_job_runs_with_its_lines_prefixed(tmp_path):
    lines = []
    names = ["a", "b", "c"]
    with JobPool([recording_job(n, tmp_path, 0.05) for n in names], 2, log=lines.append) as pool:
        pool.wait()
    for name in names:
        assert f"[{name}] hello from {name}" in lines
        assert f"[{name}] bye" in lines
        # The job's own lines come in order.
        assert lines.index(f"[{name}] hello from {name}") < lines.index(f"[{name}] bye")
    finished = [line for line in lines if line.startswith("finished ")]
    assert len(finished) == 3 and "(3/3 runs" in finished[-1]
    assert "ETA" in finished[0] and "ETA" not in finished[-1]


@pytest.mark.parametrize("parallel", [1, 2])
def test_no_more_than_parallel_jobs_run_at_once(tmp_path, parallel):
    names = [f"job{i}" for i in range(4)]
    with JobPool([recording_job(n, tmp_path, 1.5) for n in names], parallel,
                 log=lambda line: None) as pool:
        pool.wait()
    spans = intervals(tmp_path, names)
    assert max_overlap(spans) == parallel
    # Jobs start in the order given: the first `parallel` of them first.
    starts = [s for s, _ in spans]
    first = sorted(range(len(names)), key=starts.__getitem__)[:parallel]
    assert sorted(first) == list(range(parallel))


def test_a_failing_job_is_named_with_its_last_line_and_stops_the_others(tmp_path):
    failing = python_job("broken", "import sys; print('loading'); "
                         "sys.exit('config error: bad field')")
    # A long job that would outlive the test if it were not stopped.
    slow = python_job("slow", "import time; print('started', flush=True); time.sleep(120)")
    queued = recording_job("queued", tmp_path, 0.01)
    started = time.monotonic()
    with (pytest.raises(JobFailedError) as caught,
          JobPool([slow, failing, queued], 2, log=lambda line: None) as pool):
        pool.wait()
    assert time.monotonic() - started < 60
    error = caught.value
    assert error.name == "broken" and error.returncode == 1
    assert str(error) == "run 'broken' failed (exit status 1): config error: bad field"
    assert error.tail == ["loading", "config error: bad field"]
    assert not (tmp_path / "queued.json").exists()  # not started after the failure


def test_a_signal_to_the_pool_stops_the_jobs(tmp_path):
    marker = tmp_path / "stopped"
    # A job that stops cleanly on SIGTERM, as a training run does (checkpoint, then exit).
    code = ("import signal, sys, time\n"
            "def stop(*_):\n"
            f"    open({str(marker)!r}, 'w').write('yes'); sys.exit(3)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    lines = []
    pool = JobPool([python_job("train", code)], 1, log=lines.append)
    with pytest.raises(JobsStoppedError, match="resumes"), pool:
        while "[train] ready" not in lines:
            time.sleep(0.05)
        signal.raise_signal(signal.SIGTERM)
        pool.wait()
    assert marker.read_text() == "yes"
    assert signal.getsignal(signal.SIGTERM) is not pool._on_signal  # handler given back


def test_leaving_the_block_by_an_exception_stops_the_jobs():
    job = python_job("long", "import time; print('up', flush=True); time.sleep(120)")
    lines = []
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), JobPool([job], 1, log=lines.append):
        while "[long] up" not in lines:
            time.sleep(0.05)
        raise KeyboardInterrupt
    assert time.monotonic() - started < 60


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="parallel = 0"):
        JobPool([], 0)
    with pytest.raises(ValueError, match="must differ"):
        JobPool([python_job("a", "pass"), python_job("a", "pass")], 1)


def test_default_parallelism_is_bounded_by_jobs_and_cores():
    assert concurrent_runs.default_parallelism(1) == 1
    assert 1 <= concurrent_runs.default_parallelism(64) <= 64
    assert concurrent_runs.default_parallelism(0) == 1


def test_jobs_share_an_accelerator_without_preallocating_it(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    shared = concurrent_runs.child_environment(2)
    assert shared["PYTHONUNBUFFERED"] == "1"
    assert shared["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in concurrent_runs.child_environment(1)
