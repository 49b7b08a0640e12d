import pytest
import torch
import torch.nn as nn

from domainbed import algorithms, hparams_registry, networks
from domainbed.errors import UsageError

HP = hparams_registry.default_hparams("ERM", "PACS") | {"pretrained": False, "backbone": "resnet18"}


def test_featurizer_choice_follows_input_shape():
    assert isinstance(networks.Featurizer((16,), HP), networks.MLP)
    assert isinstance(networks.Featurizer((2, 28, 28), HP), networks.MNIST_CNN)
    resnet = networks.Featurizer((3, 32, 32), HP)
    assert resnet.n_outputs == 512
    assert networks.Featurizer((3, 32, 32), HP | {"backbone": "resnet50"}).n_outputs == 2048


def test_mlp_matches_domainbed_shape():
    mlp = networks.MLP(16, 256, HP | {"mlp_depth": 4})
    assert len(mlp.hiddens) == 2 and mlp(torch.randn(5, 16)).shape == (5, 256)


def test_feature_map_and_pool_compose_to_forward():
    for shape in [(3, 32, 32), (1, 28, 28)]:
        featurizer = networks.Featurizer(shape, HP).eval()
        x = torch.randn(2, *shape)
        z = featurizer.feature_map(x)
        assert z.dim() == 4
        assert torch.allclose(featurizer.pool(z), featurizer(x), atol=1e-6)


def test_non_rgb_inputs_get_a_matching_stem():
    featurizer = networks.Featurizer((2, 32, 32), HP)
    assert featurizer.network.conv1.in_channels == 2
    assert featurizer(torch.randn(2, 2, 32, 32)).shape == (2, 512)


def test_freeze_bn_keeps_pretrained_statistics_in_eval_mode():
    frozen = networks.resnet.ResNet(__import__("torchvision").models.resnet18(), (3, 32, 32),
                                    HP | {"pretrained": True, "freeze_bn": True})
    frozen.train()
    batchnorms = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and all(not m.training for m in batchnorms)
    before = batchnorms[0].running_mean.clone()
    frozen(torch.randn(4, 3, 32, 32))
    assert torch.equal(before, batchnorms[0].running_mean)


def test_scratch_network_trains_its_batchnorm():
    scratch = networks.Featurizer((3, 32, 32), HP | {"freeze_bn": True}).train()
    assert all(m.training for m in scratch.modules() if isinstance(m, nn.BatchNorm2d))


def test_resnet_dropout_is_applied_after_pooling():
    featurizer = networks.Featurizer((3, 32, 32), HP | {"resnet_dropout": 0.5})
    assert featurizer.dropout.p == 0.5


def test_missing_pretrained_weights_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UsageError) as error:
        networks.Featurizer((3, 32, 32), HP | {"pretrained": True})
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "--pretrained_path" in message and "--pretrained False" in message


def test_pretrained_path_loads_a_local_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    featurizer = networks.Featurizer((3, 32, 32), HP | {"pretrained": True, "pretrained_path": str(tmp_path / "r18.pth")})
    assert torch.equal(featurizer.network.conv1.weight, reference.conv1.weight)
    with pytest.raises(UsageError, match="is not a file"):
        networks.Featurizer((3, 32, 32), HP | {"pretrained": True, "pretrained_path": str(tmp_path / "none.pth")})


def test_erm_update_returns_a_detached_scalar_tensor_and_learns():
    torch.manual_seed(0)
    hp = hparams_registry.default_hparams("ERM", "Synthetic")
    erm = algorithms.get_algorithm_class("ERM")((8,), 2, 2, hp)
    x = torch.randn(32, 8)
    y = (x[:, 0] > 0).long()
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    first = erm.update(batches)["loss"]
    for _ in range(50):
        last = erm.update(batches)["loss"]
    assert first.dim() == 0 and first.is_floating_point() and not first.requires_grad and last < first
    assert erm.predict(x).shape == (32, 2) and torch.equal(erm.predict(x), erm.predict(x, env=1))
    assert set(erm.optimizers()) == {"optimizer"}
