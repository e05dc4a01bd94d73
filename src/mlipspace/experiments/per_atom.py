"""Where do models differ? The pointwise GFRE of every test atom, grouped by element, subset, coordination.

One :func:`mlipspace.metrics.pairwise` call (all ordered pairs, ``pointwise=True``) per grouped split
gives each test atom's reconstruction error for every pair. :func:`per_atom` turns them into records
(``analysis="per-atom"``, one field of ``element`` / ``subset`` / ``coordination``): the RMS error of
the test atoms of that group, with a cluster-bootstrap interval over the test structures that
contain it (:mod:`mlipspace.intervals`); a group in fewer than ``MIN_TEST_GROUPS`` test structures
gets ``value: None`` and the reason. The raw errors of the first split go to ``per_atom.npz``
(:func:`write_per_atom`) for the report's heatmaps, hardest environments and chemiscope view.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlipspace.errors import InputError
from mlipspace.intervals import MIN_TEST_GROUPS

#: Analysis name of the records.
ANALYSIS = "per-atom"
#: Record fields the errors are grouped by.
FIELDS = ("element", "subset", "coordination")
#: Bond criterion of the coordination number: neighbours closer than this factor times the sum of
#: the two covalent radii (ase.data.covalent_radii).
BOND_FACTOR = 1.2
#: File name of the raw per-atom errors, next to results.json.
NPZ_NAME = "per_atom.npz"


def coordination_numbers(atoms, *, factor: float = BOND_FACTOR) -> np.ndarray:
    """Neighbours of each atom within ``factor`` x (sum of covalent radii), periodic images included."""
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    if len(atoms) == 0:
        return np.zeros(0, dtype=np.int64)
    radii = factor * covalent_radii[np.asarray(atoms.numbers)]
    i = neighbor_list("i", atoms, radii, self_interaction=False)  # pairs closer than r_i + r_j
    return np.bincount(i, minlength=len(atoms)).astype(np.int64)


def row_coordination(rows: Mapping[str, np.ndarray], frames, idx: np.ndarray) -> np.ndarray:
    """Coordination numbers of the rows ``idx``; ``frames[f]`` is the structure of frame id ``f``."""
    frame = np.asarray(rows["frame"])[idx]
    atom = np.asarray(rows["atom"])[idx]
    out = np.empty(len(idx), dtype=np.int64)
    for f in np.unique(frame):
        sel = frame == f
        try:
            atoms = frames[int(f)]
        except (IndexError, KeyError) as exc:
            raise InputError(f"per-atom: no structure for frame {int(f)} (frames has {len(frames)})") from exc
        if np.any(atom[sel] >= len(atoms)):
            raise InputError(f"per-atom: frame {int(f)} has {len(atoms)} atoms but the rows name atom "
                             f"{int(atom[sel].max())}; the structures do not match the row table")
        out[sel] = coordination_numbers(atoms)[atom[sel]]
    return out


def _labels(rows: Mapping[str, np.ndarray], test: np.ndarray, coord: np.ndarray) -> dict[str, np.ndarray]:
    """Per test atom, its label of each field (element symbol, subset tag, coordination number)."""
    from ase.data import chemical_symbols

    out = {"element": np.asarray(chemical_symbols, dtype=object)[np.asarray(rows["Z"])[test]]}
    subset = np.asarray(rows.get("subset", np.full(len(rows["frame"]), "")))[test].astype(str)
    if np.any(subset != ""):
        out["subset"] = subset
    out["coordination"] = coord
    return out


def group_replicates(errors: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """RMS of each row of ``errors`` (pairs x atoms) and its cluster-bootstrap replicates (pairs x boot).

    The same resampled structures (:func:`mlipspace.intervals.boot_weights`) serve every pair, as
    :func:`mlipspace.intervals.replicates` draws them for one pair.
    """
    from mlipspace.intervals import boot_weights, group_index

    inv, n_groups = group_index(groups)
    onehot = np.zeros((len(inv), n_groups))
    onehot[np.arange(len(inv)), inv] = 1.0
    sums = (np.asarray(errors, dtype=np.float64) ** 2) @ onehot            # (P, C)
    counts = onehot.sum(axis=0)                                             # (C,)
    W = boot_weights(n_groups, seed)                                        # (B, C)
    value = np.sqrt(sums.sum(axis=1) / counts.sum())
    return value, np.sqrt((sums @ W.T) / (W @ counts)[None, :])


class GroupErrors:
    """Per-group RMS of pointwise errors, accumulated over splits, as records with intervals.

    :meth:`add` takes one split's errors (pairs x test atoms, a NaN row = a pair outside its valid
    regime, with ``pair_reasons``), the label of each test atom per field and its structure;
    :meth:`records` gives one record per pair and (field, label).
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], metric: str = "gfre"):
        self.pairs = [tuple(p) for p in pairs]
        self.metric = metric
        self.est: dict[tuple, object] = {}
        self.reasons: dict[tuple, str] = {}
        self.sizes: dict[tuple, tuple[int, int]] = {}
        self.structures: dict[tuple, set] = {}  # test structures holding each group, over all splits

    def add(self, errors: np.ndarray, labels: Mapping[str, np.ndarray], groups: np.ndarray, seed: int, *,
            n_train: int = 0, pair_reasons: Mapping[tuple, str | None] | None = None) -> None:
        from mlipspace.intervals import Estimate

        E = np.asarray(errors, dtype=np.float64)
        groups = np.asarray(groups)
        bad = {p: (pair_reasons or {}).get(p) for p in self.pairs}
        ok = [i for i, p in enumerate(self.pairs) if not bad[p]]
        for field, lab in labels.items():
            lab = np.asarray(lab)
            for value in np.unique(lab):
                mask = lab == value
                key = (field, value.item() if hasattr(value, "item") else value)
                n_train0, n_bin = self.sizes.get(key, (int(n_train), 0))
                self.sizes[key] = (n_train0, n_bin + int(mask.sum()))
                self.structures.setdefault(key, set()).update(groups[mask].tolist())
                for p in self.pairs:
                    if bad[p]:
                        self.reasons.setdefault(p + key, bad[p])
                if not ok:
                    continue
                vals, reps = group_replicates(E[ok][:, mask], groups[mask], seed)
                for j, i in enumerate(ok):
                    self.est.setdefault(self.pairs[i] + key, Estimate("rms")).add_replicates(vals[j], reps[j])

    def records(self, **common) -> list[dict]:
        """One record per pair and group (``value: None`` with the reason outside the valid regime)."""
        from mlipspace.records import record

        from mlipspace.intervals import not_enough

        out = []
        for p in self.pairs:
            for key, (n_train, n_bin) in self.sizes.items():
                fields = {key[0]: key[1], "n_train": n_train, "n_test": n_bin, **common}
                n_struct = len(self.structures[key])
                why = self.reasons.get(p + key) or (not_enough("test structures holding this group, over all splits",
                                                                MIN_TEST_GROUPS, n_struct)
                                                     if n_struct < MIN_TEST_GROUPS else None)
                if why:
                    out.append(record(ANALYSIS, p[0], p[1], self.metric, [], reason=why, **fields))
                else:
                    f = self.est[p + key].fields()
                    out.append(record(ANALYSIS, p[0], p[1], self.metric, f.pop("values"), **f, **fields))
        return out


