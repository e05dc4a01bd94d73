"""Property probe: how linearly do a model's features encode the DFT energy? And 2-D maps.

The probe removes a composition baseline (a linear fit of the energy per atom on the element
fractions with an intercept, i.e. of the total energy on the element counts; fitted on the training
folds only), then fits a ridge regression from structure features to the
residual and reports the cross-validated RMSE of the energy per atom (meV/atom):

* ``level="atom"``: structure features = sum of the atom features (extensive, like an energy
  readout), target = residual total energy; error per atom = error / n_atoms.
* ``level="structure"``: progressive cumulants (intensive), target = residual energy per atom.

The composition-only baseline is reported as ``source="composition"`` for reference.
Maps: PCA of each model's structure features (for chemiscope) and, where labels exist, PCovR
(scikit-matter, mixing α = 0.5) between the features and the residual energy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.errors import InputError
from mlipspace.experiments._common import cumulant_features, frame_subsets, structure_width
from mlipspace.intervals import Estimate, test_regime
from mlipspace.records import record

ALPHAS = np.logspace(-6, 4, 21)


def energies(frames: Sequence) -> np.ndarray | None:
    """Total DFT energies (eV) of ``frames`` from ``atoms.info["energy"]``; ``None`` if any is missing."""
    out = []
    for atoms in frames:
        e = atoms.info.get("energy")
        if e is None:
            return None
        out.append(float(e))
    return np.asarray(out, dtype=np.float64)


def composition(rows: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, elements)``: element counts per structure (frames in sorted id order) and the Zs."""
    frame = np.asarray(rows["frame"])
    Z = np.asarray(rows["Z"])
    frames, inv = np.unique(frame, return_inverse=True)
    elements, zi = np.unique(Z, return_inverse=True)
    counts = np.zeros((len(frames), len(elements)))
    np.add.at(counts, (inv, zi), 1.0)
    return counts, elements


