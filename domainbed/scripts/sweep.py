"""Sweeps: one train_all.py job per (dataset, algorithm, hparams seed, trial seed), every fold inside.

    python -m domainbed.scripts.sweep launch --datasets PACS VLCS --algorithms ERM SAGM_DG \\
        --n_hparams 20 --n_trials 3 --data_dir DATA --output_dir sweeps/main --launcher slurm \\
        [--steps N] [--checkpoint_freq K] [--pair_folds] [--dry_run] [slurm options] [-- more train_all.py arguments]
    python -m domainbed.scripts.sweep status            (the same arguments)
    python -m domainbed.scripts.sweep delete_incomplete (the same arguments)
    python -m domainbed.scripts.sweep launch --search asha --n_hparams 60 --budget_steps N ... (the same
        arguments: ASHA over DomainBed's search space, then the chosen hparams; sweep_search.py)

As DomainBed's sweep: a job's directory is OUTPUT_DIR/<md5 of its arguments>, a job is done when
that directory holds `done` (written when train_all.py exits 0), incomplete when the directory
exists without it, not launched otherwise (unlike DomainBed, an incomplete job whose run stopped
on an error, leaving failed.json in its run directory, is failed, and `status` prints the error);
`hparams_seed` 0 is the registry's defaults and seed N > 0 the random draw seeded by
seed_hash(N, trial_seed) (train_all.py --hparams_seed); each job's seed is
seed_hash(dataset, algorithm, hparams_seed, trial_seed). Unlike DomainBed, `launch` also
relaunches incomplete jobs, which continue where they stopped (every job runs train_all.py with
--resume), so a relaunch after a crash, a preemption or a killed launcher finishes every job
exactly once; `delete_incomplete` (failed jobs too) is only needed to start jobs over. The data
directory is not part of a job's hash, so a sweep survives moving the data.

DomainBed runs a job per test environment and, unless `--single_test_envs`, per pair of test
environments, for leave-one-domain-out selection. Here a job trains every single fold, and
`--pair_folds` makes it also train the pair folds (i, j) in the same run, which collect_results
reads for that selection; `--single_test_envs` (the default) and `--command_launcher` (for
`--launcher`) are accepted in DomainBed's spelling.

`--runner domainbed` launches DomainBed's own sweep instead: one job per (dataset, algorithm,
hparams seed, trial seed, test environments), every single test environment and, unless
`--single_test_envs`, every pair, each running DomainBed's train.py (`python -m
domainbed.scripts.train`, the drop-in) into its job directory, which then holds DomainBed's
results.jsonl, out.txt and done (its errors in err.txt); a job's seed is DomainBed's
seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed), and arguments after `--` go to
every train.py (`-- --hparams '{"lr": 1e-4}'`). collect_results prints such a sweep in DomainBed's
layout. DomainBed's train.py does not resume, so relaunching an incomplete job starts it over
(DomainBed needs `delete_incomplete` first).

Launchers:
- local: one job at a time in this process's machine;
- multi_gpu: one job per visible GPU (CUDA_VISIBLE_DEVICES), the rest queued;
- slurm: a job array through submitit (--partition, --time, --gpus, --cpus, --mem_gb,
  --array_parallelism); jobs are requeued on preemption or time-out and resume. `--cluster local`
  runs the same submitit path with its local executor (tests, a workstation).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from domainbed import cli
from domainbed.errors import UsageError, unknown_choice
from domainbed.runs import layout

TRAIN_ALL = Path(__file__).resolve().parents[2] / "train_all.py"
DOMAINBED_TRAIN = "domainbed.scripts.train"  # DomainBed's train.py, the drop-in
RUNNERS = ("train_all", "domainbed")
DONE, FAILED, INCOMPLETE, NOT_LAUNCHED = "done", "failed", "incomplete", "not launched"


@dataclass
class Job:
    train_args: dict
    directory: Path

    @classmethod
    def create(cls, sweep_dir, **train_args) -> "Job":
        digest = hashlib.md5(json.dumps(train_args, sort_keys=True).encode("utf-8")).hexdigest()
        return cls(train_args, Path(sweep_dir) / digest)

    @property
    def runner(self) -> str:
        return self.train_args.get("runner", "train_all")

    @property
    def name(self) -> str:
        a = self.train_args
        if "search_trial" in a:
            return f"{a['algorithm']}_search{a['search_trial']}"
        if "search_best" in a:
            return f"{a['algorithm']}_search{a['search_best']}_trial{a['trial_seed']}"
        name = f"{a['algorithm']}_hp{a['hparams_seed']}_trial{a['trial_seed']}"
        return name + "_te" + "".join(map(str, a["test_envs"])) if self.runner == "domainbed" else name

    @property
    def log_name(self) -> str:
        """The file in the job directory that holds the job's output (DomainBed's train.py writes
        its own out.txt, so the launcher keeps only its errors, in DomainBed's err.txt)."""
        return "err.txt" if self.runner == "domainbed" else "out.txt"

    @property
    def state(self) -> str:
        if (self.directory / "done").exists():
            return DONE
        if self.failure() is not None:
            return FAILED
        return INCOMPLETE if self.directory.exists() else NOT_LAUNCHED

    def failure(self) -> dict | None:
        """failed.json of the job's newest run directory (DATASET/TIMESTAMP_NAME), or None (always
        for DomainBed's train.py, which writes none: its failed jobs are incomplete, as in DomainBed)."""
        runs = sorted(self.directory.glob(f"*/*/{layout.ARGS}"), key=lambda path: path.parent.name)
        marker = layout.failed_path(runs[-1].parent) if runs else None
        return json.loads(marker.read_text()) if marker is not None and marker.is_file() else None

    def command(self, data_dir: str) -> list:
        a = self.train_args
        if self.runner == "domainbed":
            command = [sys.executable, "-m", DOMAINBED_TRAIN, "--dataset", a["dataset"], "--algorithm", a["algorithm"],
                       "--test_envs", *map(str, a["test_envs"]), "--hparams_seed", str(a["hparams_seed"]),
                       "--trial_seed", str(a["trial_seed"]), "--seed", str(a["seed"]), "--data_dir", data_dir,
                       "--output_dir", str(self.directory)]
            for key in ("steps", "checkpoint_freq"):
                if a[key] is not None:
                    command += [f"--{key}", str(a[key])]
            return command + list(a["train_all_args"])
        command = [sys.executable, str(TRAIN_ALL), self.name, "--dataset", a["dataset"], "--algorithm",
                   a["algorithm"], "--hparams_seed", str(a["hparams_seed"]), "--trial_seed", str(a["trial_seed"]),
                   "--seed", str(a["seed"]), "--data_dir", data_dir, "--output_dir", str(self.directory)]
        for key in ("steps", "checkpoint_freq"):
            if a[key] is not None:
                command += [f"--{key}", str(a[key])]
        if a.get("pair_folds"):
            command.append("--pair_folds")
        # --resume last: it takes an optional value, which must not swallow a positional argument.
        return command + list(a["train_all_args"]) + ["--resume"]

    def start(self, data_dir: str, env=None) -> subprocess.Popen:
        """Start the job's process; its output is appended to the job's `log_name`."""
        if self.runner == "domainbed" and self.directory.exists():
            shutil.rmtree(self.directory)  # DomainBed's train.py cannot resume: an incomplete job starts over
        self.directory.mkdir(parents=True, exist_ok=True)
        command = self.command(data_dir)
        (self.directory / "job.json").write_text(json.dumps({"train_args": self.train_args, "command": command},
                                                            indent=2))
        with open(self.directory / self.log_name, "a", encoding="utf-8") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            out.flush()
            if self.runner == "domainbed":
                return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, env=env)
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    def finish(self, returncode: int) -> int:
        if returncode == 0:
            (self.directory / "done").touch()
        return returncode

    def run(self, data_dir: str, env=None) -> int:
        return self.finish(self.start(data_dir, env).wait())


