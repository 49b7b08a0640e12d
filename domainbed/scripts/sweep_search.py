"""`sweep launch --search asha`: DomainBed's search space, searched with ASHA, then the chosen
hparams on every trial seed.

For each (dataset, algorithm) one Optuna study (domainbed/search/study.py), named
`DATASET-ALGORITHM`, in `--storage` (default OUTPUT_DIR/search.db, SQLite). A worker asks the
study for a trial, whose hparams are the methods' declared draws run on the sampler's suggestions
(domainbed/search/space.py), runs it as a train_all.py job on trial seed 0 (a directory under
OUTPUT_DIR/search/, named by the hash of its arguments as every sweep job), and tells the study
the outcome: the run's value (the mean over its folds of the best training-domain validation
accuracy), PRUNED when the run stopped because the pruner said so at a checkpoint
(domainbed/search/extension.py), or FAIL. Workers stop asking once the study holds `--n_hparams`
trials or a new trial could take the steps its trials train past `--budget_steps` (were it and
the running ones never pruned; study.exhausted). Trial k trains with the seed of the random sweep's hparams seed k + 1,
so the two searches' candidates differ in their hparams only.

Launchers: `local` runs one worker here; `multi_gpu` one worker per visible GPU (threads, each
starting its trials' train_all.py on its GPU); `slurm` submits `min(--array_parallelism,
--n_hparams)` workers through submitit (requeued on preemption or time-out, a worker first resumes
the trial it was running). The study's storage must be reachable from every worker: SQLite for
one machine, a journal file (`--storage PATH`) on a shared filesystem or an RDB URL on a cluster.

A relaunch with the same arguments loads the study (load_if_exists): the trials still RUNNING
(those of a killed launcher) resume where their runs stopped, finished ones are kept, and new
trials are asked until the limits. Only once no trial runs does the launch go on to the final
jobs: the best complete trial's hparams on trial seeds 0 .. n_trials-1, ordinary sweep jobs in
OUTPUT_DIR run by the chosen launcher, with the trial's seed scheme (trial seed t of trial k:
the random sweep's seed for hparams seed k + 1 and trial seed t, so trial seed 0 repeats the
best trial's run). With `--launcher slurm` without `--wait`, launch again once the workers are
done. Runs are tagged for collect_results: the final runs `--tag` (default `asha`), the search's
trials that tag plus `_search`, so its tables show both.
"""

import os
import threading
from pathlib import Path

from domainbed import misc
from domainbed.errors import UsageError
from domainbed.hparams.config import parse_overrides
from domainbed.runs import layout
from domainbed.runs.run_files import read_records
from domainbed.search import study as search_study
from domainbed.search.space import suggest_hparams
from domainbed.scripts import sweep
from domainbed.training.extensions import ENDED_EXIT_CODE

SEARCHES = ("asha",)
SEARCH_DIR = "search"
STORAGE_FILE = "search.db"
USAGE_ERROR_EXIT_CODE = 2  # train_all.py's, for a bad argument: the same for every trial


def storage_spec(args) -> str:
    if args.storage:
        return args.storage if "://" in args.storage else str(Path(args.storage).resolve())
    return f"sqlite:///{(Path(args.output_dir) / STORAGE_FILE).resolve()}"


def split_tag(train_all_args) -> tuple:
    """(the train_all.py arguments without --tag, the tag or None)."""
    rest, tag = [], None
    tokens = list(train_all_args)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--tag" and index + 1 < len(tokens):
            tag, index = tokens[index + 1], index + 2
        elif token.startswith("--tag="):
            tag, index = token.split("=", 1)[1], index + 1
        else:
            rest.append(token)
            index += 1
    return rest, tag


def fixed_hparams(train_all_args) -> set:
    """The hparams set on the command line after `--`, which the search leaves alone."""
    from domainbed.scripts.train_all import make_parser, split_argv

    _, extra = split_argv(make_parser(), list(train_all_args))
    return {key for key, _ in parse_overrides(extra)}


