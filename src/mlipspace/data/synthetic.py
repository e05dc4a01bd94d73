"""``builtin:mad-mini``: a small, diverse, label-free dataset generated from ASE and NumPy.

It mimics the subsets of the MAD dataset (Mazitov et al.) at a size that runs on a laptop, with
no download: ``bulk`` (elemental reference crystals and binary/ternary prototypes), ``rattled``,
``random``, ``surfaces``, ``clusters``, ``2d``, ``molecules`` (ASE's g2 set) and
``molecular-crystals``. Elements are Z = 1..83 without noble gases, lanthanides Ce..Lu and Tc, so
that CHGNet, SevenNet, DIEP and HIENet all cover them. Every structure has 2..100 atoms, no two
atoms closer than 0.7 times the sum of their covalent radii, and ``info["subset"]``.
Molecules and clusters are non-periodic (``pbc=False``, no cell, as the model adapters box them);
slabs and 2D layers are periodic with 8–10 Å of vacuum along z.

Determinism: each subset draws from its own ``numpy.random.default_rng([seed, subset, size])``
stream and positions/cells are rounded to 1e-6 Å, so the same ``(size, seed)`` gives the same
:func:`~mlipspace.data.fingerprint` on any machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from ase import Atoms
from ase.build import bulk as ase_bulk
from ase.build import graphene, mx2, surface
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

from mlipspace.errors import InputError

__all__ = ["builtin", "mad_mini", "MAD_MINI_ELEMENTS", "MAD_MINI_SUBSETS", "BUILTINS"]

_NOBLE = {2, 10, 18, 36, 54, 86}
#: Atomic numbers used by mad-mini.
MAD_MINI_ELEMENTS: tuple[int, ...] = tuple(
    z for z in range(1, 84) if z not in _NOBLE and not 58 <= z <= 71 and z != 43
)
#: Subsets and their share of the structures.
MAD_MINI_SUBSETS: dict[str, float] = {
    "bulk": 0.20,
    "rattled": 0.15,
    "random": 0.10,
    "surfaces": 0.12,
    "clusters": 0.10,
    "2d": 0.08,
    "molecules": 0.15,
    "molecular-crystals": 0.10,
}
DEFAULT_SIZE = 600
MAX_ATOMS = 100
MIN_RATIO = 0.7  # minimum distance / sum of covalent radii

_ANIONS = ["H", "C", "N", "O", "F", "P", "S", "Cl", "As", "Se", "Br", "Te", "I"]
_CATIONS = [chemical_symbols[z] for z in MAD_MINI_ELEMENTS if chemical_symbols[z] not in _ANIONS]
_A_SITE = ["Li", "Na", "K", "Rb", "Cs", "Ca", "Sr", "Ba", "La", "Pb", "Bi", "Y"]
_B_SITE = ["Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Zr", "Nb", "Mo", "Sn", "Hf", "Ta", "W", "Mg", "Al", "Ga", "Sc", "Ge", "Ru", "Rh", "Ir", "Pt", "Pd"]
_PEROV_X = ["O", "F", "Cl", "Br", "I", "S"]
_METALS = [
    s for s in _CATIONS if s not in ("B", "Si", "Ge", "As", "Sb", "Bi", "Po")
]
_TMD_M = ["Mo", "W", "Nb", "Ta", "Ti", "Zr", "Hf", "V", "Cr", "Pt", "Pd", "Sn", "Re"]
_TMD_X = ["S", "Se", "Te"]
_HEX_PAIRS = [("C", "C"), ("B", "N"), ("Si", "C"), ("Al", "N"), ("Ga", "N"), ("B", "P"), ("Zn", "O"), ("Si", "Si"), ("Ge", "Ge"), ("In", "N"), ("Be", "O"), ("Mg", "O"), ("Ga", "P"), ("Al", "P")]
_SMALL_MOLECULES = ["H2O", "NH3", "CH4", "CO2", "N2", "HF", "HCl", "CH3OH", "H2S", "C2H2", "C2H4", "CO", "Cl2", "HCN", "H2CO", "SiH4", "PH3", "CH3Cl", "O2", "CS2", "H2", "CH3CN", "HCOOH", "C6H6"]


def _r(symbol: str) -> float:
    return float(covalent_radii[atomic_numbers[symbol]])


def _finish(atoms: Atoms, subset: str) -> Atoms:
    """Round coordinates for cross-machine determinism and tag the subset."""
    atoms.positions = np.round(atoms.positions, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    atoms.cell = np.round(np.asarray(atoms.cell[:]), 6) + 0.0
    atoms.info = {"subset": subset, "dataset": "mad-mini"}
    return atoms


def _distances_ok(atoms: Atoms, ratio: float = MIN_RATIO) -> bool:
    """No pair closer than ``ratio`` times the sum of covalent radii (periodic images included).

    Brute force over all pairs and the periodic images within reach (structures have <= 100
    atoms), which is several times faster than a neighbour list for this many small checks.
    """
    n = len(atoms)
    pos = atoms.positions
    r = ratio * covalent_radii[atoms.numbers]
    cut = r[:, None] + r[None, :]
    reach = float(cut.max()) if n else 0.0
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    ranges = []
    for axis in range(3):
        if not atoms.pbc[axis]:
            ranges.append(np.zeros(1))
            continue
        other = np.cross(cell[(axis + 1) % 3], cell[(axis + 2) % 3])
        width = abs(float(np.dot(cell[axis], other))) / max(float(np.linalg.norm(other)), 1e-12)
        if width < 1e-6:
            return False
        k = int(np.ceil(reach / width))
        ranges.append(np.arange(-k, k + 1, dtype=np.float64))
    offsets = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    shifts = offsets @ cell
    diff = pos[None, :, None, :] - pos[:, None, None, :] + shifts[None, None, :, :]
    dist = np.sqrt(np.einsum("ijkx,ijkx->ijk", diff, diff))
    zero = int(np.flatnonzero(np.all(offsets == 0, axis=1))[0])
    dist[np.arange(n), np.arange(n), zero] = np.inf
    return not np.any(dist < cut[:, :, None])


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix from a normalised Gaussian quaternion (no LAPACK call)."""
    w, x, y, z = _unit4(rng)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _unit4(rng: np.random.Generator) -> tuple[float, float, float, float]:
    q = rng.normal(size=4)
    q = q / math.sqrt(float(q @ q))
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def _strain(atoms: Atoms, rng: np.random.Generator, amount: float) -> Atoms:
    """Apply a random symmetric strain of size ``amount`` to cell and positions."""
    e = rng.uniform(-amount, amount, size=(3, 3))
    e = 0.5 * (e + e.T)
    atoms.set_cell(np.asarray(atoms.cell[:]) @ (np.eye(3) + e), scale_atoms=True)
    return atoms


