"""Read structures from files, globs, lists of these or ``builtin:NAME`` into ``ase.Atoms``.

Every frame returned by :func:`read` carries its provenance (``info["source"]``: the file or builtin
spec, ``info["source_index"]``: the frame's index in that file), a ``info["subset"]`` tag for
stratified splits, and its DFT labels, when the file has any, in one uniform place:

- ``info["energy"]`` — total energy, float, eV
- ``arrays["forces"]`` — (n_atoms, 3) float64, eV/Å
- ``info["stress"]`` — Voigt 6-vector (xx, yy, zz, yz, xz, xy), eV/Å³, ASE sign convention

ASE's ``SinglePointCalculator`` (as made by the extxyz reader) is kept, so ``atoms.get_forces()``
works as well. mlearn JSON files (a list of entries with a pymatgen ``Structure`` dict and
``outputs``) are recognised from their content and converted without pymatgen.
"""

from __future__ import annotations

import glob as _glob
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers
from ase.io.formats import string2index
from ase.stress import full_3x3_to_voigt_6_stress

from mlipspace.errors import InputError, StructureError

__all__ = ["read", "read_with_report", "read_mlearn", "is_mlearn_json", "write", "normalise_labels"]

#: ASE unit of 1 kbar in eV/Å³ (1 kbar = 0.1 GPa).
KBAR = 0.1 / 160.21766208

_GLOB_CHARS = re.compile(r"[*?\[]")
_DIR_SUFFIXES = (".xyz", ".extxyz", ".json")


def _as_index(index: Any) -> int | slice:
    """ASE-style frame selection: int, slice or a string like ``":"``, ``"-1"``, ``"0:10:2"``."""
    if isinstance(index, (int, np.integer)):
        return int(index)
    if isinstance(index, slice):
        return index
    if isinstance(index, str):
        try:
            return string2index(index)
        except ValueError as exc:
            raise InputError(f"invalid frame index {index!r}: use an int or a slice such as ':' or '0:10'") from exc
    raise InputError(f"invalid frame index {index!r}: use an int, a slice or a string such as ':'")


def _select(n: int, index: int | slice) -> list[int]:
    """Indices of the frames of a file with ``n`` frames picked by ``index``."""
    if isinstance(index, slice):
        return list(range(n))[index]
    i = index + n if index < 0 else index
    if not 0 <= i < n:
        raise IndexError(f"frame index {index} out of range for {n} frames")
    return [i]


# ----------------------------------------------------------------------------------------- labels
#: Where labels are looked for when no key is given, in order (the MACE layout last).
ENERGY_FALLBACK = ("energy", "calculator", "REF_energy")
FORCES_FALLBACK = ("forces", "calculator", "REF_forces")


def _label(atoms: Atoms, results: dict, key: str | None, fallback: tuple[str, ...], where: str, what: str):
    """``(value, key used)`` of one label: ``key`` if given (an error if absent), else the first of
    ``fallback`` present (``"calculator"``: the attached calculator's results)."""
    store = atoms.info if what == "energy" else atoms.arrays
    calc = results.get(what, results.get("free_energy") if what == "energy" else None)
    if key is not None:
        value = calc if key == "calculator" else store.get(key)
        if value is None:
            raise StructureError(f"no {what} label under key {key!r} (--{what}-key)", source=atoms.info.get("source"),
                                 frame=atoms.info.get("source_index"))
        return value, key
    for k in fallback:
        value = calc if k == "calculator" else store.get(k)
        if value is not None:
            return value, k
    return None, None


def normalise_labels(atoms: Atoms, *, energy_key: str | None = None, forces_key: str | None = None) -> Atoms:
    """Put the DFT labels of ``atoms`` into ``info["energy"]``, ``arrays["forces"]``, ``info["stress"]``.

    ``energy_key``/``forces_key`` name where the labels are (an ``info``/``arrays`` key, or
    ``"calculator"``); without them the first found of :data:`ENERGY_FALLBACK` /
    :data:`FORCES_FALLBACK` is used (``energy``, then the attached calculator's results, then the
    MACE layout ``REF_energy``/``REF_forces``), and the key used is kept in ``info["energy_key"]`` /
    ``info["forces_key"]`` so a run can say which it was. Stress is stored as a Voigt 6-vector. The
    calculator is kept; modified in place and returned.
    """
    results = dict(atoms.calc.results) if atoms.calc is not None and hasattr(atoms.calc, "results") else {}
    energy, used = _label(atoms, results, energy_key, ENERGY_FALLBACK, "info", "energy")
    if energy is not None:
        atoms.info["energy"] = float(np.asarray(energy).reshape(()))
        atoms.info["energy_key"] = used
    forces, used = _label(atoms, results, forces_key, FORCES_FALLBACK, "arrays", "forces")
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise StructureError(
                f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)",
                source=atoms.info.get("source"),
                frame=atoms.info.get("source_index"),
            )
        atoms.arrays["forces"] = forces
        atoms.info["forces_key"] = used
    stress = results.get("stress", atoms.info.get("stress"))
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.size == 9:
            stress = full_3x3_to_voigt_6_stress(stress.reshape(3, 3))
        elif stress.size != 6:
            raise StructureError(
                f"stress has {stress.size} components, expected 6 (Voigt) or 9 (3x3)",
                source=atoms.info.get("source"),
                frame=atoms.info.get("source_index"),
            )
        atoms.info["stress"] = stress.reshape(6)
    return atoms


