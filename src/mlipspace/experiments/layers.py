"""Layer analyses: how the features change through one model, and across models per layer.

* :func:`layer_pairs` — FRE between every ordered pair of layers of one model (backbone layers and
  the last layer): how much of a later layer can be read from an earlier one and back.
* :func:`cross_model_layers` — for each source model and each of its layers, the FRE of
  reconstructing every other model's last-layer features: where in the source network the
  information the target ends up with becomes available (plotted against relative depth).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.errors import InputError
from mlipspace.experiments._common import atom_splits
from mlipspace.experiments.cross_model import check_features, pair_errors
from mlipspace.records import fingerprint_id


def layer_pairs(
    layers: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    *,
    model: str,
    metrics: Sequence[str] = ("gfre",),
    seeds: Sequence[int] = (0,),
    n_test: int | None = None,
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    lfre_max_test: int | None = 500,
) -> list[dict]:
    """Records (``analysis="layers"``) of every ordered pair of ``layers`` of ``model``.

    ``layers`` maps layer name -> (n_atoms, d) in network order (last layer at the end). Each record
    has ``source = target = model``, ``source_layer``, ``target_layer``, ``layer = source_layer`` and
    the relative depths ``source_depth``/``target_depth`` in [0, 1].
    """
    names = list(layers)
    if len(names) < 2:
        raise InputError(f"{model}: layer comparison needs at least 2 layers, got {names}")
    check_features(layers, rows)
    splits = atom_splits(rows, seeds, n_test)
    depth = {n: (i / (len(names) - 1)) for i, n in enumerate(names)}
    pairs = [(a, b) for a in names for b in names if a != b]
    recs = pair_errors(layers, pairs, splits, groups=rows["frame"], metrics=metrics, analysis="layers",
                       dataset=dataset, lfre_max_test=lfre_max_test)
    fid = fingerprint_id((fingerprints or {}).get(model))
    out = []
    for r in recs:
        a, b = r["source"], r["target"]
        r.update(source=model, target=model, layer=a, source_fingerprint=fid, target_fingerprint=fid,
                 source_layer=a, target_layer=b, source_depth=round(depth[a], 6), target_depth=round(depth[b], 6))
        out.append(r)
    return out


def cross_model_layers(
    model_layers: Mapping[str, Mapping[str, np.ndarray]],
    rows: Mapping[str, np.ndarray],
    *,
    last: str = "last",
    metrics: Sequence[str] = ("gfre",),
    seeds: Sequence[int] = (0,),
    n_test: int | None = None,
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    lfre_max_test: int | None = 500,
    targets: Sequence[str] | None = None,
    progress=None,
) -> list[dict]:
    """Records (``analysis="layers-cross"``): each layer of each source -> other models' last layer.

    ``model_layers`` maps model -> {layer -> (n_atoms, d)} in network order; every model must have
    the ``last`` layer. ``targets`` restricts the target models (default: all). Records carry
    ``layer`` (the source layer) and ``source_depth`` in [0, 1].
    """
    models = list(model_layers)
    if len(models) < 2:
        raise InputError(f"cross-model layer comparison needs at least 2 models, got {models}")
    for m, lay in model_layers.items():
        if last not in lay:
            raise InputError(f"model {m!r} has no {last!r} layer (has {', '.join(lay)})")
        check_features(lay, rows)
    splits = atom_splits(rows, seeds, n_test)
    out = []
    for src in models:
        names = list(model_layers[src])
        tgts = [t for t in (models if targets is None else targets) if t in model_layers and t != src]
        keys = {f"{src}\x00{lay}": (i, lay) for i, lay in enumerate(names)}  # apart from any model name
        feats = {key: model_layers[src][lay] for key, (_, lay) in keys.items()}
        feats.update({t: model_layers[t][last] for t in tgts})
        recs = pair_errors(feats, [(key, t) for key in keys for t in tgts], splits, groups=rows["frame"],
                           metrics=metrics, analysis="layers-cross", dataset=dataset, fingerprints=fingerprints,
                           lfre_max_test=lfre_max_test)
        for r in recs:
            i, lay = keys[r["source"]]
            r.update(source=src, layer=lay, source_fingerprint=fingerprint_id((fingerprints or {}).get(src)),
                     source_layer=lay, target_layer=last, source_depth=round(i / max(1, len(names) - 1), 6))
            out.append(r)
        for _ in names:
            if progress is not None:
                progress()
    return out