def _supercell(atoms: Atoms, rng: np.random.Generator, lo: int = 2, hi: int = 64) -> Atoms:
    """Repeat ``atoms`` by a random (1..3)^3 factor, keeping between ``lo`` and ``hi`` atoms."""
    n = len(atoms)
    options = [
        (a, b, c)
        for a in (1, 2, 3)
        for b in (1, 2, 3)
        for c in (1, 2, 3)
        if lo <= n * a * b * c <= hi
    ]
    if not options:
        return atoms
    reps = options[int(rng.integers(len(options)))]
    return atoms.repeat(reps)


# -------------------------------------------------------------------------------- bulk recipes
@lru_cache(maxsize=None)
def _elemental_symbols() -> tuple[str, ...]:
    """Elements of the pool whose ASE reference crystal builds and has sane distances."""
    out = []
    for z in MAD_MINI_ELEMENTS:
        s = chemical_symbols[z]
        try:
            a = ase_bulk(s)
        except Exception:
            continue
        if _distances_ok(a):
            out.append(s)
    return tuple(out)


def _elemental(symbol: str, rng: np.random.Generator) -> Atoms:
    atoms = ase_bulk(symbol, cubic=bool(rng.random() < 0.3)) if symbol in ("Al", "Cu", "Si", "Fe") else ase_bulk(symbol)
    atoms = _strain(atoms, rng, 0.02)
    return _supercell(atoms, rng, 2, 48)


def _nn(a: str, b: str, rng: np.random.Generator) -> float:
    """A plausible bond length: sum of covalent radii times 0.97..1.08."""
    return (_r(a) + _r(b)) * float(rng.uniform(0.97, 1.08))


