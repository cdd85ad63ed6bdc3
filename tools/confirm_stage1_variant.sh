#!/usr/bin/env bash
# A new stage 1 with the shipped stage 2: choose the operating point again on the validation family
# (tools/train_shape_stage.py --keep-shape), assemble a weights folder, and measure it at that stored
# point on 30 fresh validation scans (beta seed 7103). Used by tools/try_hard_negatives.sh and
# tools/try_long_training.sh; nothing here writes into weights/.
# Usage: bash tools/confirm_stage1_variant.sh PROPOSER WORKDIR VAL_SET...
set -euo pipefail
cd "$(dirname "$0")/.."
PROPOSER=$1 WORK=$2
shift 2
mkdir -p "$WORK"
python tools/train_shape_stage.py --keep-shape --val "$@" --proposer "$PROPOSER" \
    --max-candidates 150 --cache "$WORK/shape" -o "$WORK/reclassifier.safetensors"
mkdir -p "$WORK/weights" && cp weights/*.safetensors "$WORK/weights/"
cp "$PROPOSER" "$WORK/weights/proposer.safetensors"
cp "$WORK/reclassifier.safetensors" "$WORK/weights/reclassifier.safetensors"
python tools/bench_detect.py --family beta --n 30 --seed 7103 --methods stage1+2 --workdir "$WORK/confirm" \
    --weights "$WORK/weights"
