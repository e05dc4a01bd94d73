"""Run a model in another Python environment: an Extractor whose work happens in a worker subprocess.

``RemoteExtractor(spec, python)`` starts ``python -m mlipspace.models._worker`` (see there for the
protocol), asks it to load ``spec`` and then behaves like any :class:`~mlipspace.models.base.Extractor`:
``extract`` sends the frames, the worker runs the family's adapter and sends the features back.
The main process never imports the family's package, so families with clashing dependencies
(MACE's e3nn 0.4.4, deepmd-kit's ops, fairchem) each keep their own environment.

What makes it safe:

- the worker runs the *same* mlipspace source as this process (a private directory holding a link
  to this package is its ``PYTHONPATH`` and working directory, so nothing of this environment and
  nothing in the user's working directory leaks into it);
- rows are checked on return: the atomic numbers the worker reports must equal those of the frames
  sent, row for row, or an :class:`~mlipspace.errors.AlignmentError` is raised;
- the warnings the model packages raise in the worker are raised again here, as often as they
  were raised there, so the caller's :func:`~mlipspace.models.pkgwarnings.capture_warnings` counts them;
- errors come back typed: a :class:`~mlipspace.errors.StructureError` in the worker is raised here
  with the same reason and frame; anything else, or a worker that dies, raises
  :class:`~mlipspace.errors.WorkerError` with the message and the last lines of its stderr.
"""

from __future__ import annotations

import atexit
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace import errors
from mlipspace.data.rows import row_table
from mlipspace.errors import AlignmentError, WorkerError
from mlipspace.models._torch_utils import check_frames, parse_layers
from mlipspace.models._wire import pack_frames, read_message, write_message
from mlipspace.models.base import Extractor, FeatureSet
from mlipspace.models.pkgwarnings import WarningLog

#: set to 1 to copy the workers' stderr (package warnings, logs) to this process's stderr
LOG_ENV = "MLIPSPACE_WORKER_LOG"

_SHIM: str | None = None
_SHIM_LOCK = threading.Lock()


def _shim_dir() -> str:
    """A private directory holding only a link to this mlipspace package (the worker's PYTHONPATH)."""
    global _SHIM
    with _SHIM_LOCK:
        if _SHIM is None or not os.path.isdir(_SHIM):
            import mlipspace

            d = tempfile.mkdtemp(prefix="mlipspace-worker-")
            os.symlink(Path(mlipspace.__file__).resolve().parent, os.path.join(d, "mlipspace"))
            atexit.register(shutil.rmtree, d, True)
            _SHIM = d
        return _SHIM


def _stop(proc: subprocess.Popen, stdin) -> None:
    """Ask a worker to end (close its input), then kill it if it does not."""
    try:
        stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()
        except (OSError, ValueError):
            pass


