"""Local flatness of runs' final models, as SWAD measures it (Cha et al., NeurIPS 2021, Sec. 3 and
visualization/local_flatness_test.py of the official code):

    F_gamma(theta) = E_{||Delta|| = gamma} [ L(theta + Delta) ] - L(theta)

the expected increase of the training-domain loss L when all the weights move a distance gamma
in a random direction (a standard normal vector over every parameter, normalised to unit length).

    python -m domainbed.scripts.flatness RUN_DIR [RUN_DIR ...] [--radii 0 5 10 ...]
        [--n_directions 100] [--split in|out] [--out PREFIX]

writes PREFIX.csv (run, test_env, direction, radius, loss, increase: one row per evaluation) and
PREFIX.png (mean increase against radius, one line per run averaged over its folds and directions,
a band of one standard deviation over directions). L is the mean cross-entropy over the training
domains' `in` splits (what was trained on), without augmentation; `--split out` uses their
validation splits. The directions depend only on (--seed, test domain, direction index), so runs
of the same architecture are probed along the same directions.

Differences from the official script: SWAD walks along each direction by repeated in-place
additions of step * direction (accumulating rounding error) and saves a torch pickle; we set
theta + gamma * direction from the saved theta for every gamma and write CSV and a plot. The
defaults are SWAD's (radii 0, 5, ..., 60; 100 directions): that is 1 + 100 * 12 evaluations of
the training data per fold, so lower them for a quick look.
"""

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm import tqdm

from domainbed import cli, misc
from domainbed.runs import model_io
from domainbed.data import num_workers_for
from domainbed.errors import UsageError
from domainbed.runs.reader import read_trained_run
from domainbed.runs.run_data import build_dataset, eval_splits
from domainbed.training.evaluator import Evaluator
from domainbed.training.trainer import resolve_device

COLUMNS = ["run", "test_env", "direction", "radius", "loss", "increase"]