def make_config(args, dataset: str, algorithm: str) -> search_study.SearchConfig:
    rest, _ = split_tag(args.train_all_args)
    checkpoint_freq = args.checkpoint_freq or _dataset_checkpoint_freq(dataset)
    return search_study.SearchConfig(
        storage=storage_spec(args), study_name=f"{dataset}-{algorithm}", dataset=dataset, algorithm=algorithm,
        steps=args.steps, checkpoint_freq=args.checkpoint_freq, train_all_args=rest,
        min_resource=args.min_resource or checkpoint_freq, reduction_factor=args.reduction_factor,
        sampler=args.sampler, seed=args.search_seed, n_hparams=args.n_hparams, budget_steps=args.budget_steps)


def _dataset_checkpoint_freq(dataset: str) -> int:
    from domainbed.datasets import get_dataset_class

    return get_dataset_class(dataset).CHECKPOINT_FREQ


def _overrides(hparams: dict) -> list:
    return [token for name, value in sorted(hparams.items()) for token in (f"--{name}", str(value))]


def tags(args) -> tuple:
    """(the final runs' tag, the search trials' tag)."""
    _, tag = split_tag(args.train_all_args)
    tag = tag or "asha"
    return tag, f"{tag}_search"


def trial_job(config: search_study.SearchConfig, output_dir, number: int, hparams: dict, tag: str) -> sweep.Job:
    """The train_all.py job of trial `number`: trial seed 0, the seed of the random sweep's hparams
    seed number + 1, single folds only (pair folds serve leave-one-domain-out selection, not the
    search)."""
    arguments = [*_overrides(hparams), *config.train_all_args, "--tag", tag, "--search_storage", config.storage,
                 "--search_study", config.study_name, "--search_trial", str(number)]
    return sweep.Job.create(Path(output_dir) / SEARCH_DIR, dataset=config.dataset, algorithm=config.algorithm,
                            hparams_seed=0, trial_seed=0,
                            seed=misc.seed_hash(config.dataset, config.algorithm, number + 1, 0), steps=config.steps,
                            checkpoint_freq=config.checkpoint_freq, train_all_args=arguments, search_trial=number)


def final_jobs(args, config: search_study.SearchConfig, best) -> list:
    """The best trial's hparams on every trial seed, as the random sweep runs each hparams seed."""
    tag, _ = tags(args)
    pairs = {"pair_folds": True} if args.pair_folds else {}
    arguments = [*_overrides(best.user_attrs[search_study.HPARAMS]), *config.train_all_args, "--tag", tag]
    return [sweep.Job.create(args.output_dir, dataset=config.dataset, algorithm=config.algorithm, hparams_seed=0,
                             trial_seed=trial_seed,
                             seed=misc.seed_hash(config.dataset, config.algorithm, best.number + 1, trial_seed),
                             steps=config.steps, checkpoint_freq=config.checkpoint_freq, train_all_args=arguments,
                             search_best=best.number, **pairs)
            for trial_seed in range(args.n_trials)]


def run_directory(job: sweep.Job) -> Path | None:
    runs = sorted(job.directory.glob(f"*/*/{layout.ARGS}"), key=lambda path: path.parent.name)
    return runs[-1].parent if runs else None