def _attach_calculator(atoms: Atoms) -> None:
    """Give labelled frames without a calculator a ``SinglePointCalculator`` holding the labels."""
    if atoms.calc is not None:
        return
    res = {}
    if "energy" in atoms.info:
        res["energy"] = atoms.info["energy"]
    if "forces" in atoms.arrays:
        res["forces"] = atoms.arrays["forces"]
    if "stress" in atoms.info:
        res["stress"] = atoms.info["stress"]
    if res:
        atoms.calc = SinglePointCalculator(atoms, **res)


def _default_subset(atoms: Atoms, stem: str) -> None:
    """Guarantee ``info["subset"]``: existing tag, else ``dataset``, ``config_type`` or file stem."""
    if str(atoms.info.get("subset", "")).strip():
        atoms.info["subset"] = str(atoms.info["subset"])
        return
    for key in ("dataset", "config_type", "group"):
        value = atoms.info.get(key)
        if value is not None and str(value).strip():
            atoms.info["subset"] = str(value)
            return
    atoms.info["subset"] = stem


# ----------------------------------------------------------------------------------------- mlearn
def is_mlearn_json(obj: Any) -> bool:
    """True when a decoded JSON document looks like an mlearn dataset (list of structure+outputs)."""
    if not isinstance(obj, list) or not obj:
        return False
    first = obj[0]
    return (
        isinstance(first, dict)
        and isinstance(first.get("structure"), dict)
        and "sites" in first["structure"]
    )


def _species(site: dict, where: str) -> int:
    species = site.get("species")
    if species is None and "label" in site:  # very old pymatgen dicts
        species = [{"element": site["label"], "occu": 1}]
    if not species or len(species) != 1 or abs(float(species[0].get("occu", 1)) - 1) > 1e-6:
        raise ValueError(f"{where}: disordered or empty site species {species!r} are not supported")
    symbol = re.match(r"[A-Z][a-z]?", str(species[0]["element"]))
    if symbol is None or symbol.group(0) not in atomic_numbers:
        raise ValueError(f"{where}: unknown element {species[0]['element']!r}")
    return atomic_numbers[symbol.group(0)]


def structure_dict_to_atoms(struct: dict, where: str = "structure") -> Atoms:
    """Convert a pymatgen ``Structure`` (or ``Molecule``) ``as_dict()`` to ``ase.Atoms``.

    Lattice vectors are the rows of ``lattice["matrix"]``; site positions are the cartesian
    ``xyz`` when given, else fractional ``abc`` times the lattice matrix. No pymatgen needed.
    """
    sites = struct.get("sites")
    if not isinstance(sites, list):
        raise ValueError(f"{where}: no 'sites' list")
    numbers = [_species(s, f"{where} site {k}") for k, s in enumerate(sites)]
    lattice = struct.get("lattice")
    cell = None
    if lattice is not None:
        cell = np.asarray(lattice["matrix"] if isinstance(lattice, dict) else lattice, dtype=np.float64)
        if cell.shape != (3, 3):
            raise ValueError(f"{where}: lattice matrix has shape {cell.shape}, expected (3, 3)")
    positions = []
    for k, s in enumerate(sites):
        if "xyz" in s:
            positions.append(np.asarray(s["xyz"], dtype=np.float64))
        elif "abc" in s and cell is not None:
            positions.append(np.asarray(s["abc"], dtype=np.float64) @ cell)
        else:
            raise ValueError(f"{where} site {k}: neither 'xyz' nor 'abc' (with a lattice) given")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if cell is None:
        return Atoms(numbers=numbers, positions=pos, pbc=False)
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)


