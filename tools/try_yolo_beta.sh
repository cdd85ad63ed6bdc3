#!/usr/bin/env bash
# Session 17, tried: does the YOLO classifier of stage 2 earn a place again when it is retrained with beta
# among its training families? (At version 4's operating point, chosen on delta, its share is 0: the shape
# model alone scores.) Candidate Y: a mips YOLO classifier trained on the candidates of the shipped stage 1
# (version 4) in the same 200 training scans as version 4's shape model (classic, randomized revision 2, beta),
# 5 epochs, seed 0; the shape model refit on the same scans' candidates; the point chosen on delta.
# Rule written before training: ship Y if its delta F1 (point chosen there) >= 0.819 + 0.02 (0.819: the
# shipped version 4 on the same 30 delta scans, byte-identical to session 16's) and FP/subject <= 1.0;
# then run gamma once. Nothing here writes into weights/.
# Usage: bash tools/try_yolo_beta.sh [DATA_DIR]   (sets shared with tools/try_beta_training.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cmbdet-train}
W=$DATA/s17
mkdir -p "$W"
phantoms() {  # OUT N SEED FAMILY
  [ -f "$1/truth.csv" ] || cmbdet phantom -o "$1" -n "$2" --seed "$3" --family "$4" --no-montage
}
phantoms "$DATA/train-classic-s103" 50 103 classic
phantoms "$DATA/train-rand2-s101" 40 101 randomized
phantoms "$DATA/train-rand2-s102" 50 102 randomized
phantoms "$DATA/val-beta-s7101" 15 7101 beta
phantoms "$DATA/val-beta-s7102" 15 7102 beta
phantoms "$DATA/phantoms-beta-seed7103-n30" 30 7103 beta
phantoms "$DATA/val-delta-s8101" 30 8101 delta
TRAIN=("$DATA/train-classic-s103" "$DATA/train-rand2-s101" "$DATA/train-rand2-s102"
       "$DATA/val-beta-s7101" "$DATA/val-beta-s7102" "$DATA/phantoms-beta-seed7103-n30")
VAL=("$DATA/val-delta-s8101")
# the version-4 weights, pinned (git 49e04c4), so that the script gives the same candidate after weights/ change
git show 49e04c4:weights/proposer.safetensors > "$W/proposer_v4.safetensors"
git show 49e04c4:weights/reclassifier.safetensors > "$W/reclassifier_v4.safetensors"
python tools/compare_stage2_views.py --train "${TRAIN[@]}" --val "${VAL[@]}" --proposer "$W/proposer_v4.safetensors" \
    --layouts mips --epochs 5 --max-candidates 60 --workdir "$W/yolo"
python tools/train_shape_stage.py --train "${TRAIN[@]}" --val "${VAL[@]}" --proposer "$W/proposer_v4.safetensors" \
    --reclassifier "$W/yolo/mips.safetensors" --cache "$W/shape" -o "$W/reclassifier_Y.safetensors"
