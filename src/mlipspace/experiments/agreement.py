"""Does feature similarity predict behaviour? Energy disagreement between models vs feature distance.

Models whose adapter exposes ``readout(last, numbers)`` turn their stored ``last`` features into
per-atom energies (the model's own readout: no rerun of the network). Per structure this gives
each model's energy per atom. Models are trained against different references (PBE, r2SCAN,
different atomic energies), so the composition offset is removed first (the difference of two
models' energies per atom fitted on the element fractions,
:func:`mlipspace.experiments.probe.composition_fit`); the disagreement of a pair is the RMS over
structures of what remains (meV/atom),
with a cluster-bootstrap interval over structures (:class:`mlipspace.intervals.Estimate`).

Across model pairs, the Spearman rank correlation between that disagreement and the feature
distance (GFRE, mean of both directions; or linear CKA) says whether models with closer features
also predict closer energies. Its p-value comes from permuting the model labels of the disagreement
matrix (a Mantel test: pairs sharing a model are not independent, so permuting pair values
would overstate the evidence); its interval from bootstrap replicates that resample the structures
(disagreement) and draw each feature distance from its own interval (normal approximation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.errors import InputError, MlipspaceError
from mlipspace.intervals import LEVEL, N_BOOT, Estimate, boot_weights, not_enough
from mlipspace.records import record

#: Fewest models with a readout for a correlation across their pairs (4 models: 6 pairs, 24 label
#: permutations; fewer cannot give a p-value below 1/6).
MIN_MODELS = 4
#: Label permutations of the Mantel test (all of them when there are fewer: an exact test).
N_PERMUTATIONS = 1000


def structure_energies(extractor, last: np.ndarray, rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """Total energy (eV) of each structure (sorted frame ids) from ``last`` through ``extractor.readout``."""
    frames, inv = np.unique(np.asarray(rows["frame"]), return_inverse=True)
    per_atom = np.asarray(extractor.readout(np.asarray(last), np.asarray(rows["Z"])), dtype=np.float64)
    return np.bincount(inv, weights=per_atom, minlength=len(frames)) + float(getattr(extractor, "energy_offset", 0.0))


def readout_energies(last: Mapping[str, np.ndarray], rows: Mapping[str, np.ndarray], *, device: str = "cpu",
                     notes: list[str] | None = None, verbose: bool = False) -> dict[str, np.ndarray]:
    """``{model: total energies (eV) per structure}`` of the models of ``last`` that can run a readout here.

    Each model is loaded (:func:`mlipspace.store.pipeline.get_model`: cached per process); a model that
    cannot be loaded here or has no ``readout`` is left out with a line in ``notes``. The packages'
    warnings are shown only with ``verbose``.
    """
    from mlipspace.models.pkgwarnings import capture_warnings
    from mlipspace.store.pipeline import get_model

    out = {}
    for name, X in last.items():
        try:
            with capture_warnings(verbose=verbose):  # the packages' load and neighbour-list chatter
                ext = get_model(name, device)
                if callable(getattr(ext, "readout", None)):
                    out[name] = structure_energies(ext, X, rows)
                elif notes is not None:
                    notes.append(f"Energy agreement: {name} left out (its adapter has no readout).")
        except Exception as exc:  # noqa: BLE001 - an optional analysis: the model is left out, and said so
            if notes is not None:
                why = str(exc) if isinstance(exc, MlipspaceError) else f"{type(exc).__name__}: {exc}"
                notes.append(f"Energy agreement: {name} left out (its readout cannot run here: {why}).")
    return out


def residual_differences(energies: Mapping[str, np.ndarray], rows: Mapping[str, np.ndarray]
                         ) -> dict[tuple[str, str], np.ndarray]:
    """Per unordered pair ``(a, b)``, the energy per atom (meV/atom) of each structure of ``a`` minus
    ``b``, after removing the composition offset of that difference (``probe.composition_fit`` on all
    structures). Fitting the difference, not each model apart, matters with a ridge fit: models with
    very different references (r2SCAN heads: tens of eV/atom from PBE ones) are otherwise left with
    shrinkage residuals of hundreds of meV/atom (measured: 519 vs 130 meV/atom for SevenNet-0 vs
    SevenNet-MF-0 r2SCAN on 100 mad-mini structures); for a plain least-squares fit both are the same."""
    from mlipspace.experiments.probe import composition, composition_fit

    counts, _ = composition(rows)
    n_atoms = counts.sum(axis=1)
    for m, E in energies.items():
        E = np.asarray(E, dtype=np.float64)
        if E.shape != (len(n_atoms),):
            raise InputError(f"energy agreement: {m} has {E.size} energies for {len(n_atoms)} structures")
        if not np.all(np.isfinite(E)):
            raise InputError(f"energy agreement: energies of {m} contain NaN or infinite values")
    out = {}
    for a, b in itertools.combinations(list(energies), 2):
        D = np.asarray(energies[a], dtype=np.float64) - np.asarray(energies[b], dtype=np.float64)
        out[(a, b)] = 1000.0 * (D - composition_fit(counts, D, np.arange(len(D)))) / n_atoms
    return out


def energy_disagreement(differences: Mapping[tuple[str, str], np.ndarray], *, seed: int = 0, dataset: str = "",
                        fingerprints: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Records (``analysis="agreement"``, ``metric="energy_rms_mev_per_atom"``), one per pair of
    :func:`residual_differences`: RMS over structures, cluster-bootstrap interval (structures resampled);
    ``median_abs`` = the median absolute difference (the RMS is dominated by a few far-from-equilibrium
    structures on mad-mini)."""
    out = []
    for (a, b), d in differences.items():
        est = Estimate("rms")
        est.add(d, np.arange(len(d)), seed)
        f = est.fields()
        out.append(record("agreement", a, b, "energy_rms_mev_per_atom", f.pop("values"), **f, level="structure",
                          n_test=len(d), dataset=dataset, fingerprints=fingerprints,
                          median_abs=round(float(np.median(np.abs(d))), 6)))
    return out


