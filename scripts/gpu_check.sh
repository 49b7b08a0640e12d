#!/usr/bin/env bash
# One check of the CUDA path, offline, in under eight minutes on one GPU:
#   1. the tests marked `cuda` (pytest -m cuda): host synchronisations in a training step, both
#      input pipelines and bf16 on CUDA, RSC's step;
#   2. the PACS demo (README: ResNet-50 from scratch, 64 px, 21 steps per fold) on CUDA, with the
#      gpu input pipeline and with the classic one (SWAD's BatchNorm re-estimation on 20
#      minibatches instead of 500: the demo's model is untrained, and 500 PIL-loaded minibatches
#      per fold would take minutes);
#   3. the benchmark: training and evaluation img/s of ERM and SAGM_DG, ResNet-50 at 224 px,
#      32 x 3 domains, fp32 and bf16, gpu pipeline and classic; ERM on a ViT-B/16 (timm's
#      vit_base_patch16_224, the `vit_b16` backbone) at bf16 with the gpu pipeline;
#   4. with 2 GPUs or more, data parallelism with NCCL (docs/data_parallel.md): CORAL on Synthetic
#      under `torchrun --nproc_per_node GPUS` must print the table of one GPU (every cell within
#      1e-6), and the PACS demo trains under torchrun (BatchNorm from scratch: SyncBatchNorm);
# then one summary table (check, status, seconds, result), the benchmark's table and the figures
# of the performance goals (docs/speed.md): train img/s of ERM and SAGM_DG at bf16, SAGM_DG's step
# over ERM's, evaluation img/s and the evaluation share of a PACS run, peak GPU memory, and the
# ViT's bf16 img/s and peak memory. Logs stay
# in $WORK (printed).
#
#     scripts/gpu_check.sh                 # DATA_DIR=../shared/data, PYTHON=.venv/bin/python by default
#     DATA_DIR=/data PYTHON=/opt/env/bin/python scripts/gpu_check.sh
#
# Without real PACS under DATA_DIR the demo runs on generated images in PACS's layout (a check
# of the code path; its accuracy means nothing); the benchmark always uses generated images, so
# nothing needs the internet. Pretrained weights are not needed (--pretrained False).
# Exit status: 0 when every check passed, 1 when one failed or CUDA is not usable (one line says
# why: torch does not import, is built without CUDA, finds no driver or no device).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEFAULT_PYTHON=python
[ -x "$ROOT/.venv/bin/python" ] && DEFAULT_PYTHON="$ROOT/.venv/bin/python"
PYTHON="${PYTHON:-$DEFAULT_PYTHON}"
DATA_DIR="${DATA_DIR:-$ROOT/../shared/data}"
WORK="${WORK:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$WORK"

# why CUDA is unusable, as the last line of the probe's output (nothing when it is usable)
WHY_NOT="$("$PYTHON" - 2>&1 <<'EOF'
import os
import sys

try:
    import torch
except BaseException as error:  # a missing package, or a library that does not load
    sys.exit(f"cannot import torch: {type(error).__name__}: {' '.join(str(error).split())}")
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is built without CUDA")
if not torch.cuda.is_available():
    try:
        torch.cuda.init()  # raises the driver's reason: no driver, or one too old for this torch
    except Exception as error:
        sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}): {' '.join(str(error).split())}")
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
EOF
)" || {
    echo "gpu_check: CUDA is not usable with $PYTHON: $(printf '%s\n' "${WHY_NOT:-it does not run}" | tail -n 1); nothing checked" >&2
    exit 1
}

echo "gpu_check: logs and outputs in $WORK"
STATUS="$WORK/status.tsv"
: > "$STATUS"

# check NAME RESULT_FILE COMMAND...: runs COMMAND with its output in $WORK/NAME.log, records
# status and seconds; RESULT_FILE is what the summary reads (or "-").
check() {
    local name="$1" result="$2"
    shift 2
    echo "gpu_check: running $name (log: $WORK/$name.log)"
    local start=$SECONDS
    "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$result" >> "$STATUS"
    [ "$rc" -eq 0 ] || { echo "gpu_check: $name FAILED (exit $rc); last lines:"; tail -n 5 "$WORK/$name.log"; }
}

check cuda_tests "$WORK/cuda_tests.log" "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests

DEMO_DATA="$DATA_DIR"
if [ ! -d "$DATA_DIR/PACS" ]; then
    DEMO_DATA="$WORK/generated"
    echo "gpu_check: no PACS under $DATA_DIR: generating PACS-layout images in $DEMO_DATA for the demo"
    "$PYTHON" -c "
