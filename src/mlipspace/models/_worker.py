"""The model worker: runs in a family's own environment and serves one model over stdin/stdout.

Started by :class:`mlipspace.models.remote.RemoteExtractor` as ``python -m mlipspace.models._worker``
with the main process's mlipspace source on ``PYTHONPATH``. It answers messages of
:mod:`mlipspace.models._wire` until ``shutdown`` or end of input:

- ``load {spec, device}`` -> the model's name, family, layers, dims, elements, fingerprint, device;
- ``extract {layers, batch_size, on_unsupported}`` + frames -> one array per layer and the rows'
  ``frame``/``Z`` (frame = index into the frames sent);
- ``energies`` + frames -> per frame ``sum(readout(last)) + energy_offset`` (+ ``pair_energy`` of
  the frame where the adapter has one: a ZBL repulsion computed from distances alone) and the
  energy of the package's own ASE calculator (the check that ``last`` is the readout's input);
- ``shutdown``.

Every reply carries ``warnings`` (the log of what the model packages warned while answering). Any
exception is sent back as ``{"ok": false, "error": {type, message, reason, source, frame,
traceback}}`` and the worker keeps serving. The protocol owns the original stdout; anything the
model packages print goes to stderr.
"""

from __future__ import annotations

import os
import sys
import traceback


def _error(exc: BaseException) -> dict:
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "reason": getattr(exc, "reason", None),
        "source": getattr(exc, "source", None),
        "frame": getattr(exc, "frame", None),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
    }


def _load(spec_text: str, device: str):
    import importlib

    from mlipspace._device import resolve_device
    from mlipspace.models.registry import get_spec

    spec = get_spec(spec_text)
    module = importlib.import_module(f"mlipspace.models.{spec.module}")
    return module.load(spec, resolve_device(device))


def _describe(m) -> dict:
    return {
        "name": m.name,
        "family": m.family,
        "layers": list(m.layers),
        "dims": {k: int(v) for k, v in m.dims.items()},
        "elements": sorted(int(z) for z in m.elements),
        "fingerprint": dict(m.fingerprint),
        "device": str(getattr(m, "device", "cpu")),
        "energies": all(hasattr(m, a) for a in ("readout", "energy_offset")),
        "pid": os.getpid(),
        "python": sys.executable,
    }


def _energies(m, frames) -> dict:
    import numpy as np

    if not all(hasattr(m, a) for a in ("readout", "energy_offset")):
        raise NotImplementedError(f"{m.name}: the adapter has no readout(last, numbers)/energy_offset")
    calc = m.calculator()
    readout, own = [], []
    for atoms in frames:
        fs = m.extract([atoms], layers=("last",), batch_size=1)
        e = float(np.sum(m.readout(fs.layers["last"], fs.rows["Z"])) + float(m.energy_offset))
        if hasattr(m, "pair_energy"):  # geometry-only terms (ZBL) that never pass through the readout
            e += float(m.pair_energy([atoms])[0])
        readout.append(e)
        a = atoms.copy()
        a.calc = calc
        own.append(float(a.get_potential_energy()))
    return {"readout": np.array(readout), "calculator": np.array(own)}


def serve(stdin, stdout) -> None:
    """Answer messages from ``stdin`` on ``stdout`` (binary streams) until shutdown or EOF.

    Warnings raised while loading or extracting are caught (:mod:`mlipspace.models.pkgwarnings`)
    and sent back under ``"warnings"`` with every reply; the caller raises them again.
    """
    from mlipspace.models._wire import read_message, write_message
    from mlipspace.models.pkgwarnings import capture_warnings

    model = None
    while True:
        try:
            header, arrays = read_message(stdin)
        except EOFError:
            return
        op = header.get("op")
        if op == "shutdown":
            write_message(stdout, {"ok": True})
            return
        out = None
        with capture_warnings() as log:  # the model packages' warnings go back with the reply
            try:
                if op == "load":
                    model = _load(header["spec"], header.get("device", "auto"))
                    reply = {"ok": True, **_describe(model)}
                else:
                    reply, out = _answer(model, op, header, arrays)
            except Exception as exc:  # every failure goes back to the caller, the worker stays up
                reply = {"ok": False, "error": _error(exc)}
        write_message(stdout, {**reply, "warnings": log.as_dict()}, out)


def _answer(model, op: str, header: dict, arrays: dict) -> tuple[dict, dict]:
    """The reply and arrays of an ``extract`` or ``energies`` request."""
    import numpy as np

    from mlipspace.models._wire import unpack_frames

    if model is None:
        raise RuntimeError(f"op {op!r} before 'load'")
    frames = unpack_frames(header["frames"], arrays)
    if op == "extract":
        fs = model.extract(frames, layers=tuple(header["layers"]), batch_size=int(header["batch_size"]),
                           on_unsupported=header["on_unsupported"])
        out = {f"layer.{k}": np.asarray(v, dtype=np.float32) for k, v in fs.layers.items()}
        out["frame"] = np.asarray(fs.rows["frame"], dtype=np.int64)
        out["Z"] = np.asarray(fs.rows["Z"], dtype=np.int32)
        return {"ok": True, "layers": list(fs.layers), "skipped": [[int(i), str(r)] for i, r in fs.skipped]}, out
    if op == "energies":
        return {"ok": True}, _energies(model, frames)
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    """Take over stdin/stdout for the protocol; route stray prints to stderr."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    serve(proto_in, proto_out)
    # skip the interpreter's teardown (seconds with torch and a model package loaded): nothing is
    # left to write, and the caller may be waiting for this process to end
    proto_out.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
