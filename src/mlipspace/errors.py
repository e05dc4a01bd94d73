"""Exceptions with messages a user can act on.

Every error raised for bad input derives from :class:`MlipspaceError` (itself a ``ValueError``, so
scikit-learn style callers that catch ``ValueError`` keep working). The CLI prints the message of
these as one line and exits with status 1, instead of a traceback.
"""


class MlipspaceError(ValueError):
    """Base class of all user-facing errors of mlipspace."""


class InputError(MlipspaceError):
    """Malformed or inconsistent input arrays, indices or options."""


class StructureError(MlipspaceError):
    """A structure (frame) that cannot be used; the message names the source file and frame."""

    def __init__(self, reason: str, *, source: str | None = None, frame: int | None = None):
        where = []
        if source is not None:
            where.append(str(source))
        if frame is not None:
            where.append(f"frame {frame}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)
        self.reason = reason
        self.source = source
        self.frame = frame


class UnsupportedElementsError(StructureError):
    """Frames contain elements a model was not trained on."""


class ModelUnavailableError(MlipspaceError):
    """A model cannot be loaded here (package missing, checkpoint missing or of another family)."""


class AlignmentError(MlipspaceError):
    """Two feature matrices do not describe the same atoms in the same order."""


class StoreError(MlipspaceError):
    """The feature store is missing, incomplete or corrupted."""


class WorkerError(MlipspaceError):
    """A model worker subprocess (another Python environment) failed or died; names model and cause."""
