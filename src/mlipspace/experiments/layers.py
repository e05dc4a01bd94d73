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
from mlipspace.records import fingerprint_id, record


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



def layer_correspondence(
    model_layers_a: Mapping[str, np.ndarray],
    model_layers_b: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    *,
    model_a: str,
    model_b: str,
    seeds: Sequence[int] = (0,),
    n_test: int | None = None,
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
) -> list[dict]:
    """Which layer of ``model_b`` corresponds to each layer of ``model_a`` (and back)?

    ``model_layers_*`` map layer name -> (n_atoms, d) in network order. Returns the layer x layer
    records (``analysis="layer-correspondence"``: GFRE A -> B and B -> A, linear CKA; each with
    ``source_layer``, ``target_layer`` and relative depths) followed by the matches
    (``analysis="layer-match"``, :func:`layer_matches`).
    """
    if model_a == model_b:
        raise InputError(f"layer correspondence needs two different models, got {model_a!r} twice")
    for m, lay in ((model_a, model_layers_a), (model_b, model_layers_b)):
        if len(lay) < 1:
            raise InputError(f"{m}: no layers to compare")
        check_features(lay, rows)
    names = {model_a: list(model_layers_a), model_b: list(model_layers_b)}
    depth = {m: {n: round(i / max(1, len(ns) - 1), 6) for i, n in enumerate(ns)} for m, ns in names.items()}
    feats = {(model_a, n): x for n, x in model_layers_a.items()} | {(model_b, n): x for n, x in model_layers_b.items()}
    key = {k: f"{k[0]}\x00{k[1]}" for k in feats}  # a layer's own name, apart from its model's
    flat = {key[k]: x for k, x in feats.items()}
    back = {v: k for k, v in key.items()}
    ab = [(key[(model_a, a)], key[(model_b, b)]) for a in names[model_a] for b in names[model_b]]
    splits = atom_splits(rows, seeds, n_test)
    common = dict(groups=rows["frame"], analysis="layer-correspondence", dataset=dataset)
    recs = pair_errors(flat, ab + [(t, s) for s, t in ab], splits, metrics=("gfre",), **common)
    recs += pair_errors(flat, ab, splits, metrics=("cka",), **common)
    out = []
    for r in recs:
        (src, sl), (tgt, tl) = back[r["source"]], back[r["target"]]
        fps = fingerprints or {}
        r.update(source=src, target=tgt, layer=sl, source_layer=sl, target_layer=tl,
                 source_depth=depth[src][sl], target_depth=depth[tgt][tl],
                 source_fingerprint=fingerprint_id(fps.get(src)), target_fingerprint=fingerprint_id(fps.get(tgt)))
        out.append(r)
    twins = {model_a: identical_layers(model_layers_a), model_b: identical_layers(model_layers_b)}
    return out + layer_matches(out, model_a=model_a, model_b=model_b, identical=twins)


def identical_layers(layers: Mapping[str, np.ndarray]) -> dict[str, str]:
    """``{layer: earlier layer with exactly the same features}`` (e.g. SevenNet's ``last`` is its
    ``interaction.4``): such twins tie as match candidates without making a match ambiguous."""
    out: dict[str, str] = {}
    names = list(layers)
    for i, n in enumerate(names):
        for m in names[:i]:
            if m not in out and layers[m].shape == layers[n].shape and np.array_equal(layers[m], layers[n]):
                out[n] = m
                break
    return out


def _gfre_both(recs: Sequence[Mapping], x: str, y: str) -> dict:
    """``(layer of x, layer of y) -> (value, low, high)``: mean of GFRE x->y and y->x (interval: mean of
    the bounds, conservative as in :func:`mlipspace.records.mean_interval`); a pair with no number is
    left out."""
    one = {}
    for r in recs:
        if r["metric"] == "gfre" and r.get("value") is not None:
            k = (r["source_layer"], r["target_layer"]) if r["source"] == x else (r["target_layer"], r["source_layer"])
            one.setdefault(k, []).append((r["value"], r["ci_low"], r["ci_high"]))
    return {k: tuple(float(np.mean(c)) for c in zip(*v)) for k, v in one.items() if len(v) == 2}


def layer_matches(records: Sequence[Mapping], *, model_a: str, model_b: str,
                  identical: Mapping[str, Mapping[str, str]] | None = None) -> list[dict]:
    """For each layer of each model, its best-matching layer of the other (``analysis="layer-match"``).

    Two criteria (``metric``): ``"gfre"`` = lowest mean of the GFREs in both directions (one layer
    reconstructs the other *and* back: mutual, so a rich layer does not match every poorer one) and
    ``"cka"`` = highest linear CKA. Each record: ``best_layer``/``best_depth``, ``value`` and interval
    of the criterion at the match, ``second_layer`` and ``ambiguous`` (True when the best and
    second-best intervals overlap: the data do not single out the match). ``identical`` maps a model
    to its layers that are exact copies of an earlier one (:func:`identical_layers`): a copy of the
    best layer is not a rival (it is named in ``same_as``), so it neither becomes the second best
    nor makes the match ambiguous.
    """
    identical = identical or {}
    recs = [r for r in records if r.get("analysis") == "layer-correspondence"]
    depth = {}
    for r in recs:
        depth[(r["source"], r["source_layer"])] = r["source_depth"]
        depth[(r["target"], r["target_layer"])] = r["target_depth"]
    out = []
    for x, y in ((model_a, model_b), (model_b, model_a)):
        crit = {"gfre": (_gfre_both(recs, x, y), False)}
        cka = {}
        for r in recs:
            if r["metric"] == "cka" and r.get("value") is not None:
                mine_first = r["source"] == x
                k = (r["source_layer"], r["target_layer"]) if mine_first else (r["target_layer"], r["source_layer"])
                cka[k] = (r["value"], r["ci_low"], r["ci_high"])
        crit["cka"] = (cka, True)
        mine = list(dict.fromkeys(lay for (m, lay) in depth if m == x))
        for metric, (vals, higher) in crit.items():
            for lay in mine:
                cand = sorted(((v, yl) for (xl, yl), v in vals.items() if xl == lay), key=lambda t: t[0][0],
                              reverse=higher)
                common = dict(layer=lay, source_layer=lay, source_depth=depth[(x, lay)])
                if not cand:
                    out.append(record("layer-match", x, y, metric, [], reason="no layer pair with a number", **common))
                    continue
                (v, lo, hi), best = cand[0]
                twin = identical.get(y, {})
                same = [yl for _, yl in cand[1:] if twin.get(yl, yl) == twin.get(best, best)]
                rivals = [c for c in cand[1:] if c[1] not in same]
                second = rivals[0] if rivals else None
                ambiguous = bool(second is not None and (second[0][1] <= hi if not higher else second[0][2] >= lo))
                out.append(record(
                    "layer-match", x, y, metric, [v], ci=(lo, hi),
                    ci_method="cluster-bootstrap" if higher else "cluster-bootstrap, mean of both directions' bounds",
                    best_layer=best, best_depth=depth[(y, best)], target_layer=best, target_depth=depth[(y, best)],
                    second_layer=None if second is None else second[1],
                    second_value=None if second is None else second[0][0], ambiguous=ambiguous, same_as=same,
                    criterion="mean GFRE of both directions (lowest)" if metric == "gfre" else "linear CKA (highest)",
                    **common))
    return out
