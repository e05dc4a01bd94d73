"""What a measure is, as data: its function, how to read its value, and its declared invariances.

:data:`mlipspace.metrics.MEASURES` maps every measure's name to a :class:`Measure`; the test suite
checks each declaration on random data (tests/test_metrics_registry.py), so the table is a spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: Transformations a measure may be invariant to. For measures on aligned rows of two spaces
#: (``samples=False``) each is applied to one side at a time; for measures between two samples of
#: one space (``samples=True``) the same transformation is applied to both.
TRANSFORMATIONS = {
    "rotation": "an orthogonal map of the feature columns",
    "rotation_of_source": "an orthogonal map of the columns of X only (the reconstructing side)",
    "isotropic_scale": "multiplying every feature by one positive factor",
    "shift": "adding one constant vector to every row",
    "permutation_of_features": "reordering the feature columns",
    "invertible_linear": "a general invertible linear map of the feature columns",
}


@dataclass(frozen=True)
class Measure:
    """A registered measure.

    ``perfect`` is the value of identical inputs (1 for similarities, 0 for distances and errors);
    ``symmetric`` says f(X, Y) == f(Y, X). ``invariant_to`` / ``not_invariant_to``: names from
    :data:`TRANSFORMATIONS` that leave the value unchanged / that are known to change it.
    ``prepare`` (similarity measures): the permutation-invariant work done once, for nulls.
    """

    name: str
    func: Callable[..., float]
    higher_is_better: bool
    range: tuple[float, float]
    perfect: float
    symmetric: bool
    description: str
    prepare: Callable | None = field(default=None, repr=False)
    invariant_to: frozenset = frozenset()
    not_invariant_to: frozenset = frozenset()
    samples: bool = False

    def __post_init__(self):
        unknown = (self.invariant_to | self.not_invariant_to) - set(TRANSFORMATIONS)
        if unknown:
            raise ValueError(f"measure {self.name!r}: unknown transformations {sorted(unknown)}")
