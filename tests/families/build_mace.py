"""Build small random-initialised MACE models and save them as whole-model ``.model`` files.

Run with the MACE environment's python: ``build_mace.py OUTDIR``. Writes two checkpoints the way
``mace_run_train`` writes its ``.model`` files (``torch.save(model, path)``: the whole pickled
module, as ``mace-mp-0b3-medium.model``), and prints one JSON line last:

- ``spec``: a ScaleShiftMACE in float64 like the MACE-MP models (2 interactions, hidden
  ``16x0e+16x1o``, non-linear readout ``8x0e``, ``RealAgnosticResidualInteractionBlock``), one head;
- ``spec_heads``: a float32 plain MACE with 3 interactions, ``max_ell`` 1, correlations 3/2/2 and
  two heads ``["omat", "Default"]`` (per-head E0s; the non-linear readout's hidden layer holds one
  ``8x0e`` block per head) -- the layout of multi-head fine-tuned models;
- ``spec_zbl``: the first architecture with the ZBL pair repulsion of MACE-MP-0b3 (an energy term
  that does not pass through the readout);
- ``statedict``: a file holding only a state dict (what ``torch.save(model.state_dict())`` or a
  training checkpoint gives), which the adapter must refuse with a clear message.

Elements: H, C, O, Na, Si, Cl, Cu (those of the test frames). Seconds on one CPU core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

# e3nn 0.4.4 (pinned by mace-torch) torch.load()s its constants, which holds a ``slice``: refused
# by torch >= 2.6's weights-only default unless allowed
torch.serialization.add_safe_globals([slice])

from e3nn import o3
from mace import modules

ELEMENTS = [1, 6, 8, 11, 14, 17, 29]


def _common(num_interactions, hidden, max_ell, correlation, heads=None, pair_repulsion=False):
    """Keyword arguments of ``mace.modules.MACE`` for a small model on ``ELEMENTS``."""
    n_heads = 1 if heads is None else len(heads)
    rng = np.random.default_rng(0)
    e0 = -rng.uniform(0.5, 5.0, size=(n_heads, len(ELEMENTS)))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    kw = {
        "r_max": 4.5, "num_bessel": 6, "num_polynomial_cutoff": 5, "max_ell": max_ell,
        "interaction_cls": block, "interaction_cls_first": block, "num_interactions": num_interactions,
        "num_elements": len(ELEMENTS), "hidden_irreps": o3.Irreps(hidden), "MLP_irreps": o3.Irreps("8x0e"),
        "atomic_energies": e0[0] if heads is None else e0, "avg_num_neighbors": 8.0,
        "atomic_numbers": ELEMENTS, "correlation": correlation, "gate": torch.nn.functional.silu,
        "radial_MLP": [16, 16], "pair_repulsion": pair_repulsion,
    }
    if heads is not None:
        kw["heads"] = heads
    return kw


def _randomise_readouts(model):
    """Non-trivial readout weights: e3nn initialises them fine, but bump them so energies vary visibly."""
    with torch.no_grad():
        for p in model.readouts.parameters():
            p.mul_(3.0)


def main(outdir: Path) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    out = {"elements": ELEMENTS}

    torch.set_default_dtype(torch.float64)  # the released MACE-MP models are float64 files
    torch.manual_seed(0)
    model = modules.ScaleShiftMACE(atomic_inter_scale=1.3, atomic_inter_shift=-0.2,
                                   **_common(2, "16x0e+16x1o", 2, 3))
    _randomise_readouts(model)
    path = outdir / "mace-small.model"
    torch.save(model, path)
    out["spec"] = f"mace:{path}"
    out["dims"] = {"interaction.0": 16, "interaction.1": 16, "last": 16 + 8}

    torch.manual_seed(1)
    zbl = modules.ScaleShiftMACE(atomic_inter_scale=1.3, atomic_inter_shift=-0.2,
                                 **_common(2, "16x0e+16x1o", 2, 3, pair_repulsion=True))
    _randomise_readouts(zbl)
    path = outdir / "mace-zbl.model"
    torch.save(zbl, path)
    out["spec_zbl"] = f"mace:{path}"

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(2)
    heads = modules.MACE(**_common(3, "12x0e+12x1o", 1, [3, 2, 2], heads=["omat", "Default"]))
    _randomise_readouts(heads)
    path = outdir / "mace-heads.model"
    torch.save(heads, path)
    out["spec_heads"] = f"mace:{path}"
    out["heads"] = ["omat", "Default"]
    out["dims_heads"] = {"interaction.0": 12, "interaction.1": 12, "interaction.2": 12, "last": 12 + 12 + 8}

    path = outdir / "mace-statedict.pt"
    torch.save(model.state_dict(), path)
    out["statedict"] = f"mace:{path}"
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_mace.py OUTDIR")
    print(json.dumps(main(Path(sys.argv[1]).resolve())))
