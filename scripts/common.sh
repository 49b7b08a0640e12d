# Shared by the reproduction scripts: sourced, not run.
#
#   bash scripts/METHOD.sh DATA [DATASET ...] [-- EXTRA TRAIN_ALL ARGS]
#
# DATA is the folder that holds the datasets; the datasets named after it (default: every one
# of the paper's table) are run; arguments after `--` are appended to every command line (e.g.
# `-- --steps 100` for a quick check). Runs go to $OUTPUT_DIR (default train_output). A run whose
# table is written is skipped; an unfinished one is resumed (train_all.py --resume); so the
# script can be started again after any interruption and does only what is left.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT_DIR="${OUTPUT_DIR:-train_output}"
PYTHON="${PYTHON:-python}"

parse_arguments() {  # DEFAULT_DATASETS... -- "$@"
    DEFAULT_DATASETS=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do DEFAULT_DATASETS+=("$1"); shift; done
    shift
    DATA="${1:-DATA}"
    [ "$#" -gt 0 ] && shift
    DATASETS=()
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do DATASETS+=("$1"); shift; done
    [ "$#" -gt 0 ] && shift
    EXTRA=("$@")
    [ "${#DATASETS[@]}" -gt 0 ] || DATASETS=("${DEFAULT_DATASETS[@]}")
    for dataset in "${DATASETS[@]}"; do
        case " ${DEFAULT_DATASETS[*]} " in
            *" $dataset "*) ;;
            *) echo "error: dataset $dataset is not in this table; valid: ${DEFAULT_DATASETS[*]}" >&2; exit 2 ;;
        esac
    done
}

# train_all.py's TIMESTAMP_NAME: a bare *_NAME would also match another run ending in _NAME
# (ERM_PACS0 for PACS0) and skip or resume the wrong run.
STAMP='[0-9][0-9][0-9][0-9][0-9][0-9]_[0-9][0-9]-[0-9][0-9]-[0-9][0-9]'

latest_run() {  # DATASET NAME: the newest run directory of that name, or nothing
    { ls -d "$OUTPUT_DIR/$1"/$STAMP"_$2" 2>/dev/null || true; } | sort | tail -n 1
}

run_line() {  # NAME DATASET TRAIN_ALL_ARGS...: one published command line, skipped when finished
    local name="$1" dataset="$2"; shift 2
    local previous
    previous="$(latest_run "$dataset" "$name")"
    if [ -n "$previous" ] && [ -f "$previous/table.json" ]; then
        echo "finished: $previous (skipped)"
        return 0
    fi
    "$PYTHON" "$ROOT/train_all.py" "$name" --dataset "$dataset" "$@" --output_dir "$OUTPUT_DIR" --resume "${EXTRA[@]}"
}
