"""Structure-level features from per-atom features: progressive cumulants and plain pooling.

``cumulants(features, frame_index, order=8)`` -> (n_frames, order * d), rows = sorted unique frame
ids; ``pool(features, frame_index, how="mean")`` for the baselines. See ``docs/cumulants.md``.
"""

from mlipspace.aggregate.cumulants import (
    AggregateInfo,
    cumulants,
    frame_values,
    moments_to_cumulants,
    population_to_kstat,
    root_cumulants,
)
from mlipspace.aggregate.pooling import POOLINGS, pool
from mlipspace.aggregate.structure import stored_name, structure_features, structure_matrices

__all__ = [
    "POOLINGS",
    "AggregateInfo",
    "cumulants",
    "frame_values",
    "moments_to_cumulants",
    "pool",
    "population_to_kstat",
    "root_cumulants",
    "stored_name",
    "structure_features",
    "structure_matrices",
]
