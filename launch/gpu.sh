#!/usr/bin/env bash
# Train on the GPUs of one machine (all visible GPUs form the data mesh).
#
#   CONFIG=configs/yolox_scenes.py:s,bf16 WORKDIR=runs/yolox_s bash launch/gpu.sh [--config.key=value ...]
#
# It uses the project's .venv (made with the CUDA jax when missing) and stops unless jax
# there runs on the GPU: a .venv made by the README's quick start has the CPU-only jax.
# ALLOW_CPU=1 trains on the CPU anyway.
#
# For several machines, start the same command on each with JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID set (or under SLURM / mpirun); the trainer then
# calls jax.distributed.initialize() itself.
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."
. launch/backend.sh
if [ ! -d .venv ]; then
  python3 -m venv .venv
  . .venv/bin/activate
  pip install -q -e . 'jax[cuda12]'
else
  . .venv/bin/activate
fi
require_backend gpu ". $PWD/.venv/bin/activate && pip install -U 'jax[cuda12]'"
exec python -m adverse_vision.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
