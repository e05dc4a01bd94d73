"""The feature store: per-atom features on disk, keyed by dataset × model × layer, with provenance.

Layout of a store directory (zarr v3, uncompressed chunks; see ``docs/store.md``)::

    STORE/zarr.json                                root group, attrs {"mlipspace_store": 1}
    STORE/datasets/<key>/                          key = first 12 hex digits of the dataset fingerprint
        zarr.json                                  attrs: fingerprint, spec, n_frames, n_atoms, subsets, labels
        rows/{frame,atom,Z,subset}                 row table of all atoms (subset as codes + categories)
        frames/{natoms,numbers,positions,cell,pbc,info[,energy,forces,stress]}
        models/<model>/                            attrs: fingerprint (+ its sha256), family
            rows/{frame,atom,Z,subset}             this model's rows (= dataset rows minus skipped frames),
                                                   attrs: skipped [[frame, reason], ...]
            layers/<layer>                         float32 (n_rows, d)
            structure/<name>                       structure-level arrays (e.g. cumulants) + attrs
    STORE/staging/<key>/<model>/shard_<start>_<stop>/   shards of an extraction in progress
    STORE/.tmp/                                    objects being built (invisible to readers)
    STORE/.locks/<key>/<model>.lock                one writer per dataset × model (see store/_lock.py)

Every object is built under ``.tmp`` and renamed into place, so what a reader sees is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.data.rows import check_aligned, row_table
from mlipspace.errors import InputError, StoreError
from mlipspace.store import _io
from mlipspace.store._frames import arrays_to_frames, frames_to_arrays

FORMAT_VERSION = 1
KEY_LENGTH = 12
ROW_KEYS = ("frame", "atom", "Z", "subset")
RESERVED_MODEL_NAMES = frozenset({"rows", "frames", "structure", "layers", "models"})
RESERVED_LAYER_NAMES = frozenset({"rows", "structure", "frames"})


def dataset_fingerprint(frames: Sequence[Atoms]) -> str:
    """The sha256 dataset key of ``frames`` (numbers, positions, cell, pbc of every frame)."""
    from mlipspace.data import fingerprint

    return fingerprint(frames)


def model_fingerprint_sha(fingerprint: Mapping) -> str:
    """sha256 of a model fingerprint dict in canonical JSON (what decides 'same model')."""
    return hashlib.sha256(json.dumps(dict(fingerprint), sort_keys=True, default=str).encode()).hexdigest()


def _check_name(name: str, what: str, reserved: frozenset[str]) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name in reserved:
        raise InputError(f"invalid {what} name {name!r} for the store (no '/', no leading '.', not one of "
                         f"{sorted(reserved)})")
    return name


def _write_coded(path: Path, values) -> None:
    """A string array stored as int32 codes with the sorted distinct strings as ``categories``."""
    categories, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    _io.write_array(path, codes.astype(np.int32).reshape(-1), {"categories": [str(c) for c in categories]})


def _read_maybe_coded(path: Path) -> np.ndarray:
    """A stored array; string arrays written by :func:`_write_coded` come back as strings."""
    arr = _io.read_array(path)
    categories = _io.attrs(path).get("categories")
    if categories is None:
        return arr
    return np.array(categories, dtype=str)[arr] if len(arr) else np.zeros(0, dtype="U1")


def _rows_to_arrays(rows: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    subset = np.asarray(rows["subset"]).astype(str)
    categories, codes = np.unique(subset, return_inverse=True)
    return (
        {"frame": np.asarray(rows["frame"], np.int64), "atom": np.asarray(rows["atom"], np.int32),
         "Z": np.asarray(rows["Z"], np.int32), "subset": codes.astype(np.int32).reshape(-1)},
        [str(c) for c in categories],
    )


def _write_rows(path: Path, rows: Mapping[str, np.ndarray], attrs: dict | None = None) -> None:
    arrays, categories = _rows_to_arrays(rows)
    _io.create_group(path, {"n_rows": int(len(arrays["frame"])), **(attrs or {})})
    for name, arr in arrays.items():
        _io.write_array(path / name, arr, {"categories": categories} if name == "subset" else None)


def _read_rows(path: Path) -> dict[str, np.ndarray]:
    out = {name: _io.read_array(path / name) for name in ("frame", "atom", "Z")}
    codes = _io.read_array(path / "subset")
    categories = np.array(_io.attrs(path / "subset").get("categories", []), dtype=str)
    out["subset"] = categories[codes] if len(codes) else np.zeros(0, dtype="U1")
    return out


class FeatureStore:
    """A feature store directory: read features, rows, frames and provenance; write structure arrays.

    ``mode="r"`` (default) needs an existing store; ``mode="a"`` creates it when missing. Datasets
    may be named by their key, a unique prefix of their fingerprint, the spec string they were
    read from, or the frames themselves (fingerprinted).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "a"):
            raise InputError(f"store mode must be 'r' or 'a', not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        marker = self.path / "zarr.json"
        if marker.is_file():
            try:
                version = _io.attrs(self.path).get("mlipspace_store")
            except (OSError, json.JSONDecodeError) as exc:
                raise StoreError(f"{self.path}: unreadable store metadata ({exc})") from exc
            if version is None:
                raise StoreError(f"{self.path} is a zarr group but not an mlipspace feature store")
            if version > FORMAT_VERSION:
                raise StoreError(f"{self.path}: store format {version} is newer than this mlipspace "
                                 f"(reads format <= {FORMAT_VERSION})")
        elif mode == "r":
            raise StoreError(f"{self.path}: no feature store here (run `mlipspace extract ... --store {self.path}`)")
        else:
            if self.path.exists() and not self.path.is_dir():
                raise StoreError(f"{self.path} is a file, not a feature store directory")
            # .tmp/.locks alone: another process is creating this store right now (not foreign content)
            if self.path.exists() and any(p.name not in (".tmp", ".locks") for p in self.path.iterdir()):
                raise StoreError(f"{self.path} exists, is not empty and is not a feature store")
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = _io.tmp_dir(self.path)
            _io.create_group(tmp, {"mlipspace_store": FORMAT_VERSION})
            os.replace(tmp / "zarr.json", marker)
            shutil.rmtree(tmp, ignore_errors=True)
        if mode == "a":
            for sub in ("datasets",):
                if not (self.path / sub / "zarr.json").is_file():
                    tmp = _io.tmp_dir(self.path)
                    _io.create_group(tmp)
                    _io.place(tmp, self.path / sub)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, mode={self.mode!r})"

    def _writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"{self.path} is open read-only; use FeatureStore(path, mode='a') to write")

    # ------------------------------------------------------------------------------ datasets
    def _ds_dir(self, key: str) -> Path:
        return self.path / "datasets" / key

    def datasets(self) -> list[str]:
        """Keys (12 hex digits) of the stored datasets."""
        return _io.children(self.path / "datasets")

    def resolve(self, dataset) -> str:
        """The key of ``dataset``: a key, a fingerprint or its unique prefix, a spec string, or frames."""
        keys = self.datasets()
        if isinstance(dataset, (list, tuple)) and (not dataset or isinstance(dataset[0], Atoms)):
            fp = dataset_fingerprint(dataset)
            if fp[:KEY_LENGTH] in keys:
                return fp[:KEY_LENGTH]
            raise StoreError(f"{self.path}: these {len(dataset)} frames (fingerprint {fp[:KEY_LENGTH]}) are not stored")
        if isinstance(dataset, os.PathLike):
            dataset = str(dataset)
        if not isinstance(dataset, str):
            raise InputError(f"dataset must be a key, fingerprint, spec string or frames, not {type(dataset).__name__}")
        if dataset in keys:
            return dataset
        if len(dataset) >= 4 and all(c in "0123456789abcdef" for c in dataset):
            hits = [k for k in keys if k.startswith(dataset[:KEY_LENGTH])
                    and self.dataset_info(k)["fingerprint"].startswith(dataset)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise StoreError(f"{self.path}: dataset prefix {dataset!r} is ambiguous ({', '.join(hits)})")
        by_spec = [k for k in keys if self.dataset_info(k).get("spec") == dataset]
        if len(by_spec) == 1:
            return by_spec[0]
        if len(by_spec) > 1:
            raise StoreError(f"{self.path}: several datasets were read from {dataset!r} ({', '.join(by_spec)}); "
                             "name one by its key")
        raise StoreError(f"{self.path}: no dataset {dataset!r} (stored: {', '.join(keys) or 'none'})")

    def dataset_info(self, dataset) -> dict:
        """Metadata of a dataset: fingerprint, spec, n_frames, n_atoms, elements, subsets, labels."""
        key = dataset if isinstance(dataset, str) and dataset in self.datasets() else self.resolve(dataset)
        return {"key": key, **_io.attrs(self._ds_dir(key))}

    def add_dataset(self, frames: Sequence[Atoms], spec: str | None = None) -> str:
        """Store ``frames`` (rows, structures, labels, metadata) unless already stored; return the key."""
        self._writable()
        fp = dataset_fingerprint(frames)
        key = fp[:KEY_LENGTH]
        final = self._ds_dir(key)
        if _io.is_node(final):
            stored = _io.attrs(final).get("fingerprint")
            if stored != fp:
                raise StoreError(f"{self.path}: dataset key {key} is taken by fingerprint {stored}, not {fp}")
            return key
        rows = row_table(frames)
        arrays = frames_to_arrays(frames)
        subsets, counts = np.unique(np.array([str(a.info.get("subset", "")) for a in frames] or [""], dtype=str),
                                    return_counts=True)
        info = {
            "fingerprint": fp,
            "spec": None if spec is None else str(spec),
            "n_frames": len(frames),
            "n_atoms": int(len(rows["frame"])),
            "elements": sorted({int(z) for z in rows["Z"]}),
            "subsets": {str(s): int(c) for s, c in zip(subsets, counts)} if len(frames) else {},
            "labels": [k for k in ("energy", "forces", "stress") if k in arrays],
        }
        tmp = _io.tmp_dir(self.path)
        _io.create_group(tmp, info)
        _write_rows(tmp / "rows", rows)
        _io.create_group(tmp / "frames")
        for name, arr in arrays.items():
            if arr.dtype.kind == "U":
                _write_coded(tmp / "frames" / name, arr)
            else:
                _io.write_array(tmp / "frames" / name, arr)
        _io.create_group(tmp / "models")
        _io.place(tmp, final)
        return key

    def rows(self, dataset, model: str | None = None) -> dict[str, np.ndarray]:
        """Row table (frame, atom, Z, subset) of a dataset, or of one model's features on it."""
        key = self.resolve(dataset)
        if model is None:
            return _read_rows(self._ds_dir(key) / "rows")
        return _read_rows(self._model_dir(key, model, need_rows=True) / "rows")

    def frames(self, dataset, indices: Sequence[int] | None = None) -> list[Atoms]:
        """The stored structures (with labels and JSON-able ``info``), optionally only ``indices``."""
        key = self.resolve(dataset)
        base = self._ds_dir(key) / "frames"
        arrays = {name: _read_maybe_coded(base / name) for name in _io.children(base)}
        return arrays_to_frames(arrays, indices)

    def frame_table(self, dataset) -> dict[str, np.ndarray]:
        """Per-frame metadata: ``natoms``, ``subset`` and, when stored, ``energy`` (F,) and ``stress`` (F, 6)."""
        key = self.resolve(dataset)
        base = self._ds_dir(key) / "frames"
        return {name: _read_maybe_coded(base / name) for name in ("natoms", "subset", "energy", "stress")
                if _io.is_node(base / name)}

    # -------------------------------------------------------------------------------- models
    def _model_dir(self, key: str, model: str, need_rows: bool = False) -> Path:
        path = self._ds_dir(key) / "models" / model
        if not _io.is_node(path):
            raise StoreError(f"{self.path}: dataset {key} has no features of model {model!r} "
                             f"(stored: {', '.join(self.models(key)) or 'none'})")
        if need_rows and not _io.is_node(path / "rows"):
            raise StoreError(f"{self.path}: rows of model {model!r} on dataset {key} are missing")
        return path

    def models(self, dataset) -> list[str]:
        """Names of the models with stored features on ``dataset``."""
        key = self.resolve(dataset)
        return _io.children(self._ds_dir(key) / "models")

    def model_info(self, dataset, model: str) -> dict:
        """Provenance of a model's features: ``fingerprint``, ``fingerprint_sha256``, ``family``, ``skipped``."""
        key = self.resolve(dataset)
        path = self._model_dir(key, model)
        info = dict(_io.attrs(path))
        info["skipped"] = self.skipped(key, model)
        return info

    def skipped(self, dataset, model: str) -> list[tuple[int, str]]:
        """Frames the model could not handle (index, reason), left out of its rows."""
        key = self.resolve(dataset)
        path = self._model_dir(key, model, need_rows=True)
        return [(int(f), str(r)) for f, r in _io.attrs(path / "rows").get("skipped", [])]

    def layers(self, dataset, model: str) -> list[str]:
        """Layers of ``model`` stored for ``dataset`` (each one complete), in the model's order
        (backbone first, ``"last"`` at the end) when it is recorded, else alphabetically."""
        key = self.resolve(dataset)
        path = self._model_dir(key, model)
        have = _io.children(path / "layers")
        order = {name: i for i, name in enumerate(_io.attrs(path).get("layer_order") or [])}
        return sorted(have, key=lambda name: (order.get(name, len(order)), name))

    def is_complete(self, dataset, model: str | None = None, layers: Iterable[str] | None = None) -> bool:
        """Whether the dataset (and, if given, the model and all ``layers``) are fully stored.

        Without ``layers``, a model with an extraction in progress (or interrupted: shards staged)
        is not complete, even if some of its layers are already placed.
        """
        try:
            key = self.resolve(dataset)
        except StoreError:
            return False
        if model is None:
            return True
        path = self._ds_dir(key) / "models" / model
        if not (_io.is_node(path) and _io.is_node(path / "rows")):
            return False
        have = set(_io.children(path / "layers"))
        if layers is None:
            return bool(have) and _io.staging_progress(self.path, key, model) is None
        return bool(have) and set(layers) <= have

    def features(self, dataset, model: str, layer: str = "last", *, lazy: bool = False):
        """Features of ``model``'s ``layer`` on ``dataset``: float32 (n_rows, d).

        ``lazy=True`` returns the zarr array itself (``shape``, ``dtype`` and slicing read only the
        chunks needed), for streaming computations over arrays larger than memory.
        """
        key = self.resolve(dataset)
        path = self._model_dir(key, model) / "layers" / layer
        if not _io.is_node(path):
            raise StoreError(f"{self.path}: model {model!r} on dataset {key} has no layer {layer!r} "
                             f"(stored: {', '.join(self.layers(key, model)) or 'none'})")
        return _io.open_array(path) if lazy else _io.read_array(path)

    def fingerprint(self, dataset, model: str) -> dict:
        """The model fingerprint stored with the features (registry name, checkpoint sha256, ...)."""
        return dict(self.model_info(dataset, model).get("fingerprint") or {})

    # ----------------------------------------------------------------------- structure level
    def put_structure(self, dataset, model: str, name: str, array, attrs: dict | None = None, *,
                      overwrite: bool = True) -> None:
        """Store a structure-level array (e.g. cumulants, one row per frame of the model's rows).

        ``attrs`` (JSON-able) is stored with it. The array is built aside and renamed into place,
        so readers never see a partial one; ``overwrite=False`` raises if ``name`` exists.
        """
        self._writable()
        key = self.resolve(dataset)
        _check_name(name, "structure array", RESERVED_LAYER_NAMES)
        base = self._model_dir(key, model) / "structure"
        final = base / name
        if _io.is_node(final) and not overwrite:
            raise StoreError(f"{self.path}: structure array {name!r} of {model!r} on {key} exists")
        try:
            json.dumps(attrs or {})
        except TypeError as exc:
            raise InputError(f"attrs of structure array {name!r} must be JSON-serialisable: {exc}") from exc
        tmp = _io.tmp_dir(self.path)
        _io.write_array(tmp / "a", np.asarray(array), attrs or {})
        if _io.is_node(final):
            old = _io.tmp_dir(self.path)
            os.rename(final, old / "old")
            shutil.rmtree(old, ignore_errors=True)
        _io.place(tmp / "a", final)
        shutil.rmtree(tmp, ignore_errors=True)

    def get_structure(self, dataset, model: str, name: str, *, lazy: bool = False):
        """A structure-level array stored by :meth:`put_structure`."""
        key = self.resolve(dataset)
        path = self._model_dir(key, model) / "structure" / name
        if not _io.is_node(path):
            raise StoreError(f"{self.path}: no structure array {name!r} of {model!r} on dataset {key} "
                             f"(stored: {', '.join(self.structures(key, model)) or 'none'})")
        return _io.open_array(path) if lazy else _io.read_array(path)

    def structure_attrs(self, dataset, model: str, name: str) -> dict:
        """The ``attrs`` stored with a structure-level array."""
        key = self.resolve(dataset)
        path = self._model_dir(key, model) / "structure" / name
        if not _io.is_node(path):
            raise StoreError(f"{self.path}: no structure array {name!r} of {model!r} on dataset {key}")
        return _io.attrs(path)

    def structures(self, dataset, model: str) -> list[str]:
        """Names of the structure-level arrays of ``model`` on ``dataset``."""
        key = self.resolve(dataset)
        return _io.children(self._model_dir(key, model) / "structure")

    # ------------------------------------------------------------------ writing features (pipeline)
    def begin_model(self, dataset, model: str, fingerprint: Mapping, family: str | None = None) -> Path:
        """Check ``fingerprint`` against what is stored for ``model`` (raise on mismatch); the model dir."""
        key = self.resolve(dataset)
        _check_name(model, "model", RESERVED_MODEL_NAMES)
        path = self._ds_dir(key) / "models" / model
        if _io.is_node(path):
            stored = _io.attrs(path)
            if stored.get("fingerprint_sha256") != model_fingerprint_sha(fingerprint):
                diff = sorted(k for k in set(stored.get("fingerprint", {})) | set(fingerprint)
                              if stored.get("fingerprint", {}).get(k) != fingerprint.get(k))
                raise StoreError(
                    f"{self.path}: dataset {key} holds features of {model!r} from a different model "
                    f"(fingerprint differs in {', '.join(diff) or 'content'}); use another store or remove "
                    f"{path}"
                )
        return path

    def write_model(self, dataset, model: str, fingerprint: Mapping, family: str | None,
                    rows: Mapping[str, np.ndarray], skipped: Sequence[tuple[int, str]],
                    layers: Mapping[str, tuple[Iterable[np.ndarray], int]],
                    layer_order: Sequence[str] | None = None) -> None:
        """Place a model's rows and layers (each given as row blocks and width) atomically, one by one.

        The model group with its fingerprint and rows is placed first (once); each layer array is
        then built aside and renamed into ``layers/``. Existing layers are kept.
        """
        self._writable()
        key = self.resolve(dataset)
        path = self.begin_model(key, model, fingerprint, family)
        n_rows = int(len(rows["frame"]))
        if not _io.is_node(path):
            tmp = _io.tmp_dir(self.path)
            _io.create_group(tmp, {"model": model, "family": family, "fingerprint": dict(fingerprint),
                                   "fingerprint_sha256": model_fingerprint_sha(fingerprint),
                                   "layer_order": list(layer_order or layers)})
            _write_rows(tmp / "rows", rows, {"skipped": [[int(f), str(r)] for f, r in skipped]})
            _io.create_group(tmp / "layers")
            _io.create_group(tmp / "structure")
            _io.place(tmp, path)
        else:
            stored = _read_rows(path / "rows")
            check_aligned(stored, rows, names=(f"stored rows of {model}", f"new rows of {model}"))
        for layer, (blocks, width) in layers.items():
            _check_name(layer, "layer", RESERVED_LAYER_NAMES)
            final = path / "layers" / layer
            if _io.is_node(final):
                continue
            tmp = _io.tmp_dir(self.path)
            _io.write_blocks(tmp / "a", blocks, (n_rows, int(width)), np.float32,
                             {"model": model, "layer": layer, "dataset": _io.attrs(self._ds_dir(key))["fingerprint"]})
            _io.place(tmp / "a", final)
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------------------ summary
    def summary(self) -> list[dict]:
        """One record per dataset with its models, layers (shape, bytes), rows, skipped and status."""
        out = []
        for key in self.datasets():
            info = self.dataset_info(key)
            ds = {
                "key": key, "fingerprint": info.get("fingerprint"), "spec": info.get("spec"),
                "n_frames": info.get("n_frames"), "n_atoms": info.get("n_atoms"),
                "subsets": info.get("subsets", {}), "labels": info.get("labels", []),
                "bytes": _io.disk_bytes(self._ds_dir(key) / "frames") + _io.disk_bytes(self._ds_dir(key) / "rows"),
                "models": [],
            }
            model_names = set(self.models(key)) | set(_io.staged_models(self.path, key))
            for model in sorted(model_names):
                mdir = self._ds_dir(key) / "models" / model
                rec = {"model": model, "layers": [], "structure": [], "n_rows": None, "skipped": 0,
                       "fingerprint_sha256": None}
                if _io.is_node(mdir):
                    attrs = _io.attrs(mdir)
                    rec["fingerprint_sha256"] = attrs.get("fingerprint_sha256")
                    rec["family"] = attrs.get("family")
                    if _io.is_node(mdir / "rows"):
                        rattrs = _io.attrs(mdir / "rows")
                        rec["n_rows"] = rattrs.get("n_rows")
                        rec["skipped"] = len(rattrs.get("skipped", []))
                    for layer in self.layers(key, model):
                        shape, dtype = _io.shape_dtype(mdir / "layers" / layer)
                        rec["layers"].append({"layer": layer, "shape": list(shape), "dtype": dtype,
                                              "bytes": _io.disk_bytes(mdir / "layers" / layer)})
                    for name in _io.children(mdir / "structure"):
                        shape, dtype = _io.shape_dtype(mdir / "structure" / name)
                        rec["structure"].append({"name": name, "shape": list(shape), "dtype": dtype,
                                                 "bytes": _io.disk_bytes(mdir / "structure" / name)})
                pending = _io.staging_progress(self.path, key, model)
                rec["pending"] = pending  # None when no extraction of this model is in progress
                rec["complete"] = pending is None and bool(rec["layers"])
                ds["models"].append(rec)
            out.append(ds)
        return out


# ------------------------------------------------------------------------ the read-only mapping
class StoreMapping(Mapping):
    """Read-only ``Mapping`` over every array of a store, values as NumPy arrays.

    Keys (``<ds>`` = 12-hex-digit dataset key):

    - ``<ds>/<model>/<layer>`` — per-atom features, float32 (n_rows, d)
    - ``<ds>/<model>/rows`` — that model's row table as a structured array (frame, atom, Z, subset)
    - ``<ds>/<model>/structure/<name>`` — structure-level arrays (e.g. cumulants)
    - ``<ds>/rows`` — the dataset's row table (structured array)
    - ``<ds>/frames/<field>`` — the stored structures (natoms, numbers, positions, cell, pbc, ...)
    """

    def __init__(self, store: FeatureStore):
        self.store = store

    def _keys(self) -> list[str]:
        st = self.store
        keys = []
        for ds in st.datasets():
            keys.append(f"{ds}/rows")
            keys += [f"{ds}/frames/{name}" for name in _io.children(st._ds_dir(ds) / "frames")]
            for model in st.models(ds):
                mdir = st._ds_dir(ds) / "models" / model
                if _io.is_node(mdir / "rows"):
                    keys.append(f"{ds}/{model}/rows")
                keys += [f"{ds}/{model}/{layer}" for layer in _io.children(mdir / "layers")]
                keys += [f"{ds}/{model}/structure/{name}" for name in _io.children(mdir / "structure")]
        return keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and key in self._keys()

    def __getitem__(self, key: str) -> np.ndarray:
        if not isinstance(key, str):
            raise KeyError(key)
        parts = key.split("/")
        st = self.store
        if parts[0] not in st.datasets():
            raise KeyError(key)
        ds = st._ds_dir(parts[0])
        try:
            if parts[1:] == ["rows"]:
                return _structured(_read_rows(ds / "rows"))
            if len(parts) == 3 and parts[1] == "frames" and _io.is_node(ds / "frames" / parts[2]):
                return _read_maybe_coded(ds / "frames" / parts[2])
            if len(parts) >= 3:
                mdir = ds / "models" / parts[1]
                if len(parts) == 3 and parts[2] == "rows" and _io.is_node(mdir / "rows"):
                    return _structured(_read_rows(mdir / "rows"))
                if len(parts) == 3 and _io.is_node(mdir / "layers" / parts[2]):
                    return _io.read_array(mdir / "layers" / parts[2])
                if len(parts) == 4 and parts[2] == "structure" and _io.is_node(mdir / "structure" / parts[3]):
                    return _io.read_array(mdir / "structure" / parts[3])
        except FileNotFoundError:
            pass
        raise KeyError(key)

    def __repr__(self) -> str:
        return f"<mlipspace store {self.store.path} with {len(self)} arrays>"


def _structured(rows: Mapping[str, np.ndarray]) -> np.ndarray:
    n = len(rows["frame"])
    width = max(1, max((len(s) for s in rows["subset"]), default=1))
    out = np.zeros(n, dtype=[("frame", "<i8"), ("atom", "<i4"), ("Z", "<i4"), ("subset", f"<U{width}")])
    for name in ROW_KEYS:
        out[name] = rows[name]
    return out


def open_store(path: str | os.PathLike) -> StoreMapping:
    """Open a store read-only as a ``Mapping`` from keys (see :class:`StoreMapping`) to NumPy arrays."""
    return StoreMapping(FeatureStore(path, mode="r"))


def load_aligned(store, dataset, models: Sequence[str], layer: str = "last", *, lazy: bool = False
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features of several models on one dataset, checked to describe the same atoms in the same order.

    Returns ``({model: (n_rows, d_model) array}, rows)``. Raises :class:`~mlipspace.errors.AlignmentError`
    naming the first differing frame when the models' row tables differ (e.g. one skipped frames).
    """
    st = store if isinstance(store, FeatureStore) else FeatureStore(store)
    models = list(models)
    if not models:
        raise InputError("load_aligned needs at least one model")
    key = st.resolve(dataset)
    first = st.rows(key, models[0])
    for other in models[1:]:
        check_aligned(first, st.rows(key, other), names=(models[0], other))
    feats = {m: st.features(key, m, layer, lazy=lazy) for m in models}
    return feats, first
