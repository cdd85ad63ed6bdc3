#!/bin/bash
# Session 18: the expansion classifier across CT painters (validation only; the test family ct-b is not read).
#   tools/try_two_painters.sh DATA_DIR
# 1. 100 baseline/follow-up pairs of each training-side painter: ct-a (seed 300, subjects 0-99: the first
#    100 of the shipped model's training set) and ct-c (seed 600; the family written in session 17).
# 2. Leave one painter out: the shipped recipe trained on each painter alone, scored on the other; the
#    shipped model on both; each feature's AUC by painter (tools/expansion_painter_transfer.py).
# 3. The candidate: `cmbdet train classifier` on both painters, which then cross-fits its CNNs and makes
#    its LASSO / SVM choices leaving one family out (cmbdet/classify/train.py, linear.py).
# Rule, written before any model was trained or scored on ct-c: ship the candidate iff (a) its fused AUC on
# its own held-out fifth (both painters) >= 0.85 and (b) the shipped model's fused AUC on ct-c is >= 0.05
# below its in-family validation (0.884); then run ct-b once. Result (2026-12-07): (b) held (0.670), (a)
# did not (0.707): not shipped, ct-b not run. About 2.5 CPU-hours on 2 cores, most of it the features.
set -euo pipefail
DATA=${1:?usage: tools/try_two_painters.sh DATA_DIR}
mkdir -p "$DATA"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python - "$DATA" <<'PY'
import sys
from cmbdet.phantom.ct import write_ct_set
data = sys.argv[1]
for i in range(0, 100, 5):
    write_ct_set(f"{data}/exp_cta100", 5, 300, family="ct-a", fast=True, pairs=True, start=i, p_free=0.0)
    write_ct_set(f"{data}/exp_ctc100", 5, 600, family="ct-c", fast=True, pairs=True, start=i, p_free=0.0)
PY
python tools/expansion_painter_transfer.py --data "$DATA/exp_cta100" "$DATA/exp_ctc100" --cache "$DATA/cache" \
    --weights weights/classifier_expansion.safetensors --features
python -m cmbdet train classifier --task expansion --data "$DATA/exp_cta100" "$DATA/exp_ctc100" \
    -o "$DATA/candidate_expansion.safetensors" --cache "$DATA/cache" --seed 0
python tools/compare_expansion_recipes.py --data "$DATA/exp_cta100" "$DATA/exp_ctc100" --cache "$DATA/cache" \
    --candidate "$DATA/candidate_expansion.safetensors"
python tools/ivh_flag_check.py --data "$DATA/exp_cta100" "$DATA/exp_ctc100" --n 50