class Worker:
    """Asks for trials and runs them until the study's limits; the submitit callable too."""

    def __init__(self, config: search_study.SearchConfig, output_dir, data_dir: str, tag: str, resume=(),
                 env=None, label: str = ""):
        self.config = config
        self.output_dir = str(output_dir)
        self.data_dir = data_dir
        self.tag = tag
        self.resume = list(resume)
        self.env = env
        self.label = label
        self.current = None

    def __call__(self) -> int:
        study = search_study.load_study(self.config.storage, self.config.study_name)
        ran = 0
        while self.resume:
            self.run_trial(study, self.resume.pop(0))
            ran += 1
        while True:
            # n_hparams and the budget come from this launch, not from the study
            reason = search_study.exhausted(study, self.config)
            if reason is not None:
                return ran
            self.run_trial(study, study.ask().number)
            ran += 1

    def run_trial(self, study, number: int) -> str:
        self.current = number
        trial = search_study.running_trial(study, number)
        hparams = suggest_hparams(trial, self.config.algorithm, self.config.dataset,
                                  fixed_hparams(self.config.train_all_args))
        trial.set_user_attr(search_study.HPARAMS, hparams)
        job = trial_job(self.config, self.output_dir, number, hparams, self.tag)
        print(f"{self.label}[trial {number}] {self.config.dataset} {job.name}: {job.directory}", flush=True)
        returncode = job.run(self.data_dir, self.env)
        state = self.tell(study, number, job, returncode)
        self.current = None
        if returncode == USAGE_ERROR_EXIT_CODE:
            raise UsageError(f"trial {number} stopped on a usage error (see {job.directory / 'out.txt'}), as every "
                             "trial would: fix the arguments and launch again")
        return state

    def tell(self, study, number: int, job: sweep.Job, returncode: int) -> str:
        optuna = search_study.optuna
        frozen = study.get_trials(deepcopy=False)[number]
        spent = search_study.steps_spent(frozen)
        if returncode == 0:
            run_dir = run_directory(job)
            value = search_study.objective(read_records(run_dir))
            study.tell(number, value)
            outcome = f"complete: training-domain validation {100 * value:.2f}%"
        elif returncode == ENDED_EXIT_CODE and search_study.PRUNED_AT in frozen.user_attrs:
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
            outcome = f"pruned at step {frozen.user_attrs[search_study.PRUNED_AT]}"
        else:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            outcome = f"FAILED (exit {returncode}, see {job.directory / 'out.txt'})"
        print(f"{self.label}[trial {number}] {outcome} after {spent} steps; "
              f"{search_study.total_steps(study)} steps in the search", flush=True)
        return outcome

    def checkpoint(self):
        import submitit

        resume = ([self.current] if self.current is not None else []) + self.resume
        return submitit.helpers.DelayedSubmission(Worker(self.config, self.output_dir, self.data_dir, self.tag,
                                                         resume, self.env, self.label))


def _running(study) -> list:
    running = (search_study.optuna.trial.TrialState.RUNNING,)
    return [trial.number for trial in study.get_trials(deepcopy=False, states=running)]


