"""`sweep launch --search asha`: DomainBed's declared draws as Optuna suggestions, the study in
SQLite, pruning at checkpoints, a relaunch that continues the study, and the final jobs with the
chosen hparams, which collect_results reads beside the search's trials. The sweeps here run
train_all.py in this process (`in_process`), as a sweep job's subprocess would run it."""

import json

import numpy as np
import optuna
import pytest

import train_all
from domainbed import misc
from domainbed.errors import UsageError
from domainbed.hparams.declare import DeclarationError, HParam
from domainbed.scripts import collect_results, sweep, sweep_search
from domainbed.search import space
from domainbed.search import study as search_study
from domainbed.training.extensions import ENDED_EXIT_CODE

TRAIN = ["--", "--test_envs", "0", "--deterministic", "--swad", "False", "--batch_size", "8"]


def _argv(command, output_dir, *extra, n_hparams=4, n_trials=2):
    return [command, "--search", "asha", "--datasets", "Synthetic", "--algorithms", "ERM", "--n_hparams",
            str(n_hparams), "--n_trials", str(n_trials), "--output_dir", str(output_dir), "--steps", "3",
            "--checkpoint_freq", "1", "--reduction_factor", "2", *extra, *TRAIN]


@pytest.fixture
def in_process(monkeypatch):
    """Sweep jobs run train_all.py's main here instead of in a subprocess; returns their exit codes."""
    codes = []

    def run(job, data_dir, env=None):
        job.directory.mkdir(parents=True, exist_ok=True)
        codes.append(train_all.main(job.command(data_dir)[2:]))
        return job.finish(codes[-1])

    monkeypatch.setattr(sweep.Job, "run", run)
    return codes


def _trial_run(output_dir, number):
    """The run directory of the search's trial `number`."""
    (run_dir,) = [path.parent for path in (output_dir / "search").glob("*/Synthetic/*/hparams.json")
                  if json.loads(path.read_text())["search_trial"] == number]
    return run_dir


def _study(output_dir):
    return optuna.load_study(study_name="Synthetic-ERM", storage=f"sqlite:///{output_dir / 'search.db'}")


def test_declared_draws_become_suggestions_of_the_same_distributions():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    hparams = space.suggest_hparams(trial, "ERM", "RotatedMNIST")
    # the sampler sees the distribution's own parameter: the exponent of the log-uniform lr
    assert trial.distributions["lr"] == optuna.distributions.FloatDistribution(-4.5, -2.5)
    assert hparams["lr"] == pytest.approx(10 ** trial.params["lr"]) and 10 ** -4.5 <= hparams["lr"] <= 10 ** -2.5
    assert trial.distributions["batch_size"] == optuna.distributions.FloatDistribution(3, 9)
    assert hparams["batch_size"] == int(2 ** trial.params["batch_size"])
    assert trial.distributions["resnet_dropout"].choices == (0.0, 0.1, 0.5)
    assert hparams["weight_decay"] == 0.0 and "weight_decay" not in trial.params  # a constant draw: no parameter
    assert set(hparams) == {name for name, hp in space.searched("ERM", "RotatedMNIST").items()}
    # the same parameters give the same hparams (a resumed trial re-suggests its stored ones)
    assert space.suggest_hparams(optuna.trial.FixedTrial(trial.params), "ERM", "RotatedMNIST") == hparams
    assert "lr" not in space.suggest_hparams(trial, "ERM", "RotatedMNIST", fixed={"lr"})


def test_a_draw_the_search_cannot_suggest_is_a_one_line_error():
    trial = optuna.create_study().ask()
    normal = HParam("k", 1.0, 1.0, None, "k", True, "Mine", lambda r: r.normal(0, 1))
    with pytest.raises(DeclarationError, match="hparam 'k' draws with RandomState.normal.*valid: uniform, choice"):
        normal.draw(space.SuggestingRandomState(trial, "k"))
    twice = space.SuggestingRandomState(trial, "pair")
    assert 0 <= twice.uniform(0, 1) <= 1 and twice.choice(np.array([2, 3])) in (2, 3)
    assert set(trial.params) == {"pair", "pair#1"}


def test_the_random_sampler_draws_each_trials_candidate_from_its_own_seed():
    def candidates(order):
        study = optuna.create_study(sampler=search_study.TrialSeededRandomSampler(7))
        trials = [study.ask() for _ in range(3)]
        return {trial.number: space.suggest_hparams(trial, "ERM", "PACS")
                for trial in (trials[index] for index in order)}

    assert candidates([0, 1, 2]) == candidates([2, 0, 1])  # parallel or resumed: the same candidates
    first = candidates([0, 1, 2])
    assert first[0] != first[1]


