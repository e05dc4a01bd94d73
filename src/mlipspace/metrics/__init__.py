"""Comparing feature spaces: every measure of the package, one import away.

Reconstruction measures (:mod:`mlipspace.metrics.reconstruction`, scikit-matter semantics):
:func:`gfre`, :func:`gfrd`, :func:`lfre` and their ``pointwise_*`` versions, :func:`pairwise` over a
dict of spaces, LFRE's neighbour count :func:`default_k`. Similarity measures
(:mod:`mlipspace.metrics.similarity`): :func:`linear_cka`, :func:`rbf_cka`, :func:`mutual_knn`,
:func:`procrustes_distance`, :func:`cknna`, with :func:`similarity_with_uncertainty` and :func:`rank_agreement`.
Two samples of one space: :func:`mmd`, :func:`mmd_permutation_test`.
:data:`MEASURES` declares each measure's orientation, symmetry and invariances; engine settings are
keywords of each call, with defaults from :func:`get_config` / :func:`config_context`. Input checks
shared with the CLI: :func:`check_rows` (same row count), :func:`resolve_split` (train/test indices).
"""

from mlipspace.metrics._checks import check_rows, resolve_split
from mlipspace.metrics._config import config_context, effective_n_jobs, get_config, set_config
from mlipspace.metrics._knn import nearest_distance
from mlipspace.metrics._pairwise import pairwise
from mlipspace.metrics._registry import TRANSFORMATIONS, Measure
from mlipspace.metrics.reconstruction import (
    RECONSTRUCTION_MEASURES,
    default_k,
    gfrd,
    gfre,
    lfre,
    pointwise_gfrd,
    pointwise_gfre,
    pointwise_lfre,
    rms,
)
from mlipspace.metrics.similarity import (
    SIMILARITY_MEASURES,
    TWO_SAMPLE_MEASURES,
    cknna,
    linear_cka,
    mmd,
    mmd_permutation_test,
    mutual_knn,
    pointwise_mutual_knn,
    procrustes_distance,
    rank_agreement,
    rbf_cka,
    similarity_with_uncertainty,
)

#: Every measure by name (reconstruction errors and similarity measures), see :class:`Measure`.
MEASURES: dict[str, Measure] = {**RECONSTRUCTION_MEASURES, **SIMILARITY_MEASURES, **TWO_SAMPLE_MEASURES}

__all__ = [
    "MEASURES",
    "Measure",
    "TRANSFORMATIONS",
    "check_rows",
    "cknna",
    "config_context",
    "default_k",
    "effective_n_jobs",
    "get_config",
    "gfrd",
    "gfre",
    "lfre",
    "linear_cka",
    "mmd",
    "mmd_permutation_test",
    "mutual_knn",
    "nearest_distance",
    "pairwise",
    "pointwise_gfrd",
    "pointwise_gfre",
    "pointwise_lfre",
    "pointwise_mutual_knn",
    "procrustes_distance",
    "rank_agreement",
    "rbf_cka",
    "resolve_split",
    "rms",
    "set_config",
    "similarity_with_uncertainty",
]