def search(args, config, study) -> bool:
    """Run the search's workers; True once it is over (no trial runs, no more to ask)."""
    _, trial_tag = tags(args)
    orphans = _running(study)
    if orphans:
        print(f"resuming {len(orphans)} trials of a stopped launch: {orphans}", flush=True)
    if args.launcher == "local":
        Worker(config, args.output_dir, args.data_dir, trial_tag, orphans)()
    elif args.launcher == "multi_gpu":
        gpus = sweep.visible_gpus()
        if not gpus:
            raise UsageError("--launcher multi_gpu needs at least one visible GPU (none found); use --launcher local")
        workers = [Worker(config, args.output_dir, args.data_dir, trial_tag, orphans[index::len(gpus)],
                          {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}, f"[GPU {gpu}] ")
                   for index, gpu in enumerate(gpus)]
        threads = [threading.Thread(target=worker) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        import submitit

        n_workers = max(1, min(args.array_parallelism, config.n_hparams))
        executor = submitit.AutoExecutor(folder=Path(args.output_dir) / "submitit" / "%j", cluster=args.cluster)
        executor.update_parameters(
            name="domainbed_search", timeout_min=args.time, gpus_per_node=args.gpus, cpus_per_task=args.cpus,
            mem_gb=args.mem_gb, slurm_partition=args.partition)
        handles = [executor.submit(Worker(config, args.output_dir, args.data_dir, trial_tag,
                                          orphans[index::n_workers], label=f"[worker {index}] "))
                   for index in range(n_workers)]
        print(f"submitted {n_workers} search workers: {', '.join(handle.job_id for handle in handles)}", flush=True)
        if not args.wait:
            print("launch again once they are done to run the final jobs", flush=True)
            return False
        for handle in handles:
            try:
                handle.result()
            except Exception:  # a worker's failure; its trials are told FAIL or resume on relaunch
                print(f"search worker {handle.job_id} failed; see {Path(args.output_dir) / 'submitit'}", flush=True)
    return not _running(study) and search_study.exhausted(study, config) is not None


def best_trial(study):
    complete = study.get_trials(deepcopy=False, states=(search_study.optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda trial: (trial.value, -trial.number)) if complete else None


def summary(study, config) -> str:
    counts = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    states = ", ".join(f"{count} {state}" for state, count in sorted(counts.items())) or "no trials"
    budget = f" of {config.budget_steps}" if config.budget_steps is not None else ""
    best = best_trial(study)
    chosen = f"; best: trial {best.number}, {100 * best.value:.2f}%, {best.user_attrs[search_study.HPARAMS]}" \
        if best is not None else ""
    return f"study {config.study_name}: {states}; {search_study.total_steps(study)}{budget} steps trained{chosen}"


def run(args) -> dict:
    """`sweep.run` with --search: {"jobs" (the final jobs), "counts", "failed", "studies"}."""
    if args.runner != "train_all":
        raise UsageError(f"--search runs its trials with train_all.py, which reports their checkpoints; --runner "
                         f"{args.runner} cannot; valid: --runner train_all")
    if args.n_hparams_from != 0:
        raise UsageError(f"--n_hparams_from {args.n_hparams_from} does not apply to --search; the search asks "
                         "for up to --n_hparams trials")
    if args.command == "delete_incomplete":
        raise UsageError("delete_incomplete does not apply to --search: a relaunch resumes its trials; "
                         "valid: launch, status")
    configs = [make_config(args, dataset, algorithm) for dataset, algorithm in _pairs(args)]
    jobs, failed, studies = [], [], {}
    for config in configs:
        study = _open(args, config)
        if study is None:
            print(f"study {config.study_name}: not launched", flush=True)
            continue
        studies[config.study_name] = study
        over = not _running(study) and search_study.exhausted(study, config) is not None
        if args.command == "launch" and not over:
            print(summary(study, config), flush=True)
            if args.dry_run:
                continue
            over = search(args, config, study)
        print(summary(study, config), flush=True)
        best = best_trial(study)
        if not over or best is None:
            if over:
                print(f"study {config.study_name}: no trial completed; no final jobs", flush=True)
            continue
        final = final_jobs(args, config, best)
        jobs += final
        pending = [job for job in final if job.state != sweep.DONE]
        if args.command == "launch" and pending:
            print(f"final jobs: trial {best.number}'s hparams on {len(final)} trial seeds "
                  f"({len(pending)} to run)", flush=True)
            if args.dry_run:
                for job in pending:
                    print(" ".join(job.command(args.data_dir)))
            else:
                failed += sweep.LAUNCHERS[args.launcher](pending, args)
    counts = sweep.count_states(jobs)
    if args.command == "status":
        print(f"final jobs: {sweep._summary(counts)}")
    return {"jobs": jobs, "counts": counts, "failed": failed, "studies": studies}


def _pairs(args) -> list:
    from domainbed.algorithms import get_algorithm_class
    from domainbed.datasets import get_dataset_class

    for dataset in args.datasets:
        get_dataset_class(dataset)
    for algorithm in args.algorithms:
        get_algorithm_class(algorithm)
    if args.n_hparams < 1 or args.n_trials < 1:
        raise UsageError(f"need --n_hparams ({args.n_hparams}) >= 1 and --n_trials ({args.n_trials}) >= 1")
    if args.budget_steps is not None and args.budget_steps < 1:
        raise UsageError(f"--budget_steps {args.budget_steps} must be positive")
    if args.reduction_factor < 2:
        raise UsageError(f"--reduction_factor {args.reduction_factor} must be at least 2")
    return [(dataset, algorithm) for dataset in args.datasets for algorithm in args.algorithms]


def _open(args, config):
    """The study; `launch` creates it (and the output directory), `status` only reads one."""
    if args.command == "launch" and not args.dry_run:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        return search_study.create_study(config)
    if "://" not in config.storage and not Path(config.storage).exists():
        return None
    if config.storage.startswith("sqlite:///") and not Path(config.storage[len("sqlite:///"):]).exists():
        return None
    try:
        return search_study.load_study(config.storage, config.study_name)
    except UsageError:
        return None
