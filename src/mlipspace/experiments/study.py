"""The whole study as one job: data -> consistent filtering -> feature store -> analyses -> report.

:func:`mlipspace.commands.study.run_study` (what ``mlipspace run`` calls) puts these together with the
report; the stages (each timed, shown with rich):

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
from dataclasses import dataclass, field
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
    lfre_mode: str = "exact"
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
    blas_threads: int = 1  # BLAS/OpenMP threads of the analyses (see blas_threads())
    verbose: bool = False  # show every warning of the model packages (default: a summary per model)
    workers: int | None = None  # cross-model analyses on a Dask LocalCluster of this many processes
    scheduler: str | None = None  # ... or on an existing Dask cluster (same results either way)
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


class Stages:
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


def prepare_features(cfg: StudyConfig, stages: Stages, console=None):
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


def run_analyses(cfg: StudyConfig, prep: Mapping, stages: Stages, console=None, client=None
                 ) -> tuple[list[dict], dict, dict]:
    """Stage 3: screen outlier structures, then every step of :data:`mlipspace.experiments.analyses.STUDY`.
    With a Dask ``client`` the cross-model comparisons run as tasks reading the store
    (:mod:`mlipspace.experiments.distributed`).

    Returns ``(records, maps, extra_meta)``.
    """
    from mlipspace.experiments.analyses import STUDY, Context, run_steps

    store, key, models = prep["store"], prep["key"], prep["models"]
    with stages.stage("load", "features from the store; screen for outlier structures"):
        last, rows = load_features(store, key, models, "last")
        last, rows, keep, notes, outliers = screen_outliers(last, rows, cfg.outlier_threshold, console)
    ctx = Context(cfg=cfg, store=store, key=key, models=list(models), dataset=prep["spec"], last=last, rows=rows,
                  keep=keep, all_frames=prep["frames"], console=console, client=client)
    base_key = (key, sorted((m, cm_fp(ctx.fingerprints[m])) for m in models), cfg.analysis_settings(),
                code_fingerprint())
    maps, meta = run_steps(ctx, STUDY, stages, _Cache(Path(cfg.out) / "cache"), base_key)
    meta["notes"] = notes + meta["notes"]
    if len(models) < 2:
        meta["notes"].append("Cross-model comparison skipped: it needs at least two models.")
    meta["outliers"] = sorted(outliers)
    meta["families"] = ctx.families
    meta["frames"] = ctx.frames
    return ctx.records, maps, meta


def screen_outliers(last, rows, threshold: float, console=None):
    """Leave out structures with an atom far outside every model's other atoms (see
    :func:`~mlipspace.experiments._common.outlier_frames`). Returns ``(last, rows, keep, notes, outliers)``."""
    outliers = outlier_frames(last, rows, threshold) if threshold else {}
    keep = drop_frames(rows, outliers)
    notes = []
    if outliers:
        last = {m: x[keep] for m, x in last.items()}
        rows = {k: np.asarray(v)[keep] for k, v in rows.items()}
        notes.append(f"{len(outliers)} structure(s) left out of the analyses: some atom's features lie more than "
                     f"{threshold:g} times the median distance from the median ("
                     + "; ".join(f"frame {f} ({why})" for f, why in outliers.items())
                     + "). Such atoms would dominate every RMS error.")
        if console is not None:
            console.print(f"  [yellow]left out {len(outliers)} outlier structure(s)[/]: "
                          + ", ".join(map(str, outliers)), highlight=False)
    return last, rows, keep, notes, outliers


def cm_fp(fp: Mapping) -> str:
    from mlipspace.records import fingerprint_id

    return fingerprint_id(fp)


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_order(stored: Sequence[str]) -> list[str]:
    """Stored layer names in network order: natural sort of the names, ``last`` at the end."""
    order = sorted((x for x in stored if x != "last"), key=_natural)
    return order + (["last"] if "last" in stored else [])


@contextlib.contextmanager
def blas_threads(n: int = 1):
    """Limit BLAS/OpenMP threads to ``n`` (``StudyConfig.blas_threads``, default 1) for the analyses.

    The analyses are many small factorisations; on a shared, loaded 2-core machine multi-threaded
    OpenBLAS spends most of its time spinning (measured 3x slower than one thread for the same
    comparison; equal when the machine is quiet, see benchmarks/bench_study.py).
    LFRE parallelises over test rows itself.
    """
    from threadpoolctl import threadpool_limits

    if int(n) < 1:
        raise InputError(f"blas_threads must be >= 1, not {n}")
    with threadpool_limits(limits=int(n)):
        yield
