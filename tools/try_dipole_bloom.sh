#!/usr/bin/env bash
# Session 19 (weights/DETECTOR_HISTORY.md "Session 19"): stage 2 judged on both validation families together (delta + epsilon,
# 60 scans), and what the `randomized` family's revision-4 ingredient `dipole_bloom` buys. Rule written
# before any variant was scored on the pooled scans: a change ships if its pooled F1, at its own point chosen
# there, is >= 0.02 above the shipped weights at their shipped point (0.810) and neither family's F1 falls
# below the shipped one's (0.819 delta, 0.802 epsilon). Nothing here writes into weights/.
# Usage: bash tools/try_dipole_bloom.sh [DATA_DIR]  (the DATA_DIR of tools/try_yolo_beta.sh: its sets are reused)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cmbdet-train}
W=$DATA/s19
mkdir -p "$W"
phantoms() {  # OUT N SEED FAMILY [--without ...]
  [ -f "$1/truth.csv" ] || cmbdet phantom -o "$1" -n "$2" --seed "$3" --family "$4" --no-montage "${@:5}"
}
phantoms "$DATA/val-delta-s8101" 30 8101 delta
phantoms "$DATA/val-epsilon-s8201" 30 8201 epsilon
phantoms "$DATA/train-rand3-s104" 40 104 randomized --without dipole_bloom
phantoms "$DATA/train-rand2-s105" 40 105 randomized --without cmb_size,dipole_bloom
phantoms "$DATA/train-rand4-s106" 40 106 randomized                          # revision 4
phantoms "$DATA/train-rand4-s107" 40 107 randomized
phantoms "$DATA/train-rand3x-s106" 40 106 randomized --without dipole_bloom  # the same seeds, revision 3
phantoms "$DATA/train-rand3x-s107" 40 107 randomized --without dipole_bloom
TRAIN=("$DATA/train-classic-s103" "$DATA/train-rand2-s101" "$DATA/train-rand2-s102" "$DATA/val-beta-s7101"
       "$DATA/val-beta-s7102" "$DATA/phantoms-beta-seed7103-n30" "$DATA/train-rand3-s104" "$DATA/train-rand2-s105")
VAL=("$DATA/val-delta-s8101" "$DATA/val-epsilon-s8201")
# K: the shipped weights, operating point re-chosen on the 60 validation scans
python tools/train_shape_stage.py --keep-shape --val "${VAL[@]}" --cache "$W/shape-r4" -o "$W/reclassifier_K.safetensors"
# R4 / R3x: shape model refit with 80 revision-4 scans, or the same seeds drawn as revision 3 (separate caches:
# the subjects share names)
python tools/train_shape_stage.py --train "${TRAIN[@]}" "$DATA/train-rand4-s106" "$DATA/train-rand4-s107" \
    --val "${VAL[@]}" --cache "$W/shape-r4" -o "$W/reclassifier_R4.safetensors"
python tools/train_shape_stage.py --train "${TRAIN[@]}" "$DATA/train-rand3x-s106" "$DATA/train-rand3x-s107" \
    --val "${VAL[@]}" --cache "$W/shape-r3x" -o "$W/reclassifier_R3x.safetensors"
# P: the shipped stage 1 fine-tuned with the revision-4 scans (session 16's recipe), the shipped stage 2, point
# chosen on the 60 scans; the same rule (session 19: pooled F1 0.815, not shipped)
cmbdet train proposer --data "$DATA/train-classic-s103" "$DATA/train-rand2-s101" "$DATA/train-rand2-s102" \
    "$DATA/val-beta-s7101" "$DATA/val-beta-s7102" "$DATA/phantoms-beta-seed7103-n30" \
    "$DATA/train-rand4-s106" "$DATA/train-rand4-s107" --init weights/proposer.safetensors \
    -o "$W/proposer_P.safetensors" --steps 2000 --lr 1e-3 --batch-size 8 --seed 19 --val-fraction 0.05
python tools/train_shape_stage.py --keep-shape --proposer "$W/proposer_P.safetensors" --val "${VAL[@]}" \
    --cache "$W/shape-P" -o "$W/reclassifier_P.safetensors"
