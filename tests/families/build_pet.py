"""Build small random-initialised PET models and save them the way users get them.

Run with the PET environment's python: ``build_pet.py OUTDIR``. Builds ``metatrain.pet.PET`` models
from their own constructor (``PET(hypers, DatasetInfo(...))``, ``torch.manual_seed(0)``), gives
the composition baseline and the energy scale non-trivial values (as training would), then saves:

- ``small.pt``: the exported metatomic model (``model.export().save(...)``: a TorchScript
  ``AtomisticModel``, the format of the PET-MAD releases), ``featurizer_type="residual"``, 2 GNN
  layers -> ``spec``;
- ``small.ckpt``: the metatrain checkpoint of the same model (``model.get_checkpoint()`` saved with
  ``torch.save``, what ``mtt train`` writes) -> ``spec_ckpt``;
- ``ff.pt``: an exported model with the default ``featurizer_type="feedforward"`` (3 GNN
  layers, only the last one reaches the heads) -> ``spec_ff``;
- ``zbl.pt``: the residual model with metatrain's ZBL pair repulsion added to the energy (an
  additive model that does not pass through the last layers) -> ``spec_zbl``;
- ``adaptive.pt``: the residual model with PET's adaptive per-atom cutoff
  (``num_neighbors_adaptive=6``), whose cutoff weights the edge-bias term must follow -> ``adaptive``;
- ``two.pt``: two energy targets, ``energy`` and ``mtt::energy_r2scan`` (one backbone, two sets of
  heads, the layout of multi-fidelity models) -> ``spec_two`` (selecting the second target);
- ``composition.pt``: an exported metatomic model of another architecture (metatrain's
  composition model), which the PET adapter must refuse -> ``other``;
- ``garbage.pt``: a file that is no model at all -> ``garbage``.

Elements: H, C, O, Na, Si, Cl, Cu (those of the test frames). Seconds on one CPU core. The last
stdout line is the JSON with the specs and the model sizes.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

ELEMENTS = [1, 6, 8, 11, 14, 17, 29]


def _dataset_info(targets=("energy",)):
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import get_energy_target_info

    infos = {t: get_energy_target_info(t, {"unit": "eV", "quantity": "energy"}) for t in targets}
    return DatasetInfo(length_unit="angstrom", atomic_types=ELEMENTS, targets=infos)


def _set_baselines(model, seed: int, target: str = "energy") -> None:
    """Per-element energies and the energy scale set as the trainer would fit them.

    The weights live in TensorMaps *and* in serialised buffers (what export/checkpoints save):
    write both, so the exported file and the checkpoint carry the same values.
    """
    import metatensor.torch as mts

    gen = torch.Generator().manual_seed(seed)
    comp = model.additive_models[0]
    weights = comp.model.weights[target]
    values = weights.block().values
    with torch.no_grad():
        values.copy_(-torch.rand(values.shape, generator=gen, dtype=values.dtype) * 5.0 - 0.5)
    setattr(comp, f"{target}_composition_buffer", mts.save_buffer(mts.make_contiguous(weights)))
    comp.sync_tensor_maps()

    scaler = model.scaler
    for attr, buffer in (("scales", f"{target}_scaler_buffer"), ("per_target_scales", f"{target}_per_target_scaler_buffer")):
        tmap = getattr(scaler.model, attr)[target]
        with torch.no_grad():
            tmap.block().values.fill_(1.7 + 0.4 * (target != "energy"))
        setattr(scaler, buffer, mts.save_buffer(mts.make_contiguous(tmap)))
    scaler.sync_tensor_maps()


def build(hypers: dict, seed: int = 0, targets=("energy",)):
    """A PET model with default hypers updated by ``hypers``, random weights from ``seed``."""
    from metatrain.pet import PET
    from metatrain.utils.architectures import get_default_hypers

    torch.manual_seed(seed)
    full = get_default_hypers("pet")["model"]
    full.update(d_pet=16, d_node=32, d_head=16, d_feedforward=32, num_heads=2, num_attention_layers=1,
                cutoff=4.5, cutoff_width=0.5)
    full.update(hypers)
    model = PET(full, _dataset_info(targets))
    for target in targets:
        _set_baselines(model, seed, target)
    return model.eval()


def main(outdir: str) -> None:
    out = Path(outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")

    model = build({"featurizer_type": "residual", "num_gnn_layers": 2})
    torch.save(model.get_checkpoint(), out / "small.ckpt")
    model.export().save(str(out / "small.pt"))

    ff = build({"featurizer_type": "feedforward", "num_gnn_layers": 3}, seed=1)
    ff.export().save(str(out / "ff.pt"))

    zbl = build({"featurizer_type": "residual", "num_gnn_layers": 2, "zbl": True}, seed=2)
    zbl.export().save(str(out / "zbl.pt"))

    adaptive = build({"featurizer_type": "residual", "num_gnn_layers": 2, "num_neighbors_adaptive": 6}, seed=3)
    adaptive.export().save(str(out / "adaptive.pt"))

    two = build({"featurizer_type": "residual", "num_gnn_layers": 2}, seed=4, targets=("energy", "mtt::energy_r2scan"))
    two.export().save(str(out / "two.pt"))

    from metatrain.composition import CompositionModel

    composition = CompositionModel({}, _dataset_info())
    composition.export().save(str(out / "composition.pt"))

    (out / "garbage.pt").write_bytes(b"this is not a model\n" * 10)
    print(json.dumps({
        "spec": f"pet:{out / 'small.pt'}",
        "spec_ckpt": f"pet:{out / 'small.ckpt'}",
        "spec_ff": f"pet:{out / 'ff.pt'}",
        "spec_zbl": f"pet:{out / 'zbl.pt'}",
        "spec_two": f"pet:{out / 'two.pt'}?target=mtt::energy_r2scan",
        "adaptive": f"pet:{out / 'adaptive.pt'}",
        "other": f"pet:{out / 'composition.pt'}",
        "garbage": f"pet:{out / 'garbage.pt'}",
        "elements": ELEMENTS,
        "layers": {"residual": 2, "feedforward": 3},
        "d_node": 32, "d_pet": 16, "d_head": 16,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