def summed_features(X: np.ndarray, rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """Sum of the atom features of each structure (frames in sorted id order), float64."""
    frames, inv = np.unique(np.asarray(rows["frame"]), return_inverse=True)
    out = np.zeros((len(frames), X.shape[1]))
    np.add.at(out, inv, np.asarray(X, dtype=np.float64))
    return out


def _folds(n: int, n_splits: int, seed: int):
    from sklearn.model_selection import KFold

    return KFold(n_splits=min(n_splits, n), shuffle=True, random_state=seed).split(np.arange(n))


def composition_fit(counts: np.ndarray, E: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Composition-baseline prediction of every structure's total energy, fitted on ``train`` rows.

    Energy per atom = c + Σ_Z x_Z μ_Z (x_Z: fraction of element Z), a ridge fit with an intercept c
    and the penalty chosen by leave-one-out CV (``RidgeCV``): with many elements and few structures
    an unregularised fit interpolates and extrapolates wildly (measured on the 70 MAD benchmark
    structures, 57 elements: 13.7 eV/atom CV RMSE unregularised, 1.36 with RidgeCV, 1.70 for the
    mean); elements absent from ``train`` fall back to c. Times the atom count.
    """
    from sklearn.linear_model import RidgeCV

    n_atoms = counts.sum(axis=1)
    frac = counts / n_atoms[:, None]
    reg = RidgeCV(alphas=np.logspace(-6, 2, 17), fit_intercept=True).fit(frac[train], E[train] / n_atoms[train])
    return reg.predict(frac) * n_atoms


def _cv_errors(F: np.ndarray | None, counts: np.ndarray, E: np.ndarray, n_atoms: np.ndarray, *,
               extensive: bool, n_splits: int, seed: int) -> np.ndarray:
    """Cross-validated error (eV/atom) of each structure, predicted by composition baseline + ridge on
    ``F`` (``None``: baseline only) fitted on the folds it is not in."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    err = np.empty(len(E))
    for train, test in _folds(len(E), n_splits, seed):
        resid = E - composition_fit(counts, E, train)
        target = resid if extensive else resid / n_atoms
        pred = np.zeros(len(test))
        if F is not None:
            # the composition enters again (counts, or fractions for per-atom targets) so the ridge can
            # undo what the baseline fit absorbed of the feature signal
            comp = counts if extensive else counts / n_atoms[:, None]
            G = np.hstack([F, comp])
            reg = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
            reg.fit(G[train], target[train])
            pred = reg.predict(G[test])
        diff = pred - target[test]
        err[test] = diff / n_atoms[test] if extensive else diff
    return err


def probe(
    features: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    energy: np.ndarray,
    *,
    level: str = "atom",
    order: int = 3,
    n_splits: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    layer: str = "last",
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
) -> list[dict]:
    """Records (``analysis="probe"``, ``metric="rmse_mev_per_atom"``) per model and the baseline.

    ``energy`` holds the total energy (eV) of each structure in sorted frame-id order. ``value`` is
    the mean over ``seeds`` of the ``n_splits``-fold CV RMSE, with a cluster-bootstrap interval over
    the structures' CV errors (:mod:`mlipspace.intervals`); the record also keeps ``target_std`` (std
    of the residual energy per atom after the full-data composition fit, meV/atom). Valid regime:
    every CV fold holds at least :data:`~mlipspace.intervals.MIN_TEST_GROUPS` structures, and the
    model's features enter the ridge as at most ``n_train // 2`` columns (their leading principal
    components over all atoms: unsupervised, so no label leaks; ``components`` in the record).
    """
    counts, _ = composition(rows)
    E = np.asarray(energy, dtype=np.float64)
    if E.shape != (counts.shape[0],):
        raise InputError(f"probe: {E.shape[0] if E.ndim else 0} energies for {counts.shape[0]} structures")
    if not np.all(np.isfinite(E)):
        raise InputError("probe: energies contain NaN or infinite values")
    if level not in ("atom", "structure"):
        raise InputError(f"unknown level {level!r}; choose 'atom' or 'structure'")
    folds = int(min(n_splits, len(E)))
    n_atoms = counts.sum(axis=1)
    n_test = len(E) // max(folds, 1)
    target_std = float(np.std((E - composition_fit(counts, E, np.arange(len(E)))) / n_atoms) * 1000) if len(E) else 0.0
    common = dict(level=level, layer=layer, n_train=len(E) - n_test, n_test=n_test, dataset=dataset,
                  fingerprints=fingerprints, target_std=round(target_std, 6), folds=folds)
    why = test_regime(n_test)
    if why:
        return [record("probe", name, "energy", "rmse_mev_per_atom", [], reason=why + f" ({folds}-fold CV)", **common)
                for name in ["composition", *features]]
    groups = np.arange(len(E))

    def estimate(F, extensive):
        est = Estimate("rms")
        for s in seeds:
            est.add(1000 * _cv_errors(F, counts, E, n_atoms, extensive=extensive, n_splits=n_splits, seed=s),
                    groups, s)
        return est.fields()

    f = estimate(None, True)
    out = [record("probe", "composition", "energy", "rmse_mev_per_atom", f.pop("values"), **f, **common)]
    for name, X in features.items():
        m = structure_width(len(E) - n_test, order if level == "structure" else 1, X.shape[1])
        if level == "atom":  # the sum of projected atom features = projection of the summed features
            F, ext = summed_features(_components(X, m), rows), True
        else:
            F, ext = cumulant_features(X, rows, order, n_components=m), False
        f = estimate(F, ext)
        out.append(record("probe", name, "energy", "rmse_mev_per_atom", f.pop("values"), **f, **common,
                          components=m, **({"order": int(order)} if level == "structure" else {})))
    return out


def _components(X: np.ndarray, m: int) -> np.ndarray:
    """The atom features projected on their ``m`` leading principal components (all of them if m >= d)."""
    X = np.asarray(X, dtype=np.float64)
    if m >= X.shape[1]:
        return X
    Xc = X - X.mean(axis=0)
    return Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:m].T


def residual_energy(rows: Mapping[str, np.ndarray], energy: np.ndarray) -> np.ndarray:
    """Energy per atom (eV/atom) after the composition baseline fitted on all structures."""
    counts, _ = composition(rows)
    E = np.asarray(energy, dtype=np.float64)
    return (E - composition_fit(counts, E, np.arange(len(E)))) / counts.sum(axis=1)


def pca_map(F: np.ndarray, n_components: int = 2) -> np.ndarray:
    """2-D PCA projection of standardised structure features (sign fixed: largest loading positive)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(np.asarray(F, dtype=np.float64))
    Z = np.nan_to_num(Z)
    k = min(n_components, Z.shape[0], Z.shape[1])
    T = PCA(n_components=k, svd_solver="full").fit_transform(Z)
    return _fix_signs(T)


def pcovr_map(F: np.ndarray, y: np.ndarray, *, mixing: float = 0.5, n_components: int = 2) -> np.ndarray:
    """2-D PCovR projection (scikit-matter) of standardised features against standardised ``y``."""
    from sklearn.preprocessing import StandardScaler
    from skmatter.decomposition import PCovR

    Z = np.nan_to_num(StandardScaler().fit_transform(np.asarray(F, dtype=np.float64)))
    t = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    t = (t - t.mean()) / (t.std() or 1.0)
    k = min(n_components, Z.shape[0], Z.shape[1])
    from sklearn.linear_model import Ridge

    T = PCovR(mixing=mixing, n_components=k, regressor=Ridge(alpha=1e-6, fit_intercept=False),
              svd_solver="full").fit(Z, t).transform(Z)
    return _fix_signs(np.asarray(T))


def _fix_signs(T: np.ndarray) -> np.ndarray:
    """Flip each component so its largest-magnitude entry is positive (deterministic maps)."""
    T = np.array(T, dtype=np.float64)
    for j in range(T.shape[1]):
        i = int(np.argmax(np.abs(T[:, j])))
        if T[i, j] < 0:
            T[:, j] *= -1
    return T


def maps(
    features: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    *,
    order: int = 2,
    energy: np.ndarray | None = None,
) -> dict[str, dict[str, list]]:
    """Per model ``{"pca": [[x, y], ...], "pcovr": [...]}`` of the structures (frames in sorted id order).

    Structure features are progressive cumulants of order ``order``; ``pcovr`` only with ``energy``
    and scikit-matter installed.
    """
    import importlib.util

    frames, _ = frame_subsets(rows)
    y = residual_energy(rows, energy) if energy is not None else None
    if importlib.util.find_spec("skmatter") is None:  # PCovR needs scikit-matter; PCA does not
        y = None
    out = {}
    for name, X in features.items():
        F = cumulant_features(X, rows, order)
        entry = {"pca": pca_map(F).tolist()}
        if y is not None and len(frames) >= 3:
            entry["pcovr"] = pcovr_map(F, y).tolist()
        out[name] = entry
    return out
