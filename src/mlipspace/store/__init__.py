"""Per-atom features on disk with provenance, and the resumable extraction pipeline that fills them.

Public API::

    open(path)                      # read-only Mapping: "<ds>/<model>/<layer>" -> np.ndarray, ...
    FeatureStore(path, mode="r")    # features(ds, model, layer, lazy=False), rows, frames, models,
                                    # layers, is_complete, put_structure / get_structure, summary
    load_aligned(store, ds, models, layer)   # -> ({model: array}, rows), rows checked identical
    extract_to_store(frames, models, store_path, layers="last", shard_size=None, workers=None,
                     scheduler=None, progress=True, on_unsupported="raise", wait=True)

See ``docs/store.md`` for the layout and the guarantees (atomic shards, resumable, bit-identical,
one writer per dataset × model).
"""

from mlipspace.store.core import (
    KEY_LENGTH,
    FeatureStore,
    StoreMapping,
    dataset_fingerprint,
    load_aligned,
    model_fingerprint_sha,
    open_store,
)
from mlipspace.store.pipeline import DEFAULT_SHARD_SIZE, extract_to_store

open = open_store  # noqa: A001  (mlipspace.store.open(path), like zarr.open)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FeatureStore",
    "KEY_LENGTH",
    "StoreMapping",
    "dataset_fingerprint",
    "extract_to_store",
    "load_aligned",
    "model_fingerprint_sha",
    "open",
    "open_store",
]
