#!/usr/bin/env bash
# Train on the GPUs of one machine, or of several: every visible GPU of every process
# joins the one data mesh.
#
#   CONFIG=configs/yolox_scenes.py:s,bf16 WORKDIR=runs/yolox_s bash launch/gpu.sh [--dry-run] [--config.key=value ...]
#
# It uses the project's .venv (made when missing from requirements.lock, the exact
# versions of a green test run, plus the CUDA jax) and stops unless jax there runs on
# the GPU: a .venv made by the README's quick start has the CPU-only jax. ALLOW_CPU=1
# trains on the CPU anyway. --dry-run prints every command instead of running it.
#
# XLA flags (added to any XLA_FLAGS of yours): the latency-hiding scheduler, which
# overlaps the gradient all-reduce with the backward pass on several GPUs; and
# XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 (default 0.75) for larger batches.
#
# Several machines: start this script once per machine, either under SLURM
# (`srun --ntasks-per-node=1 bash launch/gpu.sh`: JAX reads SLURM's variables) or with
# JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID set in each;
# the trainer calls jax.distributed.initialize() itself. WORKDIR must then be a folder
# every machine sees (a shared file system or a bucket, gs://...).
set -euo pipefail
DRY_RUN=0
if [ "${1:-}" = --dry-run ]; then DRY_RUN=1; shift; fi
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
cd "$(dirname "$0")/.."

run() {  # a command, or its line when dry
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
if [ -n "${SLURM_PROCID:-}" ] && [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
  echo "SLURM task $SLURM_PROCID of $SLURM_NTASKS" >&2
elif [ -n "${JAX_COORDINATOR_ADDRESS:-}" ]; then
  echo "process ${JAX_PROCESS_ID:-?} of ${JAX_NUM_PROCESSES:-?} (coordinator $JAX_COORDINATOR_ADDRESS)" >&2
fi

. launch/backend.sh
if [ ! -d .venv ]; then
  run python3 -m venv .venv
  if [ "$DRY_RUN" = 1 ]; then echo ". .venv/bin/activate"; else . .venv/bin/activate; fi
  run pip install -q -r requirements.lock 'jax[cuda12]'
  run pip install -q --no-deps -e .
elif [ "$DRY_RUN" = 1 ]; then
  echo ". .venv/bin/activate"
else
  . .venv/bin/activate
fi
if [ "$DRY_RUN" = 1 ]; then
  echo "XLA_FLAGS=$(printf %q "$XLA_FLAGS") XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
  run python -m adverse_vision.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
  exit 0
fi
require_backend gpu ". $PWD/.venv/bin/activate && pip install -U 'jax[cuda12]'"
exec python -m adverse_vision.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