class SubmititTask:
    """The callable submitit runs for one job; requeued on preemption or time-out, it resumes."""

    def __init__(self, job: Job, data_dir: str):
        self.job = job
        self.data_dir = data_dir

    def __call__(self) -> str:
        returncode = self.job.run(self.data_dir)
        if returncode != 0:
            raise RuntimeError(f"the job exited with {returncode}; see {self.job.directory / self.job.log_name}")
        return str(self.job.directory)

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def make_jobs(args) -> list:
    # Imported here, not at the top: submitit's workers import this module only to start
    # train_all.py, and need not pay for importing torch.
    from domainbed import misc
    from domainbed.algorithms import get_algorithm_class
    from domainbed.datasets import get_dataset_class

    for dataset in args.datasets:
        get_dataset_class(dataset)
    for algorithm in args.algorithms:
        get_algorithm_class(algorithm)
    if not 0 <= args.n_hparams_from <= args.n_hparams or args.n_trials < 1:
        raise UsageError(f"need 0 <= --n_hparams_from ({args.n_hparams_from}) <= --n_hparams ({args.n_hparams}) "
                         f"and --n_trials ({args.n_trials}) >= 1")
    if args.runner == "domainbed":
        return domainbed_jobs(args)
    # a key only when set, so that the jobs of sweeps launched before the option keep their hashes
    pairs = {"pair_folds": True} if args.pair_folds else {}
    return [
        Job.create(args.output_dir, dataset=dataset, algorithm=algorithm, hparams_seed=hparams_seed,
                   trial_seed=trial_seed, seed=misc.seed_hash(dataset, algorithm, hparams_seed, trial_seed),
                   steps=args.steps, checkpoint_freq=args.checkpoint_freq, train_all_args=list(args.train_all_args),
                   **pairs)
        for dataset in args.datasets
        for algorithm in args.algorithms
        for hparams_seed in range(args.n_hparams_from, args.n_hparams)
        for trial_seed in range(args.n_trials)
    ]


