"""The study's analyses as a list of small steps, run in order by :func:`run_steps`.

Each :class:`Analysis` names itself (stage name and cache file), says what it does, when it runs
and how to compute its output from a :class:`Context` (the loaded features, splits' settings and the
records so far). Outputs are JSON dicts (``records``, and optionally ``notes``, ``meta``, ``maps``),
cached under ``OUT/cache`` keyed by the inputs' fingerprints, the settings and the analysis code. To
add an analysis: write its ``compute`` and append it to :data:`STUDY` — nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np


@dataclass
class Context:
    """What every analysis may read: settings, the store, the screened ``last`` features and rows."""

    cfg: object
    store: object
    key: str
    models: list[str]
    dataset: str
    last: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    keep: np.ndarray
    all_frames: list
    console: object = None
    client: object = None
    records: list[dict] = field(default_factory=list)
    #: Pointwise errors of the atom-level cross-model step, this run only (not cached): the per-atom
    #: step regroups them instead of refitting (``{(metric, split index): (train, test, {pair: errors})}``).
    pointwise: dict = field(default_factory=dict)

    @cached_property
    def seeds(self) -> list[int]:
        return list(range(self.cfg.seeds))

    @cached_property
    def metrics(self) -> tuple[str, ...]:
        return ("gfre", "lfre") if self.cfg.lfre else ("gfre",)

    @cached_property
    def fingerprints(self) -> dict:
        return {m: self.store.fingerprint(self.key, m) for m in self.models}

    @cached_property
    def families(self) -> dict[str, str]:
        return {m: self.store.model_info(self.key, m).get("family") or m for m in self.models}

    @cached_property
    def common(self) -> dict:
        """Keyword arguments shared by the cross-model style analyses."""
        return dict(seeds=self.seeds, dataset=self.dataset, fingerprints=self.fingerprints,
                    lfre_max_test=self.cfg.lfre_max_test, lfre_mode=self.cfg.lfre_mode)

    @cached_property
    def frames(self) -> list:
        """The analysed structures (outliers left out), in sorted frame-id order."""
        return [self.all_frames[int(i)] for i in np.unique(self.rows["frame"])]

    @cached_property
    def energy(self):
        from mlipspace.experiments.probe import energies

        return energies(self.frames)

    @cached_property
    def model_layers(self) -> dict[str, dict[str, np.ndarray]]:
        """Every stored layer of every model, in network order, outliers left out."""
        from mlipspace.experiments.study import layer_order, load_features

        out = {}
        for m in self.models:
            out[m] = {}
            for lay in layer_order(list(self.store.layers(self.key, m))):
                x, _ = load_features(self.store, self.key, [m], lay)
                out[m][lay] = x[m][self.keep]
        return out

    @cached_property
    def compared(self):
        """``last`` as the cross-model comparisons see it: the matrices, or with a Dask client a mapping
        that tells each task where in the store to read them (no matrix goes through the scheduler)."""
        if self.client is None:
            return self.last
        from mlipspace.experiments.distributed import StoreFeatures, StoreSpec

        screened = not bool(np.all(self.keep))
        return StoreFeatures(StoreSpec(str(self.store.path), self.key, "last", self.keep if screened else None),
                             self.models, self.last)

    @property
    def n_pairs(self) -> int:
        return len(self.models) * (len(self.models) - 1)


def _always(ctx: Context) -> bool:
    return True


def _two_models(ctx: Context) -> bool:
    return len(ctx.models) >= 2


@dataclass(frozen=True)
class Analysis:
    """One step of the study: ``compute(ctx, advance)`` -> JSON dict with ``records`` (and ``notes``,
    ``meta``, ``maps``); ``steps(ctx)`` sizes its progress bar; ``after(ctx, out)`` runs on cached
    outputs too (files next to results.json); ``cached=False`` for steps that only relabel."""

    name: str
    describe: Callable[[Context], str]
    compute: Callable[[Context, Callable], dict]
    when: Callable[[Context], bool] = _always
    steps: Callable[[Context], int] | None = None
    key: Callable[[Context], tuple] = lambda ctx: ()
    after: Callable[[Context, dict], None] | None = None
    cached: bool = True


#: Similarity measures the study reports beside GFRE/LFRE (cheap: no fit, test rows only).
SIMILARITY_DEFAULT = ("cka", "cka_debiased", "cknna", "mknn", "procrustes")


def _names(metrics: Sequence[str]) -> str:
    return "/".join(m.upper() for m in metrics)


# --- the steps ------------------------------------------------------------------------------------


def _cross(level: str, subsets: Mapping[str, str] | None = None, seeds: int | None = None,
           metrics: Sequence[str] | None = None, keep: bool = False):
    """The cross-model comparison at ``level``; ``keep``: its pointwise errors go to ``ctx.pointwise``."""
    def compute(ctx: Context, advance) -> dict:
        from mlipspace.experiments.cross_model import cross_model

        common = ctx.common | ({"seeds": ctx.seeds[:seeds]} if seeds else {})
        return {"records": cross_model(ctx.compared, ctx.rows, metrics=metrics or ctx.metrics, level=level,
                                       order=ctx.cfg.order, n_test=ctx.cfg.n_test, progress=advance,
                                       subsets=subsets, client=ctx.client,
                                       pointwise=ctx.pointwise if keep else None, **common)}
    return compute


def _per_atom(ctx: Context, advance) -> dict:
    from mlipspace.experiments import per_atom as pa

    return pa.as_json(pa.per_atom(ctx.last, ctx.rows, ctx.all_frames, seeds=ctx.seeds, n_test=ctx.cfg.n_test,
                                  dataset=ctx.dataset, fingerprints=ctx.fingerprints, errors=ctx.pointwise))


def _write_per_atom(ctx: Context, out: dict) -> None:
    from mlipspace.experiments import per_atom as pa

    pa.write_per_atom(Path(ctx.cfg.out) / pa.NPZ_NAME, out)


def _variant_pairs(ctx: Context) -> dict:
    from mlipspace.experiments import variants

    return {(s, t): {"group": label} for label, a, b in variants.available_pairs(ctx.models)
            for s, t in ((a, b), (b, a))}


def _finetune_pairs(ctx: Context) -> dict:
    from mlipspace.experiments.finetune import BUNDLED_FINETUNE

    tuned, refs = BUNDLED_FINETUNE
    return {(s, t): {"relation": rel} for m, rel in refs if tuned in ctx.models and m in ctx.models
            for s, t in ((tuned, m), (m, tuned))}


def _variants(ctx: Context, advance) -> dict:
    """Sub-matrices of the cross-model comparison: its numbers relabelled (computed only without it)."""
    from mlipspace.experiments import variants
    from mlipspace.experiments.cross_model import relabel

    recs = relabel(ctx.records, _variant_pairs(ctx), "variants")
    if recs is None:
        recs = variants.variants(ctx.last, ctx.rows, metrics=ctx.metrics, n_test=ctx.cfg.n_test, **ctx.common)
    return {"records": recs}


def _finetune(ctx: Context, advance) -> dict:
    from mlipspace.experiments import finetune
    from mlipspace.experiments.cross_model import relabel

    recs = relabel(ctx.records, _finetune_pairs(ctx), "finetune")
    if recs is None:
        recs = finetune.finetune_bundled(ctx.last, ctx.rows, metrics=ctx.metrics, n_test=ctx.cfg.n_test, **ctx.common)
    meta = {} if recs else {"finetune_note": "Bundled fine-tuning comparison not run: it needs chgnet-r2scan and "
                                             "chgnet-0.3.0 among the models."}
    return {"records": recs, "meta": meta}


def _layer_pairs(ctx: Context, advance) -> dict:
    from mlipspace.experiments import layers

    out = []
    for m, feats in ctx.model_layers.items():
        if len(feats) >= 2:
            out += layers.layer_pairs(feats, ctx.rows, model=m, seeds=ctx.seeds[:1], n_test=ctx.cfg.n_test,
                                      dataset=ctx.dataset, fingerprints=ctx.fingerprints)
    return {"records": out}


def representatives(models: Sequence[str], families: Mapping[str, str]) -> list[str]:
    """The first model of each family (in ``models`` order): the targets of the per-layer comparison."""
    seen: dict[str, str] = {}
    for m in models:
        seen.setdefault(families.get(m, m), m)
    return list(seen.values())


def _layers_cross(ctx: Context, advance) -> dict:
    from mlipspace.experiments import layers

    return {"records": layers.cross_model_layers(ctx.model_layers, ctx.rows, seeds=ctx.seeds[:1],
                                                 n_test=ctx.cfg.n_test, dataset=ctx.dataset,
                                                 fingerprints=ctx.fingerprints, progress=advance,
                                                 targets=representatives(ctx.models, ctx.families))}


def _layer_correspondence(ctx: Context, advance) -> dict:
    from mlipspace.experiments import layers
    from mlipspace.experiments.study import LAYER_CORRESPONDENCE

    a, b = LAYER_CORRESPONDENCE
    return {"records": layers.layer_correspondence(
        ctx.model_layers[a], ctx.model_layers[b], ctx.rows, model_a=a, model_b=b, seeds=ctx.seeds[:1],
        n_test=ctx.cfg.n_test, dataset=ctx.dataset, fingerprints=ctx.fingerprints)}


def _has_layer_pair(ctx: Context) -> bool:
    from mlipspace.experiments.study import LAYER_CORRESPONDENCE

    return ctx.cfg.layers and ctx.cfg.layer_correspondence and set(LAYER_CORRESPONDENCE) <= set(ctx.models)


def _agreement(ctx: Context, advance) -> dict:
    """Energy disagreement of the models whose readout runs here, and its correlation with the
    cross-model GFRE/CKA already computed (cached: a rerun loads no model)."""
    from mlipspace.experiments import agreement

    notes: list[str] = []
    energies = agreement.readout_energies(ctx.last, ctx.rows, device=ctx.cfg.device, notes=notes,
                                          verbose=ctx.cfg.verbose)
    if len(energies) < 2:
        return {"records": [], "notes": notes + ["Energy agreement not run: fewer than 2 models with a readout."]}
    feats = [r for r in ctx.records if r.get("analysis") == "cross-model" and r.get("level") == "atom"]
    return {"records": agreement.agreement(energies, ctx.rows, feats, dataset=ctx.dataset,
                                           fingerprints=ctx.fingerprints), "notes": notes}


def _orders(ctx: Context, advance) -> dict:
    from mlipspace.experiments import cumulant_orders

    out = []
    for m, X in ctx.last.items():
        out += cumulant_orders.order_table(X, ctx.rows["frame"], ctx.rows["subset"], max_order=ctx.cfg.max_order,
                                           seeds=ctx.seeds, metrics=("gfre",), model=m, dataset=ctx.dataset)
    return {"records": out}


def _probe(ctx: Context, advance) -> dict:
    from mlipspace.experiments import probe

    if ctx.energy is None:
        return {"records": [], "meta": {"probe_note": (
            f"Energy probe and PCovR maps skipped: the dataset {ctx.dataset} has no DFT energy labels (looked for "
            "info['energy'], the ASE calculator and info['REF_energy']; --energy-key to name another); run on a "
            "labelled dataset, e.g. ../shared/data/mad-bench-mad-reduced.xyz.")}}
    out = []
    for level in ("atom", "structure"):
        out += probe.probe(ctx.last, ctx.rows, ctx.energy, level=level, order=ctx.cfg.order, seeds=ctx.seeds,
                           dataset=ctx.dataset, fingerprints=ctx.fingerprints)
    return {"records": out}


def _maps(ctx: Context, advance) -> dict:
    from mlipspace.experiments import probe

    out = {"records": [], "maps": probe.maps(ctx.last, ctx.rows, order=2, energy=ctx.energy)}
    if ctx.energy is not None:
        out["meta"] = {"map_colour": probe.residual_energy(ctx.rows, ctx.energy).tolist(),
                       "map_colour_label": "residual energy per atom (eV/atom)"}
    return out


def _finetune_live(ctx: Context, advance) -> dict:
    from mlipspace.data import read
    from mlipspace.experiments import finetune

    cfg = ctx.cfg
    log = (lambda m: ctx.console.print(f"  {m}", highlight=False)) if ctx.console is not None else None
    recs, ft_meta = finetune.track(read(cfg.finetune_data), Path(cfg.out) / "finetune", epochs=cfg.finetune_epochs,
                                   seeds=ctx.seeds, dataset=cfg.finetune_data, log=log)
    return {"records": recs, "meta": {"finetune": dict(ft_meta, data=cfg.finetune_data)}}


#: The study, in order. Records come out in this order (results.json is deterministic).
STUDY: tuple[Analysis, ...] = (
    Analysis("cross-model (atom)", lambda c: f"{_names(c.metrics)} of {c.n_pairs} ordered pairs × {len(c.seeds)} "
             "seeds; coverage of the test atoms", _cross("atom", {"coverage": "covered"}, keep=True),
             _two_models,
             steps=lambda c: len(c.seeds) * len(c.metrics), key=lambda c: ("atom",)),
    Analysis("cross-model (structure)", lambda c: f"{_names(c.metrics)} of {c.n_pairs} ordered pairs × "
             f"{len(c.seeds)} seeds, cumulants of order {c.cfg.order}", _cross("structure"), _two_models,
             steps=lambda c: len(c.seeds) * len(c.metrics), key=lambda c: ("structure",)),
    Analysis("cross-model (study split)", lambda c: f"{_names(c.metrics)} of {c.n_pairs} pairs with the study's "
             "per-atom split (one seed, as the study); symmetry twins", _cross("atom-ungrouped", {"leakage": "no-twins"},
                                                                              seeds=1), _two_models,
             key=lambda c: ("ungrouped",)),
    Analysis("similarity (atom)", lambda c: f"{_names(SIMILARITY_DEFAULT)} of {c.n_pairs // 2} model pairs × "
             f"{len(c.seeds)} seeds, permutation null", _cross("atom", metrics=SIMILARITY_DEFAULT), _two_models,
             key=lambda c: ("similarity",)),
    Analysis("per-atom", lambda c: f"pointwise GFRE of every test atom, {c.n_pairs} pairs × {len(c.seeds)} seeds",
             _per_atom,
             _two_models, after=_write_per_atom),
    Analysis("variants", lambda c: f"{len(_variant_pairs(c)) // 2} same-architecture pairs", _variants),
    Analysis("fine-tuning", lambda c: "CHGNet-r2SCAN vs parent and independent models", _finetune),
    Analysis("layers", lambda c: f"layer pairs of {len(c.models)} models", _layer_pairs, lambda c: c.cfg.layers),
    Analysis("layers-cross", lambda c: "each layer vs one model per family", _layers_cross,
             lambda c: c.cfg.layers and len(c.models) >= 2, steps=lambda c: sum(map(len, c.model_layers.values()))),
    Analysis("layer correspondence", lambda c: "every layer of CHGNet-0.3.0 vs every layer of SevenNet-0 "
             "(GFRE both ways, CKA) and the best-matching depths", _layer_correspondence, _has_layer_pair),
    Analysis("cumulant orders", lambda c: f"orders 1..{c.cfg.max_order} of each model's last layer", _orders,
             lambda c: c.cfg.orders),
    Analysis("probe", lambda c: "energy per atom from features (ridge, cross-validated)", _probe,
             lambda c: c.cfg.probe, key=lambda c: (c.energy is not None,)),
    Analysis("maps", lambda c: "PCA (and PCovR) maps of the structure features", _maps, lambda c: c.cfg.maps,
             key=lambda c: (c.energy is not None,)),
    Analysis("agreement", lambda c: "energies from each model's readout vs feature distance", _agreement,
             lambda c: c.cfg.agreement and len(c.models) >= 2),
    Analysis("live fine-tuning", lambda c: f"CHGNet on {c.cfg.finetune_data}, {c.cfg.finetune_epochs} epochs + "
             "control", _finetune_live, lambda c: bool(c.cfg.finetune_data), cached=False),
)

def run_steps(ctx: Context, steps: Sequence[Analysis], stages, cache, base_key) -> tuple[dict, dict]:
    """Run ``steps`` in order (skipping those whose ``when`` is false), each as a timed stage with its
    cached output; the records accumulate in ``ctx.records``. Returns ``(maps, meta)``."""
    from mlipspace.experiments.study import _cache_key

    maps: dict = {}
    meta: dict = {"notes": []}
    for step in steps:
        if not step.when(ctx):
            continue
        with stages.stage(step.name, step.describe(ctx)):
            with stages.bar(step.name, step.steps(ctx) if step.steps else 0) as advance:
                run = (lambda s=step, a=advance: s.compute(ctx, a))
                out = cache.get(_slug(step.name), _cache_key(base_key, *step.key(ctx)), run)[0] if step.cached \
                    else run()
            if step.after is not None:
                step.after(ctx, out)
        ctx.records += out.get("records", [])
        meta["notes"] += out.get("notes", [])
        meta.update(out.get("meta", {}))
        maps.update(out.get("maps", {}))
    return maps, meta


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").replace("--", "-")