def _binary(rng: np.random.Generator) -> Atoms:
    kind = ["rocksalt", "zincblende", "wurtzite", "cesiumchloride", "fluorite", "L12", "rocksalt-metal"][
        int(rng.integers(7))
    ]
    if kind in ("cesiumchloride", "L12", "rocksalt-metal"):
        a_el, b_el = rng.choice(_METALS, size=2, replace=False)
    else:
        a_el, b_el = str(rng.choice(_CATIONS)), str(rng.choice(_ANIONS))
    a_el, b_el = str(a_el), str(b_el)
    d = _nn(a_el, b_el, rng)
    if kind in ("rocksalt", "rocksalt-metal"):
        atoms = ase_bulk(f"{a_el}{b_el}", "rocksalt", a=2 * d)
    elif kind == "zincblende":
        atoms = ase_bulk(f"{a_el}{b_el}", "zincblende", a=4 * d / math.sqrt(3))
    elif kind == "wurtzite":
        a = d * math.sqrt(8 / 3)
        atoms = ase_bulk(f"{a_el}{b_el}", "wurtzite", a=a, c=a * math.sqrt(8 / 3))
    elif kind == "cesiumchloride":
        atoms = ase_bulk(f"{a_el}{b_el}", "cesiumchloride", a=2 * d / math.sqrt(3))
    elif kind == "fluorite":
        atoms = ase_bulk(f"{a_el}{b_el}2", "fluorite", a=4 * d / math.sqrt(3))
    else:  # L1_2 A3B on an fcc lattice: nearest neighbours at a / sqrt(2)
        d = max(2 * _r(a_el), _r(a_el) + _r(b_el)) * float(rng.uniform(0.97, 1.05))
        a = d * math.sqrt(2)
        atoms = Atoms(
            [b_el, a_el, a_el, a_el],
            scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            cell=np.eye(3) * a,
            pbc=True,
        )
    return atoms


def _ternary(rng: np.random.Generator) -> Atoms:
    if rng.random() < 0.65:  # cubic perovskite ABX3
        a_el, b_el, x_el = str(rng.choice(_A_SITE)), str(rng.choice(_B_SITE)), str(rng.choice(_PEROV_X))
        f = float(rng.uniform(0.98, 1.06))
        a = max(2 * (_r(b_el) + _r(x_el)), math.sqrt(2) * (_r(a_el) + _r(x_el))) * f
        return Atoms(
            [a_el, b_el, x_el, x_el, x_el],
            scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            cell=np.eye(3) * a,
            pbc=True,
        )
    # full Heusler X2YZ (L2_1) in the fcc primitive cell; nearest neighbours at a sqrt(3) / 4
    x_el, y_el, z_el = (str(s) for s in rng.choice(_METALS + ["Al", "Ga", "In", "Si", "Ge", "Sn", "Sb"], size=3, replace=False))
    rmax = max(_r(x_el) + _r(y_el), _r(x_el) + _r(z_el), (_r(y_el) + _r(z_el)) / math.sqrt(4 / 3))
    a = 4 * rmax / math.sqrt(3) * float(rng.uniform(0.97, 1.05))
    cell = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    return Atoms(
        [y_el, z_el, x_el, x_el],
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]],
        cell=cell,
        pbc=True,
    )


def _compound(rng: np.random.Generator) -> Atoms:
    atoms = _binary(rng) if rng.random() < 0.7 else _ternary(rng)
    atoms = _strain(atoms, rng, 0.02)
    return _supercell(atoms, rng, 2, 48)


def _retry(make: Callable[[np.random.Generator], Atoms], rng: np.random.Generator, check=_distances_ok, tries: int = 200) -> Atoms:
    """Call ``make(rng)`` until the result passes ``check`` and has 2..MAX_ATOMS atoms."""
    for _ in range(tries):
        atoms = make(rng)
        if 2 <= len(atoms) <= MAX_ATOMS and check(atoms):
            return atoms
    raise RuntimeError(f"builtin generator {make.__name__} failed {tries} times")  # a bug, not user input


def _bulk_any(rng: np.random.Generator) -> Atoms:
    if rng.random() < 0.4:
        return _elemental(str(rng.choice(_elemental_symbols())), rng)
    return _compound(rng)


# -------------------------------------------------------------------------------- subsets
def _gen_bulk(n: int, rng: np.random.Generator) -> list[Atoms]:
    """Half elemental reference crystals (each element once, in random order), half compounds."""
    elements = list(rng.permutation(_elemental_symbols()))
    out = []
    for k in range(n):
        if k < n // 2 and k < len(elements):
            sym = str(elements[k])
            out.append(_retry(lambda r, s=sym: _elemental(s, r), rng))
        else:
            out.append(_retry(_compound, rng))
    return out


