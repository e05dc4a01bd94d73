"""The whole study as one job: data -> consistent filtering -> feature store -> analyses -> report.

:func:`run_study` is what ``mlipspace run`` calls. Stages (each timed, shown with rich):

1. data: read the structures (default ``builtin:mad-mini`` at :data:`DEFAULT_SIZE`), keep those all
   models support (:func:`mlipspace.data.consistent`);
2. features: every layer of every model into the store (default ``OUT/features.zarr``); models
   already complete there are not even loaded, so a rerun is fast;
3. analyses: cross-model (atom and structure level), variants, fine-tuning (bundled), layers,
   cumulant orders, energy probe (if labelled) and maps; each analysis's records are cached under
   ``OUT/cache/`` keyed by the dataset and model fingerprints, the settings and the analysis code;
4. report: ``OUT/results.json`` (deterministic), ``OUT/index.html`` + figures, ``OUT/chemiscope.json.gz``,
   ``OUT/structures.xyz`` and ``OUT/timing.json`` (wall times: kept out of results.json).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlipspace.errors import InputError, ModelUnavailableError, StoreError
from mlipspace.experiments._common import drop_frames, outlier_frames

#: Default number of builtin mad-mini structures: ``mlipspace run`` with the ten bundled models takes
#: 3.2 minutes on a quiet 2-core CPU (measured; see docs/study.md), inside the 10-minute budget with
#: room for a loaded machine. At 80 structures many test structures had chemistry the training side
#: lacked and half of the GFRE values exceeded 1; at 200 the cross-family mean is 0.64 (study: 0.66).
DEFAULT_SIZE = 200
#: Families left out of the default model list (non-learned baselines).
BASELINE_FAMILIES = frozenset({"descriptor"})
#: Models whose layer-pair matrix is shown by default (one per family present).
RESULTS_NAME = "results.json"


#: The pair of models whose layers are matched by default (when both are in the run): measured 3 s.
LAYER_CORRESPONDENCE = ("chgnet-0.3.0", "sevennet-0")

#: Similarity measures the study reports beside GFRE/LFRE (cheap: no fit, test rows only).
SIMILARITY_DEFAULT = ("cka", "mknn", "procrustes")


@dataclass
class StudyConfig:
    """Settings of a study run; the analysis settings go into ``results.json`` and the cache key."""

    data: str = "builtin:mad-mini"
    models: list[str] | None = None
    out: str = "report"
    size: int | None = None
    seeds: int = 3
    store: str | None = None
    order: int = 3
    n_test: int | None = None
    lfre: bool = True
    lfre_max_test: int = 500
    lfre_mode: str = "fast"
    energy_key: str | None = None
    forces_key: str | None = None
    layers: bool = True
    orders: bool = True
    max_order: int = 4
    outlier_threshold: float = 20.0
    finetune_data: str | None = None
    finetune_epochs: int = 3
    probe: bool = True
    maps: bool = True
    layer_correspondence: bool = True  # CHGNet-0.3.0 vs SevenNet-0, every layer (LAYER_CORRESPONDENCE)
    agreement: bool = True  # energy disagreement of the models with a readout vs feature distance
    device: str = "auto"
    verbose: bool = False  # show every warning of the model packages (default: a summary per model)
    notes: list[str] = field(default_factory=list)

    def analysis_settings(self) -> dict:
        return {"seeds": list(range(self.seeds)), "order": self.order, "n_test": self.n_test,
                "lfre": self.lfre, "lfre_max_test": self.lfre_max_test, "lfre_mode": self.lfre_mode,
                "energy_key": self.energy_key, "forces_key": self.forces_key,
                "max_order": self.max_order,
                "outlier_threshold": self.outlier_threshold, "finetune_data": self.finetune_data,
                "finetune_epochs": self.finetune_epochs}


def default_models(notes: list[str] | None = None) -> list[str]:
    """Every registered model whose packages and adapter are importable here, baselines left out.

    Models left out for a missing package or adapter are explained in ``notes`` (if given).
    """
    import importlib.util

    from mlipspace.models import get_spec, names, why_unavailable

    out = []
    for n in names():
        spec = get_spec(n)
        if spec.family in BASELINE_FAMILIES:
            continue
        reason = why_unavailable(n)
        if reason is None and importlib.util.find_spec(f"mlipspace.models.{spec.module}") is None:
            reason = f"no adapter module mlipspace.models.{spec.module} in this installation"
        if reason is None:
            out.append(n)
        elif notes is not None:
            notes.append(f"Model {n} left out: {reason}.")
    return out


def data_spec(data: str, size: int | None) -> str:
    """The dataset spec actually read: ``size`` applies to ``builtin:`` specs (default :data:`DEFAULT_SIZE`)."""
    if data.startswith("builtin:"):
        if "size=" in data:
            if size is not None:
                raise InputError(f"--size given twice: in {data!r} and as --size {size}")
            return data
        sep = "&" if "?" in data else "?"
        return f"{data}{sep}size={DEFAULT_SIZE if size is None else int(size)}"
    if size is not None:
        raise InputError("--size applies to builtin datasets only; select structures of a file with the file itself")
    return data


class _Stages:
    """Timing and progress display of the stages (rich console; silent when ``console`` is None)."""

    def __init__(self, console):
        self.console = console
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, what: str):
        t0 = time.perf_counter()
        if self.console is not None:
            self.console.print(f"[bold cyan]▶ {name}[/]: {what}")
        yield
        dt = time.perf_counter() - t0
        self.times[name] = self.times.get(name, 0.0) + dt
        if self.console is not None:
            self.console.print(f"  [green]✓[/] {name} done in {dt:.1f} s")

    @contextlib.contextmanager
    def bar(self, what: str, total: int):
        """Yield an ``advance()`` callable driving a rich progress bar of ``total`` steps."""
        if self.console is None or total <= 0:
            yield lambda *a: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as prog:
            task = prog.add_task(what, total=total)
            yield lambda *a: prog.advance(task)


def code_fingerprint() -> str:
    """sha256 (16 hex) of the analysis code (metrics, aggregate, experiments): cached records are
    reused only if the code that computed them is unchanged."""
    import mlipspace

    root = Path(mlipspace.__file__).parent
    h = hashlib.sha256()
    for sub in ("metrics", "aggregate", "experiments", "data/splits.py"):
        for f in sorted((root / sub).rglob("*.py")) if (root / sub).is_dir() else [root / sub]:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cache_key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Cache:
    """Records of each analysis cached as JSON under ``OUT/cache`` (key: inputs' fingerprints + settings)."""

    def __init__(self, root: Path, enabled: bool = True):
        self.root = root
        self.enabled = enabled

    def get(self, name: str, key: str, compute: Callable[[], list]):
        path = self.root / f"{name}-{key}.json"
        if self.enabled and path.is_file():
            with contextlib.suppress(ValueError, OSError):
                return json.loads(path.read_text()), True
        out = compute()
        if self.enabled:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, sort_keys=True))
            tmp.replace(path)
        return out, False


