#!/usr/bin/env bash
# Reproduces the low-dim results in docs/results.md: scripted demonstrations (100 per task, seeds 0-99), a
# diffusion policy (DDIM 10), its one-step distilled student and a natively trained consistency policy per task,
# each evaluated over 50 seeded episodes (seeds 10000-10049). About an hour per task on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
ROBO=.venv/bin/robo
TASKS=${TASKS:-"Lift PickPlaceCan"}
EPISODES=${EVAL_EPISODES:-50}
for task in $TASKS; do
  name=$(echo "$task" | tr '[:upper:]' '[:lower:]')
  data=data/demos/${name}_lowdim.zarr
  runs=data/runs/$name
  [ -d "$data" ] || $ROBO collect --task "$task" --episodes 100 --seed 0 --output "$data" --no-progress
  [ -f "$runs/diffusion/summary.json" ] || $ROBO train --preset lowdim_diffusion --dataset "$data" \
      --output-dir "$runs/diffusion" --eval-episodes "$EPISODES" --no-progress
  [ -f "$runs/onestep/summary.json" ] || $ROBO train --preset distill --teacher "$runs/diffusion/best" \
      --dataset "$data" --output-dir "$runs/onestep" --eval-episodes "$EPISODES" --no-progress
  [ -f "$runs/consistency/summary.json" ] || $ROBO train --preset lowdim_consistency --dataset "$data" \
      --output-dir "$runs/consistency" --eval-episodes "$EPISODES" --no-progress
done