# slow: each train_all.py run takes seconds (twenty on a loaded 2-core machine); the search's parts
# run fast in the tests above and in test_a_pruned_run_ends_at_its_checkpoint
@pytest.mark.slow
def test_search_prunes_persists_resumes_and_runs_the_chosen_hparams(tmp_path, in_process, capsys):
    result = sweep.run(_argv("launch", tmp_path, n_hparams=3))
    study = _study(tmp_path)  # the study lives in OUTPUT_DIR/search.db
    states = [trial.state for trial in study.trials]
    assert len(states) == 3 and optuna.trial.TrialState.PRUNED in states
    assert ENDED_EXIT_CODE in in_process
    pruned = next(trial for trial in study.trials if trial.state == optuna.trial.TrialState.PRUNED)
    assert pruned.user_attrs[search_study.PRUNED_AT] == pruned.last_step
    pruned_run = _trial_run(tmp_path, pruned.number)
    assert not (pruned_run / "table.json").exists() and "ended: the search pruned trial" in \
        (pruned_run / "log.txt").read_text()
    records = [json.loads(line) for line in (pruned_run / "results.jsonl").read_text().splitlines()]
    assert records[-1]["step"] + 1 == pruned.last_step  # it stopped at the checkpoint it reported last

    # the final jobs: the best complete trial's hparams on trial seeds 0 and 1
    best = max((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    assert result["counts"] == {"done": 2, "failed": 0, "incomplete": 0, "not launched": 0}
    for job in result["jobs"]:
        (run_dir,) = job.directory.glob("Synthetic/*")
        hparams = json.loads((run_dir / "hparams.json").read_text())
        assert {key: hparams[key] for key in best.user_attrs["hparams"]} == best.user_attrs["hparams"]
        assert hparams["search_storage"] == ""  # the final runs are no trials
        assert job.train_args["seed"] == misc.seed_hash("Synthetic", "ERM", best.number + 1,
                                                        job.train_args["trial_seed"])
    # trial seed 0 of the final jobs repeats the best trial's run
    best_run = _trial_run(tmp_path, best.number)
    (final_run,) = result["jobs"][0].directory.glob("Synthetic/*")
    assert json.loads((best_run / "table.json").read_text())["rows"] == \
        json.loads((final_run / "table.json").read_text())["rows"]

    groups = {}
    for run in collect_results.load_runs(tmp_path):
        groups.setdefault(run.group, []).append(run)
    assert sorted((run.trial_seed for run in groups["ERM [asha]"])) == [0, 1]
    assert len(groups["ERM [asha_search]"]) == 3

    # A killed launcher leaves a RUNNING trial; the relaunch with a larger limit resumes it, keeps the
    # finished trials and asks for new ones until the limit, in the same study.
    orphan = search_study.load_study(f"sqlite:///{tmp_path / 'search.db'}", "Synthetic-ERM").ask()
    runs_before = len(in_process)
    capsys.readouterr()
    again = sweep.run(_argv("launch", tmp_path, n_hparams=5))
    assert f"resuming 1 trials of a stopped launch: [{orphan.number}]" in capsys.readouterr().out
    study = _study(tmp_path)
    assert len(study.trials) == 5 and all(trial.state != optuna.trial.TrialState.RUNNING for trial in study.trials)
    assert study.trials[orphan.number].state != optuna.trial.TrialState.FAIL
    assert len(in_process) - runs_before >= 2  # the orphan and trial 4, not the finished trials
    assert again["counts"]["done"] == 2
    status = sweep.run(_argv("status", tmp_path, n_hparams=5))
    assert status["counts"]["done"] == 2


def test_a_relaunch_with_other_settings_and_bad_arguments_are_one_line_errors(tmp_path, in_process):
    launched = sweep.parse_args(_argv("launch", tmp_path, n_hparams=1, n_trials=1))
    search_study.create_study(sweep_search.make_config(launched, "Synthetic", "ERM"))
    with pytest.raises(UsageError, match="launched with other settings: reduction_factor 2 \\(now 3\\)"):
        sweep.run(_argv("launch", tmp_path, "--reduction_factor", "3", n_hparams=1, n_trials=1))
    with pytest.raises(UsageError, match="--n_hparams_from 1 does not apply to --search"):
        sweep.run(_argv("launch", tmp_path, "--n_hparams_from", "1"))
    with pytest.raises(UsageError, match="delete_incomplete does not apply to --search"):
        sweep.run(_argv("delete_incomplete", tmp_path))
    with pytest.raises(UsageError, match="--budget_steps 0 must be positive"):
        sweep.run(_argv("launch", tmp_path, "--budget_steps", "0"))
    with pytest.raises(UsageError, match="--runner domainbed cannot; valid: --runner train_all"):
        sweep.run(_argv("launch", tmp_path, "--runner", "domainbed"))
    with pytest.raises(SystemExit):
        sweep.parse_args(_argv("launch", tmp_path, "--search", "hyperband"))
    # a usage error fails every trial alike: the search stops at the first instead of asking for more
    with pytest.raises(UsageError, match="trial 0 stopped on a usage error"):
        sweep.run(_argv("launch", tmp_path / "bad", n_hparams=5) + ["--lr_typo", "1"])
    assert [trial.state for trial in _study(tmp_path / "bad").trials] == [optuna.trial.TrialState.FAIL]


@pytest.mark.slow
def test_the_budget_caps_the_steps_the_trials_may_train(tmp_path, in_process):
    sweep.run(_argv("launch", tmp_path, "--budget_steps", "10", n_hparams=50, n_trials=1))
    spent = [trial.last_step for trial in _study(tmp_path).trials]
    whole = 4  # 1 fold of steps 0 .. 3
    assert spent[0] == whole and len(spent) >= 2
    # no trial was asked that could, unpruned, have taken the total past the budget
    assert sum(spent) <= 10 < sum(spent) + whole


def test_a_pruned_run_ends_at_its_checkpoint_with_its_records_and_no_table(tmp_path):
    config = search_study.SearchConfig(storage=f"sqlite:///{tmp_path / 'search.db'}", study_name="s",
                                       dataset="Synthetic", algorithm="ERM", steps=3, checkpoint_freq=1,
                                       min_resource=1, reduction_factor=2)
    study = search_study.create_study(config)
    # a finished trial that passed the first rung (1 step) with a perfect score: the next one is pruned there
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0},
                                              system_attrs={"completed_rung_0": 1.0}))
    number = study.ask().number
    code = train_all.main(["t", "--dataset", "Synthetic", "--steps", "3", "--checkpoint_freq", "1", "--test_envs",
                           "0", "--swad", "False", "--batch_size", "8", "--output_dir", str(tmp_path),
                           "--search_storage", config.storage, "--search_study", "s", "--search_trial", str(number)])
    assert code == ENDED_EXIT_CODE
    (run_dir,) = (tmp_path / "Synthetic").iterdir()
    assert [json.loads(line)["step"] for line in (run_dir / "results.jsonl").read_text().splitlines()] == [0]
    assert not (run_dir / "table.json").exists()
    accuracy = json.loads((run_dir / "results.jsonl").read_text())["train_out"]
    assert (run_dir / "log.txt").read_text().strip().endswith(
        f"ended: the search pruned trial 1 of study s after 1 steps (training-domain validation accuracy "
        f"{accuracy:.4f})")
    trial = search_study.load_study(config.storage, "s").trials[number]
    assert trial.intermediate_values.keys() == {1} and trial.user_attrs[search_study.PRUNED_AT] == 1
    assert trial.state == optuna.trial.TrialState.RUNNING  # the sweep's worker tells the study, not the run
    with pytest.raises(UsageError, match="no study 'nope'"):
        search_study.load_study(config.storage, "nope")


