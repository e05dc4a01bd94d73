"""Feature extraction vs the model's own ASE calculator, measured side by side in one run.

For every available registry model (or those named with ``--models``) and the same frames:

- ``extract``: ``Extractor.extract(frames, layers="all", batch_size=B)`` -- forward pass only,
  several frames per forward where the package batches, ``torch.inference_mode``;
- ``calculator``: the package's own ASE calculator (``Extractor.calculator()``), asked for energy
  and forces of each frame in turn (what one would otherwise run to get at the model), on the
  same weights and device.

It prints atoms/s of both and their ratio (goal: >= 2 for every model). Each model is warmed up
first (one-off costs such as lazy grids and kernel selection are not what is compared), then the
two are timed alternately ``--repeats`` times and the best time of each is kept, so that load from
other processes hits both alike. Frames: ~20 spread over all subsets of
``../shared/data/mad-bench-mad-reduced.xyz`` (bulk, 2D, slabs, clusters, molecules), or builtin
structures from ``ase.build`` when the shared data is absent. Structures with a non-periodic axis
get that axis replaced by vacuum (``with_vacuum``, 12 A beyond the extent, more than any model's
cutoff) so every calculator accepts them; both sides see the same boxed frames. Frames with
elements a model lacks are left out for that model.

    python benchmarks/bench_extract.py [--models chgnet-0.3.0,diep-r2scan] [--frames 20]
        [--batch-size 8] [--repeats 3] [--device auto] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mad-bench-mad-reduced.xyz"


def load_frames(n: int):
    """``n`` frames spread over the MAD benchmark file, or builtin ase.build structures."""
    from mlipspace.models._torch_utils import with_vacuum

    if DATA.exists():
        import ase.io

        frames = ase.io.read(DATA, ":")
        idx = np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))
        frames, source = [frames[i] for i in idx], f"{DATA.name} ({len(idx)} of {len(frames)} frames)"
    else:
        from ase.build import bulk, fcc111, molecule

        pool = [
            bulk("Si", "diamond", a=5.43) * (2, 2, 2), bulk("NaCl", "rocksalt", a=5.64) * (2, 2, 2),
            bulk("Cu", "fcc", a=3.6) * (3, 3, 3), bulk("MgO", "rocksalt", a=4.21) * (2, 2, 2),
            fcc111("Pt", size=(3, 3, 4), vacuum=8.0), fcc111("Al", size=(2, 2, 5), vacuum=8.0),
            molecule("C6H6"), molecule("CH3CH2OH"), molecule("H2O"), molecule("C60"),
        ]
        frames = [pool[i % len(pool)].copy() for i in range(n)]
        for i, atoms in enumerate(frames):
            atoms.rattle(0.02, seed=i)
        source = "ase.build structures (shared data absent)"
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = None
        out.append(with_vacuum(atoms, cutoff=12.0) if not atoms.pbc.all() else atoms)
    return out, source


def time_extract(ex, frames, batch_size: int) -> float:
    t0 = time.perf_counter()
    ex.extract(frames, layers="all", batch_size=batch_size)
    _sync(ex)
    return time.perf_counter() - t0


def time_calculator(calc, frames) -> float:
    t0 = time.perf_counter()
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        atoms.get_forces()
    return time.perf_counter() - t0


def _sync(ex) -> None:
    if str(getattr(ex, "device", "cpu")).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_model(name: str, frames, batch_size: int, repeats: int, device: str) -> dict:
    from mlipspace.models import registry
    from mlipspace.models._torch_utils import unsupported_frames

    t0 = time.perf_counter()
    ex = registry.load(name, device=device)
    load_s = time.perf_counter() - t0
    bad = unsupported_frames(frames, ex.elements)
    frames = [a for i, a in enumerate(frames) if i not in bad]
    n_atoms = sum(len(a) for a in frames)
    try:
        calc = ex.calculator()
    except NotImplementedError:
        calc = None
    # warm-up: one-off costs (lazy caches, allocator, kernel choice) on a few frames
    time_extract(ex, frames[:3], batch_size)
    if calc is not None:
        time_calculator(calc, frames[:3])
    t_ext, t_calc = [], []
    for _ in range(repeats):
        t_ext.append(time_extract(ex, frames, batch_size))
        if calc is not None:
            t_calc.append(time_calculator(calc, frames))
    ext = n_atoms / min(t_ext)
    cal = n_atoms / min(t_calc) if t_calc else None
    return {
        "model": name, "device": ex.device, "frames": len(frames), "atoms": n_atoms, "skipped": len(bad),
        "load_s": round(load_s, 2), "extract_atoms_per_s": round(ext, 1),
        "calculator_atoms_per_s": round(cal, 1) if cal else None,
        "ratio": round(ext / cal, 2) if cal else None,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated registry names (default: all available)")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    args = parser.parse_args(argv)

    from mlipspace.models import registry

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else registry.names()
    frames, source = load_frames(args.frames)
    print(f"frames: {source}, {sum(len(a) for a in frames)} atoms; batch_size={args.batch_size}, "
          f"best of {args.repeats}")
    records = []
    for name in names:
        reason = registry.why_unavailable(name)
        if reason:
            print(f"{name:24s} skipped: {reason}")
            continue
        try:
            rec = bench_model(name, frames, args.batch_size, args.repeats, args.device)
        except Exception as exc:  # one broken adapter must not hide the others' numbers
            print(f"{name:24s} failed: {type(exc).__name__}: {exc}")
            continue
        records.append(rec)
        cal = f"{rec['calculator_atoms_per_s']:9.1f}" if rec["calculator_atoms_per_s"] else "      n/a"
        ratio = f"{rec['ratio']:6.2f}" if rec["ratio"] else "   n/a"
        goal = "" if rec["ratio"] is None else ("  ok" if rec["ratio"] >= 2 else "  BELOW GOAL (2)")
        print(f"{name:24s} [{rec['device']}] {rec['atoms']:5d} atoms  extract {rec['extract_atoms_per_s']:9.1f} "
              f"atoms/s  calculator {cal} atoms/s  ratio {ratio}{goal}", flush=True)
    if args.json:
        print(json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    main()
