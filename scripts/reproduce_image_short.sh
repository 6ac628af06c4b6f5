#!/usr/bin/env bash
# The short CPU run of the image-observation path (docs/results.md): 30 scripted Lift demonstrations with two
# 84x84 cameras, a diffusion policy on both cameras + proprioception for 150 steps (STEPS to change), 10 seeded
# evaluation episodes with videos. On a GPU run the image_diffusion preset at full length instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
ROBO=.venv/bin/robo
data=data/demos/lift_rgb.zarr
[ -d "$data" ] || $ROBO collect --task Lift --cameras agentview robot0_eye_in_hand --image-size 84 --episodes 30 \
    --output "$data" --no-progress
$ROBO train --preset image_diffusion --dataset "$data" --output-dir data/runs/lift_rgb/diffusion \
    --steps "${STEPS:-150}" --batch-size "${BATCH:-16}" --warmup-steps 20 --val-every 75 --eval-every 0 \
    --eval-episodes 0 --no-progress
$ROBO eval --checkpoint data/runs/lift_rgb/diffusion/best --episodes "${EVAL_EPISODES:-10}" --video-episodes 2 \
    --output-dir data/eval/lift_rgb --no-progress