def _gen_rattled(n: int, rng: np.random.Generator) -> list[Atoms]:
    """Bulk supercells with Gaussian displacements of 0.02–0.12 times the shortest bond."""

    def make(r: np.random.Generator) -> Atoms:
        atoms = _bulk_any(r)
        if len(atoms) < 8:
            atoms = _supercell(atoms, r, 8, 64)
        d = atoms.get_all_distances(mic=True) if len(atoms) > 1 else np.array([[0, 2.0]])
        dmin = float(np.min(d[d > 1e-6])) if np.any(d > 1e-6) else 2.0
        sigma = float(r.uniform(0.02, 0.12)) * dmin
        atoms.positions = atoms.positions + r.normal(scale=sigma, size=atoms.positions.shape)
        return _strain(atoms, r, 0.04)

    return [_retry(make, rng) for _ in range(n)]


def _gen_random(n: int, rng: np.random.Generator) -> list[Atoms]:
    """Random compositions (1–4 elements) at random positions in a cell of realistic density.

    Volume = packing factor (1.6–2.6) × the sum of covalent-radius spheres; atoms are inserted one
    by one at least 0.8 × the sum of covalent radii from all others (periodic).
    """

    def make(r: np.random.Generator) -> Atoms:
        n_atoms = int(r.integers(4, 33))
        k = int(r.integers(1, 5))
        pool = [str(s) for s in r.choice([chemical_symbols[z] for z in MAD_MINI_ELEMENTS], size=k, replace=False)]
        symbols = pool + [str(s) for s in r.choice(pool, size=n_atoms - k)] if n_atoms >= k else pool
        radii = np.array([_r(s) for s in symbols])
        volume = float(r.uniform(1.6, 2.6)) * float(np.sum(4 / 3 * np.pi * radii**3))
        shape = np.eye(3) + 0.5 * (lambda e: e + e.T)(r.uniform(-0.08, 0.08, size=(3, 3)))
        cell = shape * (volume / abs(np.linalg.det(shape))) ** (1 / 3)
        inv = np.linalg.inv(cell)
        pos: list[np.ndarray] = []
        for idx, rad in enumerate(radii):
            for _ in range(300):
                p = r.random(3) @ cell
                if not pos:
                    pos.append(p)
                    break
                diff = np.asarray(pos) - p
                frac = diff @ inv
                diff = (frac - np.round(frac)) @ cell  # minimum image (fine for near-cubic cells)
                if np.all(np.linalg.norm(diff, axis=1) >= 0.8 * (radii[: len(pos)] + rad)):
                    pos.append(p)
                    break
            else:
                return Atoms()  # rejected by _retry
        return Atoms(symbols, positions=np.asarray(pos), cell=cell, pbc=True)

    return [_retry(make, rng) for _ in range(n)]


def _gen_surfaces(n: int, rng: np.random.Generator) -> list[Atoms]:
    """Slabs of 2–6 layers cut along low-index planes of elemental or rocksalt crystals."""

    def make(r: np.random.Generator) -> Atoms:
        if r.random() < 0.7:
            lattice = ase_bulk(str(r.choice(_elemental_symbols())))
        else:
            a_el, b_el = str(r.choice(_CATIONS)), str(r.choice(["O", "N", "S", "F", "Cl", "C"]))
            lattice = ase_bulk(f"{a_el}{b_el}", "rocksalt", a=2 * _nn(a_el, b_el, r))
        millers = [(1, 0, 0), (1, 1, 0), (1, 1, 1), (0, 0, 1), (2, 1, 1), (2, 1, 0)]
        miller = millers[int(r.integers(len(millers)))]
        layers = int(r.integers(2, 7))
        slab = surface(lattice, miller, layers, vacuum=None, periodic=True)
        if len(slab) > MAX_ATOMS:
            return Atoms()
        options = [(a, b) for a in (1, 2, 3) for b in (1, 2, 3) if 4 <= len(slab) * a * b <= MAX_ATOMS]
        if not options:
            return Atoms()
        slab = slab.repeat((*options[int(r.integers(len(options)))], 1))
        slab.center(vacuum=float(r.uniform(4.0, 5.0)), axis=2)
        slab.pbc = True
        slab.positions = slab.positions + r.normal(scale=0.03, size=slab.positions.shape)
        return slab

    return [_retry(make, rng) for _ in range(n)]


