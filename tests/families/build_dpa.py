"""Build small random-initialised DPA-3 models and save them as deepmd-kit training checkpoints.

Run with the dpa environment's python: ``build_dpa.py OUTDIR`` (with mlipspace's ``src`` on
``PYTHONPATH``, for the op-library workaround in :func:`mlipspace.models.dpa.import_deepmd_pt`).
Writes the files the way ``dp --pt train`` writes ``model.ckpt-*.pt`` (``torch.save({"model":
ModelWrapper.state_dict()})``, whose ``_extra_state`` holds the normalised ``model_params``; the
released ``DPA-3.1-3M.pt`` has this layout) and prints one JSON line last:

- ``spec``: a single-task DPA-3 (2 repflow layers, n_dim 16, fitting [24, 24]) on ``TYPE_MAP``;
- ``spec_heads``: a two-head multi-task checkpoint (heads ``Omat24`` with alias ``omat`` and
  ``MPtrj``) sharing one descriptor, each head with its own fitting net, ``bias_atom_e``, case
  embedding and output bias, as multi-task training saves them (keys ``model.<head>.*``);
- ``frozen``: a ``.pth`` TorchScript file (``dp --pt freeze`` output), which the adapter refuses;
- ``reference`` / ``reference_frames``: an ``.npz`` with deepmd's own ``DeepPot.eval_descriptor``,
  ``eval_fitting_last_layer`` and energy (atom types from the model's type_map, as deepmd's ASE
  calculator does) for the frames of ``reference_frames()``, written to the ``.extxyz`` file, for
  the tests to compare with what the adapter extracts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mlipspace.models.dpa import import_deepmd_pt

import_deepmd_pt()  # deepmd-kit 3.2.0's op library is built for torch 2.11: skip it on 2.13

import torch
from deepmd.pt.model.model import get_model
from deepmd.pt.train.wrapper import ModelWrapper
from deepmd.utils.argcheck import model_args

#: deliberately not in alphabetical or atomic-number order, so a sorted-symbols type assignment
#: (the study's bug) feeds the model other types than the type_map does
TYPE_MAP = ["O", "H", "Cu", "C", "Na", "N", "Si", "Cl"]


def _config(dim_case_embd: int = 0, alias: list[str] | None = None) -> dict:
    """Normalised model parameters of a small DPA-3 energy model (what ``_extra_state`` stores)."""
    cfg = {
        "type_map": TYPE_MAP,
        "descriptor": {
            "type": "dpa3",
            "repflow": {
                "n_dim": 16, "e_dim": 8, "a_dim": 4, "nlayers": 2,
                "e_rcut": 5.0, "e_rcut_smth": 4.0, "e_sel": 60,
                "a_rcut": 3.5, "a_rcut_smth": 3.0, "a_sel": 20, "axis_neuron": 4,
                "update_angle": True, "smooth_edge_update": True,
            },
            "activation_function": "silut:10.0",
            "precision": "float32",
            "use_tebd_bias": False,
            "seed": 1,
        },
        "fitting_net": {"neuron": [24, 24], "precision": "float32", "activation_function": "silut:10.0",
                        "dim_case_embd": dim_case_embd, "seed": 1},
    }
    if alias:
        cfg["model_branch_alias"] = alias
    return model_args().normalize_value(cfg, trim_pattern="_*")


def _randomise_biases(model, seed: int) -> None:
    """Per-type energy shifts of realistic size (deepmd sets them from data statistics in training)."""
    g = torch.Generator().manual_seed(seed)
    am = model.atomic_model
    with torch.no_grad():
        ntypes = len(TYPE_MAP)
        am.fitting_net.bias_atom_e.copy_(-torch.rand(ntypes, 1, generator=g, dtype=torch.float64) * 3)
        am.out_bias.copy_(-torch.rand(am.out_bias.shape, generator=g, dtype=torch.float64).to(am.out_bias.dtype))
        # random init leaves the last fitting layer small: make the readout carry visible energy
        for p in am.fitting_net.filter_layers.networks[0].layers[-1].parameters():
            p.mul_(5.0)


def reference_frames():
    """Frames for the deepmd-side reference: water (no cell), a rattled Cu+O cell, CO in a periodic box."""
    from ase.build import bulk, molecule

    water = molecule("H2O")
    cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    cu.symbols[1] = "O"
    cu.rattle(0.05, seed=3)
    co = molecule("CO")
    co.center(vacuum=6.0)
    co.pbc = True
    return [water, cu, co]


def _reference(path: Path, out: Path, frames_file: Path) -> None:
    from ase.io import write
    from deepmd.infer import DeepPot

    dp = DeepPot(str(path), no_jit=True)  # same numbers as the TorchScript path, seconds faster
    tm = dp.get_type_map()
    res = {}
    frames = reference_frames()
    write(frames_file, frames, format="extxyz")
    for i, atoms in enumerate(frames):
        types = np.array([tm.index(s) for s in atoms.get_chemical_symbols()])
        cell = atoms.cell.array.reshape(1, 9) if atoms.pbc.any() else None
        coords = atoms.positions.reshape(1, -1)
        res[f"descriptor_{i}"] = dp.eval_descriptor(coords, cell, types).reshape(len(atoms), -1)
        res[f"last_{i}"] = dp.eval_fitting_last_layer(coords, cell, types).reshape(len(atoms), -1)
        res[f"energy_{i}"] = np.asarray(dp.eval(coords, cell, types)[0]).reshape(())
    np.savez(out, **res)


def main(outdir: Path) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # --- single task: model.Default.* -------------------------------------------------------
    params = _config()
    model = get_model(params)
    _randomise_biases(model, 1)
    wrapper = ModelWrapper(model, model_params=params)
    single = outdir / "dpa3-small.pt"
    torch.save({"model": wrapper.state_dict()}, single)

    # --- multi task: shared descriptor, one fitting per head, case embedding ------------------
    heads = {"Omat24": _config(2, ["omat"]), "MPtrj": _config(2)}
    models = {}
    for i, (head, p) in enumerate(heads.items()):
        m = get_model(p)
        m.atomic_model.descriptor.load_state_dict(model.atomic_model.descriptor.state_dict())  # shared
        m.atomic_model.fitting_net.set_case_embd(i)
        _randomise_biases(m, 10 + i)
        models[head] = m
    mt_params = {"model_dict": heads, "shared_dict": {}}
    mt = ModelWrapper(models, model_params=mt_params)
    multi = outdir / "dpa3-heads.pt"
    torch.save({"model": mt.state_dict()}, multi)

    # --- a frozen TorchScript model (refused by the adapter) ----------------------------------
    frozen = outdir / "dpa3-small.pth"
    torch.jit.save(torch.jit.script(get_model(params)), str(frozen))

    reference = outdir / "reference.npz"
    reference_frames_file = outdir / "reference.extxyz"
    _reference(single, reference, reference_frames_file)

    return {
        "spec": f"dpa:{single}",
        "spec_heads": f"dpa:{multi}",
        "heads": list(heads),
        "frozen": str(frozen),
        "reference": str(reference),
        "reference_frames": str(reference_frames_file),
        "type_map": TYPE_MAP,
        "dims": {"interaction.0": 16, "interaction.1": 16, "descriptor": 16, "last": 24},
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).absolute())))
