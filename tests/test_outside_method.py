"""Methods, datasets, backbones and extensions from outside the repository, without a fork: the
example package (examples/domainbed-example-method) named `package.module:Class` or by its entry
point, trained, swept, collected and checked; broken outside methods reported in one line.

Everything outside the repository is imported in a subprocess only, so nothing it registers
leaks into the registries of this process's other tests.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "domainbed-example-method"
METHOD = "domainbed_example.confidence_penalty:ConfidencePenalty"
FAST = ["--dataset", "Synthetic", "--steps", "2", "--checkpoint_freq", "1", "--test_envs", "0", "--batch_size", "8",
        "--swad", "False", "--num_workers", "0"]


def _run(*argv, path=(EXAMPLE,), module=None, timeout=180):
    """python train_all.py ARGV (or python -m MODULE ARGV) with `path` on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, path)))
    command = [sys.executable, *(["-m", module] if module else [str(REPO / "train_all.py")]), *map(str, argv)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _one_error_line(result, *named):
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "valid" in line and all(word in line for word in named), line
    return line


def _write_dist_info(folder, name, entry_points: dict):
    """What an installed distribution leaves for importlib.metadata: METADATA and entry points."""
    dist_info = folder / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n{key} = {value}\n\n" for group, (key, value) in entry_points.items()))


def test_trains_by_module_path_with_drawn_hparams(tmp_path):
    result = _run("outside", *FAST, "--algorithm", METHOD, "--hparams_seed", "1", "--output_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| Selection " in result.stdout and "| iid " in result.stdout
    (run_dir,) = (tmp_path / "Synthetic").iterdir()
    hparams = json.loads((run_dir / "hparams.json").read_text())
    # drawn from the declared distributions, not the defaults 0.1 and 1.0
    assert 0.01 <= hparams["cp_weight"] <= 1 and hparams["cp_weight"] != 0.1
    assert 10 ** -0.5 <= hparams["cp_temperature"] <= 10 ** 0.5 and hparams["cp_temperature"] != 1.0
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert "penalty" in records[-1]  # the method's own statistic reaches the records


def test_collect_results_groups_it_by_its_own_hparams(tmp_path):
    for weight in ("0.1", "0.3"):  # the declared default, then a chosen value
        trained = _run("outside", *FAST, "--algorithm", METHOD, "--cp_weight", weight, "--output_dir", tmp_path)
        assert trained.returncode == 0, trained.stderr
    collected = _run(tmp_path, module="domainbed.scripts.collect_results")
    assert collected.returncode == 0, collected.stderr
    rows = [line for line in collected.stdout.splitlines() if line.startswith(f"| {METHOD} ")]
    assert len(rows) >= 2 and any("cp_weight=0.3 " in row for row in rows)
    assert any("cp_weight" not in row for row in rows)  # the default is no part of the group's name


def test_help_lists_its_hparams_and_a_bad_value_is_one_line_before_any_run(tmp_path):
    result = _run("--algorithm", METHOD, "--dataset", "Synthetic", "--help")
    assert result.returncode == 0, result.stderr
    own = result.stdout.split(f"hparams of {METHOD}:")[1].split("hparams of every algorithm:")[0]
    assert "--cp_weight 0.1 " in own and "weight beta of the confidence penalty" in own
    assert "--cp_temperature 1.0 " in own and "temperature T of the softmax" in own

    bad = _run("bad", *FAST, "--algorithm", METHOD, "--cp_temperature", "0", "--output_dir", tmp_path / "out")
    _one_error_line(bad, "cp_temperature", "> 0")
    assert not (tmp_path / "out").exists()


def test_a_sweep_launches_it(tmp_path):
    result = _run("launch", "--datasets", "Synthetic", "--algorithms", METHOD, "--n_hparams", "1", "--n_trials", "1",
                  "--output_dir", tmp_path, "--steps", "1", "--checkpoint_freq", "1", "--", "--test_envs", "0",
                  "--batch_size", "8", "--swad", "False", "--num_workers", "0", module="domainbed.scripts.sweep")
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    assert (job / "done").exists()
    (run_dir,) = (job / "Synthetic").iterdir()
    assert json.loads((run_dir / "args.json").read_text())["algorithm"] == METHOD


def test_pip_install_of_the_example_registers_it_by_name(tmp_path):
    """A real `pip install` of the example (into a folder, not the environment: some 4 s, no network),
    found through the entry point of its pyproject.toml."""
    source = shutil.copytree(EXAMPLE, tmp_path / "source")  # the build writes beside the sources
    installed = tmp_path / "installed"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(installed), str(source)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    result = _run("installed", *FAST, "--algorithm", "ConfidencePenalty", "--output_dir", tmp_path / "out",
                  path=(installed,))
    assert result.returncode == 0, result.stderr
    assert "| iid " in result.stdout


PLUGIN_MODULE = '''
"""A dataset, a backbone and an extension from outside the repository."""

import torch.nn as nn

from domainbed.datasets import register_dataset
from domainbed.datasets.synthetic import Synthetic
from domainbed.networks import register_backbone
from domainbed.training.extensions import register_extension


@register_dataset("PluginImages")
class PluginImages(Synthetic):
    input_shape = (3, 32, 32)  # not 28x28: the backbone named by hparams["backbone"] is built


@register_backbone("plugin_cnn")
def plugin_cnn(input_shape, hparams):
    featurizer = nn.Sequential(nn.Conv2d(input_shape[0], 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    featurizer.n_outputs = 4
    print("plugin_cnn built")
    return featurizer


@register_extension(100)
def announce(hparams):
    print("plugin extension built")
    return None
'''


def test_datasets_backbones_and_extensions_come_from_entry_points(tmp_path):
    (tmp_path / "domainbed_plugin.py").write_text(PLUGIN_MODULE)
    _write_dist_info(tmp_path, "domainbed-plugin", {group: ("plugin", "domainbed_plugin") for group in
                                                    ("domainbed.datasets", "domainbed.backbones", "domainbed.extensions")})
    fast = [value for value in FAST if value != "Synthetic"]
    fast[fast.index("--dataset") + 1:fast.index("--dataset") + 1] = ["PluginImages"]
    result = _run("plugins", *fast, "--algorithm", "ERM", "--backbone", "plugin_cnn", "--output_dir",
                  tmp_path / "out", path=(tmp_path,))
    assert result.returncode == 0, result.stderr
    assert "plugin_cnn built" in result.stdout and "plugin extension built" in result.stdout
    assert "| iid " in result.stdout
    listed = subprocess.run(
        [sys.executable, "-c", "from domainbed import datasets, networks; datasets.get_dataset_class('PluginImages'); "
                               "print('PluginImages' in datasets.DATASETS, 'plugin_cnn' in networks.BACKBONES)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert listed.stdout.split() == ["True", "True"], listed.stderr


def test_check_method_passes_the_example():
    result = _run(METHOD, module="domainbed.scripts.check_method")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines() == [
        f"{METHOD} keeps the contract: hparam declarations, update, state round trip, predict in eval mode, "
        "quantization swap, averaged copy, bf16, fp16"]


BROKEN_MODULE = '''
"""Outside methods that break the contract, each in one way."""

import torch

from domainbed.algorithms.erm import ERM


class ReturnsAVector(ERM):
    def update(self, minibatches):
        return {"loss": super().update(minibatches)["loss"].expand(2)}


class ForgetsTheHead(ERM):
    def __init__(self, *args):
        super().__init__(*args)
        self.optimizer = self.new_optimizer(self.featurizer.parameters())


class BuiltOnAWrongInput(ERM):
    CONTRACT_INPUT = "pixels"


class DeclaresWithoutHelp(ERM):
    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("k", 3)
'''


def test_check_method_reports_each_defect_in_one_line(tmp_path):
    (tmp_path / "broken_methods.py").write_text(textwrap.dedent(BROKEN_MODULE))
    names = [f"broken_methods:{name}" for name in ("ReturnsAVector", "ForgetsTheHead", "DeclaresWithoutHelp",
                                                      "BuiltOnAWrongInput")]
    result = _run(*names, module="domainbed.scripts.check_method", path=(tmp_path,))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert all("keeps the contract" not in line and any(name in line for name in names) for line in lines), lines
    assert any(line.startswith("broken_methods:ReturnsAVector.update returned {'loss': tensor(")
               and line.endswith("every value must be a python float or a detached 0-dim floating-point tensor")
               for line in lines), lines
    assert ("parameter classifier.weight is in no optimizer of broken_methods:ForgetsTheHead.optimizers(); "
            "valid: exactly one") in lines
    assert "broken_methods:DeclaresWithoutHelp declares hparam 'k' without help (one line of meaning)" in lines
    assert "broken_methods:BuiltOnAWrongInput.CONTRACT_INPUT 'pixels' is unknown; valid: features, images" in lines

    unknown = _run("broken_methods:Nope", module="domainbed.scripts.check_method", path=(tmp_path,))
    _one_error_line(unknown, "'Nope'", "broken_methods")
    not_a_method = _run("torch.nn:Linear", module="domainbed.scripts.check_method")
    _one_error_line(not_a_method, "torch.nn:Linear", "domainbed.algorithms.base.Algorithm")
