"""CLI commands of the study: ``run`` (the main job), ``compare``, ``variants``, ``finetune``,
``finetune-track``, ``layers``, ``agreement``, ``probe`` and ``report``. Thin: parse, call mlipspace.experiments /
mlipspace.report, print."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlipspace.commands.apps import ENERGY_KEY, FORCES_KEY, app

_SEEDS = typer.Option(3, "--seeds", help="Number of seeded grouped splits (value = mean, spread = std over seeds).")
_STORE = typer.Option(..., "--store", "-s", help="Feature store directory (filled by `mlipspace run` or `mlipspace extract`).")
_DATASET = typer.Option(None, "--dataset", "-d", help="Dataset in the store: key, fingerprint prefix or spec (default: the only one).")
_MODELS = typer.Option(None, "--models", "-m", help="Models, comma-separated (default: all in the store / all available).")
_JSON = typer.Option(False, "--json", help="Print the records as JSON instead of tables.")
_OUTPUT = typer.Option(None, "--output", "-o", help="Also write the records to this JSON file.")
_WORKERS = typer.Option(None, "--workers", "-w", help="Run the analyses as tasks on a Dask LocalCluster of N one-thread processes (same results).")
_SCHEDULER = typer.Option(None, "--scheduler", help="Run the analyses on an existing Dask cluster, e.g. tcp://host:8786 (same results).")


def _split(s: str | None) -> list[str] | None:
    return [p.strip() for p in s.split(",") if p.strip()] if s else None


def _open(store: Path, dataset: str | None, models: str | None, layer: str = "last"):
    """``(features, rows, spec, fingerprints, store, key, models)`` for store-reading commands."""
    from mlipspace.errors import InputError
    from mlipspace.experiments.study import load_features
    from mlipspace.store import FeatureStore

    st = FeatureStore(store)
    if dataset is None:
        keys = st.datasets()
        if len(keys) != 1:
            raise InputError(f"{store} holds {len(keys)} datasets ({', '.join(keys) or 'none'}): choose one with --dataset")
        key = keys[0]
    else:
        key = st.resolve(dataset)
    names = _split(models) or st.models(key)
    missing = [m for m in names if m not in st.models(key)]
    if missing:
        raise InputError(f"{store}: dataset {key} has no features of {', '.join(missing)} "
                         f"(stored: {', '.join(st.models(key)) or 'none'})")
    feats, rows = load_features(st, key, names, layer)
    from threadpoolctl import threadpool_limits

    # one BLAS thread for this command's analyses (see mlipspace.experiments.study.blas_threads)
    threadpool_limits(limits=1)
    spec = st.dataset_info(key).get("spec") or key
    fps = {m: st.fingerprint(key, m) for m in names}
    return feats, rows, spec, fps, st, key, names


def _emit(records: list[dict], as_json: bool, output: Path | None, table) -> None:
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        from mlipspace.report.results import dumps, write_table

        output.write_text(dumps(records))
        write_table(output.with_suffix(".csv"), records)  # beside the JSON: one row per record
    if as_json:
        typer.echo(json.dumps(records, indent=1))
    else:
        table()


def _matrix_tables(records: list[dict], console: Console) -> None:
    from mlipspace.records import matrix, mean_off_diagonal

    combos = list(dict.fromkeys((r["metric"], r["level"]) for r in records))
    for metric, level in combos:
        names, M, S = matrix(records, metric, level)
        t = Table(title=f"{metric.upper()} ({level} level): rows = source, columns = target; "
                        f"mean off-diagonal {mean_off_diagonal(records, metric, level):.3f}")
        t.add_column("source \\ target")
        for n in names:
            t.add_column(n, justify="right")
        for i, n in enumerate(names):
            t.add_row(n, *["—" if i == j else f"{M[i, j]:.3f}±{S[i, j]:.3f}" for j in range(len(names))])
        console.print(t)


def _record_table(records: list[dict], title: str, cols: list[str]) -> Table:
    t = Table(title=title)
    for c in cols + ["value", "spread"]:
        t.add_column(c, justify="right" if c in ("value", "spread", "epoch") else "left")
    for r in records:
        t.add_row(*[str(r.get(c, "")) for c in cols], f"{r['value']:.4f}", f"{r['spread']:.4f}")
    return t


@app.command("run")
def run(
    data: str = typer.Argument("builtin:mad-mini", help="Dataset: path, glob or builtin:mad-mini[?size=N&seed=S]."),
    models: str = typer.Option(None, "--models", "-m", help="Models, comma-separated (default: every bundled model available here)."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Output folder: index.html, results.json, figures, store."),
    size: int = typer.Option(None, "--size", help="Structures of the builtin dataset (default 200: about 6 min on 2 CPU cores, store included)."),
    seeds: int = _SEEDS,
    store: Path = typer.Option(None, "--store", "-s", help="Feature store (default OUT/features.zarr); reused across runs."),
    order: int = typer.Option(3, "--order", help="Cumulant order of the structure-level features."),
    lfre: bool = typer.Option(True, "--lfre/--no-lfre", help="Compute LFRE besides GFRE (the slower metric)."),
    lfre_max_test: int = typer.Option(500, "--lfre-max-test", help="Test rows LFRE is evaluated on per seed (one local fit each)."),
    lfre_mode: str = typer.Option("exact", "--lfre-mode", help="'exact' or 'fast' (mixed precision; see docs/metrics.md: on the study's per-atom split one row deviated by 5.4)."),
    energy_key: str = ENERGY_KEY,
    forces_key: str = FORCES_KEY,
    layers: bool = typer.Option(True, "--layers/--no-layers", help="Layer analyses (every layer of every model)."),
    layer_correspondence: bool = typer.Option(True, "--layer-correspondence/--no-layer-correspondence", help="Match the layers of CHGNet-0.3.0 and SevenNet-0 (when both run; a few seconds)."),
    agreement: bool = typer.Option(True, "--agreement/--no-agreement", help="Energy disagreement of the models with a readout vs feature distance (loads those models once; cached)."),
    finetune: str = typer.Option(None, "--finetune", help="Also fine-tune CHGNet live on this labelled data (e.g. ../shared/data/mlearn/Si_training.json) and track every epoch (slow: minutes per epoch)."),
    finetune_epochs: int = typer.Option(3, "--finetune-epochs", help="Epochs of the live fine-tuning."),
    outlier_threshold: float = typer.Option(20.0, "--outlier-threshold", help="Leave out structures with an atom whose features lie this many median distances from the median (0: keep all)."),
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu' or 'cuda'."),
    blas_threads: int = typer.Option(1, "--blas-threads", help="BLAS/OpenMP threads of the analyses (1 is fastest on a shared, loaded machine)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary (paths, timing) at the end."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every warning of the model packages (default: one summary line per model)."),
    no_create_env: bool = typer.Option(False, "--no-create-env", help="Fail instead of making a missing checkpoint-family environment."),
    workers: int = _WORKERS,
    scheduler: str = _SCHEDULER,
) -> None:
    """Run the whole study: data, features of every model, all analyses, then the report (OUT/index.html)."""
    from mlipspace.errors import InputError
    from mlipspace.experiments.study import StudyConfig
    from mlipspace.report import findings, load_results

    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    cfg = StudyConfig(data=data, models=_split(models), out=str(out), size=size, seeds=seeds,
                      store=None if store is None else str(store), order=order, lfre=lfre,
                      lfre_max_test=lfre_max_test, lfre_mode=lfre_mode, layers=layers, device=device,
                      layer_correspondence=layer_correspondence, agreement=agreement,
                      energy_key=energy_key, forces_key=forces_key,
                      outlier_threshold=outlier_threshold, finetune_data=finetune, finetune_epochs=finetune_epochs,
                      blas_threads=blas_threads, verbose=verbose, workers=workers, scheduler=scheduler)
    if no_create_env and cfg.models:
        from mlipspace.commands.envs import refuse_missing_envs

        refuse_missing_envs(cfg.models)
    console = None if (quiet or as_json) else Console()
    summary = run_study(cfg, console=console)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    if console is not None:
        res = load_results(summary["results"])
        console.rule("findings")
        for f in findings(res):
            tag = {"holds": "[green]holds[/]", "does not hold": "[red]does not hold[/]",
                   "inconclusive": "[yellow]inconclusive[/]"}.get(f.verdict, "[dim]not tested[/]")
            console.print(f"{tag} [bold]{f.title}[/]: {f.text}", highlight=False)
        console.print(f"report: [bold]{summary['report']}[/]  ({summary['timing']['total']:.0f} s in total)",
                      highlight=False)


@app.command("compare")
def compare(
    store: Path = _STORE,
    dataset: str = _DATASET,
    models: str = _MODELS,
    metric: str = typer.Option(
        "gfre,lfre", "--metric",
        help="Metrics, comma-separated: gfre, lfre, gfrd (reconstruction errors); cka, cka_debiased, rbf_cka, "
             "mknn, cknna, procrustes (similarity measures, with a permutation null).",
    ),
    level: str = typer.Option("atom", "--level", help="'atom' (per-atom features, grouped split), 'structure' (cumulants) or 'atom-ungrouped' (the study's per-atom split)."),
    order: int = typer.Option(3, "--order", help="Cumulant order for --level structure."),
    seeds: int = _SEEDS,
    layer: str = typer.Option("last", "--layer", help="Layer to compare."),
    lfre_max_test: int = typer.Option(500, "--lfre-max-test", help="Test rows LFRE is evaluated on."),
    as_json: bool = _JSON,
    output: Path = _OUTPUT,
    per_atom: bool = typer.Option(False, "--per-atom", help="Also the pointwise GFRE of every test atom (seed 0): records per element/subset/coordination and per_atom.npz next to --output."),
    workers: int = _WORKERS,
    scheduler: str = _SCHEDULER,
) -> None:
    """Cross-model GFRE/LFRE matrix (both directions) from a feature store."""
    from mlipspace.experiments.cross_model import cross_model
    from mlipspace.experiments.distributed import StoreFeatures, StoreSpec, analysis_client

    feats, rows, spec, fps, st, key, names = _open(store, dataset, models, layer)
    with analysis_client(workers, scheduler) as client:
        compared = feats if client is None else StoreFeatures(StoreSpec(str(st.path), key, layer), names, arrays=feats)
        # with a client the tasks read their features from the store themselves
        recs = cross_model(compared, rows, metrics=_split(metric), level=level, order=order, seeds=list(range(seeds)),
                           layer=layer, dataset=spec, fingerprints=fps, lfre_max_test=lfre_max_test, client=client)
    extra = []
    if per_atom:
        from mlipspace.experiments import per_atom as pa

        got = pa.per_atom(feats, rows, st.frames(key), layer=layer, dataset=spec, fingerprints=fps)
        pa.write_per_atom((output.parent if output is not None else Path(".")) / pa.NPZ_NAME, got)
        extra = got["records"]
    _emit(recs + extra, as_json, output, lambda: _matrix_tables(recs, Console()))


def _stored_models(store: Path, dataset: str | None) -> list[str]:
    """Models stored for ``dataset`` (or for the store's only dataset); [] if that is ambiguous."""
    from mlipspace.store import FeatureStore

    st = FeatureStore(store)
    keys = st.datasets() if dataset is None else [st.resolve(dataset)]
    return list(st.models(keys[0])) if len(keys) == 1 else []


@app.command("variants")
def variants_cmd(
    store: Path = _STORE,
    dataset: str = _DATASET,
    metric: str = typer.Option("gfre,lfre", "--metric", help="Metrics, comma-separated."),
    seeds: int = _SEEDS,
    as_json: bool = _JSON,
    output: Path = _OUTPUT,
) -> None:
    """Same-architecture variants (SevenNet-0 May/Jul, l3i5, MF-0 heads, CHGNet 0.2.0/0.3.0) from a store."""
    from mlipspace.experiments.variants import VARIANT_PAIRS, available_pairs, variants

    stored = _stored_models(store, dataset)
    used = sorted({m for _, a, b in available_pairs(stored) for m in (a, b)})
    if not used:
        from mlipspace.errors import InputError

        raise InputError(f"{store}: no variant pair stored; pairs: "
                         + "; ".join(f"{a} vs {b}" for _, a, b in VARIANT_PAIRS))
    feats, rows, spec, fps, *_ = _open(store, dataset, ",".join(used))
    recs = variants(feats, rows, metrics=_split(metric), seeds=list(range(seeds)), dataset=spec, fingerprints=fps)
    _emit(recs, as_json, output, lambda: Console().print(
        _record_table(recs, "same-architecture variants", ["group", "source", "target", "metric"])))


@app.command("finetune")
def finetune_cmd(
    store: Path = _STORE,
    dataset: str = _DATASET,
    metric: str = typer.Option("gfre,lfre", "--metric", help="Metrics, comma-separated."),
    seeds: int = _SEEDS,
    as_json: bool = _JSON,
    output: Path = _OUTPUT,
) -> None:
    """Bundled fine-tuning bias: CHGNet-r2SCAN vs its parent CHGNet 0.3.0, CHGNet 0.2.0 and DIEP."""
    from mlipspace.errors import InputError
    from mlipspace.experiments.finetune import BUNDLED_FINETUNE, finetune_bundled

    stored = set(_stored_models(store, dataset))
    tuned, refs = BUNDLED_FINETUNE
    used = [tuned] + [m for m, _ in refs if m in stored]
    if tuned not in stored or len(used) < 2:
        raise InputError(f"{store}: needs features of {tuned} and at least one of {', '.join(m for m, _ in refs)}")
    feats, rows, spec, fps, *_ = _open(store, dataset, ",".join(used))
    recs = finetune_bundled(feats, rows, metrics=_split(metric), seeds=list(range(seeds)), dataset=spec,
                            fingerprints=fps)
    _emit(recs, as_json, output, lambda: Console().print(
        _record_table(recs, "fine-tuning bias (bundled)", ["relation", "source", "target", "metric"])))


@app.command("finetune-track")
def finetune_track_cmd(
    data: str = typer.Argument(..., help="Labelled training data (energy, ideally forces), e.g. ../shared/data/mlearn/Si_training.json."),
    model: str = typer.Option("chgnet-0.3.0", "--model", help="Pre-trained CHGNet to fine-tune."),
    epochs: int = typer.Option(5, "--epochs", help="Training epochs (one checkpoint after each)."),
    out: Path = typer.Option(Path("finetune-track"), "--out", "-o", help="Output folder: checkpoints/, results.json, index.html."),
    checkpoints: str = typer.Option(None, "--checkpoints", help="Use these existing fine-tuning checkpoints instead of training (glob, quote it)."),
    control: str = typer.Option(None, "--control", help="Existing from-scratch control checkpoints (glob); default: train one unless --no-control."),
    no_control: bool = typer.Option(False, "--no-control", help="Do not train the from-scratch control."),
    eval_data: str = typer.Option(None, "--eval", help="Structures the features are compared on (default: the training data)."),
    max_structures: int = typer.Option(None, "--max-structures", help="Use only the first N structures of DATA."),
    learning_rate: float = typer.Option(None, "--lr", help="Learning rate (default 1e-4 fine-tuning, 1e-3 from scratch)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Training batch size."),
    seeds: int = _SEEDS,
    metric: str = typer.Option("gfre", "--metric", help="Metrics, comma-separated."),
    as_json: bool = _JSON,
) -> None:
    """Fine-tune CHGNet with its own trainer, keep every epoch's checkpoint, and track their FRE.

    Reports, for every checkpoint of the training trajectory (epoch order, not best-so-far), the FRE
    against the pre-trained model and against a from-scratch control of the same architecture.
    """
    from mlipspace.data import read
    from mlipspace.errors import InputError
    from mlipspace.experiments import finetune
    from mlipspace.report import write_report
    from mlipspace.report.results import make_results, write_results

    console = None if as_json else Console()
    frames = read(data)
    if max_structures is not None:
        frames = frames[:max_structures]
    if len(frames) < 3:
        raise InputError(f"{data}: {len(frames)} structures; fine-tuning needs at least 3")
    recs, ft_meta = finetune.track(
        frames, out / "checkpoints", model=model, epochs=epochs, control=not no_control, checkpoints=checkpoints,
        control_checkpoints=control, eval_frames=read(eval_data) if eval_data else None,
        seeds=list(range(seeds)), metrics=_split(metric), learning_rate=learning_rate, batch_size=batch_size,
        dataset=eval_data or data, log=(lambda m: console.print(f"[bold cyan]▶[/] {m}")) if console else None)
    n_eval = ft_meta["n_eval_frames"]
    results = make_results(recs, {
        "dataset": {"name": eval_data or data, "n_frames": n_eval},
        "models": {model: {"family": "chgnet", "fingerprint": ft_meta["fingerprint"], "layers": ["last"]}},
        "finetune": dict(ft_meta, data=data),
    })
    path = write_results(out / "results.json", results)
    report = write_report(path, out)
    if as_json:
        typer.echo(json.dumps(recs, indent=1))
        return
    Console().print(_record_table(recs, "FRE along the fine-tuning trajectory", ["run", "epoch", "source", "target", "metric"]))
    Console().print(f"report: [bold]{report}[/]", highlight=False)


@app.command("layers")
def layers_cmd(
    store: Path = _STORE,
    dataset: str = _DATASET,
    model: str = typer.Option(None, "--model", help="Model whose layers are compared with each other."),
    cross: bool = typer.Option(False, "--cross", help="Also each layer of MODEL vs the last layer of every other stored model."),
    across: str = typer.Option(None, "--across", help="MODEL_A,MODEL_B: every layer of A vs every layer of B (GFRE both ways, CKA) and each layer's best match."),
    metric: str = typer.Option("gfre", "--metric", help="Metrics, comma-separated."),
    seeds: int = typer.Option(1, "--seeds", help="Number of seeded grouped splits."),
    as_json: bool = _JSON,
    output: Path = _OUTPUT,
) -> None:
    """FRE between every pair of layers of one model (and, with --cross, each layer vs other models);
    with --across A,B, the layer correspondence between two models."""
    from mlipspace.errors import InputError
    from mlipspace.experiments import layers
    from mlipspace.experiments.study import layer_order, load_features

    if across:
        return _layers_across(store, dataset, across, seeds, as_json, output)
    if not model:
        raise InputError("give --model MODEL (layers of one model) or --across MODEL_A,MODEL_B")
    _, rows, spec, fps, st, key, _ = _open(store, dataset, model)
    order = layer_order(st.layers(key, model))
    feats = {lay: load_features(st, key, [model], lay)[0][model] for lay in order}
    recs = layers.layer_pairs(feats, rows, model=model, metrics=_split(metric), seeds=list(range(seeds)),
                              dataset=spec, fingerprints=fps)
    if cross:
        others = [m for m in st.models(key) if m != model]
        ml = {model: feats}
        for m in others:
            ml[m] = {"last": load_features(st, key, [m], "last")[0][m]}
        fps.update({m: st.fingerprint(key, m) for m in others})
        recs += [r for r in layers.cross_model_layers(ml, rows, metrics=_split(metric), seeds=list(range(seeds)),
                                                      dataset=spec, fingerprints=fps) if r["source"] == model]
    _emit(recs, as_json, output, lambda: Console().print(
        _record_table(recs, f"layers of {model}", ["analysis", "source_layer", "target", "target_layer", "metric"])))


def _layers_across(store: Path, dataset: str | None, across: str, seeds: int, as_json: bool, output: Path | None):
    """``layers --across A,B``: layer x layer GFRE/CKA of two models and each layer's best match."""
    from mlipspace.errors import InputError
    from mlipspace.experiments.layers import layer_correspondence
    from mlipspace.experiments.study import layer_order, load_features

    pair = _split(across) or []
    if len(pair) != 2 or pair[0] == pair[1]:
        raise InputError(f"--across takes two different models, MODEL_A,MODEL_B; got {across!r}")
    _, rows, spec, fps, st, key, _ = _open(store, dataset, ",".join(pair))
    ml = {m: {lay: load_features(st, key, [m], lay)[0][m] for lay in layer_order(st.layers(key, m))}
          for m in pair}
    recs = layer_correspondence(ml[pair[0]], ml[pair[1]], rows, model_a=pair[0], model_b=pair[1],
                                seeds=list(range(seeds)), dataset=spec, fingerprints=fps)

    def table():
        t = Table(title=f"layer correspondence {pair[0]} ↔ {pair[1]}: best match of each layer")
        for c in ("model", "layer", "depth", "criterion", "best", "depth ", "value", "95 % interval", "ambiguous"):
            t.add_column(c, justify="right" if c in ("depth", "depth ", "value") else "left")
        for r in recs:
            if r["analysis"] != "layer-match":
                continue
            ok = r["value"] is not None
            t.add_row(r["source"], r["source_layer"], f"{r['source_depth']:.2f}", r["metric"],
                      r.get("best_layer", "n/a"), f"{r['best_depth']:.2f}" if ok else "",
                      f"{r['value']:.3f}" if ok else r.get("reason", ""),
                      f"{r['ci_low']:.3f}–{r['ci_high']:.3f}" if ok else "", "yes" if r.get("ambiguous") else "no")
        Console(width=max(Console().width, 150)).print(t)

    _emit(recs, as_json, output, table)


@app.command("agreement")
def agreement_cmd(
    store: Path = _STORE,
    dataset: str = _DATASET,
    models: str = _MODELS,
    seeds: int = _SEEDS,
    device: str = typer.Option("cpu", "--device", help="Device the models' readouts run on."),
    outlier_threshold: float = typer.Option(20.0, "--outlier-threshold", help="Leave out structures with an atom whose features lie this many median distances from the median, as `run` does (0: keep all)."),
    as_json: bool = _JSON,
    output: Path = _OUTPUT,
) -> None:
    """Does feature similarity predict behaviour? Energy disagreement of every pair of models with a readout
    (from their stored last-layer features) and its rank correlation with GFRE and CKA."""
    import numpy as np

    from mlipspace.errors import InputError
    from mlipspace.experiments import agreement as ag
    from mlipspace.experiments.cross_model import cross_model

    feats, rows, spec, fps, *_ = _open(store, dataset, models)
    if outlier_threshold:  # one such structure dominates every RMS (energies of thousands of meV/atom)
        from mlipspace.experiments.study import screen_outliers

        feats, rows, _, notes, _ = screen_outliers(feats, rows, outlier_threshold)
        for note in notes:
            Console(stderr=True).print(note, highlight=False)
    notes: list[str] = []
    energies = ag.readout_energies(feats, rows, device=device, notes=notes)
    for n in notes:
        Console(stderr=True).print(f"[yellow]{n}[/]", highlight=False)
    if len(energies) < 2:
        raise InputError(f"{store}: fewer than 2 stored models can run their readout here ({', '.join(energies) or 'none'})")
    used = {m: feats[m] for m in energies}
    frecs = cross_model(used, rows, metrics=("gfre", "cka"), seeds=list(range(seeds)), dataset=spec, fingerprints=fps)
    recs = ag.agreement(energies, rows, frecs, dataset=spec, fingerprints=fps)

    def table():
        Console().print(_record_table([r for r in recs if r["analysis"] == "agreement"],
                                      "energy disagreement (meV/atom, RMS over structures)", ["source", "target"]))
        from mlipspace.report.agreement import verdict

        for r in recs:
            if r["analysis"] == "agreement-correlation":
                Console().print(verdict(r), highlight=False)

    _emit(recs, as_json, output, table)


@app.command("probe")
def probe_cmd(
    store: Path = _STORE,
    dataset: str = _DATASET,
    models: str = _MODELS,
    level: str = typer.Option("atom,structure", "--level", help="'atom' (summed features), 'structure' (cumulants), or both."),
    order: int = typer.Option(3, "--order", help="Cumulant order for the structure level."),
    seeds: int = _SEEDS,
    as_json: bool = _JSON,
    output: Path = _OUTPUT,
) -> None:
    """Energy probe: CV RMSE (meV/atom) of ridge from features to the DFT energy after a composition baseline."""
    from mlipspace.errors import InputError
    from mlipspace.experiments import probe

    feats, rows, spec, fps, st, key, _ = _open(store, dataset, models)
    energy = probe.energies(st.frames(key))
    if energy is None:
        raise InputError(f"dataset {spec} has no DFT energy labels (atoms.info['energy']): nothing to probe")
    recs = []
    for lv in _split(level):
        recs += probe.probe(feats, rows, energy, level=lv, order=order, seeds=list(range(seeds)), dataset=spec,
                            fingerprints=fps)
    _emit(recs, as_json, output, lambda: Console().print(
        _record_table(recs, "energy probe: CV RMSE (meV/atom)", ["level", "source"])))


@app.command("report")
def report_cmd(
    results: Path = typer.Option(..., "--results", "-r", help="results.json written by `mlipspace run`."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: the folder of results.json)."),
    merge: list[Path] = typer.Option(None, "--merge", help="Add the analyses of another results.json (e.g. of finetune-track); repeatable."),
) -> None:
    """Rebuild index.html (figures, tables, summary) and the chemiscope file from a results.json."""
    from mlipspace.report import write_report

    path = write_report(results, out, merge=merge or ())
    Console().print(f"report: [bold]{path}[/]", highlight=False)


def run_study(cfg, console=None) -> dict:
    """Run the whole study (:mod:`mlipspace.experiments.study`), then write its results and report;
    returns ``{"results": path, "report": path, "timing": {...}}``. It lives here, above both the
    experiments and the report, so that neither imports the other."""
    from mlipspace.experiments.distributed import analysis_client
    from mlipspace.experiments.study import (
        RESULTS_NAME,
        Stages,
        blas_threads,
        cm_fp,
        layer_order,
        prepare_features,
        run_analyses,
    )
    from mlipspace.report import write_report
    from mlipspace.report.results import make_results, write_results, write_table

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(console)
    prep = prepare_features(cfg, stages, console)
    with blas_threads(cfg.blas_threads), analysis_client(cfg.workers, cfg.scheduler) as client:
        records, maps, meta_extra = run_analyses(cfg, prep, stages, console, client=client)
    store, key = prep["store"], prep["key"]
    frames = meta_extra.pop("frames")
    with stages.stage("report", f"results.json, index.html, chemiscope file in {out}"):
        from mlipspace.data import write as write_frames

        write_frames(frames, out / "structures.xyz")
        models_meta = {}
        for m in prep["models"]:
            fp = store.fingerprint(key, m)
            models_meta[m] = {"family": meta_extra["families"].get(m, m), "fingerprint": fp,
                              "fingerprint_id": cm_fp(fp), "layers": layer_order(store.layers(key, m))}
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