import sys
from pathlib import Path
from domainbed.datasets import get_dataset_class
from domainbed.scripts.benchmark.training import generate_images
generate_images(Path(sys.argv[1]), get_dataset_class('PACS'), 24)" "$DEMO_DATA"
fi
for pipeline in gpu classic; do
    check "demo_$pipeline" "$WORK/demo_$pipeline" "$PYTHON" train_all.py demo --dataset PACS --data_dir "$DEMO_DATA" \
        --algorithm ERM --pretrained False --image_size 64 --steps 20 --checkpoint_freq 10 --swad_bn_steps 20 \
        --device cuda --pipeline "$pipeline" --output_dir "$WORK/demo_$pipeline"
done

BENCH=(--dataset PACS --generate --algorithm ERM SAGM_DG --backbone resnet50 --image_size 224 --batch_size 32
       --steps "${BENCH_STEPS:-20}" --warmup 5 --device cuda)
check bench_gpu_fp32 "$WORK/bench_gpu_fp32.json" "$PYTHON" -m domainbed.scripts.benchmark "${BENCH[@]}" \
    --pipeline gpu --precision fp32 --output "$WORK/bench_gpu_fp32.json"
check bench_gpu_bf16 "$WORK/bench_gpu_bf16.json" "$PYTHON" -m domainbed.scripts.benchmark "${BENCH[@]}" \
    --pipeline gpu --precision bf16 --no_reference --output "$WORK/bench_gpu_bf16.json"
check bench_classic_bf16 "$WORK/bench_classic_bf16.json" "$PYTHON" -m domainbed.scripts.benchmark "${BENCH[@]}" \
    --pipeline classic --precision bf16 --no_reference --output "$WORK/bench_classic_bf16.json"
check bench_vit_bf16 "$WORK/bench_vit_bf16.json" "$PYTHON" -m domainbed.scripts.benchmark --dataset PACS --generate \
    --algorithm ERM --backbone vit_b16 --image_size 224 --batch_size 32 --steps "${BENCH_STEPS:-20}" --warmup 5 \
    --device cuda --pipeline gpu --precision bf16 --no_reference --output "$WORK/bench_vit_bf16.json"

GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$GPUS" -ge 2 ]; then
    DP=(--dataset Synthetic --algorithm CORAL --steps 20 --checkpoint_freq 10 --test_envs 0 --swad False
        --batch_size $((4 * GPUS)) --device cuda)
    check dp_one_gpu - "$PYTHON" train_all.py one "${DP[@]}" --output_dir "$WORK/dp_one"
    check dp_nccl - "$PYTHON" -m torch.distributed.run --nproc_per_node "$GPUS" train_all.py nccl "${DP[@]}" \
        --output_dir "$WORK/dp_nccl"
    check dp_same_table "$WORK/dp_same_table.txt" "$PYTHON" - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
one, nccl = (json.loads(next((work / run).glob("Synthetic/*/table.json")).read_text())["rows"]
             for run in ("dp_one", "dp_nccl"))
worst = max(abs(one[row][env] - nccl[row][env]) for row in one for env in one[row])
(work / "dp_same_table.txt").write_text(f"largest difference of a cell {worst:.2g}\n")
sys.exit(0 if worst <= 1e-6 else 1)
EOF
    check demo_ddp "$WORK/demo_ddp" "$PYTHON" -m torch.distributed.run --nproc_per_node "$GPUS" train_all.py demo \
        --dataset PACS --data_dir "$DEMO_DATA" --algorithm ERM --pretrained False --image_size 64 --steps 20 \
        --checkpoint_freq 10 --swad_bn_steps 20 --batch_size $((8 * GPUS)) --device cuda --test_envs 0 \
        --output_dir "$WORK/demo_ddp"
else
    echo "gpu_check: $GPUS GPU: data parallelism (NCCL) needs 2 or more, not checked"
fi

"$PYTHON" - "$STATUS" <<'EOF'
"""The summary: one row per check; the demo's row gives the mean test accuracy of its `iid` row
over the folds, the tests' row pytest's last line; then one row per benchmark configuration."""
import json
import sys
from pathlib import Path

import torch
from prettytable import PrettyTable