def feature_distances(records: Sequence[Mapping], models: Sequence[str], metric: str
                      ) -> dict[tuple[str, str], tuple[float, float]]:
    """``{(a, b): (value, standard error)}`` per unordered pair of ``models`` from cross-model records
    of ``metric`` (atom level): GFRE/LFRE averaged over both directions, similarity measures as they are.
    The standard error is the 95 % half-width / 1.96 (pairs lacking a number are left out)."""
    by: dict[frozenset, list] = {}
    for r in records:
        if (r.get("analysis") == "cross-model" and r.get("level") == "atom" and r.get("metric") == metric
                and r["source"] in models and r["target"] in models and r["source"] != r["target"]
                and r.get("value") is not None):
            half = (r["ci_high"] - r["ci_low"]) / 2 if r.get("ci_low") is not None else 0.0
            by.setdefault(frozenset((r["source"], r["target"])), []).append((r["value"], half / 1.96))
    out = {}
    for a, b in itertools.combinations(list(models), 2):
        v = by.get(frozenset((a, b)))
        if v:
            out[(a, b)] = (float(np.mean([x for x, _ in v])), float(np.mean([s for _, s in v])))
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Spearman rho of ``x`` and ``y`` (average ranks for ties) along the last axis; row-wise for 2-D
    inputs (one rho per permutation or bootstrap replicate: vectorised). NaN where one is constant."""
    from scipy.stats import rankdata

    rx = rankdata(np.atleast_2d(x), axis=-1)
    ry = rankdata(np.atleast_2d(y), axis=-1)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (rx * ry).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)
    return float(rho[0]) if np.ndim(x) == 1 and np.ndim(y) == 1 else rho


def mantel_spearman(D: np.ndarray, F: np.ndarray, *, n_perm: int = N_PERMUTATIONS, seed: int = 0
                    ) -> tuple[float, float, int]:
    """``(rho, p, permutations)``: Spearman rho between the upper triangles of two symmetric model x
    model matrices, two-sided p-value from permuting the models of ``D`` (all permutations when there
    are at most ``n_perm``: exact; otherwise ``n_perm`` seeded ones and p = (1 + hits) / (1 + n_perm))."""
    n = D.shape[0]
    iu = np.triu_indices(n, 1)
    rho = _spearman(D[iu], F[iu])
    if not np.isfinite(rho):
        return rho, float("nan"), 0
    if math.factorial(n) <= n_perm:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng([0x3A7E1, int(seed)])
        perms = np.array([rng.permutation(n) for _ in range(n_perm)])
    permuted = np.stack([D[p][:, p][iu] for p in perms])
    hits = int(np.sum(np.abs(_spearman(permuted, F[iu][None, :])) >= abs(rho) - 1e-12))
    if math.factorial(n) <= n_perm:
        return rho, hits / len(perms), len(perms)
    return rho, (1 + hits) / (1 + n_perm), n_perm


def agreement_correlation(
    differences: Mapping[tuple[str, str], np.ndarray],
    feature_records: Sequence[Mapping],
    *,
    metrics: Sequence[str] = ("gfre", "cka"),
    n_perm: int = N_PERMUTATIONS,
    n_boot: int = N_BOOT,
    seed: int = 0,
    dataset: str = "",
) -> list[dict]:
    """Records (``analysis="agreement-correlation"``, ``metric="spearman"``), one per feature metric:
    Spearman rho across model pairs between energy disagreement and feature distance, with
    ``p_value`` (:func:`mantel_spearman`), a bootstrap interval (see the module docstring) and
    ``points`` = ``[[a, b, feature value, disagreement], ...]`` for the figure."""
    from mlipspace.intervals import pooled_interval

    models = list(dict.fromkeys(m for p in differences for m in p))
    pairs = list(itertools.combinations(models, 2))
    n_struct = len(next(iter(differences.values()))) if differences else 0
    out = []
    for metric in metrics:
        common = dict(level="structure", n_test=n_struct, dataset=dataset, feature_metric=metric,
                      models=models, n_models=len(models), n_pairs=len(pairs))
        src, tgt = metric, "energy_rms_mev_per_atom"
        dist = feature_distances(feature_records, models, metric)
        missing = [f"{a}/{b}" for a, b in pairs if (a, b) not in dist]
        if len(models) < MIN_MODELS or missing:
            why = (not_enough("models with a readout", MIN_MODELS, len(models)) if len(models) < MIN_MODELS
                   else f"no {metric} record for the pair(s) {', '.join(missing)}")
            out.append(record("agreement-correlation", src, tgt, "spearman", [], reason=why, **common))
            continue
        idx = {m: i for i, m in enumerate(models)}
        sq = {p: np.asarray(differences[p] if p in differences else differences[p[::-1]]) ** 2 for p in pairs}
        D = np.zeros((len(models), len(models)))
        F = np.zeros_like(D)
        for a, b in pairs:
            D[idx[a], idx[b]] = D[idx[b], idx[a]] = math.sqrt(float(np.mean(sq[(a, b)])))
            F[idx[a], idx[b]] = F[idx[b], idx[a]] = dist[(a, b)][0]
        rho, p, k = mantel_spearman(D, F, n_perm=n_perm, seed=seed)
        if not np.isfinite(rho):
            out.append(record("agreement-correlation", src, tgt, "spearman", [], reason="a constant variable: no rank "
                              "correlation", **common))
            continue
        W = boot_weights(n_struct, seed, n_boot)
        dis = np.stack([np.sqrt(W @ sq[q] / W.sum(axis=1)) for q in pairs], axis=1)  # (B, pairs)
        rng = np.random.default_rng([0xA6EE, int(seed)])
        value, se = (np.array([dist[q][i] for q in pairs]) for i in (0, 1))
        feat = value + rng.normal(size=dis.shape) * se  # (B, pairs): each distance drawn from its interval
        reps = _spearman(dis, feat)
        ci = pooled_interval([reps[np.isfinite(reps)]], rho)
        points = [[a, b, dist[(a, b)][0], D[idx[a], idx[b]]] for a, b in pairs]
        out.append(record("agreement-correlation", src, tgt, "spearman", [rho], ci=ci,
                          ci_method="bootstrap: structures resampled, feature distances drawn from their intervals",
                          p_value=float(p), n_permutations=int(k), exact=math.factorial(len(models)) <= n_perm,
                          permutation="model labels (Mantel)", points=points, level_ci=LEVEL, **common))
    return out


def agreement(
    energies: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    feature_records: Sequence[Mapping],
    *,
    metrics: Sequence[str] = ("gfre", "cka"),
    n_perm: int = N_PERMUTATIONS,
    seed: int = 0,
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
) -> list[dict]:
    """The pairwise energy disagreement records and their correlation with the feature distances.

    ``energies``: total energy (eV) per structure (sorted frame ids) of each model
    (:func:`readout_energies`); ``feature_records``: atom-level cross-model records of ``metrics``.
    """
    if len(energies) < 2:
        raise InputError(f"energy agreement needs at least 2 models with a readout, got {list(energies)}")
    diff = residual_differences(energies, rows)
    return (energy_disagreement(diff, seed=seed, dataset=dataset, fingerprints=fingerprints)
            + agreement_correlation(diff, feature_records, metrics=metrics, n_perm=n_perm, seed=seed, dataset=dataset))
