"""DiWA: shared initialisation (--init_path, --linear_probe), weight averages of runs and the tool.

Four tiny Synthetic runs (ERM, three steps, fold TE0) are trained once for the module: a linear
probe LP, and three runs started from it with --keep_best (trial seeds 0, 0 and 1, other seeds
and learning rates), as a DiWA sweep after LP-FT.
"""

import contextlib
import json
import shutil

import pytest
import torch
import torch.nn as nn

from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class
from domainbed.averaging.diwa import ParameterMean, greedy_average, uniform_average
from domainbed.datasets import get_dataset_class
from domainbed.errors import UsageError
from domainbed.runs import checkpoint, layout, model_io, persistence
from domainbed.runs.reader import read_trained_run
from domainbed.runs.run_data import build_dataset, eval_splits, train_minibatches, whole_domain_accuracy
from domainbed.scripts import diwa
from domainbed.training.evaluator import Evaluator
from domainbed.training.initialization import fingerprint, initialize

TINY = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "2", "--checkpoint_freq", "2", "--batch_size", "8",
        "--num_workers", "0", "--swad", "False", "--tb_freq", "0"]


def _train(name, out, *extra):
    import train_all

    return train_all.run([name, *TINY, "--output_dir", str(out), *map(str, extra)])["out_dir"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    base = tmp_path_factory.mktemp("diwa")
    lp = _train("lp", base / "lp", "--test_envs", "0", "--linear_probe", "True", "--keep_best")
    runs = [_train(f"r{seed}", base / "sweep", "--test_envs", "0", "--seed", seed, "--lr", lr, "--trial_seed", trial,
                   "--init_path", lp, "--keep_best")
            for seed, lr, trial in ((1, 1e-3, 0), (2, 3e-3, 0), (3, 2e-3, 1))]
    return {"lp": lp, "dir": base / "sweep", "runs": runs}


def quiet(*_):
    pass


def _best_model(run_dir, test_env=0):
    run = read_trained_run(run_dir)
    step = checkpoint.best_step(run.records[(test_env,)])
    return model_io.load_model(layout.checkpoint_path(run_dir, [test_env], step))[0]


def test_every_run_starts_from_the_linear_probe(sweep):
    probe, _ = model_io.load_model(layout.final_model_path(sweep["lp"], [0]))
    probe_start = model_io.read_meta(layout.final_model_path(sweep["lp"], [0]))["initial_weights"]
    for run_dir in sweep["runs"]:
        started = model_io.read_meta(layout.final_model_path(run_dir, [0]))["initial_weights"]
        assert started == fingerprint(probe) != probe_start


def test_linear_probing_trains_the_classifier_only():
    hparams = {**hparams_registry.default_hparams("ERM", "Synthetic"),
               **hparams_registry.run_setting_defaults("ERM", "Synthetic"), "linear_probe": True}
    dataset = get_dataset_class("Synthetic")("", [], hparams)
    algorithm = get_algorithm_class("ERM")(dataset.input_shape, dataset.num_classes, 3, hparams)
    initialize(algorithm, hparams, dataset, [0])
    featurizer = [p.clone() for p in algorithm.featurizer.parameters()]
    classifier = [p.clone() for p in algorithm.classifier.parameters()]
    x, y = dataset[1].tensors
    for _ in range(2):
        algorithm.update([(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:24], y[16:24])])
    assert all(torch.equal(a, b) for a, b in zip(featurizer, algorithm.featurizer.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(classifier, algorithm.classifier.parameters()))


def test_uniform_averaging_is_the_mean_of_the_state_dicts(sweep):
    models = [_best_model(run_dir) for run_dir in sweep["runs"]]
    states = [model.state_dict() for model in models]
    mean = {key: sum(state[key].double() for state in states) / len(states) for key in states[0]}
    averaged = uniform_average(models).state_dict()
    assert set(averaged) == set(mean)
    for key, value in averaged.items():
        torch.testing.assert_close(value, mean[key].to(value.dtype))
    assert not torch.equal(averaged["classifier.weight"], states[0]["classifier.weight"])


def test_the_tool_averages_three_finished_runs_and_reports(sweep):
    said = []
    result = diwa.diwa([sweep["dir"]], device="cpu", num_workers=0, log=said.append)
    (report,) = result["datasets"]
    names = [run_dir.name for run_dir in sweep["runs"]]
    assert report["folds"]["TE0"]["averaged"] == names and report["test_envs"] == [0]
    assert any("note: trial seeds differ (0, 1)" in line for line in said)
    env = report["environments"][0]
    assert set(report["test"]) == {"DiWA (uniform)", "Best run", "Mean of runs"}
    # the uniform average, rebuilt by hand and scored on the first run's splits, over the whole held-out domain
    models = [_best_model(run_dir) for run_dir in sweep["runs"]]
    average = models[0]
    with torch.no_grad():
        for name, parameter in average.named_parameters():
            parameter.copy_(sum(dict(m.named_parameters())[name].double() for m in models) / 3)
    run = read_trained_run(sweep["runs"][0])
    evaluator = Evaluator(eval_splits(run, build_dataset(run), 0), [0], 64, 0, "cpu")
    accuracies, _, summaries = evaluator.evaluate(average)
    assert report["test"]["DiWA (uniform)"][env] == pytest.approx(whole_domain_accuracy(evaluator, accuracies, 0))
    assert report["inD"]["DiWA (uniform)"][env] == pytest.approx(summaries["train_out"])
    runs = report["folds"]["TE0"]["runs"]
    assert report["test"]["Mean of runs"][env] == pytest.approx(sum(r["test"] for r in runs.values()) / 3)
    best = max(runs, key=lambda name: runs[name]["inD"])
    assert report["test"]["Best run"][env] == runs[best]["test"]
    assert any(line.startswith("| DiWA (uniform) |") for text in said for line in text.splitlines())


def _linear(weight):
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(weight)
    return model


def test_greedy_keeps_a_run_only_when_the_average_does_not_drop():
    # validation accuracy peaks where the averaged weight is 1
    weights = {"a": 1.0, "b": 3.0, "c": 0.0, "d": 1.0, "e": 0.5}
    tried = []

    def accuracy(model):
        tried.append(model.weight.item())
        return -(model.weight.item() - 1.0) ** 2

    average, kept, trials = greedy_average(list(weights), lambda name: _linear(weights[name]), accuracy, log=quiet)
    # a alone (1); +b (2) drops; +c (0.5) drops; +d (1) ties and is kept; +e (5/6) drops
    assert tried == pytest.approx([1.0, 2.0, 0.5, 1.0, 2.5 / 3])
    assert kept == ["a", "d"] and [keep for _, _, keep in trials] == [True, False, False, True, False]
    assert average.weight.item() == 1.0


def test_greedy_keeps_a_run_that_improves_the_average():
    weights = {"a": 2.0, "b": 0.0}
    average, kept, _ = greedy_average(["a", "b"], lambda name: _linear(weights[name]),
                                      lambda model: -abs(model.weight.item() - 1.0), log=quiet)
    assert kept == ["a", "b"] and average.weight.item() == 1.0


def test_models_of_other_architectures_are_not_averaged():
    mean = ParameterMean()
    mean.add(nn.Linear(2, 1), "first")
    with pytest.raises(UsageError, match="^wide has other parameters"):
        mean.add(nn.Linear(3, 1), "wide")


class FrozenBatchNorm(nn.Sequential):
    """Keeps its BatchNorm in eval mode while training, as a pretrained ResNet with freeze_bn."""

    def train(self, mode=True):
        super().train(mode)
        self[1].eval()
        return self


def test_batchnorm_statistics_are_re_estimated_only_where_training_updates_them():
    opened = []

    def minibatches():
        opened.append(True)
        return ([(torch.full((4, 2), 3.0), torch.zeros(4))] for _ in range(10))

    updating = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert diwa.refresh_batchnorm(updating, minibatches, 5) and opened
    assert not torch.equal(updating[1].running_mean, torch.zeros(2))
    frozen = FrozenBatchNorm(nn.Linear(2, 2), nn.BatchNorm1d(2))
    opened.clear()
    assert not diwa.refresh_batchnorm(frozen, minibatches, 5) and not opened
    assert not diwa.refresh_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), minibatches, 0)
    assert not opened