def test_env_sets(dataset: str, single_test_envs: bool) -> list:
    """DomainBed's test environments of a dataset's jobs: each one, and each pair unless `single_test_envs`."""
    from domainbed.datasets import get_dataset_class

    environments = get_dataset_class(dataset).ENVIRONMENTS
    if not environments:
        raise UsageError(f"--runner domainbed needs the environments of {dataset} before reading its files, and "
                         f"{dataset} finds them in its folder; use --runner train_all")
    n = len(environments)
    singles = [[i] for i in range(n)]
    return singles if single_test_envs else singles + [[i, j] for i in range(n) for j in range(i + 1, n)]


def domainbed_jobs(args) -> list:
    """DomainBed's sweep: a job per (dataset, algorithm, hparams seed, trial seed, test environments)."""
    from domainbed import misc

    if args.pair_folds:
        raise UsageError("--pair_folds is train_all.py's; --runner domainbed launches the pair jobs itself "
                         "(drop --pair_folds; --single_test_envs leaves them out)")
    return [
        Job.create(args.output_dir, runner="domainbed", dataset=dataset, algorithm=algorithm, test_envs=test_envs,
                   hparams_seed=hparams_seed, trial_seed=trial_seed,
                   seed=misc.seed_hash(dataset, algorithm, test_envs, hparams_seed, trial_seed),
                   steps=args.steps, checkpoint_freq=args.checkpoint_freq, train_all_args=list(args.train_all_args))
        for dataset in args.datasets
        for algorithm in args.algorithms
        for test_envs in test_env_sets(dataset, args.single_test_envs)
        for hparams_seed in range(args.n_hparams_from, args.n_hparams)
        for trial_seed in range(args.n_trials)
    ]


def count_states(jobs) -> dict:
    counts = {DONE: 0, FAILED: 0, INCOMPLETE: 0, NOT_LAUNCHED: 0}
    for job in jobs:
        counts[job.state] += 1
    return counts


def _summary(counts: dict) -> str:
    return f"{sum(counts.values())} jobs: {counts[DONE]} done, {counts[FAILED]} failed, " \
           f"{counts[INCOMPLETE]} incomplete, {counts[NOT_LAUNCHED]} not launched"


