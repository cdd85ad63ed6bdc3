#!/usr/bin/env bash
# Session 9, tried and NOT shipped (weights/DETECTOR_HISTORY.md "Session 9"): stage 1 fine-tuned from the shipped weights with
# the 2-6 mm thick-slice augmentation on randomized revision 2, three stage-2 variants chosen on the
# validation family beta, then the best one checked against the shipped weights on 30 fresh beta scans.
# Ship rule written before training: validation F1 >= 0.557 with <= 1.0 FP/subject; best variant 0.543;
# on the fresh scans shipped 0.626 vs 0.607. Nothing here writes into weights/.
# Usage: bash tools/try_rev2_retrain.sh [DATA_DIR]   (the same DATA_DIR as tools/train_shipped.sh reuses its sets)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cmbdet-train}
mkdir -p "$DATA/s9"
phantoms() {  # OUT N SEED FAMILY [more cmbdet phantom options]
  [ -f "$1/truth.csv" ] || cmbdet phantom -o "$1" -n "$2" --seed "$3" --family "$4" --no-montage "${@:5}"
}
phantoms "$DATA/train-classic-s103" 50 103 classic
phantoms "$DATA/val-beta-s7101" 15 7101 beta
phantoms "$DATA/val-beta-s7102" 15 7102 beta
VAL=("$DATA/val-beta-s7101" "$DATA/val-beta-s7102")
phantoms "$DATA/train-rand2-s101" 40 101 randomized --without cmb_size,dipole_bloom  # revision 2 (with 'resolution')
phantoms "$DATA/train-rand2-s102" 50 102 randomized --without cmb_size,dipole_bloom
TRAIN2=("$DATA/train-classic-s103" "$DATA/train-rand2-s101" "$DATA/train-rand2-s102")
cmbdet train proposer --data "${TRAIN2[@]}" --val "${VAL[@]}" --init weights/proposer.safetensors \
    -o "$DATA/s9/proposer_r6.safetensors" --steps 2000 --lr 1e-3 --batch-size 8 --seed 5          # 1976 s
# (a) shape model refit on the new candidates, shipped YOLO classifier
python tools/train_shape_stage.py --train "${TRAIN2[@]}" --val "${VAL[@]}" --proposer "$DATA/s9/proposer_r6.safetensors" \
    --max-candidates 150 --cache "$DATA/s9/shapeA" -o "$DATA/s9/reclassifier_A.safetensors"
# (b) YOLO (mips) retrained on the new candidates, then the shape model with it (training caches of (a) reused)
python tools/compare_stage2_views.py --train "${TRAIN2[@]}" --val "${VAL[@]}" --proposer "$DATA/s9/proposer_r6.safetensors" \
    --layouts mips --epochs 5 --max-candidates 60 --workdir "$DATA/s9/yolo"
mkdir -p "$DATA/s9/shapeB" && cp "$DATA"/s9/shapeA/{ph103,randomized10}*.npz "$DATA/s9/shapeB/"
python tools/train_shape_stage.py --train "${TRAIN2[@]}" --val "${VAL[@]}" --proposer "$DATA/s9/proposer_r6.safetensors" \
    --reclassifier "$DATA/s9/yolo/mips.safetensors" --max-candidates 150 --cache "$DATA/s9/shapeB" \
    -o "$DATA/s9/reclassifier_B.safetensors"
# (c) shipped stage 2, operating point chosen again for the new stage 1
python tools/train_shape_stage.py --keep-shape --val "${VAL[@]}" --proposer "$DATA/s9/proposer_r6.safetensors" \
    --max-candidates 150 --cache "$DATA/s9/shapeA" -o "$DATA/s9/reclassifier_C.safetensors"
# Confirmation on 30 fresh validation scans (seed 7103), each at the operating point stored with it:
W="$DATA/s9/weights-new-stage1"
mkdir -p "$W" && cp weights/*.safetensors "$W/"
cp "$DATA/s9/proposer_r6.safetensors" "$W/proposer.safetensors"
cp "$DATA/s9/reclassifier_C.safetensors" "$W/reclassifier.safetensors"
python tools/bench_detect.py --family beta --n 30 --seed 7103 --methods stage1+2 --workdir "$DATA/s9/confirm" | tee "$DATA/s9/confirm-shipped.txt"
python tools/bench_detect.py --family beta --n 30 --seed 7103 --methods stage1+2 --workdir "$DATA/s9/confirm" --weights "$W" | tee "$DATA/s9/confirm-new-stage1.txt"