def test_the_fold_training_minibatches_of_a_run(sweep):
    run = read_trained_run(sweep["runs"][0])
    with contextlib.closing(train_minibatches(run, build_dataset(run), 0, torch.device("cpu"))) as stream:
        batches = next(stream)
    assert len(batches) == 3 and all(x.shape == (8, 3, 28, 28) and len(y) == 8 for x, y in batches)


def test_greedy_on_the_runs_of_one_trial_seed(sweep):
    said = []
    result = diwa.diwa([sweep["dir"]], "greedy", trial_seed=0, device="cpu", num_workers=0, log=said.append)
    fold = result["datasets"][0]["folds"]["TE0"]
    first = [run_dir.name for run_dir in sweep["runs"][:2]]
    assert set(fold["runs"]) == set(first) and fold["averaged"][0] == fold["best_run"]
    assert set(fold["averaged"]) <= set(first)
    assert sum(line.startswith("TE0 keeping") or line.startswith("TE0 skipping") for line in said) == 2
    with pytest.raises(UsageError, match=r"differs between trial seeds \(found 0, 1\): pass --trial_seed N$"):
        diwa.diwa([sweep["dir"]], "greedy", device="cpu", num_workers=0, log=quiet)


def test_runs_that_did_not_share_an_initialisation_are_refused_by_name(sweep):
    # the linear probe itself started from the algorithm's random init
    with pytest.raises(UsageError) as error:
        diwa.diwa([sweep["dir"], sweep["lp"]], device="cpu", log=quiet)
    message = str(error.value)
    assert message.startswith("TE0: the runs did not start from the same weights") and "\n" not in message
    assert sweep["lp"].name in message and all(run_dir.name in message for run_dir in sweep["runs"])


