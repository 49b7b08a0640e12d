"""Training and evaluation speed of an input pipeline and precision against the classic fp32 path.

    python -m domainbed.scripts.benchmark training --dataset PACS --data_dir DATA --algorithm ERM SAGM_DG \
        --backbone resnet50 --image_size 224 --batch_size 32 --pipeline gpu --precision bf16

(`training` is the default subcommand: the same line without it runs it too.)

For every algorithm, the classic path (PIL transforms in DataLoader workers, fp32) and then the
requested pipeline and precision train fold TE0 of the dataset for `--warmup` + `--steps` steps,
as the trainer does (next batch, then `update` under the precision), and evaluate every split
the fast evaluation mode uses, twice (the first pass warms up). Printed per row: training
images/second (all domains), median step time, evaluation images/second, peak GPU memory, the
ratio of training throughput to the classic fp32 row of the same algorithm, and the step time
relative to the first algorithm's row of the same configuration (SAGM's cost over ERM's). On a
busy machine, `--repeats R` measures the rows in turn R times and keeps each row's best.
The gpu pipeline's one-time cache build is reported apart (setup).

Without the data directory (or with --generate) the dataset's folder layout is filled with
generated 227 px JPEGs (`--generated_per_class` per class and domain), so the classic path
still pays for decoding. Models are built without pretrained weights; `--device cpu` runs the
gpu pipeline on CPU tensors.
"""

import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from prettytable import PrettyTable

from domainbed import misc
from domainbed.algorithms import get_algorithm_class
from domainbed.hparams.config import run_hparams
from domainbed.data.gpu_pipeline import build_pipeline
from domainbed.datasets import get_dataset_class
from domainbed.training.evaluator import Evaluator
from domainbed.training.precision import Precision
from domainbed.scripts.timing import device_name, fastest, synchronize
from domainbed.training.fold_splits import make_splits
from domainbed.training.trainer import resolve_device



