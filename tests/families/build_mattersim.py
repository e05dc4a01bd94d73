"""Build a small random-initialised MatterSim model and save it as a MatterSim checkpoint (.pth).

Run with the MatterSim environment's python: ``build_mattersim.py OUTDIR``. The released checkpoints
(``mattersim-v1.0.0-1M.pth``, ``mattersim-v1.0.0-5M.pth``) are what ``Potential.save`` writes: a
torch dict ``{"model_name": "m3gnet", "model": state_dict, "model_args": {...}, "optimizer", "ema",
"scheduler", "last_epoch", "validation_metrics", "description"}``, read back by
``Potential.from_checkpoint(load_path=...)``. This script builds ``M3Gnet(num_blocks=2, units=32,
max_z=30)`` with mattersim's own constructor, wraps it in ``Potential`` and calls ``Potential.save``,
so the file has exactly the released format. It prints one JSON line last:

- ``spec``: ``mattersim:/abs/path/mattersim-tiny.pth``; ``checkpoint``: that file;
- ``n_layers`` (2), ``width`` (32), ``max_z`` (30: elements H..Zn, so Z > 30 is unsupported);
- ``foreign``: a torch file of another model (a bare state dict, no ``model_name``);
- ``truncated``: a MatterSim-format file whose state dict lacks the readout (``final``) weights.

The energy normaliser (``AtomScaling``: per-element scale and shift, buffers of the model) is set to
random per-element values instead of its defaults (1, 0), as a trained model has, so a readout that
ignored the checkpoint's own normaliser would not reproduce the calculator; the atom embedding is
re-drawn in U(-1, 1) (mattersim's U(-0.05, 0.05) leaves a random model's energy almost flat in the
geometry). Seconds on one CPU core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
from mattersim.forcefield.potential import Potential

N_BLOCKS, UNITS, MAX_Z = 2, 32, 30


def main(outdir: Path) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = M3Gnet(num_blocks=N_BLOCKS, units=UNITS, max_z=MAX_Z, device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # mattersim initialises the one-hot atom embedding in U(-0.05, 0.05): a random model's features
        # are then ~0.05 and its energy hardly depends on the geometry; U(-1, 1) gives features ~1
        model.atom_embedding.mlp[0].linear.weight.uniform_(-1.0, 1.0, generator=g)
        model.normalizer.scale.copy_(0.5 + torch.rand(MAX_Z + 1, generator=g))
        model.normalizer.shift.copy_(-3.0 + 2.0 * torch.randn(MAX_Z + 1, generator=g))
    potential = Potential(model, device="cpu")
    potential.description = "mlipspace test model: random init, M3Gnet(num_blocks=2, units=32, max_z=30)"
    ckpt = outdir / "mattersim-tiny.pth"
    potential.save(str(ckpt))

    foreign = outdir / "not-mattersim.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)).state_dict(), foreign)

    truncated = outdir / "mattersim-no-readout.pth"
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    data["model"] = {k: v for k, v in data["model"].items() if not k.startswith("final.")}
    torch.save(data, truncated)

    return {
        "spec": f"mattersim:{ckpt}",
        "checkpoint": str(ckpt),
        "foreign": str(foreign),
        "truncated": str(truncated),
        "n_layers": N_BLOCKS,
        "width": UNITS,
        "max_z": MAX_Z,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]).absolute())))