def _free(atoms: Atoms) -> Atoms:
    """Non-periodic structure without a cell (``pbc=False``), centred at the origin.

    Model adapters put non-periodic frames into a box larger than their cutoff themselves.
    """
    return Atoms(atoms.numbers, positions=atoms.positions - atoms.positions.mean(axis=0), pbc=False)


def _gen_clusters(n: int, rng: np.random.Generator) -> list[Atoms]:
    """The 5–60 atoms nearest to a point of a bulk crystal, lightly rattled, non-periodic."""

    def make(r: np.random.Generator) -> Atoms:
        base = _bulk_any(r)
        big = base.repeat((6, 6, 6)) if len(base) <= 4 else base.repeat((4, 4, 4))
        n_atoms = int(r.integers(5, 61))
        centre = big.cell.sum(axis=0) / 2 + r.normal(scale=0.5, size=3)
        dist = np.linalg.norm(big.positions - centre, axis=1)
        keep = np.sort(np.argsort(dist, kind="stable")[:n_atoms])
        cluster = Atoms(big.numbers[keep], positions=big.positions[keep])
        cluster.positions = cluster.positions + r.normal(scale=0.04, size=cluster.positions.shape)
        cluster.positions = cluster.positions @ _rotation(r).T
        return _free(cluster)

    return [_retry(make, rng) for _ in range(n)]


def _gen_2d(n: int, rng: np.random.Generator) -> list[Atoms]:
    """Honeycomb layers (graphene, h-BN, SiC, ...) and MX2 (2H/1T) with 8–10 Å vacuum."""

    def make(r: np.random.Generator) -> Atoms:
        if r.random() < 0.5:
            a_el, b_el = _HEX_PAIRS[int(r.integers(len(_HEX_PAIRS)))]
            d = _nn(a_el, b_el, r)
            buckle = 0.0 if a_el in ("C", "B") or b_el in ("N", "O") else float(r.uniform(0.0, 0.5))
            a = math.sqrt(3) * math.sqrt(max(d**2 - buckle**2, 0.5 * d**2))
            layer = graphene(formula=f"{a_el}{b_el}", a=a, thickness=buckle)
        else:
            m_el, x_el = str(r.choice(_TMD_M)), str(r.choice(_TMD_X))
            d = _nn(m_el, x_el, r)
            layer = mx2(formula=f"{m_el}{x_el}2", kind=str(r.choice(["2H", "1T"])), a=1.31 * d, thickness=1.32 * d)
        options = [(a, b) for a in (1, 2, 3, 4) for b in (1, 2, 3, 4) if 2 <= len(layer) * a * b <= 60]
        layer = layer.repeat((*options[int(r.integers(len(options)))], 1))
        layer = _strain(layer, r, 0.02)
        layer.positions = layer.positions + r.normal(scale=0.03, size=layer.positions.shape)
        layer.center(vacuum=float(r.uniform(4.0, 5.0)), axis=2)
        layer.pbc = True
        return layer

    return [_retry(make, rng) for _ in range(n)]


@lru_cache(maxsize=None)
def _g2_names() -> tuple[str, ...]:
    from ase.collections import g2

    allowed = set(MAD_MINI_ELEMENTS)
    return tuple(
        sorted(name for name in g2.names if len(g2[name]) >= 2 and set(g2[name].numbers.tolist()) <= allowed)
    )


def _g2(name: str) -> Atoms:
    from ase.collections import g2

    return g2[name]


def _gen_molecules(n: int, rng: np.random.Generator) -> list[Atoms]:
    """Molecules of ASE's g2 set (each once before any repeats), rotated and lightly rattled."""
    names = list(_g2_names())
    order = [names[i] for i in rng.permutation(len(names))]

    def make_for(name: str) -> Callable[[np.random.Generator], Atoms]:
        def make(r: np.random.Generator) -> Atoms:
            mol = _g2(name)
            mol = Atoms(mol.numbers, positions=mol.positions - mol.positions.mean(axis=0))
            mol.positions = mol.positions @ _rotation(r).T + r.normal(scale=0.01, size=mol.positions.shape)
            return _free(mol)

        make.__name__ = f"molecule_{name}"
        return make

    return [_retry(make_for(order[k % len(order)]), rng) for k in range(n)]


