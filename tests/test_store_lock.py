"""Many writers, one store: real concurrent ``mlipspace extract`` processes on one feature store.

A writer holds a lock per (dataset, model): writers of one model wait for each other (and the later
one finds the work done), ``--no-wait`` fails at once naming the holder, writers of different
models run at the same time, locks of dead holders are taken over, and concurrent dataset creation
is safe. Processes are held at a gate (a file the test creates) inside their first shard, so every
overlap below is certain, not a matter of timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlipspace.store import FeatureStore
from mlipspace.store import _io
from mlipspace.store._lock import StoreLock, lock_path, read_holder

SPEC = "builtin:mad-mini?size=12"
RDF, COARSE = "descriptor-rdf", "test-rdf-coarse"
# the CLI in a fresh interpreter, with a second radial descriptor; with TEST_GATE set, every shard
# task first drops "<pid>.in" into that folder and waits there until the test creates "go"
CLI = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from mlipspace.models import ModelSpec, register
    register(ModelSpec("test-rdf-coarse", "descriptor", "descriptor", (), "coarse radial descriptor (tests)",
                       {"cutoff": 4.0, "n_bins": 8, "seed": 1}), replace=True)
    gate = os.environ.get("TEST_GATE")
    if gate:
        import mlipspace.store.pipeline as pipeline
        real = pipeline.run_shard
        def gated(*args, **kwargs):
            Path(gate, f"{os.getpid()}.in").touch()
            while not Path(gate, "go").exists():
                time.sleep(0.05)
            return real(*args, **kwargs)
        pipeline.run_shard = gated
    from mlipspace.cli import main
    main(sys.argv[1:])
""")
GUARD_S = 180  # only against a hang: every wait below ends as soon as its condition holds


def start(store: Path, model: str, log: Path, *extra, gate: Path | None = None) -> subprocess.Popen:
    """``mlipspace extract SPEC -m model -s store --json`` in the background, output to ``log``.{out,err}."""
    env = dict(os.environ, **({"TEST_GATE": str(gate)} if gate else {}))
    args = ["extract", SPEC, "--model", model, "--store", str(store), "--shard-size", "4", "--json", *extra]
    return subprocess.Popen([sys.executable, "-c", CLI, *args], env=env,
                            stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"))


def until(condition, procs=(), what=""):
    """Poll ``condition`` until true; fail if it never comes (or a process in ``procs`` ended first)."""
    deadline = time.monotonic() + GUARD_S
    while not condition():
        for p in procs:
            assert p.poll() is None, f"process {p.pid} ended (rc {p.returncode}) before: {what}"
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, log: Path) -> tuple[int, dict | None, str]:
    """Wait for ``proc``; its return code, JSON summary (or ``None``) and stderr."""
    rc = proc.wait(timeout=GUARD_S)
    out, err = Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()
    return rc, (json.loads(out) if rc == 0 else None), err