def prepare_features(cfg: StudyConfig, stages: _Stages, console=None):
    """Stages 1–2: frames, models, store key and loaded features. Returns a dict of the pieces."""
    from mlipspace.data import consistent, read
    from mlipspace.models import get_spec
    from mlipspace.store import FeatureStore, extract_to_store

    out = Path(cfg.out)
    specs = list(cfg.models) if cfg.models else default_models(cfg.notes)
    if not specs:
        raise InputError("no model available here (install the bundled models: see scripts/install.sh)")
    # the names features are stored and reported under: a registry name, or a checkpoint spec's
    # display name (FAMILY:/path/file -> family-file); unknown names raise with the known ones
    models = [get_spec(m).name for m in specs]
    if len(set(models)) != len(models):
        raise InputError(f"a model is named twice in {specs}")
    source = dict(zip(models, specs))
    spec = data_spec(cfg.data, cfg.size)
    store_path = Path(cfg.store) if cfg.store else out / "features.zarr"
    run_spec = f"{spec} | consistent with {','.join(sorted(models))}"

    warned = {}  # model -> what its packages warned while loading and extracting (WarningLog.as_dict)
    with stages.stage("data", f"{spec} for {len(models)} models"):
        key = None
        # which stored dataset a previous run with the same data and models filtered to (kept in
        # OUT/cache: the consistent filtering needs every model's elements, i.e. loading them)
        memo = out / "cache" / f"dataset-{_cache_key(run_spec, str(store_path.resolve()))}.json"
        if (store_path / "zarr.json").is_file():
            store = FeatureStore(store_path)
            with contextlib.suppress(StoreError, OSError, ValueError, KeyError):
                key = store.resolve(json.loads(memo.read_text())["key"] if memo.is_file() else run_spec)
            if key is not None and not all(store.is_complete(key, m, ["last"]) for m in models):
                key = None
        if key is not None:
            frames = store.frames(key)
            n_read = len(read(spec)) if spec.startswith("builtin:") else None
            dropped = [None] * (n_read - len(frames)) if n_read is not None else []
            if console is not None:
                console.print(f"  reusing stored dataset {key} ({len(frames)} structures)")
        else:
            frames = read(spec, energy_key=cfg.energy_key, forces_key=cfg.forces_key)
            from mlipspace.models.pkgwarnings import capture_warnings
            from mlipspace.store.pipeline import get_model

            with stages.bar("load models", len(models)) as adv:
                extractors = {}
                for m in models:
                    with capture_warnings(verbose=cfg.verbose) as log:
                        extractors[m] = get_model(source[m], cfg.device)
                    warned[m] = log.as_dict()
                    adv()
            frames, dropped = consistent(frames, {m: e.elements for m, e in extractors.items()})
            if console is not None:
                console.print(f"  {len(frames)} structures kept, {len(dropped)} dropped (unsupported by some model)")
        if len(frames) < 4:
            raise InputError(f"only {len(frames)} structures left after filtering: the study needs at least 4")
        cfg.notes += label_notes(frames)

    with stages.stage("features", f"all layers of {len(models)} models into {store_path}"):
        store = FeatureStore(store_path, mode="a")
        key = store.add_dataset(frames, run_spec)
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({"key": key, "spec": run_spec}) + "\n")
        todo = [m for m in models if not store.is_complete(key, m, ["last"]) or not _all_layers(store, key, m)]
        if todo:
            done = extract_to_store(frames, [source[m] for m in todo], store_path, layers="all",
                                    progress=console is not None, device=cfg.device, spec=run_spec, verbose=cfg.verbose)
            from mlipspace.models.pkgwarnings import WarningLog

            for m, rec in done["models"].items():
                warned[m] = WarningLog.from_dict(warned.get(m, {})).merge(rec.get("warnings")).as_dict()
        elif console is not None:
            console.print("  all features already stored")
    return {"models": models, "spec": spec, "frames": frames, "store": store, "key": key,
            "dropped": dropped if isinstance(dropped, list) else [], "warnings": warned}


