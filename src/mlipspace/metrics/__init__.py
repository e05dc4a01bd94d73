"""Comparing feature spaces.

Reconstruction measures (:mod:`mlipspace.metrics.reconstruction`, scikit-matter semantics):
:func:`gfre`, :func:`gfrd`, :func:`lfre` and their ``pointwise_*`` versions, plus :func:`pairwise`
over a dict of spaces. Similarity measures (CKA, kNN overlap, ...) live in
:mod:`mlipspace.metrics.similarity`.
"""

from mlipspace.metrics.pairwise import pairwise
from mlipspace.metrics.reconstruction import (
    gfrd,
    gfre,
    lfre,
    pointwise_gfrd,
    pointwise_gfre,
    pointwise_lfre,
    rms,
)

__all__ = ["gfre", "gfrd", "lfre", "pointwise_gfre", "pointwise_gfrd", "pointwise_lfre", "pairwise", "rms"]
