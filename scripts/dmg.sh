#!/usr/bin/env bash
# DMG (Chattopadhyay et al., ECCV 2020): PACS, Aggregate / Multi-Head / DMG rows, ResNet-18 and
# ResNet-50, trial seeds 0, 1, 2, without weight averaging (as the paper).
source "$(dirname "$0")/common.sh"
parse_arguments PACS -- "$@"
for dataset in "${DATASETS[@]}"; do
    for backbone in resnet18 resnet50; do
        for trial in 0 1 2; do
            line=(--data_dir "$DATA" --backbone "$backbone" --lr 1e-4 --weight_decay 1e-5 --trial_seed "$trial" --swad False)
            run_line "AGG_${backbone}_${trial}" "$dataset" "${line[@]}" --algorithm ERM
            run_line "MH_${backbone}_${trial}" "$dataset" "${line[@]}" --algorithm MultiHead
            run_line "DMG_${backbone}_${trial}" "$dataset" "${line[@]}" --algorithm DMG --mask_layers layer3,layer4,fc --mask_lr 1e-4
        done
    done
done