def per_atom(
    features: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    frames,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    seeds: Sequence[int] = (0,),
    metric: str = "gfre",
    n_test: int | None = None,
    layer: str = "last",
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    errors: Mapping[tuple[str, int], tuple] | None = None,
) -> dict:
    """Pointwise ``metric`` of every test atom for each ordered pair, grouped by element/subset/coordination.

    ``features``: model -> (n_atoms, d), rows described by ``rows``; ``frames[f]``: the structure of
    frame id ``f`` (for coordination numbers). Splits: :func:`~mlipspace.experiments._common.atom_splits`
    (grouped by structure), one per seed; one :func:`mlipspace.metrics.pairwise` call per split, unless
    ``errors`` already holds that split's errors: ``{(metric, split index): (train, test, {pair: errors})}``
    as :func:`mlipspace.experiments.cross_model.cross_model` keeps them (used when its split and pairs match).
    Returns ``{"records": [...], **arrays}`` with the raw arrays of the first split (see
    :data:`NPZ_KEYS`, :func:`write_per_atom`).
    """
    from mlipspace.experiments._common import atom_splits
    from mlipspace.experiments.cross_model import check_features
    from mlipspace.intervals import ridge_regime
    from mlipspace.metrics import pairwise

    if metric not in ("gfre", "gfrd"):
        raise InputError(f"per-atom errors need a global metric (gfre or gfrd), got {metric!r}")
    check_features(features, rows)
    names = list(features)
    pairs = [tuple(p) for p in (pairs or [(a, b) for a in names for b in names if a != b])]
    use = list(dict.fromkeys(n for p in pairs for n in p))
    if len(use) < 2 or any(n not in features for n in use):
        raise InputError(f"per-atom errors need pairs of the given models ({', '.join(names)}), got {pairs}")
    acc = GroupErrors(pairs, metric)
    raw: dict = {}
    for i, (seed, (train, test)) in enumerate(zip(seeds, atom_splits(rows, seeds, n_test))):
        bad = {p: ridge_regime(len(train), np.shape(features[p[0]])[1]) for p in pairs}
        by = _known_errors((errors or {}).get((metric, i)), train, test, [p for p in pairs if not bad[p]])
        if by is None:
            recs = pairwise({m: features[m] for m in use}, metric, train_idx=train, test_idx=test, diagonal=False,
                            pointwise=True)
            by = {(r["source"], r["target"]): r["pointwise"] for r in recs}
        E = np.stack([np.full(len(test), np.nan) if bad[p] else by[p] for p in pairs])
        labels = _labels(rows, test, row_coordination(rows, frames, test))
        if not raw:
            raw = _raw(rows, test, labels["coordination"], E, pairs, use, seed, metric)
        acc.add(E, labels, np.asarray(rows["frame"])[test], seed, n_train=len(train), pair_reasons=bad)
    records = acc.records(layer=layer, dataset=dataset, fingerprints=fingerprints, level="atom")
    return {"records": records, **raw}


