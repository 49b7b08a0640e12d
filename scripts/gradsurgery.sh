#!/usr/bin/env bash
# GradSurgery (Zhou et al., ECAI 2024): the ResNet-18 table with the published command lines,
# three trial seeds.
set -euo pipefail
DATA="${1:-DATA}"; shift || true
run() {  # dataset lr dropout weight_decay steps checkpoint_freq
    for trial in 0 1 2; do
        python train_all.py "$1${trial}" --dataset "$1" --deterministic --trial_seed "$trial" \
            --checkpoint_freq "$6" --steps "$5" --n_parts 10 --alpha 0.6 --use_alpha --data_dir "$DATA" \
            --algorithm GradSurgery --lr "$2" --resnet_dropout "$3" --weight_decay "$4" "${@:7}"
    done
}
run PACS 3e-5 0.2 1e-4 5000 100 "$@"
run VLCS 1e-5 0.1 5e-3 5000 100 "$@"
run OfficeHome 4.5e-5 0.1 1e-3 5000 100 "$@"
run TerraIncognita 1e-4 0.1 1e-4 1000 10 "$@"
run DomainNet 3e-5 0.2 1e-6 15000 500 "$@"