def label_notes(frames) -> list[str]:
    """One note per label kind saying where the DFT labels were read (a fallback such as ``REF_energy``)."""
    out = []
    for what in ("energy", "forces"):
        used = sorted({str(a.info[f"{what}_key"]) for a in frames if f"{what}_key" in a.info})
        if used:
            n = sum(f"{what}_key" in a.info for a in frames)
            out.append(f"DFT {what} labels of {n} of {len(frames)} structures read from "
                       + ", ".join(repr(u) for u in used) + f" (--{what}-key to choose).")
    return out


def _all_layers(store, key, model) -> bool:
    """Whether the store holds backbone layers of ``model`` besides ``last`` (extracted with layers="all")."""
    return len(store.layers(key, model)) >= 2


def load_features(store, key, models: Sequence[str], layer: str = "last"):
    """``({model: float64 array}, rows)`` for one layer, rows checked aligned and tagged with subsets."""
    from mlipspace.store import load_aligned

    feats, rows = load_aligned(store, key, list(models), layer)
    rows = dict(rows)
    ds_rows = store.rows(key)
    if "subset" not in rows or not np.any(np.asarray(rows["subset"]).astype(str) != ""):
        # model rows may lack the subset tag: take it from the dataset's rows by frame id
        first = {}
        for f, s in zip(np.asarray(ds_rows["frame"]), np.asarray(ds_rows["subset"]).astype(str)):
            first.setdefault(int(f), s)
        rows["subset"] = np.array([first.get(int(f), "") for f in np.asarray(rows["frame"])], dtype=str)
    return {m: np.asarray(x, dtype=np.float64) for m, x in feats.items()}, rows