def random_direction(n: int, seed: int, test_env: int, index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(misc.seed_hash(seed, test_env, index))
    direction = torch.randn(n, generator=generator, dtype=torch.float64)
    return direction / direction.norm()


def training_loss_evaluator(run, dataset, test_env, split, batch_size, num_workers, device):
    """An evaluator over the training domains' `split` splits, without augmentation."""
    splits = [s for s in eval_splits(run, dataset, test_env) if s.train_domain is not None and s.inout == split]
    for s in splits:
        s.dataset.transform = dataset.eval_transform
    evaluator = Evaluator(splits, [test_env], batch_size, num_workers, device, "all")

    def loss(model) -> float:
        _, losses, _ = evaluator.evaluate(model)
        return float(np.mean([losses[s.name] for s in splits]))

    return loss


@torch.no_grad()
def local_flatness(model, loss_fn, radii, n_directions: int, seed: int, test_env: int) -> list:
    """[(direction, radius, loss, increase)] with the model's weights restored afterwards."""
    parameters = list(model.parameters())
    theta = parameters_to_vector(parameters).detach().clone()
    base = loss_fn(model)
    rows = []
    try:
        for index in tqdm(range(n_directions), desc=f"TE{test_env}: random directions", unit="direction",
                          disable=None, leave=False):
            direction = random_direction(theta.numel(), seed, test_env, index).to(theta.device)
            for radius in radii:
                if radius == 0:
                    rows.append((index, 0.0, base, 0.0))
                    continue
                vector_to_parameters((theta.double() + radius * direction).to(theta.dtype), parameters)
                value = loss_fn(model)
                rows.append((index, float(radius), value, value - base))
    finally:
        vector_to_parameters(theta, parameters)
    return rows


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for run in dict.fromkeys(row["run"] for row in rows):
        radii = sorted({row["radius"] for row in rows if row["run"] == run})
        increases = [[row["increase"] for row in rows if row["run"] == run and row["radius"] == r] for r in radii]
        mean = np.array([np.mean(values) for values in increases])
        std = np.array([np.std(values) for values in increases])
        axes.plot(radii, mean, marker="o", label=run)
        axes.fill_between(radii, mean - std, mean + std, alpha=0.2)  # +- one std over directions and folds
    axes.set_xlabel("radius gamma of the random weight perturbation")
    axes.set_ylabel("increase of the training-domain loss")
    figure.suptitle("Local flatness (SWAD): E[L(theta + Delta)] - L(theta) at ||Delta|| = gamma\n"
                    "mean and one standard deviation over random directions and folds", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(title="run", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def flatness(paths, radii=tuple(range(0, 65, 5)), n_directions=100, split="in", out="flatness", seed=0,
             test_envs=None, data_dir=None, device="auto", num_workers=-1, batch_size=None, log=print) -> list:
    """Measure every run's folds; writes `out`.csv and `out`.png and returns the rows."""
    if split not in ("in", "out"):
        raise UsageError(f"unknown --split {split!r}; valid: in, out")
    if n_directions < 1 or not radii or min(radii) < 0:
        raise UsageError(f"need at least one direction and radii >= 0, got {n_directions} and {list(radii)}")
    device = resolve_device(device)
    rows = []
    names = {}
    for path in paths:
        run = read_trained_run(path)
        averaging = str(run.hparams.get("swad", "False"))
        label = f"{run.name} ({run.args['algorithm']}{'' if averaging == 'False' else ', ' + averaging})"
        names[label] = names.get(label, 0) + 1
        label = label if names[label] == 1 else f"{label} #{names[label]}"
        folds = sorted(run.models) if test_envs is None else [env for env in test_envs if env in run.models]
        if not folds:
            raise UsageError(f"run {run.path} has no final model for test domains {test_envs}")
        dataset = build_dataset(run, data_dir)
        for test_env in folds:
            model, _ = model_io.load_model(run.models[test_env], device)
            loss_fn = training_loss_evaluator(run, dataset, test_env, split,
                                              batch_size or run.hparams.get("test_batchsize", 256),
                                              num_workers_for(num_workers, dataset.N_WORKERS, 1), device)
            log(f"{label} TE{test_env}: {n_directions} directions x {len(radii)} radii")
            for measured in local_flatness(model, loss_fn, radii, n_directions, seed, test_env):
                rows.append(dict(zip(COLUMNS, (label, test_env, *measured))))
    csv_path, png_path = Path(f"{out}.csv"), Path(f"{out}.png")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, png_path)
    for label in dict.fromkeys(row["run"] for row in rows):
        summary = ", ".join(
            f"{r:g}: {np.mean([row['increase'] for row in rows if row['run'] == label and row['radius'] == r]):.4f}"
            for r in sorted({row["radius"] for row in rows if row["run"] == label}))
        log(f"{label} mean loss increase by radius: {summary}")
    log(f"wrote {csv_path} and {png_path}")
    return rows


def main(argv=None) -> int:
    parser = cli.parser("SWAD's local flatness of runs' final models: CSV and PNG",
                        "python -m domainbed.scripts.flatness train_output/PACS/*_erm train_output/PACS/*_swad "
                        "--radii 0 10 20 --n_directions 10 --out flatness")
    parser.add_argument("runs", nargs="+", help="run directories written by train_all.py")
    parser.add_argument("--radii", type=float, nargs="+", default=[float(r) for r in range(0, 65, 5)])
    parser.add_argument("--n_directions", type=int, default=100, help="random directions per fold (SWAD: 100)")
    parser.add_argument("--split", default="in",
                        help="in: the training domains' training splits; out: their validation splits")
    parser.add_argument("--test_envs", type=int, nargs="+", default=None, help="folds to measure (default: all)")
    parser.add_argument("--out", default="flatness", help="output prefix: writes PREFIX.csv and PREFIX.png")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random directions")
    parser.add_argument("--data_dir", default=None, help="where the data is now (default: each run's data_dir)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num_workers", type=int, default=-1)
    parser.add_argument("--batch_size", type=int, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    def work():
        flatness(args.runs, args.radii, args.n_directions, args.split, args.out, args.seed, args.test_envs,
                 args.data_dir, args.device, args.num_workers, args.batch_size)

    return cli.run_main(work, "interrupted: nothing was written")


if __name__ == "__main__":
    sys.exit(main())
