"""The extraction pipeline: a SIGKILLed run resumes to the same bytes; Dask gives the serial result."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mlipspace.store import FeatureStore, extract_to_store
from modelkit import SLOW_DESCRIPTOR

MODEL = "descriptor-rdf"
SPEC = "builtin:mad-mini?size=16"


def tree(path: Path) -> dict[str, bytes]:
    """Every file below the store's ``datasets/`` by relative path, with its bytes."""
    base = path / "datasets"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted serial run."""
    path = tmp_path_factory.mktemp("ref") / "fs"
    extract_to_store(SPEC, MODEL, path, layers="all", shard_size=2, progress=False)
    return path


def _completed_shards(path: Path) -> int:
    return sum(1 for p in path.glob("staging/*/*/shard_*/meta.json"))


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    path = tmp_path / "fs"
    code = SLOW_DESCRIPTOR + textwrap.dedent(f"""
        from mlipspace.store import extract_to_store
        extract_to_store({SPEC!r}, SlowDescriptor(0.4), {str(path)!r}, layers="all", shard_size=2,
                         progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        while _completed_shards(path) < 2:
            assert proc.poll() is None, "extraction ended before it could be killed"
            assert time.time() < deadline, "no shard completed within 60 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = _completed_shards(path)
    assert 2 <= done < 8  # killed mid-way: some shards staged, not all
    st = FeatureStore(path)
    key = st.datasets()[0]
    assert not st.is_complete(key, MODEL)
    assert st.summary()[0]["models"][0]["pending"]["shards_done"] == done
    summary = extract_to_store(SPEC, MODEL, path, layers="all", shard_size=2, progress=False)
    assert summary["models"][MODEL]["extracted_shards"] == 8 - done  # staged shards were reused
    assert tree(path) == tree(reference)
    assert not (path / "staging").exists() and not list((path / ".tmp").iterdir())


@pytest.mark.slow
def test_dask_local_cluster_matches_serial(reference, tmp_path):
    pytest.importorskip("distributed")
    path = tmp_path / "fs"
    summary = extract_to_store(SPEC, MODEL, path, layers="all", shard_size=2, workers=2, progress=False)
    assert summary["models"][MODEL]["extracted_shards"] == 8
    assert tree(path) == tree(reference)


def test_shard_size_does_not_change_the_result(reference, tmp_path):
    path = tmp_path / "fs"
    extract_to_store(SPEC, MODEL, path, layers="all", shard_size=5, progress=False)
    assert tree(path) == tree(reference)


def test_spec_is_recorded_and_frames_reload(reference):
    st = FeatureStore(reference)
    key = st.resolve(SPEC)
    frames = st.frames(key)
    assert len(frames) == 16 and st.dataset_info(key)["spec"] == SPEC
    from mlipspace.models import load

    direct = load(MODEL).extract(frames, layers=("last",)).layers["last"]
    np.testing.assert_array_equal(st.features(key, MODEL, "last"), direct)


def test_existing_scheduler_address(reference, tmp_path):
    """``scheduler=ADDRESS`` (as with dask-jobqueue on SLURM) uses that cluster, same result."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None, silence_logs=40) as cluster:
        path = tmp_path / "fs"
        extract_to_store(SPEC, MODEL, path, layers="all", shard_size=3, scheduler=cluster.scheduler_address,
                         progress=False)
    assert tree(path) == tree(reference)


def test_crash_between_last_shard_and_finalize(reference, tmp_path, monkeypatch):
    """All shards staged but never assembled (killed in between): the rerun only assembles them."""
    import mlipspace.store.pipeline as pipeline

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill before assembling the shards")

    path = tmp_path / "fs"
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_finalize", crash)
        with pytest.raises(KeyboardInterrupt):
            extract_to_store(SPEC, MODEL, path, layers="all", shard_size=2, progress=False)
    assert len(list(path.glob("staging/*/*/shard_*/meta.json"))) == 8
    summary = extract_to_store(SPEC, MODEL, path, layers="all", shard_size=2, progress=False)
    assert summary["models"][MODEL]["extracted_shards"] == 0
    assert tree(path) == tree(reference)
