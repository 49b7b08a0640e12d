#!/usr/bin/env bash
# DMG (Chattopadhyay et al., ECCV 2020): PACS, Aggregate / Multi-Head / DMG rows, ResNet-18 and ResNet-50.
set -euo pipefail
DATA="${1:-DATA}"; shift || true
for backbone in resnet18 resnet50; do
    common=(--dataset PACS --data_dir "$DATA" --backbone "$backbone" --lr 1e-4 --weight_decay 1e-5)
    python train_all.py "AGG_${backbone}" "${common[@]}" --algorithm ERM "$@"
    python train_all.py "MH_${backbone}" "${common[@]}" --algorithm MultiHead "$@"
    python train_all.py "DMG_${backbone}" "${common[@]}" --algorithm DMG --mask_layers layer3,layer4,fc --mask_lr 1e-4 "$@"
done
