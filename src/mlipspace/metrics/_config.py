"""Engine settings of the measures: keywords of each call, with a scikit-learn-style override.

Every measure that has a choice of engine takes it as a keyword (``engine=``, ``fast_precision=``,
``knn_precision=``, ``svd_driver=``); a keyword left at ``None`` takes the value of
:func:`get_config`. :func:`config_context` changes those defaults inside a ``with`` block (tests and
benchmarks comparing engines), :func:`set_config` for the rest of the process. The settings are read
once, when a call starts, so worker threads of that call all see the same values.

Settings (defaults first; none changes a value beyond the engines' certified tolerances):

``engine``: ``"gram"`` | ``"svd"``
    GFRE: fold Gram matrices, certified, else TSQR (``"svd"``: TSQR + SVD only). LFRE on the CPU:
    Gram eigendecompositions, certified row by row, else SVD refits (``"svd"``: three SVDs per row).
``fast_precision``: ``"mixed"`` | ``"float64"``
    LFRE ``mode="fast"`` with k <= d on the CPU: float64 CV with float32 refits where well
    conditioned, or the float64 Gram engine without certificate.
``knn_precision``: ``"float32"`` | ``"float64"``
    Neighbour search on the CPU: one float32 pre-selection pass with exact float64 re-ranking
    (same neighbours), or two float64 passes.
``svd_driver``: ``None`` | one of :data:`._backend.SVD_DRIVERS`
    The SVD of the torch local fits (None: the fastest exact choice for the device).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlipspace.errors import InputError
from mlipspace.metrics._backend import SVD_DRIVERS

#: Allowed values of each setting, the first being the default.
CHOICES: dict[str, tuple] = {
    "engine": ("gram", "svd"),
    "fast_precision": ("mixed", "float64"),
    "knn_precision": ("float32", "float64"),
    "svd_driver": SVD_DRIVERS,
}
_config: dict = {key: values[0] for key, values in CHOICES.items()}


def _check(settings: dict) -> dict:
    for key, value in settings.items():
        if key not in CHOICES:
            raise InputError(f"unknown metrics setting {key!r}; choose from {', '.join(CHOICES)}")
        if value not in CHOICES[key]:
            raise InputError(f"{key}={value!r} is not one of {', '.join(map(repr, CHOICES[key]))}")
    return settings


def get_config() -> dict:
    """A copy of the current defaults of the engine settings."""
    return dict(_config)


def set_config(**settings) -> None:
    """Change the defaults of the named settings for the rest of the process."""
    _config.update(_check(settings))


@contextmanager
def config_context(**settings) -> Iterator[dict]:
    """Inside the ``with`` block the named settings take the given defaults; restored on exit."""
    saved = get_config()
    set_config(**settings)
    try:
        yield get_config()
    finally:
        _config.clear()
        _config.update(saved)


def resolve(**given) -> dict:
    """The settings of one call: each keyword given (not None) checked, the others from the config."""
    out = get_config()
    out.update(_check({k: v for k, v in given.items() if v is not None}))
    return out


def effective_n_jobs(n_jobs: int | None) -> int:
    """Threads of a call's own parallel loop (LFRE's test batches, the study's independent pairs):
    ``n_jobs`` when positive, else (None, 0, negative) every core this process may run on."""
    if n_jobs is not None and n_jobs > 0:
        return int(n_jobs)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
