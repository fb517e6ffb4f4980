#!/usr/bin/env bash
# Train on the GPUs of one machine (all visible GPUs form the data mesh).
#
#   CONFIG=configs/yolox_scenes.py:s,bf16 WORKDIR=runs/yolox_s bash launch/gpu.sh [--config.key=value ...]
#
# For several machines, start the same command on each with JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under SLURM / mpirun); the trainer then
# calls jax.distributed.initialize() itself.
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
if [ ! -d .venv ]; then
  python3 -m venv .venv
  . .venv/bin/activate
  pip install -q -e . 'jax[cuda12]'
else
  . .venv/bin/activate
fi
exec python -m adverse_vision.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
