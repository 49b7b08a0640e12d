#!/usr/bin/env bash
# SAGM (Wang et al., CVPR 2023), Table 1: SAGM_DG with its released command lines (which pass
# --swad False), and the SAM / GSAM baselines on the same protocol, ResNet-50, trial seeds 0, 1, 2.
source "$(dirname "$0")/common.sh"
parse_arguments PACS VLCS OfficeHome TerraIncognita DomainNet -- "$@"
declare -A LR=([PACS]=3e-5 [VLCS]=1e-5 [OfficeHome]=1e-5 [TerraIncognita]=1e-5 [DomainNet]=3e-5)
declare -A ALPHA=([PACS]=0.001 [VLCS]=0.001 [OfficeHome]=0.0005 [TerraIncognita]=0.001 [DomainNet]=0.0005)
declare -A WD=([PACS]=1e-4 [VLCS]=1e-4 [OfficeHome]=1e-4 [TerraIncognita]=1e-4 [DomainNet]=1e-6)
declare -A NAME=([PACS]=PACS [VLCS]=VLCS [OfficeHome]=OH [TerraIncognita]=TR [DomainNet]=DN)
for dataset in "${DATASETS[@]}"; do
    for trial in 0 1 2; do
        line=(--data_dir "$DATA" --deterministic --trial_seed "$trial" --checkpoint_freq 100
              --lr "${LR[$dataset]}" --weight_decay "${WD[$dataset]}" --resnet_dropout 0.5 --swad False)
        run_line "SAGM_${NAME[$dataset]}${trial}" "$dataset" "${line[@]}" --algorithm SAGM_DG --alpha "${ALPHA[$dataset]}"
        run_line "SAM_${NAME[$dataset]}${trial}" "$dataset" "${line[@]}" --algorithm SAM
        run_line "GSAM_${NAME[$dataset]}${trial}" "$dataset" "${line[@]}" --algorithm GSAM
    done
done
