#!/usr/bin/env bash
# Trains the weights shipped in weights/ from phantoms, on a 2-core CPU, no network: the exact
# commands (and order) that produced them. Measured times on the 2-core machine: phantoms ~6 min
# (2 processes), stage 1 round 1 ~22 min, stage 2 ~22 min (mining 8 min + 15 epochs), stage 1 round 2
# (fine-tuning) ~18 min.
# Usage: bash tools/train_shipped.sh [DATA_DIR]   (DATA_DIR: where the training phantoms go)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cmbdet-train}
mkdir -p "$DATA"
for seed in 1 2; do
  [ -f "$DATA/train-s$seed/truth.csv" ] || cmbdet phantom -o "$DATA/train-s$seed" -n 60 --seed "$seed" --no-montage
done
# Stage 1, round 1 (from scratch).
cmbdet train proposer --data "$DATA/train-s1" "$DATA/train-s2" -o "$DATA/proposer_round1.safetensors" \
    --steps 1500 --batch-size 8 --seed 0
# Stage 2, on patches mined with the round-1 proposer.
cmbdet train reclassifier --data "$DATA/train-s1" "$DATA/train-s2" --proposer "$DATA/proposer_round1.safetensors" \
    -o weights/reclassifier.safetensors --epochs 15 --seed 0
# Stage 1, round 2: fine-tuning of round 1 at a lower learning rate (raised held-out candidate recall
# from 0.952 to 0.968 on the benchmark phantoms).
cmbdet train proposer --data "$DATA/train-s1" "$DATA/train-s2" --init "$DATA/proposer_round1.safetensors" \
    -o weights/proposer.safetensors --steps 1200 --lr 1e-3 --batch-size 8 --seed 1
