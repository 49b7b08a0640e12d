"""sweep --runner domainbed: DomainBed's own sweep (a job per test environment and pair, each
running DomainBed's train.py), read back by collect_results in DomainBed's layout."""

import json

import pytest

from domainbed import misc
from domainbed.errors import UsageError
from domainbed.results import domainbed_runs
from domainbed.scripts import collect_results, sweep


def _argv(command, output_dir, *extra, algorithms=("ERM",), n_hparams=1, n_trials=1):
    return [command, "--runner", "domainbed", "--datasets", "Debug28", "--algorithms", *algorithms,
            "--n_hparams", str(n_hparams), "--n_trials", str(n_trials), "--output_dir", str(output_dir),
            "--steps", "3", "--checkpoint_freq", "2", "--skip_confirmation", *extra]


def test_a_job_per_test_environment_and_pair_with_domainbeds_seeds(tmp_path, capsys):
    jobs = sweep.run(_argv("launch", tmp_path, "--dry_run", n_hparams=2))["jobs"]
    commands = capsys.readouterr().out
    sets = [job.train_args["test_envs"] for job in jobs]
    assert sorted(map(tuple, sets)) == sorted([(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)] * 2)
    for job in jobs:
        a = job.train_args
        assert a["seed"] == misc.seed_hash("Debug28", "ERM", a["test_envs"], a["hparams_seed"], a["trial_seed"])
    assert commands.count("-m domainbed.scripts.train --dataset Debug28") == 12
    assert "--test_envs 0 2 --hparams_seed 1" in commands and "--resume" not in commands
    single = sweep.run(_argv("launch", tmp_path, "--dry_run", "--single_test_envs"))["jobs"]
    assert [job.train_args["test_envs"] for job in single] == [[0], [1], [2]]
    assert not set(job.directory for job in single) & set(job.directory for job in
                                                          sweep.run(_argv("launch", tmp_path, "--dry_run",
                                                                          "--runner", "train_all"))["jobs"])


@pytest.mark.parametrize("extra, message", [
    (["--pair_folds"], "--pair_folds is train_all.py's; --runner domainbed launches the pair jobs itself"),
    (["--runner", "domainbd"], "unknown runner 'domainbd'; valid: train_all, domainbed"),
])
def test_bad_runner_arguments_are_one_line(tmp_path, extra, message):
    with pytest.raises(UsageError) as error:
        sweep.run(_argv("launch", tmp_path, "--dry_run", *extra))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_user_folder_dataset_has_no_environments_to_enumerate(tmp_path):
    argv = _argv("launch", tmp_path, "--dry_run")
    argv[argv.index("Debug28")] = "ImageFolder"
    with pytest.raises(UsageError, match="needs the environments of ImageFolder"):
        sweep.run(argv)


def _steps(job) -> list:
    return [json.loads(line)["step"] for line in (job.directory / "results.jsonl").read_text().splitlines()]


def test_jobs_write_domainbeds_records_read_by_collect_results(tmp_path, capsys):
    result = sweep.run(_argv("launch", tmp_path, "--single_test_envs", "--", "--hparams", '{"lr": 0.002}'))
    assert result["counts"][sweep.DONE] == 3 and not result["failed"]
    assert "ERM_hp0_trial0_te1 done: step 2: env1_in_acc" in capsys.readouterr().out
    for job in result["jobs"]:
        assert _steps(job) == [0, 2]  # DomainBed's: step 0, each checkpoint_freq-th, the last (steps - 1)
        first = json.loads((job.directory / "results.jsonl").read_text().splitlines()[0])
        assert first["args"]["test_envs"] == job.train_args["test_envs"]
        assert first["args"]["seed"] == job.train_args["seed"] and first["hparams"]["lr"] == 0.002
        assert (job.directory / "out.txt").is_file() and (job.directory / "done").is_file()

    # what DomainBed's collect_results prints: its three selection methods over these records
    (run,) = domainbed_runs.read_sweep(tmp_path).runs  # one (algorithm, hparams, trial): its three jobs are its folds
    assert sorted(run.records) == [(0,), (1,), (2,)]
    assert collect_results.main(["--input_dir", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    assert report.startswith("Total records: 6")
    for method in ("training-domain validation set", "leave-one-domain-out cross-validation",
                   "test-domain validation set (oracle)"):
        assert f"-------- Dataset: Debug28, model selection method: {method}" in report


@pytest.mark.slow
def test_a_domainbed_sweep_of_debug28_is_reported_by_domainbeds_rules(tmp_path, capsys):
    """The issue's sweep: 2 algorithms, 2 hparams, 2 trials, every single and pair test environment
    (48 jobs of DomainBed's train.py); collect_results' tables equal DomainBed's rules recomputed
    from the records in tests/test_collect_results_domainbed.py."""
    from test_collect_results_domainbed import METHODS, expected_tables, load_records

    argv = _argv("launch", tmp_path, algorithms=("ERM", "IRM"), n_hparams=2, n_trials=2)
    result = sweep.run(argv)
    assert result["counts"][sweep.DONE] == 48 and not result["failed"]

    # a job cut short holds records but no `done`; DomainBed's train.py cannot resume, so the relaunch starts it over
    cut = result["jobs"][0]
    (cut.directory / "done").unlink()
    (cut.directory / "results.jsonl").write_text((cut.directory / "results.jsonl").read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    assert sweep.run(argv)["counts"][sweep.DONE] == 48
    assert "launching 1 jobs (1 start over)" in capsys.readouterr().out and _steps(cut) == [0, 2]
    assert collect_results.main(["--input_dir", str(tmp_path)]) == 0
    report = capsys.readouterr().out
    records = load_records(tmp_path)
    for name, method in METHODS.items():
        for line in expected_tables(records, method, name):
            assert line in report, line