def run_analyses(cfg: StudyConfig, prep: Mapping, stages: _Stages, console=None) -> tuple[list[dict], dict, dict]:
    """Stage 3: all analyses. Returns ``(records, maps, extra_meta)``."""
    from mlipspace.experiments import cross_model as cm
    from mlipspace.experiments import finetune, layers, probe, variants

    store, key, models = prep["store"], prep["key"], prep["models"]
    seeds = list(range(cfg.seeds))
    metrics = ("gfre", "lfre") if cfg.lfre else ("gfre",)
    fps = {m: store.fingerprint(key, m) for m in models}
    fam = {m: store.model_info(key, m).get("family") or m for m in models}
    dataset = prep["spec"]
    cache = _Cache(Path(cfg.out) / "cache")
    base_key = (key, sorted((m, cm_fp(fps[m])) for m in models), cfg.analysis_settings(), code_fingerprint())
    records: list[dict] = []
    meta: dict = {"notes": []}

    with stages.stage("load", "features from the store; screen for outlier structures"):
        last, rows = load_features(store, key, models, "last")
        outliers = outlier_frames(last, rows, cfg.outlier_threshold) if cfg.outlier_threshold else {}
        keep = drop_frames(rows, outliers)
        if outliers:
            last = {m: x[keep] for m, x in last.items()}
            rows = {k: np.asarray(v)[keep] for k, v in rows.items()}
            meta["notes"].append(
                f"{len(outliers)} structure(s) left out of the analyses: some atom's features lie more than "
                f"{cfg.outlier_threshold:g} times the median distance from the median ("
                + "; ".join(f"frame {f} ({why})" for f, why in outliers.items())
                + "). Such atoms would dominate every RMS error.")
            if console is not None:
                console.print(f"  [yellow]left out {len(outliers)} outlier structure(s)[/]: "
                              + ", ".join(map(str, outliers)), highlight=False)
        meta["outliers"] = sorted(outliers)
    common = dict(seeds=seeds, dataset=dataset, fingerprints=fps, lfre_max_test=cfg.lfre_max_test,
                  lfre_mode=cfg.lfre_mode)
    n_pairs = len(models) * (len(models) - 1)

    if len(models) >= 2:
        for level in ("atom", "structure"):
            with stages.stage(f"cross-model ({level})", f"{'/'.join(m.upper() for m in metrics)} of {n_pairs} "
                                                        f"ordered pairs × {len(seeds)} seeds"):
                with stages.bar("splits × metrics", len(seeds) * len(metrics)) as adv:
                    recs, hit = cache.get(f"cross-{level}", _cache_key(base_key, level), lambda: cm.cross_model(
                        last, rows, metrics=metrics, level=level, order=cfg.order, n_test=cfg.n_test,
                        progress=adv, subsets={"coverage": "covered"} if level == "atom" else None, **common))
                records += recs
        with stages.stage("cross-model (study split)", f"{'/'.join(m.upper() for m in metrics)} of {n_pairs} pairs "
                                                       "with the study's per-atom split (one seed, as the study)"):
            recs, _ = cache.get("cross-ungrouped", _cache_key(base_key, "ungrouped"), lambda: cm.cross_model(
                last, rows, metrics=metrics, level="atom-ungrouped", n_test=cfg.n_test,
                subsets={"leakage": "no-twins"}, **(common | {"seeds": seeds[:1]})))
            records += recs
        with stages.stage("similarity (atom)", f"{'/'.join(m.upper() for m in SIMILARITY_DEFAULT)} of "
                                               f"{n_pairs // 2} model pairs × {len(seeds)} seeds, permutation null"):
            recs, _ = cache.get("similarity", _cache_key(base_key, "similarity"), lambda: cm.cross_model(
                last, rows, metrics=SIMILARITY_DEFAULT, level="atom", n_test=cfg.n_test, **common))
            records += recs
    else:
        meta["notes"].append("Cross-model comparison skipped: it needs at least two models.")

    # the variant and fine-tuning comparisons are sub-matrices of the cross-model one: reuse its numbers
    var_extra = {(s, t): {"group": label} for label, a, b in variants.available_pairs(models)
                 for s, t in ((a, b), (b, a))}
    tuned, refs = finetune.BUNDLED_FINETUNE
    ft_extra = {(s, t): {"relation": rel} for m, rel in refs if tuned in models and m in models
                for s, t in ((tuned, m), (m, tuned))}
    with stages.stage("variants", f"{len(var_extra) // 2} same-architecture pairs"):
        recs = cm.relabel(records, var_extra, "variants")
        if recs is None:
            recs, _ = cache.get("variants", _cache_key(base_key), lambda: variants.variants(
                last, rows, metrics=metrics, n_test=cfg.n_test, **common))
        records += recs
    with stages.stage("fine-tuning", "CHGNet-r2SCAN vs parent and independent models"):
        recs = cm.relabel(records, ft_extra, "finetune")
        if recs is None:
            recs, _ = cache.get("finetune", _cache_key(base_key), lambda: finetune.finetune_bundled(
                last, rows, metrics=metrics, n_test=cfg.n_test, **common))
        records += recs
        if not recs:
            meta["finetune_note"] = ("Bundled fine-tuning comparison not run: it needs chgnet-r2scan and "
                                     "chgnet-0.3.0 among the models.")

    if cfg.layers:
        all_layers = {m: list(store.layers(key, m)) for m in models}
        model_layers = {}
        for m in models:
            ordered = _layer_order(store, key, m, all_layers[m])
            feats = {}
            for lay in ordered:
                x, r = load_features(store, key, [m], lay)
                feats[lay] = x[m][keep]
            model_layers[m] = feats
        n_layer_tasks = sum(len(v) for v in model_layers.values())
        with stages.stage("layers", f"layer pairs of {len(models)} models; each layer vs one model per family"):
            def _layers():
                out = []
                for m, feats in model_layers.items():
                    if len(feats) >= 2:
                        out += layers.layer_pairs(feats, rows, model=m, seeds=seeds[:1], n_test=cfg.n_test,
                                                  dataset=dataset, fingerprints=fps)
                return out
            recs, _ = cache.get("layers", _cache_key(base_key, "layers"), _layers)
            records += recs
            if len(models) >= 2:
                with stages.bar("source layers", n_layer_tasks) as adv:
                    recs, _ = cache.get("layers-cross", _cache_key(base_key, "layers-cross"),
                                        lambda: layers.cross_model_layers(
                                            model_layers, rows, seeds=seeds[:1], n_test=cfg.n_test,
                                            dataset=dataset, fingerprints=fps, progress=adv,
                                            targets=representatives(models, fam)))
                records += recs
            a, b = LAYER_CORRESPONDENCE
            if cfg.layer_correspondence and a in model_layers and b in model_layers:
                recs, _ = cache.get("layer-corr", _cache_key(base_key, "layer-corr", a, b),
                                    lambda: layers.layer_correspondence(
                                        model_layers[a], model_layers[b], rows, model_a=a, model_b=b,
                                        seeds=seeds[:1], n_test=cfg.n_test, dataset=dataset, fingerprints=fps))
                records += recs

    if cfg.orders:
        import warnings

        def _orders():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                recs = _order_records(last, rows, cfg, dataset, fps)
            # the warnings (too few structures for the cumulant widths) are kept with the records
            msgs = sorted({str(w.message).strip() for w in caught})
            more = f" (and {len(msgs) - 2} similar warnings)" if len(msgs) > 2 else ""
            return {"records": recs, "notes": ["Cumulant orders: " + "; ".join(msgs[:2]) + more + "."] if msgs else []}

        with stages.stage("cumulant orders", f"orders 1..{cfg.max_order} of each model's last layer"):
            got, _ = cache.get("orders", _cache_key(base_key, "orders"), _orders)
            records += got["records"]
            meta["notes"] += got["notes"]

    frames = [prep["frames"][int(i)] for i in np.unique(rows["frame"])]  # the analysed structures
    energy = probe.energies(frames)
    if cfg.probe:
        with stages.stage("probe", "energy per atom from features (ridge, cross-validated)"):
            if energy is None:
                meta["probe_note"] = (f"Energy probe and PCovR maps skipped: the dataset {dataset} has no DFT "
                                      "energy labels (atoms.info['energy']); run on a labelled dataset, e.g. "
                                      "../shared/data/mad-bench-mad-reduced.xyz.")
            else:
                for level in ("atom", "structure"):
                    recs, _ = cache.get(f"probe-{level}", _cache_key(base_key, "probe", level), lambda: probe.probe(
                        last, rows, energy, level=level, order=cfg.order, seeds=seeds, dataset=dataset,
                        fingerprints=fps))
                    records += recs
    if cfg.agreement and len(models) >= 2:
        with stages.stage("agreement", "energies from each model's readout vs feature distance"):
            records += _agreement_records(last, rows, records, cfg, cache, base_key, meta, dataset, fps)
    maps: dict = {}
    if cfg.maps:
        with stages.stage("maps", "PCA (and PCovR) maps of the structure features"):
            maps, _ = cache.get("maps", _cache_key(base_key, "maps", energy is not None),
                                lambda: probe.maps(last, rows, order=2, energy=energy))
            if energy is not None:
                meta["map_colour"] = probe.residual_energy(rows, energy).tolist()
                meta["map_colour_label"] = "residual energy per atom (eV/atom)"
    if cfg.finetune_data:
        from mlipspace.data import read

        with stages.stage("live fine-tuning", f"CHGNet on {cfg.finetune_data}, {cfg.finetune_epochs} epochs + control"):
            recs, ft_meta = finetune.track(
                read(cfg.finetune_data), Path(cfg.out) / "finetune", epochs=cfg.finetune_epochs, seeds=seeds,
                dataset=cfg.finetune_data,
                log=(lambda m: console.print(f"  {m}", highlight=False)) if console is not None else None)
            records += recs
            meta["finetune"] = dict(ft_meta, data=cfg.finetune_data)
    meta["families"] = fam
    meta["frames"] = frames
    return records, maps, meta


