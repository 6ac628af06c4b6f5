#!/usr/bin/env bash
# Makes tests/fixtures/lift_onestep/best: the small one-step Lift policy that the default test suite deploys over
# DDS (tests/test_ros_dds.py::test_trained_policy_over_dds_agrees_with_robo_eval). 100 scripted demonstrations
# (seeds 0-99), a natively trained consistency policy (preset lowdim_consistency_small: 6000 steps x 256, one CPU
# thread), its best/ checkpoint copied into the fixture, then `robo eval` over 100 test episodes (seeds 10000-10099).
# Run it again whenever the checkpoint format changes (the strict loader refuses a stale fixture).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ROBO=.venv/bin/robo
WORK=${WORK:-data/dds_fixture}
FIXTURE=tests/fixtures/lift_onestep
STEPS=${STEPS:-6000}
[ -d "$WORK/lift.zarr" ] || $ROBO collect --task Lift --episodes 100 --seed 0 --output "$WORK/lift.zarr" --no-progress
[ -f "$WORK/run/summary.json" ] || $ROBO train --preset lowdim_consistency_small --dataset "$WORK/lift.zarr" \
    --output-dir "$WORK/run" --steps "$STEPS" --threads 1 --no-progress
rm -rf "$FIXTURE/best"
mkdir -p "$FIXTURE/best"
cp "$WORK/run/best/model.safetensors" "$WORK/run/best/config.json" "$FIXTURE/best/"
$ROBO eval --checkpoint "$FIXTURE/best" --episodes 100 --output-dir "$WORK/eval" --video-episodes 0 --no-progress
