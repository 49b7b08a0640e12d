#!/usr/bin/env bash
# QT-DoG (Javed et al.): ERM + QT-DoG with the published line (saqibjaved1/QT-DoG's README; SWAD is
# on, as in its config.yaml), trial seeds 0-4, then EoQ: the ensemble of the five quantized runs.
source "$(dirname "$0")/common.sh"
parse_arguments PACS VLCS OfficeHome TerraIncognita DomainNet -- "$@"
for dataset in "${DATASETS[@]}"; do
    runs=()
    for trial in 0 1 2 3 4; do
        run_line "qtdog${trial}" "$dataset" --data_dir "$DATA" --quant 1 --q_steps 100 --trial_seed "$trial"
        runs+=("$(latest_run "$dataset" "qtdog${trial}")")
    done
    "$PYTHON" -m domainbed.scripts.ensemble "${runs[@]}"
done