def _agreement_records(last, rows, records, cfg: StudyConfig, cache, base_key, meta, dataset, fps) -> list[dict]:
    """Energy disagreement of the models whose readout runs here, and its correlation with the
    cross-model GFRE/CKA already computed (cached: a rerun loads no model)."""
    from mlipspace.experiments import agreement

    def compute():
        notes: list[str] = []
        energies = agreement.readout_energies(last, rows, device=cfg.device, notes=notes, verbose=cfg.verbose)
        if len(energies) < 2:
            return {"records": [], "notes": notes + ["Energy agreement not run: fewer than 2 models with a readout."]}
        feats = [r for r in records if r.get("analysis") == "cross-model" and r.get("level") == "atom"]
        return {"records": agreement.agreement(energies, rows, feats, dataset=dataset, fingerprints=fps),
                "notes": notes}

    got, _ = cache.get("agreement", _cache_key(base_key, "agreement"), compute)
    meta["notes"] += got["notes"]
    return got["records"]


def representatives(models: Sequence[str], families: Mapping[str, str]) -> list[str]:
    """The first model of each family (in ``models`` order): the targets of the per-layer comparison."""
    seen: dict[str, str] = {}
    for m in models:
        seen.setdefault(families.get(m, m), m)
    return list(seen.values())


