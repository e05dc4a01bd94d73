"""Build small random-initialised UMA / eSEN models as fairchem inference checkpoints (test fixture).

Run with the UMA environment's python: ``build_uma.py OUTDIR``. Writes, in the format of the released
``uma-s-1p1.pt`` (a pickled ``fairchem.core.units.mlip_unit.api.inference.MLIPInferenceCheckpoint``
holding ``model_config``, ``model_state_dict``, ``ema_state_dict`` and ``tasks_config``, loaded by
``fairchem.core.units.mlip_unit.load_predict_unit``):

- ``uma-tiny.pt``: a ``HydraModel`` with an ``eSCNMDMoeBackbone`` (2 mixture-of-linear-experts
  experts, dataset embedding and composition embedding, ``model_version`` 1.1 like UMA-S-1.1) and
  UMA's ``DatasetSpecificSingleHeadWrapper`` around an ``MLP_EFS_Head``, for the five UMA tasks
  omat, omol, oc20, odac, omc. Each task has an energy (normaliser + element references), forces and
  stress task, as the released checkpoints do.
- ``uma-moehead-tiny.pt``: the same backbone with a ``DatasetSpecificMoEWrapper`` head (the energy
  MLP's linear layers are per-task experts).
- ``esen-tiny.pt``: an eSEN-style conservative model (``eSCNMDBackbone`` without experts or dataset
  embedding, a bare ``MLP_EFS_Head`` named ``efs``) with the single task ``omat``.
- ``not-uma.pt``: a plain state dict (another family's kind of file), for the error tests.

Sizes are tiny (lmax 1, 16 channels, 2 blocks, max_num_elements 30 so Z = 1..29) so loading and a
forward pass take well under a second. Prints one JSON line last: ``spec``, ``spec_esen``, paths and
sizes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

TASKS = ["oc20", "omat", "omc", "odac", "omol"]
N_ELEMENTS = 30  # embedding rows: Z = 0..29, i.e. H..Cu
LAYERS = 2
CHANNELS = 16


def backbone_config(moe: bool) -> dict:
    cfg = {
        "max_num_elements": N_ELEMENTS,
        "sphere_channels": CHANNELS,
        "lmax": 1,
        "mmax": 1,
        "otf_graph": True,
        "max_neighbors": 300,
        "cutoff": 6.0,
        "edge_channels": CHANNELS,
        "distance_function": "gaussian",
        "num_distance_basis": 16,
        "direct_forces": False,
        "regress_forces": True,
        "regress_stress": True,
        "num_layers": LAYERS,
        "hidden_channels": CHANNELS,
        "norm_type": "rms_norm_sh",
        "act_type": "gate",
        "ff_type": "spectral",
        "chg_spin_emb_type": "rand_emb",
        "always_use_pbc": False,
    }
    if moe:
        cfg.update({
            "model": "fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone",
            "dataset_list": sorted(TASKS),
            "use_dataset_embedding": True,
            "num_experts": 2,
            "use_composition_embedding": True,
            "moe_layer_type": "pytorch",
            "model_version": 1.1,
        })
    else:
        cfg.update({
            "model": "fairchem.core.models.uma.escn_md.eSCNMDBackbone",
            "use_dataset_embedding": False,
        })
    return cfg


def tasks_config(datasets: list[str], prefixed: bool, seed: int) -> list[dict]:
    """Energy (normaliser + element references), forces and stress tasks, as hydra configs."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k, ds in enumerate(sorted(datasets)):
        pre = f"{ds}_" if prefixed else ""
        refs = (torch.randn(N_ELEMENTS, generator=gen, dtype=torch.float64) * 3.0 - 2.0).tolist()
        refs[0] = 0.0
        rmsd = 1.5 + 0.25 * k
        norm = {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
                "mean": 0.125 * (k + 1), "rmsd": rmsd}
        force_norm = {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
                      "mean": 0.0, "rmsd": rmsd}
        common = {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "datasets": [ds]}
        out.append({**common, "name": f"{pre}energy", "level": "system", "property": "energy",
                    "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec",
                                 "dim": [1], "dtype": "float32"},
                    "normalizer": norm,
                    "element_references": {
                        "_target_": "fairchem.core.modules.normalization.element_references.ElementReferences",
                        "element_references": {"_target_": "torch.DoubleTensor", "_args_": [refs]}}})
        out.append({**common, "name": f"{pre}forces", "level": "atom", "property": "forces",
                    "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec",
                                 "dim": [3], "dtype": "float32"},
                    "normalizer": force_norm})
        out.append({**common, "name": f"{pre}stress", "level": "system", "property": "stress",
                    "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec",
                                 "dim": [1, 9], "dtype": "float32"},
                    "normalizer": force_norm})
    return out


def save(model_config: dict, tasks: list[dict], path: Path, seed: int) -> None:
    """Instantiate ``model_config`` the way fairchem does, randomise it, save an inference checkpoint."""
    import hydra

    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    torch.manual_seed(seed)
    model = hydra.utils.instantiate(model_config)
    with torch.no_grad():  # the default init leaves the tiny element embeddings near 0: spread them
        for name, p in model.named_parameters():
            if name.endswith(("source_embedding.weight", "target_embedding.weight")):
                p.normal_(0.0, 0.5)
    ema = torch.optim.swa_utils.AveragedModel(model)
    torch.save(
        MLIPInferenceCheckpoint(
            model_config=model_config,
            model_state_dict=model.state_dict(),
            ema_state_dict=ema.state_dict(),
            tasks_config=tasks,
        ),
        path,
    )


def main(outdir: str) -> None:
    out = Path(outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    uma_config = {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": backbone_config(moe=True),
        "heads": {
            "energyandforcehead": {
                "module": "fairchem.core.models.uma.escn_moe.DatasetSpecificSingleHeadWrapper",
                "head_cls": "fairchem.core.models.uma.escn_md.MLP_EFS_Head",
                "head_kwargs": {"wrap_property": False},
                "dataset_names": sorted(TASKS),
            }
        },
        "pass_through_head_outputs": True,
        "otf_graph": True,
    }
    uma = out / "uma-tiny.pt"
    save(uma_config, tasks_config(TASKS, prefixed=True, seed=1), uma, seed=0)

    # the same backbone with UMA's other multi-task head: one MLP whose linear layers are per-task experts
    moe_head_config = {**uma_config, "heads": {"energyandforcehead": {
        **uma_config["heads"]["energyandforcehead"],
        "module": "fairchem.core.models.uma.escn_moe.DatasetSpecificMoEWrapper"}}}
    moe_head = out / "uma-moehead-tiny.pt"
    save(moe_head_config, tasks_config(TASKS, prefixed=True, seed=3), moe_head, seed=2)

    esen_config = {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": backbone_config(moe=False),
        "heads": {"efs": {"module": "fairchem.core.models.uma.escn_md.MLP_EFS_Head"}},
        "pass_through_head_outputs": True,
        "otf_graph": True,
    }
    esen = out / "esen-tiny.pt"
    save(esen_config, tasks_config(["omat"], prefixed=False, seed=2), esen, seed=1)

    foreign = out / "not-uma.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)

    print(json.dumps({
        "spec": f"uma:{uma}?task=omat",
        "spec_esen": f"uma:{esen}",
        "checkpoint": str(uma),
        "checkpoint_esen": str(esen),
        "checkpoint_moe_head": str(moe_head),
        "foreign": str(foreign),
        "tasks": sorted(TASKS),
        "n_layers": LAYERS,
        "width": CHANNELS,
        "n_elements": N_ELEMENTS,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
