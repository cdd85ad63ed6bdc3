#!/usr/bin/env bash
# Session 21 (README "Session 21"): stage 2's shape model measures a large dark focus in a cube scaled to its
# size (cmbdet/reclassifier/shape.py: `zoom`). Why: on the validation families the shipped detector keeps 18
# of 25 microbleeds of 6 mm and more though stage 1 finds 24 of them; their shape-model probability is
# 0.01-0.1 because, in the fixed 20 mm cube, a 7-10 mm focus reaches the tissue shell and the straight paths
# 3-8 mm out (a vein's signature) and is flat at the finest Hessian scales.
# Rule, written before the refit was scored: ship the refit shape model (the shipped YOLO and stage 1 kept) if,
# at its own operating point chosen on delta + epsilon together, its pooled F1 is >= 0.830 (the shipped
# weights' 0.810 there + 0.02) and neither family's F1 falls below the shipped one's (0.819 delta, 0.802
# epsilon); then run gamma once.
# Result (2026-12-07, 2-core machine): NOT met, gamma not run, nothing shipped. Zoomed refit: 30 candidates, shape
# share 0.5, stage-1 weight 0.7, threshold 0.450: pooled F1 0.797 (delta 0.780, epsilon 0.814). Control, the same
# 280 + 60 scans and candidates with the unzoomed measurements (rows with zoom > 1 measured again with the previous
# shape.py; session scratch script): 0.814 (delta 0.813, epsilon 0.815) at the same point. The zoomed model keeps 21
# of the 24 microbleeds >= 6 mm stage 1 finds (shipped: 18) but 50 of 77 under 3 mm (shipped: 55), with more false
# positives: 65 % of all candidates (13,032 of 20,198) were zoomed, because the half-depth region of a shallow
# candidate joins larger dark structures; a narrower trigger (deep, ball-like foci only) is the next thing to try.
# Reverted in the next commit; this commit holds the code that gives the figures above.
# Usage: bash tools/try_zoomed_shape.sh [DATA_DIR]   (about 1.5 hours on 2 cores, most of it measuring)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cmbdet-train}
W=$DATA/s21
mkdir -p "$W"
phantoms() {  # OUT N SEED FAMILY [--without ...]
  [ -f "$1/truth.csv" ] || cmbdet phantom -o "$1" -n "$2" --seed "$3" --family "$4" --no-montage "${@:5}"
}
phantoms "$DATA/train-classic-s103" 50 103 classic
phantoms "$DATA/train-rand2-s101" 40 101 randomized --without cmb_size,dipole_bloom
phantoms "$DATA/train-rand2-s102" 50 102 randomized --without cmb_size,dipole_bloom
phantoms "$DATA/val-beta-s7101" 15 7101 beta
phantoms "$DATA/val-beta-s7102" 15 7102 beta
phantoms "$DATA/phantoms-beta-seed7103-n30" 30 7103 beta
phantoms "$DATA/train-rand4-s106" 40 106 randomized   # revision 4: half the microbleeds 2-10 mm log-uniform
phantoms "$DATA/train-rand4-s107" 40 107 randomized
phantoms "$DATA/val-delta-s8101" 30 8101 delta
phantoms "$DATA/val-epsilon-s8201" 30 8201 epsilon
# the shipped YOLO classifier without the shipped shape model (which was fitted on the unzoomed measurements)
python - "$W/yolo_only.safetensors" <<'PY'
import sys
from cmbdet.weights import load_state, save_state, shipped_weights
state, meta = load_state(shipped_weights("reclassifier.safetensors"))
meta = {k: v for k, v in meta.items() if k != "shape_features"}
save_state(sys.argv[1], {k: v for k, v in state.items() if not k.startswith("shape.")}, meta)
PY
python tools/train_shape_stage.py --reclassifier "$W/yolo_only.safetensors" \
    --train "$DATA/train-classic-s103" "$DATA/train-rand2-s101" "$DATA/train-rand2-s102" "$DATA/val-beta-s7101" \
    "$DATA/val-beta-s7102" "$DATA/phantoms-beta-seed7103-n30" "$DATA/train-rand4-s106" "$DATA/train-rand4-s107" \
    --val "$DATA/val-delta-s8101" "$DATA/val-epsilon-s8201" --max-candidates 60 --cache "$W/shape-zoom" -o "$W/reclassifier_Z.safetensors"
# gamma once, only if the rule above held (weights folder: the shipped stage 1 + the refit stage 2)
#   mkdir -p $W/weights-Z && cp weights/proposer.safetensors $W/weights-Z/ && cp $W/reclassifier_Z.safetensors $W/weights-Z/reclassifier.safetensors
#   python tools/bench_detect.py --family gamma --n 40 --seed 9001 --workdir $W/bench --weights $W/weights-Z --methods stage1+2