def cm_fp(fp: Mapping) -> str:
    from mlipspace.records import fingerprint_id

    return fingerprint_id(fp)


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _layer_order(store, key, model, stored: Sequence[str]) -> list[str]:
    """The stored layers of ``model`` in network order: natural sort of the names, ``last`` at the end."""
    order = sorted((x for x in stored if x != "last"), key=_natural)
    return order + (["last"] if "last" in stored else [])


def _order_records(last, rows, cfg: StudyConfig, dataset: str, fps) -> list[dict]:
    """Cumulant-order table records of every model (``analysis="cumulant-orders"``)."""
    from mlipspace.experiments import cumulant_orders

    out = []
    for m, X in last.items():
        out += cumulant_orders.order_table(X, rows["frame"], rows["subset"], max_order=cfg.max_order,
                                           seeds=list(range(cfg.seeds)), metrics=("gfre",), model=m,
                                           dataset=dataset)
    return out


@contextlib.contextmanager
def blas_threads(n: int | None = None):
    """Limit BLAS/OpenMP threads (default 1, or ``$MLIPSPACE_BLAS_THREADS``) for the analyses.

    The analyses are many small factorisations; on a shared, loaded 2-core machine multi-threaded
    OpenBLAS spends most of its time spinning (measured 3x slower than one thread for the same
    comparison; equal when the machine is quiet, see benchmarks/bench_study.py).
    LFRE parallelises over test rows itself.
    """
    import os

    from threadpoolctl import threadpool_limits

    n = int(os.environ.get("MLIPSPACE_BLAS_THREADS", "1")) if n is None else int(n)
    with threadpool_limits(limits=n):
        yield