def _known_errors(known, train, test, pairs) -> dict | None:
    """The errors of ``pairs`` from ``known`` = ``(train, test, {pair: errors})`` if it is this split
    and holds every pair, else None."""
    if known is None:
        return None
    k_train, k_test, by = known
    same = np.array_equal(k_train, train) and np.array_equal(k_test, test)
    return by if same and all(p in by for p in pairs) else None


def _raw(rows, test, coord, E, pairs, models, seed, metric) -> dict:
    """The arrays of :func:`write_per_atom` for one split's test atoms."""
    model_error = np.full((len(models), len(test)), np.nan, dtype=np.float32)
    for m_i, m in enumerate(models):
        into = [i for i, p in enumerate(pairs) if p[1] == m and np.isfinite(E[i]).all()]
        if into:
            model_error[m_i] = E[into].mean(axis=0)
    subset = np.asarray(rows.get("subset", np.full(len(rows["frame"]), "")))
    return {
        "frame": np.asarray(rows["frame"])[test].astype(np.int64),
        "atom": np.asarray(rows["atom"])[test].astype(np.int64),
        "Z": np.asarray(rows["Z"])[test].astype(np.int64),
        "subset": subset[test].astype(str),
        "coordination": np.asarray(coord, dtype=np.int64),
        "pairs": np.asarray(pairs, dtype=str).reshape(len(pairs), 2),
        "errors": E.astype(np.float32),
        "models": np.asarray(models, dtype=str),
        "model_error": model_error,
        "all_frames": np.unique(np.asarray(rows["frame"])).astype(np.int64),
        "seed": np.int64(seed),
        "metric": np.asarray(metric),
    }


#: Arrays of ``per_atom.npz`` (test atoms of the first split): per atom ``frame`` (id), ``atom`` (index
#: in its structure), ``Z``, ``subset``, ``coordination``; ``pairs`` (P, 2) source/target names,
#: ``errors`` (P, n_atoms) float32 pointwise errors; ``models``, ``model_error`` (M, n_atoms) mean
#: over sources of the error into each model; ``all_frames``: the analysed frame ids (sorted);
#: ``seed`` and ``metric``.
NPZ_KEYS = ("frame", "atom", "Z", "subset", "coordination", "pairs", "errors", "models", "model_error",
            "all_frames", "seed", "metric")


def write_per_atom(path: str | os.PathLike, result: Mapping) -> Path:
    """Write the raw arrays of a :func:`per_atom` result (or its JSON copy) to ``path`` (``.npz``)."""
    path = Path(path)
    missing = [k for k in NPZ_KEYS if k not in result]
    if missing:
        raise InputError(f"{path}: per-atom result lacks {', '.join(missing)}")
    arrays = {k: np.asarray(result[k]) for k in NPZ_KEYS}
    arrays["errors"] = arrays["errors"].astype(np.float32).reshape(len(arrays["pairs"]), -1)
    arrays["model_error"] = arrays["model_error"].astype(np.float32).reshape(len(arrays["models"]), -1)
    arrays["pairs"] = arrays["pairs"].astype(str).reshape(-1, 2)
    for k in ("subset", "models", "metric"):
        arrays[k] = arrays[k].astype(str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def as_json(result: Mapping) -> dict:
    """A plain-JSON copy of a :func:`per_atom` result (for the study's cache); NaN errors stay NaN."""
    from mlipspace.records import jsonable

    return {k: jsonable(v) for k, v in result.items()}