def job_result(job) -> str:
    """The finished job's table in one line: each row's mean over the test domains (for DomainBed's
    train.py, the test environments' accuracies at the last step)."""
    if job.runner == "domainbed":
        results = job.directory / "results.jsonl"
        lines = results.read_text().splitlines() if results.is_file() else []
        if not lines:
            return "no results.jsonl"
        last = json.loads(lines[-1])
        return f"step {last['step']}: " + ", ".join(f"env{env}_in_acc {100 * last[f'env{env}_in_acc']:.1f}%"
                                                    for env in job.train_args["test_envs"])
    tables = sorted(job.directory.glob(f"*/*/{layout.TABLE_JSON}"))
    if not tables:
        return f"no {layout.TABLE_JSON}"
    rows = json.loads(tables[-1].read_text())["rows"]
    return ", ".join(f"{row} {100 * sum(values.values()) / len(values):.1f}%"
                     for row, values in rows.items() if values and not row.endswith("(inD)"))


def report_finished(job, returncode: int, remaining: int) -> None:
    """One line per finished job: what it is, its result or where its output is, what is left."""
    what = f"{job.train_args['dataset']} {job.name}"
    if returncode == 0:
        outcome = f"done: {job_result(job)}"
    else:
        outcome = f"FAILED (exit {returncode}, see {job.directory / job.log_name})"
    print(f"{what} {outcome}; {remaining} jobs remaining", flush=True)


def local_launcher(jobs, args) -> list:
    failed = []
    for index, job in enumerate(jobs, 1):
        print(f"[{index}/{len(jobs)}] running {job.train_args['dataset']} {job.name}: {job.directory}", flush=True)
        returncode = job.run(args.data_dir)
        report_finished(job, returncode, len(jobs) - index)
        if returncode != 0:
            failed.append(job)
    return failed


def visible_gpus() -> list:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def multi_gpu_launcher(jobs, args) -> list:
    gpus = visible_gpus()
    if not gpus:
        raise UsageError("--launcher multi_gpu needs at least one visible GPU (none found); use --launcher local")
    queue, running, failed = list(jobs), {}, []
    while queue or running:
        for gpu in gpus:
            if gpu not in running and queue:
                job = queue.pop(0)
                print(f"[GPU {gpu}] {job.train_args['dataset']} {job.name}: {job.directory}", flush=True)
                running[gpu] = (job, job.start(args.data_dir, {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}))
        for gpu, (job, process) in list(running.items()):
            if process.poll() is not None:
                del running[gpu]
                returncode = job.finish(process.returncode)
                report_finished(job, returncode, len(queue) + len(running))
                if returncode != 0:
                    failed.append(job)
        time.sleep(1)
    return failed


def slurm_launcher(jobs, args) -> list:
    import submitit

    executor = submitit.AutoExecutor(folder=Path(args.output_dir) / "submitit" / "%j", cluster=args.cluster)
    executor.update_parameters(
        name="domainbed_sweep", timeout_min=args.time, gpus_per_node=args.gpus, cpus_per_task=args.cpus,
        mem_gb=args.mem_gb, slurm_partition=args.partition, slurm_array_parallelism=args.array_parallelism,
    )
    with executor.batch():
        submitted = [executor.submit(SubmititTask(job, args.data_dir)) for job in jobs]
    for job, handle in zip(jobs, submitted):
        print(f"submitted {handle.job_id}: {job.train_args['dataset']} {job.name}: {job.directory}", flush=True)
    if not args.wait:
        return []
    print(f"waiting for {len(jobs)} submitted jobs (submitit logs under {Path(args.output_dir) / 'submitit'})",
          flush=True)
    failed = []
    for index, (job, handle) in enumerate(zip(jobs, submitted), 1):
        try:
            handle.result()
            report_finished(job, 0, len(jobs) - index)
        except Exception:  # submitit re-raises the job's failure here; out.txt has train_all's output
            print(f"failed: {job.directory} (submitit job {handle.job_id})", flush=True)
            report_finished(job, 1, len(jobs) - index)
            failed.append(job)
    return failed


LAUNCHERS = {"local": local_launcher, "multi_gpu": multi_gpu_launcher, "slurm": slurm_launcher}