def _gen_molecular_crystals(n: int, rng: np.random.Generator) -> list[Atoms]:
    """Small molecules on a (slightly sheared) grid with random orientations, periodic.

    Grid spacing = molecule diameter + a 1.8–2.6 Å gap, so molecules never overlap.
    """
    names = [s for s in _SMALL_MOLECULES if s in set(_g2_names())]

    def make(r: np.random.Generator) -> Atoms:
        kinds = [str(s) for s in r.choice(names, size=int(r.integers(1, 3)), replace=False)]
        mols = []
        for k in kinds:
            m = _g2(k)
            mols.append(Atoms(m.numbers, positions=m.positions - m.positions.mean(axis=0)))
        size = max(len(m) for m in mols)
        grids = [g for g in [(1, 1, 2), (1, 2, 2), (2, 2, 2), (2, 2, 3), (2, 3, 3), (3, 3, 3)] if 2 <= np.prod(g) * size <= MAX_ATOMS]
        if not grids:
            return Atoms()
        grid = grids[int(r.integers(len(grids)))]
        radius = max(float(np.max(np.linalg.norm(m.positions, axis=1))) + 0.5 * _r("H") for m in mols)
        spacing = 2 * radius + float(r.uniform(1.8, 2.6))
        shear = np.eye(3) + np.triu(r.uniform(-0.1, 0.1, size=(3, 3)), 1)
        cell = (np.diag(grid) * spacing) @ shear
        symbols, pos = [], []
        for ijk in np.ndindex(*grid):
            m = mols[int(r.integers(len(mols)))]
            centre = (np.array(ijk) + 0.5) / np.array(grid) @ cell
            pos.append(m.positions @ _rotation(r).T + centre)
            symbols.extend(m.get_chemical_symbols())
        return Atoms(symbols, positions=np.concatenate(pos), cell=cell, pbc=True)

    return [_retry(make, rng) for _ in range(n)]


_GENERATORS: dict[str, Callable[[int, np.random.Generator], list[Atoms]]] = {
    "bulk": _gen_bulk,
    "rattled": _gen_rattled,
    "random": _gen_random,
    "surfaces": _gen_surfaces,
    "clusters": _gen_clusters,
    "2d": _gen_2d,
    "molecules": _gen_molecules,
    "molecular-crystals": _gen_molecular_crystals,
}


def _counts(size: int) -> dict[str, int]:
    """Structures per subset: proportional to the shares, at least one each when ``size >= 8``."""
    from mlipspace.data.splits import allocate

    names = list(MAD_MINI_SUBSETS)
    shares = np.array([MAD_MINI_SUBSETS[k] for k in names])
    if size >= len(names):
        base = np.ones(len(names), dtype=np.int64)
        extra = allocate(np.round(shares * 1000).astype(np.int64) * size, size - len(names))
        return dict(zip(names, (base + extra).tolist()))
    order = np.argsort(-shares, kind="stable")[:size]
    return {names[i]: 1 for i in sorted(order)}


def mad_mini(size: int | None = None, seed: int = 0) -> list[Atoms]:
    """Generate the ``mad-mini`` structures (``size`` defaults to 600), subset by subset.

    With ``size < 8`` only the ``size`` largest subsets get one structure each. Results are
    cached per ``(size, seed)``; every call returns fresh copies that callers may modify.
    """
    size = DEFAULT_SIZE if size is None else size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"builtin:mad-mini size must be a positive integer, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"builtin:mad-mini seed must be a non-negative integer, got {seed!r}")
    return [a.copy() for a in _mad_mini_cached(int(size), int(seed))]


@lru_cache(maxsize=8)
def _mad_mini_cached(size: int, seed: int) -> tuple[Atoms, ...]:
    source = f"builtin:mad-mini?size={size}&seed={seed}"
    frames: list[Atoms] = []
    for k, (name, count) in enumerate(_counts(size).items()):
        rng = np.random.default_rng([seed, k, size])
        for atoms in _GENERATORS[name](count, rng):
            atoms = _finish(atoms, name)
            atoms.info["source"] = source
            atoms.info["source_index"] = len(frames)
            frames.append(atoms)
    return tuple(frames)


BUILTINS: dict[str, Callable[..., list[Atoms]]] = {"mad-mini": mad_mini}


def builtin(name: str = "mad-mini", size: int | None = None, seed: int = 0) -> list[Atoms]:
    """A builtin dataset by name (``"mad-mini"``), generated deterministically from ``size``/``seed``."""
    try:
        make = BUILTINS[name]
    except KeyError:
        raise InputError(f"unknown builtin dataset {name!r}; known: {', '.join(sorted(BUILTINS))}") from None
    return make(size=size, seed=seed)