def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default="PACS")
    parser.add_argument("--data_dir", default="datadir/")
    parser.add_argument("--generate", action="store_true", help="use generated images even if the data exists")
    parser.add_argument("--generated_per_class", type=int, default=12)
    parser.add_argument("--algorithm", nargs="+", default=["ERM"])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32, help="per training domain")
    parser.add_argument("--test_batchsize", type=int, default=None)
    parser.add_argument("--pipeline", default="gpu", choices=["gpu", "classic"])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num_workers", type=int, default=-1)
    parser.add_argument("--cache_dir", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no_reference", action="store_true", help="skip the classic fp32 rows")
    parser.add_argument("--output", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure the rows in turn this many times and keep each row's best (busy machines)")


def generate_images(root: Path, dataset_class, per_class: int, n_classes: int = 7, size: int = 227) -> None:
    """The dataset's folder layout filled with smooth random JPEGs."""
    rng = np.random.default_rng(0)
    for domain in dataset_class.DOMAIN_DIRS or ["d0", "d1", "d2", "d3"]:
        for label in range(n_classes):
            folder = root / (dataset_class.DIRECTORY or "") / domain / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(coarse).resize((size, size), Image.BICUBIC).save(folder / f"{index}.jpg", quality=90)


def measure(dataset, hparams, algorithm_name, pipeline_name, precision_name, device, steps, warmup) -> dict:
    hparams = {**hparams, "pipeline": pipeline_name, "precision": precision_name}
    train_splits, eval_splits = make_splits(dataset, [0], holdout_fraction=0.2, trial_seed=0)
    misc.set_seed(0)
    algorithm = get_algorithm_class(algorithm_name)(
        dataset.input_shape, dataset.num_classes, len(train_splits), hparams).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        algorithm = algorithm.to(memory_format=torch.channels_last)
    precision = Precision(precision_name, device)
    precision.attach(algorithm)

    setup_start = time.perf_counter()
    pipeline = build_pipeline(hparams, dataset, device)
    seeds = [misc.seed_hash(0, "train", i) for i in range(len(train_splits))]
    batch_size = hparams["batch_size"]
    batches = pipeline.train_minibatches(train_splits, seeds, batch_size)
    evaluator = Evaluator(eval_splits, [0], hparams["test_batchsize"], 0, device, "fast",
                          make_loader=pipeline.eval_batches, autocast=precision.autocast)
    first = next(batches)
    setup = time.perf_counter() - setup_start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        minibatches = first if step == 0 else next(batches)
        algorithm.on_step_begin(step, warmup + steps)
        with precision.training_step(algorithm):
            algorithm.update(list(minibatches))
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    eval_time = fastest(functools.partial(evaluator.evaluate, algorithm), device, repeats=1)
    n_eval = sum(len(split.dataset) for split in evaluator.splits)
    del batches, evaluator
    step_time = statistics.median(times)
    return {
        "algorithm": algorithm_name, "backbone": hparams["backbone"], "pipeline": pipeline_name,
        "precision": precision_name, "train_ips": batch_size * len(train_splits) / step_time, "step_ms": 1000 * step_time,
        "eval_ips": n_eval / eval_time, "setup_s": setup,
        "peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def run(args) -> list:
    device = resolve_device(args.device)
    dataset_class = get_dataset_class(args.dataset)
    overrides = {"backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size,
                 "pretrained": False, "num_workers": args.num_workers, "cache_dir": args.cache_dir}
    if args.test_batchsize:
        overrides["test_batchsize"] = args.test_batchsize
    rows = []
    with tempfile.TemporaryDirectory(prefix="benchmark_") as tmp:
        data_dir = Path(args.data_dir)
        directory = getattr(dataset_class, "DIRECTORY", None)
        if hasattr(dataset_class, "DOMAIN_DIRS") and (args.generate or not (data_dir / (directory or "")).is_dir()):
            data_dir = Path(tmp)
            print(f"generating {args.generated_per_class} images per class and domain in {data_dir}", flush=True)
            generate_images(data_dir, dataset_class, args.generated_per_class)
        for name in args.algorithm:
            hparams = run_hparams(name, args.dataset)
            hparams.update(overrides)
            dataset = dataset_class(str(data_dir), [], hparams)
            configs = [] if args.no_reference else [("classic", "fp32")]
            if (args.pipeline, args.precision) not in configs:
                configs.append((args.pipeline, args.precision))
            best = {}
            for _ in range(args.repeats):
                for config in configs:
                    row = measure(dataset, hparams, name, *config, device, args.steps, args.warmup)
                    print(_format(row), flush=True)
                    if config not in best or row["train_ips"] > best[config]["train_ips"]:
                        best[config] = {**row, "eval_ips": max(row["eval_ips"], best.get(config, row)["eval_ips"])}
            rows.extend(best[config] for config in configs)
    return rows


def _format(row) -> str:
    return (f"{row['algorithm']} {row['pipeline']} {row['precision']}: {row['train_ips']:.1f} train img/s, "
            f"{row['step_ms']:.1f} ms/step, {row['eval_ips']:.1f} eval img/s")


def table(rows, device) -> str:
    out = PrettyTable(["algorithm", "pipeline", "precision", "train img/s", "step ms", "eval img/s",
                       "peak GPU GiB", "train x classic fp32", "step x first alg.", "setup s"])
    for row in rows:
        reference = next((r for r in rows if r["algorithm"] == row["algorithm"]
                          and (r["pipeline"], r["precision"]) == ("classic", "fp32")), None)
        first = next(r for r in rows if (r["pipeline"], r["precision"]) == (row["pipeline"], row["precision"]))
        out.add_row([
            row["algorithm"], row["pipeline"], row["precision"], f"{row['train_ips']:.1f}", f"{row['step_ms']:.1f}",
            f"{row['eval_ips']:.1f}", "-" if row["peak_gb"] is None else f"{row['peak_gb']:.2f}",
            "-" if reference is None else f"{row['train_ips'] / reference['train_ips']:.2f}",
            f"{row['step_ms'] / first['step_ms']:.2f}", f"{row['setup_s']:.1f}",
        ])
    return f"device: {device_name(device)}, torch {torch.__version__}\n{out}"


def main(args) -> str:
    rows = run(args)
    if args.output:
        misc.atomic_write_text(Path(args.output), misc.to_json(rows, indent=2))
    return table(rows, resolve_device(args.device))
