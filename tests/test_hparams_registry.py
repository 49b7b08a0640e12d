"""`--hparams_seed N` draws DomainBed's values: each hparam from its own
RandomState(seed_hash(seed_hash(N, trial_seed), name)), with DomainBed's distributions."""

import hashlib
import json

import numpy as np
import pytest

import train_all
from domainbed import hparams_registry, misc


def _md5_seed(*args):
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


# computed by hand from DomainBed's scheme (hparams_registry.declarations and misc.seed_hash)
KNOWN_DRAWS = {
    (1, 0): {"lr": 2.7028930742148706e-05, "batch_size": 39, "weight_decay": 0.00044832883881609976,
             "resnet_dropout": 0.5},
    (2, 1): {"lr": 0.0002692684204277505, "batch_size": 18, "weight_decay": 3.539788355410888e-06,
             "resnet_dropout": 0.5},
}


@pytest.mark.parametrize("hparams_seed,trial_seed", list(KNOWN_DRAWS))
def test_known_draws_of_domainbeds_scheme(hparams_seed, trial_seed):
    drawn = hparams_registry.random_hparams("ERM", "PACS", misc.seed_hash(hparams_seed, trial_seed))
    for name, value in KNOWN_DRAWS[hparams_seed, trial_seed].items():
        assert drawn[name] == pytest.approx(value, rel=1e-12), name


def test_draws_follow_the_per_name_seeding_scheme():
    seed = _md5_seed(7, 2)
    assert misc.seed_hash(7, 2) == seed

    def state(name):
        return np.random.RandomState(_md5_seed(seed, name))

    drawn = hparams_registry.random_hparams("ERM", "VLCS", seed)
    assert drawn["lr"] == 10 ** state("lr").uniform(-5, -3.5)
    assert drawn["weight_decay"] == 10 ** state("weight_decay").uniform(-6, -2)
    assert drawn["batch_size"] == int(2 ** state("batch_size").uniform(3, 5.5))
    assert drawn["resnet_dropout"] == state("resnet_dropout").choice([0.0, 0.1, 0.5])
    small = hparams_registry.random_hparams("ERM", "RotatedMNIST", seed)
    assert small["lr"] == 10 ** state("lr").uniform(-4.5, -2.5)
    assert small["batch_size"] == int(2 ** state("batch_size").uniform(3, 9)) and small["weight_decay"] == 0.0
    domainnet = hparams_registry.random_hparams("ERM", "DomainNet", seed)
    assert domainnet["batch_size"] == int(2 ** state("batch_size").uniform(3, 5))


def test_hparams_seed_on_the_command_line_is_the_same_draw(tmp_path):
    train_all.run(["h", "--dataset", "Synthetic", "--hparams_seed", "1", "--trial_seed", "0",
                   "--output_dir", str(tmp_path / "out"), "--show"])
    (run_dir,) = (tmp_path / "out" / "Synthetic").iterdir()
    hparams = json.loads((run_dir / "hparams.json").read_text())
    drawn = hparams_registry.random_hparams("ERM", "Synthetic", _md5_seed(1, 0))
    for name in ("lr", "batch_size", "weight_decay", "resnet_dropout"):
        assert hparams[name] == drawn[name]


def test_sgd_is_plain_unless_a_method_sets_momentum():
    assert hparams_registry.default_hparams("ERM", "PACS")["momentum"] == 0.0
    assert hparams_registry.default_hparams("RSC", "PACS")["momentum"] == 0.9
    assert hparams_registry.default_hparams("DMG", "PACS")["momentum"] == 0.9
    from domainbed.algorithms import get_algorithm_class

    hp = hparams_registry.default_hparams("ERM", "Synthetic") | {"optimizer": "sgd"}
    erm = get_algorithm_class("ERM")((8,), 3, 2, hp)
    assert erm.optimizer.param_groups[0]["momentum"] == 0.0
    erm = get_algorithm_class("ERM")((8,), 3, 2, hp | {"momentum": 0.9})
    assert erm.optimizer.param_groups[0]["momentum"] == 0.9