EXAMPLE = """examples:
  python -m domainbed.scripts.sweep launch --datasets PACS --algorithms ERM SAGM_DG --n_hparams 5 --n_trials 3 \\
      --data_dir DATA --output_dir sweeps/main -- --swad LossValley
  python -m domainbed.scripts.sweep status --datasets PACS --algorithms ERM SAGM_DG --n_hparams 5 --n_trials 3 \\
      --output_dir sweeps/main
  python -m domainbed.scripts.collect_results sweeps/main            (the tables, grouped by method)
Arguments after `--` go to every train_all.py; `-- --tag NAME` names the family in collect_results.
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Launch, inspect or clean a sweep of train_all.py jobs",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("command", choices=["launch", "status", "delete_incomplete"],
                        help="launch the jobs not yet done, show their states, or delete the incomplete ones")
    parser.add_argument("--datasets", nargs="+", required=True, help="dataset names, as train_all.py --help lists them (required)")
    parser.add_argument("--algorithms", nargs="+", required=True,
                        help="algorithm names, as train_all.py --help lists them, or package.module:Class (required)")
    parser.add_argument("--n_hparams_from", type=int, default=0,
                        help="first hparams seed (default: %(default)s)")
    parser.add_argument("--n_hparams", type=int, default=20,
                        help="hparams seeds n_hparams_from .. n_hparams-1 (default: %(default)s)")
    parser.add_argument("--n_trials", type=int, default=3, help="trial seeds 0 .. n_trials-1 (default: %(default)s)")
    parser.add_argument("--output_dir", required=True, help="one job directory per run under it (required)")
    parser.add_argument("--data_dir", default="datadir/", help="passed to every job (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None, help="passed to every job (default: the dataset's)")
    parser.add_argument("--checkpoint_freq", type=int, default=None,
                        help="passed to every job (default: the dataset's)")
    folds = parser.add_mutually_exclusive_group()
    folds.add_argument("--pair_folds", action="store_true",
                       help="every job also trains the folds holding out two environments (train_all.py "
                            "--pair_folds), DomainBed's jobs for collect_results' leave-one-domain-out selection")
    folds.add_argument("--single_test_envs", action="store_true",
                       help="only the single folds: DomainBed's flag, the default but with --runner domainbed")
    # not argparse's choices: an unknown launcher is parse_args' one-line error, not a usage dump
    parser.add_argument("--launcher", "--command_launcher", default="local", metavar="{" + ",".join(LAUNCHERS) + "}",
                        help="local: one job after another; multi_gpu: one job per visible GPU at once; "
                             "slurm: a submitit job array (default: %(default)s)")
    parser.add_argument("--runner", default="train_all", metavar="{" + ",".join(RUNNERS) + "}",
                        help="train_all: a job per (dataset, algorithm, hparams, trial) trains every fold; domainbed: "
                             "DomainBed's sweep, a job per test environment and pair (unless --single_test_envs), "
                             "each running DomainBed's train.py (default: %(default)s)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, launch nothing")
    search = parser.add_argument_group("budgeted search (--search asha; domainbed/scripts/sweep_search.py)")
    search.add_argument("--search", default=None, choices=["asha"],
                        help="instead of DomainBed's random search: ASHA over the same distributions with "
                             "Optuna, up to --n_hparams trials on trial seed 0, then the best trial's hparams "
                             "on --n_trials trial seeds (default: the random search)")
    search.add_argument("--storage", default=None,
                        help="the study's Optuna storage: an RDB URL (with ://) or a journal file path "
                             "(default: sqlite:///OUTPUT_DIR/search.db)")
    search.add_argument("--budget_steps", type=int, default=None,
                        help="the trials train at most this many steps, every fold counted: a trial is asked "
                             "only while it and the running ones could finish within it (default: only "
                             "--n_hparams limits the search)")
    search.add_argument("--reduction_factor", type=int, default=3,
                        help="ASHA's eta: a trial passes a rung in the top 1/eta (default: %(default)s)")
    search.add_argument("--min_resource", type=int, default=None,
                        help="training steps of the first rung (default: the checkpoint frequency)")
    search.add_argument("--sampler", default="random", choices=["random", "tpe"],
                        help="random: DomainBed's distributions drawn at random; tpe: Optuna's TPE over "
                             "them (default: %(default)s)")
    search.add_argument("--search_seed", type=int, default=0, help="seeds the sampler (default: %(default)s)")
    parser.add_argument("--skip_confirmation", action="store_true", help="launch or delete without asking")
    slurm = parser.add_argument_group("slurm (submitit)")
    slurm.add_argument("--cluster", default="slurm", choices=["slurm", "local", "debug"],
                       help="submitit's executor: slurm, or local/debug to run the same path on this machine "
                            "(default: %(default)s)")
    slurm.add_argument("--partition", default=None, help="slurm partition (default: the cluster's)")
    slurm.add_argument("--time", type=int, default=24 * 60, help="time limit per job, minutes (default: %(default)s)")
    slurm.add_argument("--gpus", type=int, default=1, help="GPUs per job (default: %(default)s)")
    slurm.add_argument("--cpus", type=int, default=8, help="CPUs per job (default: %(default)s)")
    slurm.add_argument("--mem_gb", type=int, default=32, help="memory per job, GB (default: %(default)s)")
    slurm.add_argument("--array_parallelism", type=int, default=64,
                       help="jobs of the array running at once (default: %(default)s)")
    slurm.add_argument("--wait", action="store_true", help="wait for the submitted jobs and report failures")
    return parser


def parse_args(argv):
    """Sweep arguments, and after a `--` the arguments passed to every train_all.py."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = make_parser().parse_args(argv[:split])
    args.train_all_args = argv[split + 1:]
    if args.launcher not in LAUNCHERS:
        raise unknown_choice("launcher", args.launcher, list(LAUNCHERS))
    if args.runner not in RUNNERS:
        raise unknown_choice("runner", args.runner, list(RUNNERS))
    return args


