#!/usr/bin/env bash
# SWAD (Cha et al., NeurIPS 2021), Table 3: ERM + SWAD with the published command lines
# (khanrc/swad's README; SWAD is config.yaml's default) and ERM without it, ResNet-50, trial seeds
# 0, 1, 2. VLCS uses its published checkpoint frequency 50 and tolerance ratio 0.2.
source "$(dirname "$0")/common.sh"
parse_arguments PACS VLCS OfficeHome TerraIncognita DomainNet -- "$@"
declare -A FREQ=([PACS]=100 [VLCS]=50 [OfficeHome]=100 [TerraIncognita]=100 [DomainNet]=500)
declare -A NAME=([PACS]=PACS [VLCS]=VLCS [OfficeHome]=OH [TerraIncognita]=TR [DomainNet]=DN)
for dataset in "${DATASETS[@]}"; do
    tolerance=(); [ "$dataset" = VLCS ] && tolerance=(--tolerance_ratio 0.2)
    for trial in 0 1 2; do
        line=(--deterministic --trial_seed "$trial" --checkpoint_freq "${FREQ[$dataset]}" --data_dir "$DATA")
        run_line "SWAD_${NAME[$dataset]}${trial}" "$dataset" "${line[@]}" "${tolerance[@]}"
        run_line "ERM_${NAME[$dataset]}${trial}" "$dataset" "${line[@]}" --swad False
    done
done
