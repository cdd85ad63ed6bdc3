#!/usr/bin/env bash
# Session 13, a trial (weights/DETECTOR_HISTORY.md "Session 13"): is stage 1's weakness that it is under-trained? Stage 1
# fine-tuned further from session 12's hard-negative variant (tools/try_hard_negatives.sh), hard
# negatives mined again with that variant, on the same 140 training scans: 3500 steps, lr 1e-3, batch
# 8, seed 13 (2000 + 3500 steps beyond the shipped weights). Ship rule written before training, the
# bars of session 12: validation F1 (beta 7101+7102, operating point chosen there) >= 0.557 and F1 on
# beta 7103 >= 0.646, <= 1.0 FP/subject on both. Nothing here writes into weights/.
# Usage: bash tools/try_long_training.sh [DATA_DIR]   (the DATA_DIR of tools/try_hard_negatives.sh, run first)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cmbdet-train}
mkdir -p "$DATA/s13"
TRAIN=("$DATA/train-classic-s103" "$DATA/train-rand2-s101" "$DATA/train-rand2-s102")
VAL=("$DATA/val-beta-s7101" "$DATA/val-beta-s7102")
cmbdet train proposer --data "${TRAIN[@]}" --val "${VAL[@]}" --init "$DATA/s12/proposer_hn.safetensors" \
    -o "$DATA/s13/proposer_long.safetensors" --steps 3500 --lr 1e-3 --batch-size 8 --seed 13 --hard-negatives 0.25
python tools/stage1_recall.py --proposer "$DATA/s13/proposer_long.safetensors" --data "${TRAIN[@]}" "${VAL[@]}"
bash tools/confirm_stage1_variant.sh "$DATA/s13/proposer_long.safetensors" "$DATA/s13/confirm" "${VAL[@]}"