def _confirm(question: str, args) -> bool:
    if args.skip_confirmation:
        return True
    return input(f"{question} (y/n) ").strip().lower() in {"y", "yes"}


def run(argv) -> dict:
    """Returns {"jobs", "counts", "failed"} (failed: jobs whose launch failed, with `launch`)."""
    args = parse_args(argv)
    if args.search:
        from domainbed.scripts import sweep_search

        return sweep_search.run(args)
    jobs = make_jobs(args)
    counts = count_states(jobs)
    print(_summary(counts), flush=True)
    failed = []
    if args.command == "status":
        for job in jobs:
            state = job.state
            if state == FAILED:
                failure = job.failure()
                print(f"  {state}: {job.train_args['dataset']} {job.name}: {job.directory}: "
                      f"{failure['fold']}: {failure['error']}")
            elif state != DONE:
                print(f"  {state}: {job.train_args['dataset']} {job.name}: {job.directory}")
    elif args.command == "delete_incomplete":
        incomplete = [job for job in jobs if job.state in (INCOMPLETE, FAILED)]
        if incomplete and _confirm(f"delete {len(incomplete)} incomplete job directories?", args):
            for job in incomplete:
                shutil.rmtree(job.directory)
            print(f"deleted {len(incomplete)} incomplete job directories")
    else:
        pending = [job for job in jobs if job.state != DONE]
        again = "start over" if args.runner == "domainbed" else "resume where they stopped"
        print(f"launching {len(pending)} jobs ({counts[INCOMPLETE] + counts[FAILED]} {again})", flush=True)
        if args.dry_run:
            for job in pending:
                print(" ".join(job.command(args.data_dir)))
        elif pending:
            failed = LAUNCHERS[args.launcher](pending, args)
            if failed:
                print(f"{len(failed)} jobs failed (see {failed[0].log_name} in their directories); launch again "
                      "to resume them")
        counts = count_states(jobs)
    return {"jobs": jobs, "counts": counts, "failed": failed}


def main(argv=None) -> int:
    def work():
        return 1 if run(sys.argv[1:] if argv is None else argv)["failed"] else 0

    return cli.run_main(work, "interrupted: launch again to resume the unfinished jobs")


if __name__ == "__main__":
    sys.exit(main())