def _mlearn_entry_to_atoms(entry: dict, where: str) -> Atoms:
    atoms = structure_dict_to_atoms(entry["structure"], where)
    for key in ("group", "element", "tag", "description", "num_atoms"):
        if key in entry and isinstance(entry[key], (str, int, float)):
            atoms.info[key] = entry[key]
    if entry.get("group"):
        atoms.info["subset"] = str(entry["group"])
    atoms.info.setdefault("dataset", "mlearn")
    outputs = entry.get("outputs") or {}
    if outputs.get("energy") is not None:
        atoms.info["energy"] = float(outputs["energy"])
    if outputs.get("forces") is not None:
        forces = np.asarray(outputs["forces"], dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise ValueError(f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
        atoms.arrays["forces"] = forces
    vs = outputs.get("virial_stress")
    if vs is not None:
        # mlearn stores the VASP stress: kbar, order xx yy zz xy yz zx, positive = compressive.
        # ASE: eV/Å^3, Voigt order xx yy zz yz xz xy, positive = tensile (as ase.io.vasp does).
        vs = np.asarray(vs, dtype=np.float64).reshape(-1)
        if vs.size != 6:
            raise ValueError(f"{where}: virial_stress has {vs.size} components, expected 6")
        atoms.info["virial_stress_kbar"] = vs.copy()
        atoms.info["stress"] = -KBAR * vs[[0, 1, 2, 4, 5, 3]]
    return atoms


def read_mlearn(path: str | os.PathLike, data: list | None = None) -> list[Atoms]:
    """All entries of an mlearn JSON file as labelled ``Atoms`` (``subset`` = mlearn group)."""
    if data is None:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    if not is_mlearn_json(data):
        raise StructureError("not an mlearn dataset (expected a list of {'structure', 'outputs'} entries)", source=str(path))
    frames = []
    for k, entry in enumerate(data):
        try:
            frames.append(_mlearn_entry_to_atoms(entry, f"entry {k}"))
        except (KeyError, TypeError, ValueError) as exc:
            raise StructureError(f"malformed mlearn entry: {exc}", source=str(path), frame=k) from exc
    return frames


# ----------------------------------------------------------------------------------------- files
def _sniff(path: Path) -> str:
    """``"json"`` when the file's first non-blank character opens a JSON document, else ``"ase"``."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if not head:
        raise StructureError("file is empty", source=str(path))
    return "json" if head[:1] in (b"[", b"{") else "ase"


def _read_file(path: Path, index: int | slice, labels: dict | None = None) -> list[Atoms]:
    """Read one file (extxyz, any ASE format, or mlearn JSON) and normalise every frame."""
    source = str(path)
    try:
        kind = _sniff(path)
        frames: list[Atoms] | None = None
        if kind == "json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if is_mlearn_json(data):
                frames = read_mlearn(path, data)
        if frames is None:
            import ase.io

            got = ase.io.read(path, index=":")
            frames = got if isinstance(got, list) else [got]
    except StructureError:
        raise
    except FileNotFoundError as exc:
        raise StructureError("file not found", source=source) from exc
    except IsADirectoryError as exc:
        raise StructureError("is a directory", source=source) from exc
    except PermissionError as exc:
        raise StructureError("permission denied", source=source) from exc
    except UnicodeDecodeError as exc:
        raise StructureError(f"not a text structure file ({exc.reason})", source=source) from exc
    except json.JSONDecodeError as exc:
        raise StructureError(f"corrupted JSON: {exc}", source=source) from exc
    except Exception as exc:  # ASE raises many types for truncated or corrupted files
        raise StructureError(f"cannot read structures ({type(exc).__name__}: {exc})", source=source) from exc
    if not frames:
        raise StructureError("file holds no structures", source=source)
    try:
        chosen = _select(len(frames), index)
    except IndexError as exc:
        raise StructureError(str(exc), source=source) from exc
    out = []
    for i in chosen:
        atoms = frames[i]
        if "source" in atoms.info and str(atoms.info["source"]) != source:  # e.g. an exported file
            atoms.info["original_source"] = str(atoms.info["source"])
            if "source_index" in atoms.info:
                atoms.info["original_source_index"] = atoms.info["source_index"]
        atoms.info["source"] = source
        atoms.info["source_index"] = i
        normalise_labels(atoms, **(labels or {}))
        _attach_calculator(atoms)
        _default_subset(atoms, path.stem)
        out.append(atoms)
    return out


def _expand(spec: Any) -> list[Any]:
    """Expand a spec into an ordered list of file paths and ``builtin:`` strings."""
    if isinstance(spec, (list, tuple)):
        out = []
        for item in spec:
            out.extend(_expand(item))
        return out
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise InputError(f"invalid dataset spec {spec!r}: give a path, a glob, a list or 'builtin:NAME'")
    if spec.startswith("builtin:"):
        return [spec]
    if _GLOB_CHARS.search(spec) and not Path(spec).exists():
        matches = sorted(_glob.glob(os.path.expanduser(spec), recursive=True))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise StructureError("no file matches this glob", source=spec)
        return [Path(m) for m in matches]
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _DIR_SUFFIXES)
        if not files:
            raise StructureError(f"directory holds no {'/'.join(_DIR_SUFFIXES)} files", source=spec)
        return files
    if not path.exists():
        raise StructureError("file not found", source=spec)
    return [path]


def parse_builtin(spec: str) -> tuple[str, dict[str, int]]:
    """Split ``builtin:NAME?size=N&seed=S`` into the name and integer keyword arguments."""
    body = spec[len("builtin:"):]
    name, _, query = body.partition("?")
    kwargs: dict[str, int] = {}
    for key, values in parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        if key not in ("size", "seed"):
            raise InputError(f"{spec}: unknown option {key!r} (known: size, seed)")
        try:
            kwargs[key] = int(values[-1])
        except ValueError as exc:
            raise InputError(f"{spec}: option {key} must be an integer, got {values[-1]!r}") from exc
    return name or "mad-mini", kwargs


def read_with_report(spec: Any, *, index: Any = ":", on_error: str = "raise", energy_key: str | None = None,
                     forces_key: str | None = None) -> tuple[list[Atoms], list[dict]]:
    """Like :func:`read` but also return the report of skipped files/frames (``on_error="skip"``).

    Each report entry is a dict with ``frame`` (index in the returned order it would have had, or
    ``None`` for a whole file), ``source``, ``source_index`` and ``reason``.
    """
    from mlipspace.data.synthetic import builtin
    from mlipspace.data.checks import validate

    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    sel = _as_index(index)
    frames: list[Atoms] = []
    report: list[dict] = []
    for item in _expand(spec):
        if isinstance(item, str):  # builtin
            name, kwargs = parse_builtin(item)
            got = builtin(name, **kwargs)
            try:
                chosen = _select(len(got), sel)
            except IndexError as exc:
                raise StructureError(str(exc), source=item) from exc
            frames.extend(got[i] for i in chosen)
            continue
        try:
            frames.extend(_read_file(item, sel, {"energy_key": energy_key, "forces_key": forces_key}))
        except StructureError as exc:
            if on_error == "raise":
                raise
            report.append({"frame": None, "source": str(item), "source_index": None, "reason": exc.reason})
    kept, frame_report = validate(frames, on_error=on_error)
    report.extend(frame_report)
    if report:
        warnings.warn(
            f"skipped {len(report)} bad file(s)/frame(s); first: {report[0]['source']}: {report[0]['reason']}",
            stacklevel=2,
        )
    return kept, report


def read(spec: Any, *, index: Any = ":", on_error: str = "raise", energy_key: str | None = None,
         forces_key: str | None = None) -> list[Atoms]:
    """Read structures from ``spec`` into a list of labelled, validated ``ase.Atoms``.

    ``spec`` is a path (extxyz, mlearn JSON, anything ``ase.io.read`` knows, or a directory of
    .xyz/.extxyz/.json files), a glob, ``builtin:NAME[?size=N&seed=S]``, or a list of these (read
    in order). ``index`` selects frames per file (ASE syntax: ``":"``, ``"-1"``, ``"0:10"``, int or
    slice). Each frame is checked by :func:`mlipspace.data.validate`; ``on_error="raise"`` raises
    :class:`~mlipspace.errors.StructureError` naming file, frame and reason, ``"skip"`` drops bad
    frames and unreadable files with a warning (see :func:`read_with_report`). A path that does
    not exist or a glob matching nothing always raises. ``energy_key``/``forces_key`` say where the
    labels are (see :func:`normalise_labels`; default: ``energy``, the calculator, ``REF_energy``).
    """
    return read_with_report(spec, index=index, on_error=on_error, energy_key=energy_key, forces_key=forces_key)[0]


def write(frames: Sequence[Atoms], path: str | os.PathLike) -> None:
    """Write ``frames`` to extended XYZ with their labels (energy, forces, stress) and ``info`` tags.

    Labels are written from the uniform places (``info``/``arrays``); calculators are dropped
    from the written copies so that ASE does not see each label twice.
    """
    import ase.io

    out = []
    for atoms in frames:
        a = atoms.copy()  # copy() drops the calculator, keeps info/arrays
        if atoms.calc is not None:
            for key, value in getattr(atoms.calc, "results", {}).items():
                if key == "forces":
                    a.arrays.setdefault("forces", np.asarray(value))
                elif key in ("energy", "stress", "free_energy"):
                    a.info.setdefault(key, value)
        for key in list(a.info):
            value = a.info[key]
            if value is None or isinstance(value, dict):
                del a.info[key]  # extxyz cannot hold them
            elif isinstance(value, np.ndarray) and value.ndim > 1:
                a.info[key] = value.reshape(-1)
        out.append(a)
    try:
        ase.io.write(os.fspath(path), out, format="extxyz")
    except OSError as exc:
        raise StructureError(f"cannot write: {exc}", source=os.fspath(path)) from exc