class RemoteExtractor(Extractor):
    """A model loaded in a worker subprocess of another Python (``python``); see the module docstring.

    ``spec`` is what the worker's registry loads (a checkpoint spec ``FAMILY:/path?...`` or any
    registered name); ``device`` is resolved in the worker. Thread-safe (one request at a time).
    Call :meth:`close` (or use it as a context manager) to end the worker early; it ends with the
    object or with this process otherwise.
    """

    def __init__(self, spec: str, python: str | os.PathLike, device: str = "auto", family: str | None = None):
        from mlipspace.envs import worker_env

        self.spec = spec
        self.python = str(python)
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=60)
        self._warning_registry: dict = {}  # without a capture, each worker warning shows once per location
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(worker_env(family))
        env["PYTHONPATH"] = _shim_dir()
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "mlipspace.models._worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, cwd=_shim_dir(),
            )
        except OSError as exc:
            raise WorkerError(f"cannot start a worker for {spec!r} with {self.python}: {exc}") from None
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._proc.stdin)
        self._drainer = threading.Thread(target=self._drain, args=(self._proc.stderr,), daemon=True)
        self._drainer.start()
        meta, _ = self._call({"op": "load", "spec": spec, "device": device})
        self.name = meta["name"]
        self.family = meta["family"]
        self.layers = tuple(meta["layers"])
        self.dims = {k: int(v) for k, v in meta["dims"].items()}
        self.elements = frozenset(int(z) for z in meta["elements"])
        self.fingerprint = dict(meta["fingerprint"])
        self.device = meta["device"]
        self.has_energies = bool(meta["energies"])
        self.pid = int(meta["pid"])

    # ------------------------------------------------------------------------------ plumbing
    def _drain(self, stream) -> None:
        echo = os.environ.get(LOG_ENV, "") not in ("", "0")
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self._stderr.append(line)
            if echo:
                print(f"[worker {self.spec}] {line}", flush=True, file=sys.stderr)

    def _died(self, what: str) -> WorkerError:
        try:
            rc = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        self._drainer.join(timeout=2)  # the stderr of a dead worker ends soon: read it all
        tail = "\n".join(list(self._stderr)[-25:])
        return WorkerError(f"the worker for {self.spec!r} ({self.python}) {what} (exit code {rc}); "
                           f"its last output:\n{tail}")

    def _call(self, header: dict, arrays: dict | None = None) -> tuple[dict, dict]:
        with self._lock:
            if self._proc.poll() is not None:
                raise self._died("is not running")
            try:
                write_message(self._proc.stdin, header, arrays)
                reply, out = read_message(self._proc.stdout)
            except (EOFError, BrokenPipeError, OSError):
                raise self._died(f"stopped during {header.get('op')!r}") from None
        if reply.get("warnings"):  # raise the worker's warnings here, where the caller's capture sees them
            WarningLog.from_dict(reply["warnings"]).replay(self._warning_registry)
        if not reply.get("ok"):
            raise self._error(reply["error"])
        return reply, out

    def _error(self, err: dict) -> Exception:
        """The worker's exception as one of ours: same class for mlipspace errors, else WorkerError."""
        cls = getattr(errors, err["type"], None)
        if isinstance(cls, type) and issubclass(cls, errors.MlipspaceError) and err.get("module") == errors.__name__:
            if issubclass(cls, errors.StructureError):
                return cls(err["reason"], source=err.get("source"), frame=err.get("frame"))
            return cls(err["message"])
        tb = "\n".join(err.get("traceback", "").rstrip().splitlines()[-12:])
        return WorkerError(f"{self.spec}: {err['type']}: {err['message']}\n(worker traceback, last lines)\n{tb}")

    # ------------------------------------------------------------------------------ Extractor
    def extract(self, frames: Sequence[Atoms], layers: Sequence[str] | str = ("last",), batch_size: int = 8,
                on_unsupported: str = "raise") -> FeatureSet:
        """Features of ``layers`` for every atom of ``frames``, computed in the worker; rows in input order."""
        wanted = parse_layers(layers, self.layers)
        frames = check_frames(frames)
        info, arrays = pack_frames(frames)
        reply, out = self._call({"op": "extract", "layers": wanted, "batch_size": int(batch_size),
                                 "on_unsupported": on_unsupported, "frames": info}, arrays)
        frame = out["frame"].astype(np.int64)
        kept = sorted(set(frame.tolist()))
        rows = row_table([frames[i] for i in kept])
        if len(frame) != len(rows["frame"]) or not np.array_equal(out["Z"], rows["Z"]):
            raise AlignmentError(f"{self.name}: the worker returned {len(frame)} rows whose atomic numbers do "
                                 f"not match the {len(rows['frame'])} atoms of the frames sent")
        rows["frame"] = frame
        feats = {k: out[f"layer.{k}"] for k in reply["layers"]}
        return FeatureSet(model=self.name, layers=feats, rows=rows, fingerprint=dict(self.fingerprint),
                          skipped=[(int(i), str(r)) for i, r in reply["skipped"]])

    def energies(self, frames: Sequence[Atoms]) -> dict[str, np.ndarray]:
        """Per frame: ``sum(readout(last)) + energy_offset (+ pair_energy)`` and the package calculator's energy."""
        info, arrays = pack_frames(check_frames(frames))
        _, out = self._call({"op": "energies", "frames": info}, arrays)
        return {"readout": out["readout"], "calculator": out["calculator"]}

    def close(self) -> None:
        """End the worker (idempotent)."""
        if self._proc.poll() is None:
            try:
                self._call({"op": "shutdown"})
            except WorkerError:
                pass
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"RemoteExtractor(name={self.name!r}, python={self.python!r}, device={self.device!r})"
