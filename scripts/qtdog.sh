#!/usr/bin/env bash
# QT-DoG (Javed et al.): ERM + QT-DoG on PACS with five trial seeds, then EoQ (their ensemble).
set -euo pipefail
DATA="${1:-DATA}"; shift || true
OUT=train_output
runs=()
for seed in 0 1 2 3 4; do
    python train_all.py "eoq${seed}" --dataset PACS --data_dir "$DATA" --quant 1 --q_steps 100 \
        --trial_seed "$seed" --output_dir "$OUT" "$@"
    runs+=("$(ls -d "$OUT"/PACS/*_eoq${seed} | tail -n 1)")
done
python -m domainbed.scripts.ensemble "${runs[@]}"
