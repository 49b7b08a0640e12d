#!/usr/bin/env bash
# SAGM (Wang et al., CVPR 2023), Table 1: SAGM_DG with its released settings, and the SAM / GSAM
# baselines on the same protocol, three trial seeds, ResNet-50, no SWAD.
set -euo pipefail
DATA="${1:-DATA}"; shift || true
declare -A LR=([PACS]=3e-5 [VLCS]=1e-5 [OfficeHome]=1e-5 [TerraIncognita]=1e-5 [DomainNet]=3e-5)
declare -A ALPHA=([PACS]=0.001 [VLCS]=0.001 [OfficeHome]=0.0005 [TerraIncognita]=0.001 [DomainNet]=0.0005)
declare -A WD=([PACS]=1e-4 [VLCS]=1e-4 [OfficeHome]=1e-4 [TerraIncognita]=1e-4 [DomainNet]=1e-6)
for dataset in PACS VLCS OfficeHome TerraIncognita DomainNet; do
    for trial in 0 1 2; do
        common=(--dataset "$dataset" --data_dir "$DATA" --deterministic --trial_seed "$trial" --checkpoint_freq 100
                --lr "${LR[$dataset]}" --weight_decay "${WD[$dataset]}" --resnet_dropout 0.5 --swad False)
        python train_all.py "${dataset}${trial}" "${common[@]}" --algorithm SAGM_DG --alpha "${ALPHA[$dataset]}" "$@"
        python train_all.py "SAM_${dataset}${trial}" "${common[@]}" --algorithm SAM "$@"
        python train_all.py "GSAM_${dataset}${trial}" "${common[@]}" --algorithm GSAM "$@"
    done
done
