#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: the same commit installed once on every worker, the
# same command started on all of them (multi-host: jax.distributed starts itself on a
# slice), checkpoints, metrics, the compilation cache and each worker's log in the
# bucket.
#
#   TPU_NAME=av-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   REPO=https://github.com/YOUR_NAME/adverse_vision.git \
#   CONFIG=configs/yolox_scenes.py:s WORKDIR=gs://YOUR_BUCKET/runs/yolox_s \
#   bash launch/tpu_vm.sh [--dry-run] [--config.key=value ...]
#
# COMMIT (default: the commit checked out here) is what every worker runs; it must be
# pushed to REPO. A worker installs requirements.lock (the exact versions of a green
# test run) plus jax[tpu] once per commit and skips that on later launches. Rerunning
# resumes from the last checkpoint in WORKDIR; preemption (SIGTERM) makes every worker
# save the same step. --dry-run prints every command instead of running it. Each
# worker stops before training unless jax there runs on the TPU (ALLOW_CPU=1 lets it
# train on the CPU).
set -euo pipefail
DRY_RUN=0
if [ "${1:-}" = --dry-run ]; then DRY_RUN=1; shift; fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO:?set REPO}"
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
for value in "$REPO" "$WORKDIR"; do
  case "$value" in
    *YOUR_*|*"<"*|*">"*) echo "error: replace the placeholder in '$value' (REPO, WORKDIR)" >&2; exit 2 ;;
  esac
done
if [ -z "${COMMIT:-}" ]; then
  COMMIT=$(git -C "$(dirname "$0")/.." rev-parse HEAD 2>/dev/null) || {
    echo "error: set COMMIT (no git checkout here to take it from)" >&2; exit 2; }
fi
case "$COMMIT" in
  *[!0-9a-f]*|"") echo "error: COMMIT must be a commit hash, got '$COMMIT'" >&2; exit 2 ;;
esac

run() {  # a command, or its line when dry
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

libtpu=https://storage.googleapis.com/jax-releases/libtpu_releases.html
q() { printf %q "$1"; }
overrides=$(printf ' %q' "$@")
worker_command="
  set -e
  if [ ! -d adverse_vision ]; then git clone --quiet $(q "$REPO") adverse_vision; fi
  cd adverse_vision
  git fetch --quiet origin && git checkout --quiet $(q "$COMMIT")
  if [ ! -f .venv/installed-$COMMIT ]; then
    python3 -m venv .venv && . .venv/bin/activate
    pip install -q -r requirements.lock 'jax[tpu]' -f $libtpu
    pip install -q --no-deps -e .
    touch .venv/installed-$COMMIT
  fi
  . .venv/bin/activate
  . launch/backend.sh
  ALLOW_CPU=$(q "${ALLOW_CPU:-0}") require_backend tpu \"pip install -U 'jax[tpu]' -f $libtpu\"
  export JAX_COMPILATION_CACHE_DIR=$(q "$WORKDIR/jax_cache")
  set +e -o pipefail
  python -m adverse_vision.train --config $(q "$CONFIG") --workdir $(q "$WORKDIR") --progress off$overrides 2>&1 | tee train.log
  status=\$?
  python -m adverse_vision.storage copy train.log $(q "$WORKDIR")/logs/\$(hostname).log
  exit \$status
"

if [ "$DRY_RUN" = 1 ]; then
  echo "# when the TPU VM $TPU_NAME does not exist yet:"
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$VERSION"
elif ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$worker_command"
