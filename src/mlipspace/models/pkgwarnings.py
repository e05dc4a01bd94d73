"""Warnings raised by model packages while a model loads or extracts: caught, counted, summarised.

Model packages warn a lot on ordinary input (pymatgen: ``No Pauling electronegativity for Ne``
once per noble-gas structure), which buried the progress bars under pages of lines. The one place
that catches them is :func:`capture_warnings`, used around model loading and extraction (the
feature pipeline, the model worker). It yields a :class:`WarningLog`: the count, the first
message and the distinct warnings with their counts, summarised once per model and returned in
the extraction's result. ``verbose=True`` passes every warning through as well.

Warnings raised by mlipspace's own code (e.g. the DPA adapter's "buffers absent") are not model
package noise: they always pass through, uncounted. Filters a package installed itself (an
``ignore`` of its own noise) are honoured. ``warnings.catch_warnings`` is process-wide: use one
capture per thread of work (the pipeline runs one model call at a time per process).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator

#: distinct warnings kept per log (the rest are counted in ``other``)
MAX_DISTINCT = 100
_CATEGORIES: dict[str, type[Warning]] = {}
_SKIP = {warnings.__file__, getattr(sys.modules.get("_py_warnings"), "__file__", None)}


def _own_dir() -> str:
    import mlipspace

    return os.path.realpath(os.path.dirname(mlipspace.__file__)) + os.sep


_REPLAY = threading.local()  # while a worker's warnings are raised again: whether they are mlipspace's own


def _issued_by_us() -> bool:
    """Whether the warning being shown was issued by mlipspace's code: the first frame outside the
    ``warnings`` machinery (whatever its ``stacklevel`` points at) lies in the mlipspace package."""
    own = getattr(_REPLAY, "own", None)
    if own is not None:
        return own
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in _SKIP:
        frame = frame.f_back
    try:  # the worker sees the package through a symlink: compare real paths
        return frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(_own_dir())
    except (TypeError, ValueError):
        return False


def category(name: str) -> type[Warning]:
    """The warning class called ``name``: a builtin one, else a ``UserWarning`` subclass of that name
    (how a warning raised in a worker process is raised again here)."""
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Warning):
        return cls
    return _CATEGORIES.setdefault(name, type(name, (UserWarning,), {"__module__": __name__}))


class WarningLog:
    """The warnings of one model: total ``count``, distinct ``(category, message, filename, lineno)``
    with their counts (first seen first), and ``other``: warnings beyond :data:`MAX_DISTINCT` kinds."""

    def __init__(self):
        self.count = 0
        self.other = 0
        self.entries: dict[tuple[str, str, str, int], int] = {}
        self.own: list[tuple[str, str, str, int]] = []  # mlipspace's own (shown, not counted; kept to replay)

    def record(self, category_name: str, message: str, filename: str = "", lineno: int = 0, n: int = 1) -> None:
        key = (category_name, message, filename, int(lineno))
        self.count += n
        if key in self.entries:
            self.entries[key] += n
        elif len(self.entries) < MAX_DISTINCT:
            self.entries[key] = n
        else:
            self.other += n

    def merge(self, other: WarningLog | dict | None) -> WarningLog:
        """Add ``other`` (a log or its :meth:`as_dict`) to this log; returns self."""
        if other is None:
            return self
        if isinstance(other, dict):
            other = WarningLog.from_dict(other)
        for key, n in other.entries.items():
            self.record(*key, n=n)
        self.count += other.other
        self.other += other.other
        self.own += [k for k in other.own if k not in self.own][:MAX_DISTINCT]
        return self

    @property
    def first(self) -> str | None:
        """The first warning as ``"Category: message"``, or ``None`` when there was none."""
        for cat, msg, _, _ in self.entries:
            return f"{cat}: {msg}"
        return None

    def as_dict(self) -> dict:
        """JSON-ready: ``{"count", "first", "other", "distinct": [{category, message, filename, lineno, count}]}``."""
        return {"count": self.count, "first": self.first, "other": self.other,
                "distinct": [{"category": c, "message": m, "filename": f, "lineno": ln, "count": n}
                             for (c, m, f, ln), n in self.entries.items()],
                "own": [list(k) for k in self.own]}

    @classmethod
    def from_dict(cls, d: dict) -> WarningLog:
        log = cls()
        for e in d.get("distinct", []):
            log.record(e["category"], e["message"], e.get("filename", ""), e.get("lineno", 0), n=int(e["count"]))
        log.count += int(d.get("other", 0))
        log.other += int(d.get("other", 0))
        log.own = [(c, m, f, int(ln)) for c, m, f, ln in d.get("own", [])]
        return log

    def summary(self, model: str) -> str | None:
        """One line for the user, e.g. ``chgnet-0.3.0: 37 warnings from model packages (first: ...)``."""
        if not self.count:
            return None
        first = " ".join((self.first or "").split())
        first = first if len(first) <= 120 else first[:117] + "..."
        noun = "warning" if self.count == 1 else "warnings"
        return f"{model}: {self.count} {noun} from model packages (first: {first}); --verbose shows them"

    def replay(self, registry: dict | None = None) -> None:
        """Raise the logged warnings again here, as often as they were counted (a worker's warnings
        reach the capture of this process this way); ``other`` comes back as one summary warning."""
        try:
            _REPLAY.own = True
            for cat, msg, filename, lineno in self.own:
                warnings.warn_explicit(msg, category(cat), filename or "<worker>", lineno, registry=registry)
            _REPLAY.own = False
            for (cat, msg, filename, lineno), n in self.entries.items():
                for _ in range(n):
                    warnings.warn_explicit(msg, category(cat), filename or "<worker>", lineno, registry=registry)
            if self.other:
                warnings.warn_explicit(f"{self.other} more warnings of other kinds (not kept)", UserWarning,
                                       "<worker>", 0, registry=registry)
        finally:
            _REPLAY.own = None


@contextlib.contextmanager
def capture_warnings(*, verbose: bool = False) -> Iterator[WarningLog]:
    """Catch the warnings model packages raise inside the block into the yielded :class:`WarningLog`.

    Every occurrence is counted (not only the first per line). Nothing is printed unless
    ``verbose`` (then each warning is also shown as Python would); mlipspace's own warnings are
    always shown and not counted.
    """
    log = WarningLog()
    with warnings.catch_warnings():
        show = warnings.showwarning
        warnings.filterwarnings("always", append=True)  # after the filters packages installed

        def _show(message, category_, filename, lineno, file=None, line=None):
            if _issued_by_us():
                key = (category_.__name__, str(message), str(filename), int(lineno or 0))
                if key not in log.own and len(log.own) < MAX_DISTINCT:
                    log.own.append(key)
                show(message, category_, filename, lineno, file, line)
                return
            log.record(category_.__name__, str(message), str(filename), int(lineno or 0))
            if verbose:
                show(message, category_, filename, lineno, file, line)

        warnings.showwarning = _show
        yield log


__all__ = ["MAX_DISTINCT", "WarningLog", "capture_warnings", "category"]
