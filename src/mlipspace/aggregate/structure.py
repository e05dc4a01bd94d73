"""Structure-level feature matrices of stored or freshly extracted atom features, ready to compare.

``structure_features(source, model, order)`` accepts a :class:`~mlipspace.store.FeatureStore` (or its
path), a :class:`~mlipspace.models.FeatureSet` or an ``(X, rows)`` pair; ``structure_matrices`` does
it for several models and keeps only the frames all of them have, so that row ``i`` of every matrix
describes the same structure (cross-model comparison at structure level).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.aggregate.cumulants import AggregateInfo, cumulants
from mlipspace.errors import InputError, StoreError


def stored_name(layer: str = "last", per_species: bool = False) -> str:
    """Name of the structure array ``mlipspace cumulants`` writes into the store for ``layer``."""
    return f"cumulants-{layer}" + ("-species" if per_species else "")


def _open_store(source):
    from mlipspace.store import FeatureStore

    if isinstance(source, FeatureStore):
        return source
    if isinstance(source, (str, os.PathLike)):
        return FeatureStore(source)
    return None


def resolve_dataset(store, dataset=None) -> str:
    """The dataset key of ``store``: ``dataset`` resolved, or the only dataset stored."""
    if dataset is not None:
        return store.resolve(dataset)
    keys = store.datasets()
    if len(keys) != 1:
        raise StoreError(
            f"{store.path}: {len(keys)} datasets stored ({', '.join(keys) or 'none'}); name one with dataset=/--dataset"
        )
    return keys[0]


def _stored(store, key, model, layer, order, root, per_species, elements):
    """Cached cumulants from the store if they cover ``order`` with the same options, else None."""
    name = stored_name(layer, per_species)
    if name not in store.structures(key, model):
        return None
    attrs = store.structure_attrs(key, model, name)
    if int(attrs.get("order", 0)) < order or bool(attrs.get("root")) != bool(root):
        return None
    if per_species and elements is not None and list(attrs.get("elements", [])) != [int(z) for z in elements]:
        return None
    arr = np.asarray(store.get_structure(key, model, name), dtype=np.float64)
    d = int(attrs["n_features"])
    el = tuple(int(z) for z in attrs["elements"]) if per_species else None
    width = d * (len(el) if el else 1)
    frames = np.asarray(attrs["frames"], dtype=np.int64)
    columns = (
        tuple((k, z, c) for k in range(1, order + 1) for z in el for c in range(d))
        if per_species
        else tuple((k, c) for k in range(1, order + 1) for c in range(d))
    )
    rows = store.rows(key, model)
    fr, rank, n_atoms = np.unique(np.asarray(rows["frame"]), return_inverse=True, return_counts=True)
    if not np.array_equal(fr, frames):
        return None  # features were re-extracted since: recompute
    species_counts = None
    if per_species:
        pos = np.searchsorted(np.asarray(el), np.asarray(rows["Z"]))
        species_counts = np.bincount(rank * len(el) + pos, minlength=len(fr) * len(el)).reshape(len(fr), len(el))
    info = AggregateInfo(
        method="cumulants",
        frames=frames,
        n_atoms=n_atoms,
        single_atom_frames=frames[n_atoms == 1],
        n_features=d,
        columns=columns,
        column_names=("order", "element", "column") if per_species else ("order", "column"),
        order=order,
        root=bool(root),
        elements=el,
        species_counts=species_counts,
    )
    return arr[:, : order * width], info


def structure_features(
    source,
    model: str | None = None,
    order: int = 8,
    *,
    layer: str = "last",
    dataset=None,
    root: bool = True,
    per_species: bool = False,
    elements: Sequence[int] | None = None,
    use_stored: bool = True,
    return_info: bool = False,
):
    """Progressive cumulants (orders 1..``order``) of one model's atom features, one row per frame.

    ``source``: a feature store (object or path; ``dataset`` names the dataset when several are
    stored, ``use_stored`` reuses cumulants written by ``mlipspace cumulants`` when they cover
    ``order``), a ``FeatureSet`` (``model`` ignored) or an ``(X, rows)`` pair. Rows are the sorted
    frame ids of the model's row table (``info.frames``); frames the model skipped are absent.
    Per species, the element list defaults to the dataset's elements (store) so that all models
    share it.
    """
    store = _open_store(source)
    if store is not None:
        if model is None:
            raise InputError("structure_features from a store needs the model name")
        key = resolve_dataset(store, dataset)
        if per_species and elements is None:
            elements = store.dataset_info(key)["elements"]
        if use_stored:
            hit = _stored(store, key, model, layer, int(order), root, per_species, elements)
            if hit is not None:
                return hit if return_info else hit[0]
        X = store.features(key, model, layer)
        rows = store.rows(key, model)
    elif hasattr(source, "layers") and hasattr(source, "rows"):
        if layer not in source.layers:
            raise InputError(f"feature set of {source.model!r} has no layer {layer!r} (has {', '.join(source.layers)})")
        X, rows = source.layers[layer], source.rows
    elif isinstance(source, tuple) and len(source) == 2:
        X, rows = source
    else:
        raise InputError(
            f"structure_features needs a FeatureStore, a store path, a FeatureSet or (X, rows), not {type(source).__name__}"
        )
    if not isinstance(rows, Mapping) or "frame" not in rows:
        raise InputError("rows must be a row table with a 'frame' column (see mlipspace.data.row_table)")
    return cumulants(
        X,
        rows["frame"],
        order=order,
        root=root,
        per_species=per_species,
        species=rows.get("Z") if per_species else None,
        elements=elements,
        return_info=return_info,
    )


def structure_matrices(
    source,
    models: Sequence[str] | None = None,
    order: int = 8,
    *,
    layer: str = "last",
    dataset=None,
    root: bool = True,
    per_species: bool = False,
    elements: Sequence[int] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Cumulant matrices of several models on the frames they all have: ``({model: X}, frames)``.

    ``source``: a feature store (object or path), or a mapping ``{model: FeatureSet or (X, rows)}``
    (then ``models`` may be ``None``: all of them). Models that skipped different frames are
    intersected (row ``i`` of every matrix is frame ``frames[i]``); raises if fewer than 2 common
    frames remain. With ``per_species`` and no ``elements``, the union of all models' elements is
    used so that every matrix has the same columns.
    """
    if isinstance(source, Mapping):
        models = list(source) if models is None else list(models)
        missing = [m for m in models if m not in source]
        if missing:
            raise InputError(f"no features given for model(s) {', '.join(missing)}")
        if per_species and elements is None:
            zs = set()
            for m in models:
                src = source[m]
                rows = src.rows if hasattr(src, "rows") else src[1]
                zs |= {int(z) for z in np.unique(np.asarray(rows["Z"]))}
            elements = sorted(zs)
        sources = {m: source[m] for m in models}
    else:
        if models is None:
            raise InputError("name the models to read from the store")
        sources = {m: source for m in models}
    if len(models) == 0:
        raise InputError("no models given")
    models = list(models)
    out = {}
    for m in models:
        out[m] = structure_features(
            sources[m], m, order, layer=layer, dataset=dataset, root=root, per_species=per_species,
            elements=elements, return_info=True,
        )
    common = out[models[0]][1].frames
    for m in models[1:]:
        common = np.intersect1d(common, out[m][1].frames)
    if len(common) < 2:
        raise InputError(f"models {', '.join(models)} share only {len(common)} frame(s)")
    mats = {}
    for m, (X, info) in out.items():
        pos = np.searchsorted(info.frames, common)
        mats[m] = X[pos]
    return mats, common
