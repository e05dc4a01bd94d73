"""Build small random-initialised ORB models and save them as ORB checkpoints (bare state dicts).

Run with the ORB environment's python: ``build_orb.py OUTDIR``. Released ORB checkpoints
(``orb-v3-conservative-inf-omat-20250404.ckpt``) are ``torch.save(model.state_dict())`` of a model
made by ``orb_models.forcefield.pretrained``'s architecture builders; this script writes the same
format from the same builders at small sizes, and prints one JSON line last:

- ``spec``: an orb-v3 *conservative* model (latent 32, encoder/stack MLPs 2 x 48, energy head
  1 x 24, 3 message-passing steps), loaded as ``arch=orb-v3-conservative-inf-omat``;
- ``spec_direct``: an orb-v3 *direct* model (latent 24, 2 steps, head depth 2, with a stress
  head), loaded as ``arch=orb-v3-direct-20-omat``;
- ``checkpoint``/``direct``: the two files; ``omol``: a one-step conservative model with the
  charge/spin conditioner of the omol models (no stress); ``foreign``: a state dict of another
  model (not ORB);
- ``n_layers``/``width``: of ``spec``; ``n_layers_direct``/``width_direct``: of ``spec_direct``.

The energy heads' normaliser (mean, std) and reference energies are set to values that differ from
orb-models' defaults, so a readout that ignored the checkpoint's own values would not reproduce the
calculator. Seconds on one CPU core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from orb_models.forcefield import pretrained
from orb_models.forcefield.atomic_system import SystemConfig


def _perturb_energy_head(model, seed: int) -> None:
    """Give the energy head a normaliser and reference energies of its own (as a trained model has)."""
    g = torch.Generator().manual_seed(seed)
    head = model.heads["energy"]
    with torch.no_grad():
        head.normalizer.bn.running_mean.fill_(0.37)
        head.normalizer.bn.running_var.fill_(2.3 ** 2)
        w = head.reference.linear.weight
        w.add_(0.5 * torch.randn(w.shape, generator=g, dtype=w.dtype))


def main(outdir: Path) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    conservative = pretrained.orb_v3_conservative_architecture(
        latent_dim=32, base_mlp_hidden_dim=48, base_mlp_depth=2, head_mlp_hidden_dim=24, head_mlp_depth=1,
        num_message_passing_steps=3, device="cpu", system_config=SystemConfig(radius=6.0, max_num_neighbors=120),
    )
    _perturb_energy_head(conservative, 1)
    ckpt = outdir / "orb-v3-tiny-conservative.ckpt"
    torch.save(conservative.state_dict(), ckpt)

    torch.manual_seed(0)
    direct = pretrained.orb_v3_direct_architecture(
        latent_dim=24, base_mlp_hidden_dim=32, base_mlp_depth=1, head_mlp_hidden_dim=16, head_mlp_depth=2,
        num_message_passing_steps=2, device="cpu", system_config=SystemConfig(radius=6.0, max_num_neighbors=20),
    )
    _perturb_energy_head(direct, 2)
    direct_path = outdir / "orb-v3-tiny-direct.ckpt"
    torch.save(direct.state_dict(), direct_path)

    torch.manual_seed(0)
    omol = pretrained.orb_v3_conservative_architecture(
        latent_dim=16, base_mlp_hidden_dim=16, base_mlp_depth=1, head_mlp_hidden_dim=16, head_mlp_depth=1,
        num_message_passing_steps=1, has_charge_spin_cond=True, has_stress=False, device="cpu",
        system_config=SystemConfig(radius=6.0, max_num_neighbors=120),
    )
    omol_path = outdir / "orb-v3-tiny-omol.ckpt"
    torch.save(omol.state_dict(), omol_path)

    foreign = outdir / "not-orb.ckpt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)).state_dict(), foreign)

    return {
        "spec": f"orb:{ckpt}?arch=orb-v3-conservative-inf-omat",
        "spec_direct": f"orb:{direct_path}?arch=orb-v3-direct-20-omat",
        "checkpoint": str(ckpt),
        "direct": str(direct_path),
        "omol": str(omol_path),
        "foreign": str(foreign),
        "n_layers": 3,
        "width": 32,
        "n_layers_direct": 2,
        "width_direct": 24,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).absolute())))