@pytest.mark.slow
def test_the_search_benchmark_compares_both_searches_at_equal_steps(tmp_path, in_process, capsys):
    from domainbed.scripts import benchmark

    assert benchmark.main(["search", "--data_dir", str(tmp_path), "--dataset", "Synthetic", "--n_random", "2",
                           "--steps", "3", "--checkpoint_freq", "1", "--batch_size", "8", "--examples_per_domain",
                           "0", "--output_dir", str(tmp_path / "bench"), "--", "--deterministic"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("|")}
    random_steps, asha_steps = int(rows["random (DomainBed)"][3]), int(rows["ASHA (eta 3)"][3])
    assert random_steps == 2 * 4 and asha_steps <= random_steps  # the random search's steps are ASHA's budget
    assert int(rows["ASHA (eta 3)"][0]) >= 2 and "ASHA's trials" in out


@pytest.mark.slow
def test_submitit_workers_run_the_search_and_the_final_jobs(tmp_path, in_process):
    argv = _argv("launch", tmp_path, "--launcher", "slurm", "--cluster", "debug", "--gpus", "0", "--wait",
                 "--array_parallelism", "2", n_hparams=3, n_trials=1)
    result = sweep.run(argv)
    assert len(_study(tmp_path).trials) == 3 and result["counts"]["done"] == 1
    assert len([path for path in (tmp_path / "submitit").iterdir()]) >= 2  # the two workers' folders


def test_a_trial_refuses_data_parallel_processes(monkeypatch):
    from domainbed.search.extension import SearchReport

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="a search trial trains in one process, not 2"):
        SearchReport("sqlite://", "s", 0).check_model(None, "ERM")
