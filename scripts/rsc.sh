#!/usr/bin/env bash
# RSC (Huang et al., ECCV 2020): the PACS table, ResNet-18 and ResNet-50 rows (official variant).
set -euo pipefail
DATA="${1:-DATA}"; shift || true
for backbone in resnet18 resnet50; do
    python train_all.py "RSC_PACS_${backbone}" --dataset PACS --data_dir "$DATA" --algorithm RSC --backbone "$backbone" "$@"
done
