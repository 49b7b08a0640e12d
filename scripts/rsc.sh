#!/usr/bin/env bash
# RSC (Huang et al., ECCV 2020): the PACS table, ResNet-18 and ResNet-50 rows (official variant),
# trial seeds 0, 1, 2. RSC's paper trains without weight averaging, so --swad False.
source "$(dirname "$0")/common.sh"
parse_arguments PACS -- "$@"
for dataset in "${DATASETS[@]}"; do
    for backbone in resnet18 resnet50; do
        for trial in 0 1 2; do
            run_line "RSC_${backbone}_${trial}" "$dataset" --data_dir "$DATA" --algorithm RSC --backbone "$backbone" \
                --trial_seed "$trial" --swad False
        done
    done
done
