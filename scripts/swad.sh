#!/usr/bin/env bash
# SWAD (Cha et al., NeurIPS 2021), Table 3: ERM and ERM + SWAD, ResNet-50, all five datasets.
set -euo pipefail
DATA="${1:-DATA}"; shift || true
for dataset in PACS VLCS OfficeHome TerraIncognita DomainNet; do
    python train_all.py "ERM_${dataset}" --dataset "$dataset" --data_dir "$DATA" --algorithm ERM --swad False "$@"
    python train_all.py "SWAD_${dataset}" --dataset "$dataset" --data_dir "$DATA" --algorithm ERM --swad LossValley "$@"
done