def tree(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def at_gate(gate: Path) -> int:
    return len(list(gate.glob("*.in")))


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    """The store of one serial run of both models."""
    path = tmp_path_factory.mktemp("serial") / "fs"
    rc, _, err = finish(start(path, f"{RDF},{COARSE}", path.parent / "log"), path.parent / "log")
    assert rc == 0, err
    return path


def test_three_concurrent_extracts_equal_a_serial_run(serial, tmp_path):
    """Two writers of one model and one of another, started together on a fresh store: all exit 0,
    the model's second writer waits for the first and then finds its work done, and the store is
    byte-for-byte the serial run's."""
    store, gate = tmp_path / "fs", tmp_path / "gate"
    gate.mkdir()
    procs = [start(store, m, tmp_path / f"p{i}", gate=gate) for i, m in enumerate([RDF, RDF, COARSE])]
    logs = [tmp_path / f"p{i}" for i in range(3)]
    until(lambda: at_gate(gate) == 2 and any("waiting" in Path(f"{x}.err").read_text() for x in logs[:2]),
          procs, "one writer per model inside its extraction and the other rdf writer waiting")
    (gate / "go").touch()
    results = [finish(p, x) for p, x in zip(procs, logs)]
    assert [rc for rc, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    rdf_status = sorted(s["models"][RDF]["status"] for _, s, _ in results[:2])
    assert rdf_status == ["already stored", "extracted"]
    assert results[2][1]["models"][COARSE]["status"] == "extracted"
    assert at_gate(gate) == 2  # the waiting writer never extracted a shard
    assert tree(store) == tree(serial)
    assert not (store / "staging").exists() and not list((store / ".tmp").iterdir())
    assert not list((store / ".locks").rglob("*.lock"))  # every lock was given back


def test_second_writer_waits_naming_the_holder_then_skips(tmp_path):
    store, gate = tmp_path / "fs", tmp_path / "gate"
    gate.mkdir()
    first = start(store, RDF, tmp_path / "a", gate=gate)
    until(lambda: at_gate(gate) == 1, [first], "the first writer inside its extraction")
    second = start(store, RDF, tmp_path / "b", gate=gate)
    until(lambda: "waiting" in Path(f"{tmp_path / 'b'}.err").read_text(), [first, second], "the second writer waiting")
    (gate / "go").touch()
    rc1, s1, err1 = finish(first, tmp_path / "a")
    rc2, s2, err2 = finish(second, tmp_path / "b")
    assert rc1 == rc2 == 0, (err1, err2)
    assert s1["models"][RDF]["status"] == "extracted" and s2["models"][RDF]["status"] == "already stored"
    assert s2["models"][RDF]["extracted_shards"] == 0 and at_gate(gate) == 1
    waits = [line for line in err2.splitlines() if "waiting" in line]
    assert len(waits) == 1, err2  # one message, naming the holder
    assert f"pid {first.pid}@{socket.gethostname()} since " in waits[0] and RDF in waits[0] and str(store) in waits[0]


def test_no_wait_fails_at_once_naming_the_holder(tmp_path):
    store, gate = tmp_path / "fs", tmp_path / "gate"
    gate.mkdir()
    holder = start(store, RDF, tmp_path / "a", gate=gate)
    try:
        until(lambda: at_gate(gate) == 1, [holder], "the holder inside its extraction")
        rc, _, err = finish(start(store, RDF, tmp_path / "b", "--no-wait"), tmp_path / "b")  # holder still held
        key = FeatureStore(store).datasets()[0]
        assert rc == 1 and "Traceback" not in err, err
        assert f"pid {holder.pid}@{socket.gethostname()} since " in err
        assert str(store) in err and key in err and repr(RDF) in err and "--no-wait" in err
        assert holder.poll() is None  # it failed while the lock was held, without waiting for it
    finally:
        (gate / "go").touch()
    assert finish(holder, tmp_path / "a")[0] == 0


def test_writers_of_different_models_hold_their_locks_at_once(tmp_path):
    store, gate = tmp_path / "fs", tmp_path / "gate"
    gate.mkdir()
    procs = {m: start(store, m, tmp_path / m, gate=gate) for m in (RDF, COARSE)}
    until(lambda: at_gate(gate) == 2, procs.values(), "both writers inside their extractions")
    key = FeatureStore(store).datasets()[0]
    holders = {m: read_holder(lock_path(store, key, m)) for m in procs}
    (gate / "go").touch()
    assert {m: h.pid for m, h in holders.items()} == {m: p.pid for m, p in procs.items()}  # overlapping intervals
    for m, p in procs.items():
        rc, s, err = finish(p, tmp_path / m)
        assert rc == 0 and s["models"][m]["status"] == "extracted", err


def test_stale_lock_of_a_dead_process_is_taken_over(serial, tmp_path):
    store = tmp_path / "fs"
    key = FeatureStore(serial).datasets()[0]
    code = (f"from mlipspace.store._lock import StoreLock, lock_path; import os; "
            f"StoreLock(lock_path({str(store)!r}, {key!r}, {RDF!r})).try_acquire(); os._exit(0)")
    dead = subprocess.run([sys.executable, "-c", code], check=True)  # took the lock and died holding it
    assert dead.returncode == 0 and read_holder(lock_path(store, key, RDF)) is not None
    rc, s, err = finish(start(store, RDF, tmp_path / "b", "--no-wait"), tmp_path / "b")
    assert rc == 0 and s["dataset"] == key and s["models"][RDF]["status"] == "extracted", err
    assert not lock_path(store, key, RDF).exists()


def test_waiter_takes_over_from_a_killed_holder(serial, tmp_path):
    """The holder is SIGKILLed mid-extraction while a second writer waits: the waiter takes the lock
    over, does the work, and the store equals the serial run's."""
    store, gate = tmp_path / "fs", tmp_path / "gate"
    gate.mkdir()
    holder = start(store, RDF, tmp_path / "a", gate=gate)
    until(lambda: at_gate(gate) == 1, [holder], "the holder inside its extraction")
    waiter = start(store, RDF, tmp_path / "b")  # not gated
    until(lambda: "waiting" in Path(f"{tmp_path / 'b'}.err").read_text(), [holder, waiter], "the waiter waiting")
    holder.kill()
    assert holder.wait() == -signal.SIGKILL
    rc, s, err = finish(waiter, tmp_path / "b")
    assert rc == 0 and s["models"][RDF]["status"] == "extracted", err
    assert tree(store / "datasets" / s["dataset"] / "models" / RDF) == tree(serial / "datasets" / s["dataset"] / "models" / RDF)
    assert not list((store / ".locks").rglob("*.lock")) and not (store / "staging").exists()


def _write_lock(path: Path, *, host: str, pid: int, proc_start=None, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "started": time.time() - age,
                                "proc_start": proc_start, "token": "t"}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_lock_of_another_host_is_stale_only_without_heartbeat(tmp_path):
    path = tmp_path / "x.lock"
    _write_lock(path, host="elsewhere.invalid", pid=os.getpid(), age=5)
    held = StoreLock(path, stale_after=60).try_acquire()
    assert held is not None and held.describe().startswith(f"pid {os.getpid()}@elsewhere.invalid since ")
    _write_lock(path, host="elsewhere.invalid", pid=os.getpid(), age=120)  # no heartbeat for 2 minutes
    lock = StoreLock(path, stale_after=60)
    assert lock.try_acquire() is None and read_holder(path).host == socket.gethostname()
    lock.release()
    assert not path.exists()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    path = tmp_path / "x.lock"
    _write_lock(path, host=socket.gethostname(), pid=os.getpid(), proc_start="1")  # our pid, another start
    lock = StoreLock(path)
    assert lock.try_acquire() is None
    lock.release()


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    path = tmp_path / "x.lock"
    lock = StoreLock(path, heartbeat=0.05)
    assert lock.try_acquire() is None
    first = os.stat(path).st_mtime_ns
    os.utime(path, ns=(first - 10**9, first - 10**9))  # pretend the last beat was a second ago
    until(lambda: os.stat(path).st_mtime_ns > first - 10**9, what="a heartbeat")
    other = StoreLock(path, stale_after=60)
    assert other.try_acquire().pid == os.getpid()  # live: not taken
    lock.release()
    assert not path.exists()


def test_concurrent_add_dataset_of_the_same_frames(tmp_path):
    """Four processes create one store and add the same dataset at the same moment: one key, no error."""
    store, go = tmp_path / "fs", tmp_path / "go"
    code = textwrap.dedent(f"""
        import time; from pathlib import Path
        from mlipspace.data import read
        from mlipspace.store import FeatureStore
        frames = read({SPEC!r})
        Path({str(tmp_path)!r}, f"ready.{{__import__('os').getpid()}}").touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        print(FeatureStore({str(store)!r}, mode="a").add_dataset(frames, {SPEC!r}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    until(lambda: len(list(tmp_path.glob("ready.*"))) == 4, procs, "all four ready")
    go.touch()
    outs = [p.communicate(timeout=GUARD_S) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    st = FeatureStore(store)
    assert st.datasets() == [outs[0][0].strip()] and not list((store / ".tmp").iterdir())
    ref = FeatureStore(tmp_path / "ref", mode="a")
    from mlipspace.data import read

    ref.add_dataset(read(SPEC), SPEC)
    assert tree(store / "datasets") == tree(tmp_path / "ref" / "datasets")


def test_is_complete_is_false_while_an_extraction_is_staged(serial, tmp_path):
    """Layers already placed do not make a model complete while more of it is being extracted."""
    import shutil

    store = tmp_path / "fs"
    shutil.copytree(serial, store)
    st = FeatureStore(store)
    key = st.datasets()[0]
    assert st.is_complete(key, RDF)
    _io.staging_dir(store, key, RDF).mkdir(parents=True)
    _io.write_json_atomic(_io.staging_dir(store, key, RDF) / "plan.json", {"shards": [[0, 4]], "layers": ["radial"]})
    assert not st.is_complete(key, RDF) and st.is_complete(key, RDF, ["last"])
    assert not st.is_complete(key, RDF, ["radial"])