def test_runs_without_a_fingerprint_are_refused(sweep, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(sweep["runs"][0], old)
    for path in (old / "resume").glob("TE0_step*.pth"):
        saved = persistence.load(path)
        del saved["meta"]["initial_weights"]
        persistence.save(saved, path)
    with pytest.raises(UsageError, match="^TE0: old recorded no fingerprint of its initial weights"):
        diwa.diwa([sweep["runs"][1], old], device="cpu", log=quiet)


def test_failures_are_one_line(sweep, tmp_path, capsys):
    with pytest.raises(UsageError, match="does not exist"):
        diwa.diwa([tmp_path / "missing"], log=quiet)
    with pytest.raises(UsageError, match="^no finished run of dataset PACS, algorithm any, trial seed any; finished runs: "
                                         "Synthetic ERM trial 0; Synthetic ERM trial 1$"):
        diwa.diwa([sweep["dir"]], dataset="PACS", log=quiet)
    with pytest.raises(UsageError, match=r"--test_envs \[2\]: no run has a finished fold for them; finished: \[0\]"):
        diwa.diwa([sweep["dir"]], test_envs=[2], log=quiet)
    without_best = tmp_path / "without_best"
    shutil.copytree(sweep["runs"][0], without_best)
    shutil.rmtree(without_best / "resume")
    with pytest.raises(UsageError, match="^without_best kept no checkpoint of best validation accuracy for TE0 "
                                         r"\(TE0_step\d\.pth\): train with --keep_best, or pass --checkpoint final$"):
        diwa.diwa([without_best], log=quiet)
    assert diwa.main([str(sweep["dir"]), "--selection", "soup"]) == 2
    assert capsys.readouterr().err == "error: unknown --selection 'soup'; valid: uniform, greedy\n"
    assert diwa.main([]) == 2
    assert "give a sweep or run directory" in capsys.readouterr().err


def test_main_writes_the_results_next_to_the_sweep(sweep, capsys):
    output = sweep["dir"] / "diwa_uniform_final_trial0.json"
    assert diwa.main(["--input_dir", str(sweep["dir"]), "--checkpoint", "final", "--trial_seed", "0",
                      "--device", "cpu", "--num_workers", "0"]) == 0
    assert capsys.readouterr().out.endswith(f"results: {output}\n")
    saved = json.loads(output.read_text())
    assert saved["checkpoint"] == "final" and saved["trial_seed"] == 0
    assert saved["datasets"][0]["folds"]["TE0"]["runs"][sweep["runs"][0].name]["file"].endswith("TE0_final.pth")


@pytest.mark.parametrize("init, extra, fragment", [
    ("missing", [], "does not exist; give a run directory or a model file"),
    ("not_a_run", [], "is a directory but no run directory"),
    ("lp", ["--test_envs", "1"], "has no final model for fold TE1 (TE1_final.pth); its folds: TE0"),
    ("lp_model", ["--test_envs", "1"], "was trained holding out TE0, so it has seen the test domain of fold TE1"),
    ("lp", ["--test_envs", "0", "--nonlinear_classifier", "True"], "(ERM) does not fit this ERM: "),
])
def test_a_bad_init_path_is_refused_before_the_run_directory_exists(sweep, tmp_path, init, extra, fragment):
    paths = {"missing": tmp_path / "missing", "not_a_run": tmp_path, "lp": sweep["lp"],
             "lp_model": layout.final_model_path(sweep["lp"], [0])}
    out = tmp_path / "out"
    with pytest.raises(UsageError) as error:
        _train("bad", out, "--init_path", paths[init], *extra)
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()


def test_a_saved_miro_model_initialises_a_miro_fold_whose_training_only_parts_stay_fresh(tmp_path):
    """A final model holds no training-only parts (MIRO's frozen pretrained featurizer and mean /
    variance encoders): --init_path loads the rest and leaves those as the fresh algorithm built them."""
    from domainbed.algorithms import contract
    from domainbed.training_only import prediction_state_dict, training_only_parts

    subject = contract.subject("MIRO", backbone="timm:test_resnet")
    trained, fresh = subject.build(seed=1), subject.build(seed=2)
    dataset = get_dataset_class("Synthetic")("", [0], hparams_registry.default_hparams("ERM", "Synthetic"))
    path = tmp_path / "miro.pth"
    model_io.save_model(path, trained, model_io.model_meta("MIRO", dataset, 3, subject.hparams, [0]))
    fresh_parts = {key: value.clone() for key, value in fresh.state_dict().items()
                   if key.split(".")[0] in training_only_parts(fresh)}
    assert fresh_parts, "MIRO declares training-only parts"

    initialize(fresh, {"init_path": str(path), "linear_probe": False}, dataset, [0])

    for key, value in prediction_state_dict(trained).items():
        assert torch.equal(fresh.state_dict()[key], value), key
    for key, value in fresh_parts.items():
        assert torch.equal(fresh.state_dict()[key], value), key