def run_study(cfg: StudyConfig, console=None) -> dict:
    """Run the whole study (see the module docstring); returns ``{"results": path, "report": path, "timing": {...}}``."""
    from mlipspace.report import write_report
    from mlipspace.report.results import make_results, write_results, write_table

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(console)
    prep = prepare_features(cfg, stages, console)
    with blas_threads():
        records, maps, meta_extra = run_analyses(cfg, prep, stages, console)
    store, key = prep["store"], prep["key"]
    frames = meta_extra.pop("frames")
    with stages.stage("report", f"results.json, index.html, chemiscope file in {out}"):
        from mlipspace.data import write as write_frames

        write_frames(frames, out / "structures.xyz")
        models_meta = {}
        for m in prep["models"]:
            fp = store.fingerprint(key, m)
            models_meta[m] = {"family": meta_extra["families"].get(m, m), "fingerprint": fp,
                              "fingerprint_id": cm_fp(fp), "layers": _layer_order(store, key, m, store.layers(key, m))}
        info = store.dataset_info(key)
        meta = {
            "dataset": {"name": prep["spec"], "key": key, "fingerprint": info.get("fingerprint"),
                        "n_frames": len(frames), "n_atoms": int(sum(len(a) for a in frames)),
                        "subsets": info.get("subsets", {}), "dropped": len(prep["dropped"]),
                        "outliers": meta_extra.get("outliers", [])},
            "models": models_meta,
            "model_order": list(prep["models"]),
            "settings": cfg.analysis_settings(),
            "notes": list(cfg.notes) + meta_extra.get("notes", []),
            "structures": "structures.xyz",
        }
        for k in ("probe_note", "finetune_note", "map_colour", "map_colour_label", "finetune"):
            if k in meta_extra:
                meta[k] = meta_extra[k]
        if maps:
            meta["chemiscope"] = "chemiscope.json.gz"
        results = make_results(records, meta, maps)
        path = write_results(out / RESULTS_NAME, results)
        write_table(path.with_suffix(".csv"), results)  # the same records as one CSV row each
        report = write_report(path, out, frames=frames)
    timing = dict(stages.times)
    timing["total"] = time.perf_counter() - t0
    (out / "timing.json").write_text(json.dumps({k: round(v, 2) for k, v in timing.items()}, indent=1) + "\n")
    # what the model packages warned during this run's loading/extraction (none on a rerun from the
    # store, so it stays out of the deterministic results.json, like the wall times)
    (out / "warnings.json").write_text(json.dumps(prep.get("warnings", {}), indent=1, sort_keys=True) + "\n")
    return {"results": str(path), "report": str(report), "timing": timing, "n_records": len(records)}


def config_dict(cfg: StudyConfig) -> dict:
    return asdict(cfg)
