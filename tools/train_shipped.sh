#!/usr/bin/env bash
# Trains the weights shipped in weights/ from phantoms, on a 2-core CPU, no network.
# Usage: bash tools/train_shipped.sh [DATA_DIR]   (DATA_DIR: where the training phantoms go)
# Phantom generation ~15 min, stage 1 ~35 min, stage 2 ~30 min (15 epochs) on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/tmp/cmbdet-train}
for seed in 1 2; do
  [ -f "$DATA/train-s$seed/truth.csv" ] || cmbdet phantom -o "$DATA/train-s$seed" -n 60 --seed "$seed" --no-montage
done
cmbdet train proposer --data "$DATA/train-s1" "$DATA/train-s2" -o weights/proposer.safetensors \
    --steps 1500 --batch-size 8 --seed 0
cmbdet train reclassifier --data "$DATA/train-s1" "$DATA/train-s2" --proposer weights/proposer.safetensors \
    -o weights/reclassifier.safetensors --epochs 15 --seed 0