checks = [line.split("\t") for line in Path(sys.argv[1]).read_text().splitlines()]
table = PrettyTable(["check", "status", "seconds", "result"], align="l")
bench, vit = [], []
for name, rc, seconds, result in checks:
    status = "ok" if rc == "0" else f"FAILED ({rc})"
    if name == "cuda_tests":
        lines = [line for line in Path(result).read_text().splitlines() if line.strip()]
        status = "ok" if rc in ("0", "5") else status  # 5: no test is marked cuda
        text = lines[-1] if lines else ""
    elif name.startswith("dp_"):
        text = Path(result).read_text().strip() if Path(result).is_file() else ""
    elif name.startswith("demo_"):
        tables = sorted(Path(result).glob("PACS/*/table.json"))
        rows = json.loads(tables[-1].read_text())["rows"] if tables else {}
        text = ", ".join(f"{row} {100 * sum(v.values()) / len(v):.1f}%" for row, v in rows.items()
                         if row in ("iid", "oracle") and v) or "no table"
    else:
        text = ""
        if Path(result).exists():
            rows = json.loads(Path(result).read_text())
            (vit if name.startswith("bench_vit") else bench).extend(rows)
    table.add_row([name, status, seconds, text])
print(f"\n=== gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__}) ===")
print(table)
reference = {row["algorithm"]: row["train_ips"] for row in bench if (row["pipeline"], row["precision"]) == ("classic", "fp32")}
erm = {(row["pipeline"], row["precision"]): row["step_ms"] for row in bench if row["algorithm"] == "ERM"}
speed = PrettyTable(["algorithm", "pipeline", "precision", "train img/s", "eval img/s", "step ms",
                     "x classic fp32", "step x ERM", "peak GiB"], align="r")
for row in sorted(bench, key=lambda r: (r["algorithm"], r["pipeline"], r["precision"])):
    base, erm_step = reference.get(row["algorithm"]), erm.get((row["pipeline"], row["precision"]))
    speed.add_row([row["algorithm"], row["pipeline"], row["precision"], f"{row['train_ips']:.0f}",
                   f"{row['eval_ips']:.0f}", f"{row['step_ms']:.1f}", f"{row['train_ips'] / base:.2f}" if base else "-",
                   f"{row['step_ms'] / erm_step:.2f}" if erm_step else "-",
                   "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f}"])
print("ResNet-50, 224 px, 32 x 3 domains, generated PACS-layout images:")
print(speed)

# The performance goals (docs/speed.md) at bf16 with the gpu pipeline. A PACS run of SWAD's
# protocol trains 96 images a step and evaluates every 100 steps, in the fast mode the test
# domain and 20% of the training domains: 0.4 x 9,991 images per fold on average.
STEP_IMAGES, CHECKPOINT_FREQ, EVAL_IMAGES = 96, 100, 0.4 * 9991
rows = {row["algorithm"]: row for row in bench if (row["pipeline"], row["precision"]) == ("gpu", "bf16")}
goals = PrettyTable(["goal, gpu pipeline, bf16", "measured", "target"], align="l")
for algorithm, row in sorted(rows.items()):
    base = reference.get(algorithm)
    times = f" ({row['train_ips'] / base:.2f}x classic fp32)" if base else ""
    goals.add_row([f"{algorithm} train img/s", f"{row['train_ips']:.0f}{times}",
                   ">= 5x classic fp32" if algorithm == "ERM" else "-"])
if {"ERM", "SAGM_DG"} <= set(rows):
    goals.add_row(["SAGM_DG step / ERM step", f"{rows['SAGM_DG']['step_ms'] / rows['ERM']['step_ms']:.2f}", "<= 2.05"])
if "ERM" in rows:
    erm = rows["ERM"]
    train_s, eval_s = CHECKPOINT_FREQ * STEP_IMAGES / erm["train_ips"], EVAL_IMAGES / erm["eval_ips"]
    goals.add_row(["ERM eval img/s", f"{erm['eval_ips']:.0f}", ">= 10000"])
    goals.add_row(["evaluation share of an ERM PACS run", f"{100 * eval_s / (train_s + eval_s):.1f}%", "-"])
for algorithm, row in sorted(rows.items()):
    goals.add_row([f"{algorithm} peak GPU memory", "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f} GiB", "-"])
for row in vit:
    goals.add_row([f"{row['algorithm']} on {row['backbone']} train img/s, eval img/s",
                   f"{row['train_ips']:.0f}, {row['eval_ips']:.0f}", "-"])
    goals.add_row([f"{row['algorithm']} on {row['backbone']} peak GPU memory",
                   "-" if row["peak_gb"] is None else f"{row['peak_gb']:.1f} GiB", "-"])
print(goals)
sys.exit(0 if all(rc == "0" or (name == "cuda_tests" and rc == "5") for name, rc, _, _ in checks) else 1)
EOF
