#!/usr/bin/env bash
# BDLF with the thermal camera model, every run of README's comparison (Results: "BDLF
# with the thermal camera model"), then its tables:
#   pre_clear              YOLOX-tiny on clear scenes, 2,000 steps: every detector's start
#   lwirp_visible_S        per seed S, 1,600 steps each, detector from pre_clear:
#   lwirp_infrared_S         each source alone,
#   lwirp_fusion_S           the fusion loss,
#   lwirp_bdlf_S             the bi-level stage from lwirp_fusion_S's fusion network,
#   lwirp_fusion2_S          a second fusion-loss stage from the same start.
#
#   RUNS=runs SEEDS="0 1 2" PARALLEL=0 bash launch/bdlf_lwir.sh [--dry-run] [--config.key=value ...]
#
# It trains in the Python environment it finds (activate the project's .venv first).
# PARALLEL=1 runs the seeds side by side, each its runs in the order above (on one GPU,
# also set XLA_PYTHON_CLIENT_MEM_FRACTION so that the processes fit together). Stop it
# at any time and start it again: a stopped run resumes from its last checkpoint and a
# finished one is left as it is. Each run adds its output to RUNS/<run>.log; extra
# arguments go to every run. --dry-run prints every command instead of running it.
set -euo pipefail
DRY_RUN=0
if [ "${1:-}" = --dry-run ]; then DRY_RUN=1; shift; fi
EXTRA=("$@")
RUNS="${RUNS:-runs}"
SEEDS="${SEEDS:-0 1 2}"
PARALLEL="${PARALLEL:-0}"
cd "$(dirname "$0")/.."

train() {  # NAME ARGS...: python -m adverse_vision.train into RUNS/NAME
  local name="$1"
  shift
  local cmd=(python -m adverse_vision.train --progress=off --workdir "$RUNS/$name" "$@"
             "${EXTRA[@]}")
  if [ "$DRY_RUN" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; return; fi
  echo "$(date +%H:%M:%S) $name" >&2
  if ! "${cmd[@]}" >> "$RUNS/$name.log" 2>&1; then
    echo "error: $name failed; the end of $RUNS/$name.log:" >&2
    tail -n 5 "$RUNS/$name.log" >&2
    return 1
  fi
}

seed_runs() {  # S: the five runs of seed S
  local s="$1" bdlf="configs/bdlf_scenes.py:tiny,lwir"
  local same=(--config.total_steps=1600 --config.eval_every=400 --config.checkpoint_every=400
              "--config.bdlf.detector_from=$RUNS/pre_clear" "--config.seed=$s")
  train "lwirp_visible_$s" --config "$bdlf,visible" "${same[@]}"
  train "lwirp_infrared_$s" --config "$bdlf,infrared" "${same[@]}"
  train "lwirp_fusion_$s" --config "$bdlf,fusion" "${same[@]}"
  local from="--config.bdlf.fusion_from=$RUNS/lwirp_fusion_$s"
  train "lwirp_bdlf_$s" --config "$bdlf" "${same[@]}" "$from"
  train "lwirp_fusion2_$s" --config "$bdlf,fusion" "${same[@]}" "$from"
}

tables() {
  local tab=(python -m adverse_vision.tabulate)
  local sources=(--arm "visible only=$RUNS/lwirp_visible_*"
                 --arm "infrared only=$RUNS/lwirp_infrared_*")
  local fused=(--arm "fusion loss=$RUNS/lwirp_fusion_*"
               --arm "fusion loss, two stages=$RUNS/lwirp_fusion2_*"
               --arm "BDLF, two stages=$RUNS/lwirp_bdlf_*")
  local detection=("${tab[@]}" "${sources[@]}" "${fused[@]}"
                   --columns day_clear/mAP,day_fog/mAP,night/mAP,night_fog/mAP,val/mAP
                   --paired "BDLF, two stages-fusion loss, two stages"
                   --paired "fusion loss-infrared only")
  local images=("${tab[@]}" "${fused[@]}"
                --columns val/EN,val/SD,val/SF,val/AG,val/MI,val/SCD,val/VIF,val/Qabf,val/SSIM)
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "${detection[@]}"; echo
    printf '%q ' "${images[@]}"; echo
  else
    "${detection[@]}"
    "${images[@]}"
  fi
}

[ "$DRY_RUN" = 1 ] || mkdir -p "$RUNS"
train pre_clear --config configs/yolox_scenes.py:tiny,clear --config.total_steps=2000 \
  --config.eval_every=200 --config.checkpoint_every=200
if [ "$PARALLEL" = 1 ] && [ "$DRY_RUN" = 0 ]; then
  pids=()
  for s in $SEEDS; do
    seed_runs "$s" &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || { echo "error: the runs of a seed failed (see above)" >&2; exit 1; }
else
  for s in $SEEDS; do seed_runs "$s"; done
fi
tables
