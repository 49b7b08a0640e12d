#!/usr/bin/env bash
# GradSurgery (Zhou et al., ECAI 2024): the ResNet-18 table with the published command lines
# (libzwo/CorGrad), trial seeds 0, 1, 2. They do not pass --swad, so, as in the official code
# (a fork of SWAD's config), they run with SWAD's LossValley averaging.
source "$(dirname "$0")/common.sh"
parse_arguments PACS VLCS OfficeHome TerraIncognita DomainNet -- "$@"
#                 lr     dropout weight_decay steps checkpoint_freq
declare -A LINE=([PACS]="3e-5 0.2 1e-4 5000 100" [VLCS]="1e-5 0.1 5e-3 5000 100"
                 [OfficeHome]="4.5e-5 0.1 1e-3 5000 100" [TerraIncognita]="1e-4 0.1 1e-4 1000 10"
                 [DomainNet]="3e-5 0.2 1e-6 15000 500")
for dataset in "${DATASETS[@]}"; do
    read -r lr dropout weight_decay steps freq <<< "${LINE[$dataset]}"
    for trial in 0 1 2; do
        run_line "GradSurgery_${dataset}${trial}" "$dataset" --deterministic --trial_seed "$trial" --checkpoint_freq "$freq" \
            --steps "$steps" --n_parts 10 --alpha 0.6 --use_alpha --data_dir "$DATA" --algorithm GradSurgery \
            --lr "$lr" --resnet_dropout "$dropout" --weight_decay "$weight_decay"
    done
done
