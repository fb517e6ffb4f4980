#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: installs the project on every worker and starts the
# same command on all of them (multi-host: jax.distributed starts itself on a slice).
#
#   TPU_NAME=av-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   REPO=https://github.com/YOUR_NAME/adverse_vision.git \
#   CONFIG=configs/yolox_scenes.py:s WORKDIR=gs://YOUR_BUCKET/runs/yolox_s \
#   bash launch/tpu_vm.sh [--config.key=value ...]
#
# Rerunning it resumes from the last checkpoint in WORKDIR. Preemption (SIGTERM) saves.
# Each worker stops before training unless jax there runs on the TPU (ALLOW_CPU=1 lets
# it train on the CPU).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO:?set REPO}"
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
BRANCH="${BRANCH:-main}"
for value in "$REPO" "$WORKDIR"; do
  case "$value" in
    *YOUR_*|*"<"*|*">"*) echo "error: replace the placeholder in '$value' (REPO, WORKDIR)" >&2; exit 2 ;;
  esac
done

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi

libtpu=https://storage.googleapis.com/jax-releases/libtpu_releases.html
overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  if [ ! -d adverse_vision ]; then git clone -b $(printf %q "$BRANCH") $(printf %q "$REPO") adverse_vision; fi
  cd adverse_vision && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e . 'jax[tpu]' -f $libtpu
  . launch/backend.sh
  ALLOW_CPU=$(printf %q "${ALLOW_CPU:-0}") require_backend tpu \"pip install -U 'jax[tpu]' -f $libtpu\"
  python -m adverse_vision.train --config $(printf %q "$CONFIG") --workdir $(printf %q "$WORKDIR") --progress off $overrides
"
