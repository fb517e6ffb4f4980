#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: installs the project on every worker and starts the
# same command on all of them (multi-host: jax.distributed starts itself on a slice).
#
#   TPU_NAME=av-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   REPO=https://github.com/<you>/adverse_vision.git \
#   CONFIG=configs/yolox_scenes.py:s WORKDIR=gs://<bucket>/runs/yolox_s \
#   bash launch/tpu_vm.sh [--config.key=value ...]
#
# Rerunning it resumes from the last checkpoint in WORKDIR. Preemption (SIGTERM) saves.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO:?set REPO}"
: "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
BRANCH="${BRANCH:-main}"

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi

overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  if [ ! -d adverse_vision ]; then git clone -b $BRANCH $REPO adverse_vision; fi
  cd adverse_vision && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  python -m adverse_vision.train --config $CONFIG --workdir $WORKDIR --progress off $overrides
"
