import numpy as np
import pytest
import torch
from PIL import Image

from domainbed import datasets, hparams_registry
from domainbed.datasets import split_dataset
from domainbed.datasets.transforms import eval_transform, train_transform
from domainbed.errors import UsageError

HP = hparams_registry.default_hparams("ERM", "PACS") | {"image_size": 32}
PACS_CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]


def _make_domains(root, domains=("a", "b"), classes=("x", "y"), per_class=2):
    for domain in domains:
        for cls in classes:
            folder = root / domain / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def test_pacs_environments_and_classes_match_domainbed(shared_data):
    pacs = datasets.get_dataset_class("PACS")(shared_data, [0], HP)
    assert pacs.ENVIRONMENTS == ["A", "C", "P", "S"]
    assert pacs.domain_dirs == ["art_painting", "cartoon", "photo", "sketch"]
    assert pacs.classes == PACS_CLASSES and pacs.num_classes == 7
    assert [len(env) for env in pacs] == [2048, 2344, 1670, 3929]
    assert pacs.input_shape == (3, 32, 32)
    for env in pacs:  # ImageFolder semantics: class index = position in the sorted class folders
        for path, label in env.samples[::500]:
            assert path.parent.name == PACS_CLASSES[label]
    image, label = pacs[2][0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == 0


def test_rotated_mnist_has_domainbed_environments_and_sizes(mnist_data):
    rmnist = datasets.get_dataset_class("RotatedMNIST")(mnist_data, [0], HP)
    assert rmnist.ENVIRONMENTS == ["0", "15", "30", "45", "60", "75"]
    assert [len(env) for env in rmnist] == [11667] * 4 + [11666] * 2
    x, y = rmnist[0][0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and rmnist.num_classes == 10
    # the same digit order in every environment, rotated more in each
    assert not torch.equal(rmnist[0].tensors[0][0], rmnist[3].tensors[0][0])


def test_colored_mnist_has_domainbed_environments_and_sizes(mnist_data):
    cmnist = datasets.get_dataset_class("ColoredMNIST")(mnist_data, [0], HP)
    assert cmnist.ENVIRONMENTS == ["+90%", "+80%", "-90%"]
    assert [len(env) for env in cmnist] == [23334, 23333, 23333]
    assert cmnist.input_shape == (2, 28, 28) and cmnist.num_classes == 2
    for env, flip in zip(cmnist, (0.1, 0.2, 0.9)):
        x, y = env.tensors
        color = (x[:, 1].sum((1, 2)) > x[:, 0].sum((1, 2))).long()  # channel 1 lit <=> colour 1
        lit = x.sum((1, 2, 3)) > 0
        disagreement = (color[lit] != y[lit]).float().mean().item()
        assert abs(disagreement - flip) < 0.02


def test_mnist_reads_uncompressed_files(mnist_data, tmp_path):
    import gzip
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (mnist_data / "MNIST" / "raw").glob("*.gz"):
        (raw / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    images, labels = datasets.mnist.load_mnist(tmp_path)
    assert images.shape == (70000, 28, 28) and labels.shape == (70000,)


def test_mnist_is_found_under_the_data_dir_domainbeds_readme_gives(mnist_data, tmp_path):
    """DomainBed's README runs `--data_dir=./domainbed/data/MNIST/`: the files are then in DATA_DIR/raw."""
    (tmp_path / "raw").symlink_to(mnist_data / "MNIST" / "raw")
    images, labels = datasets.mnist.load_mnist(tmp_path)
    assert images.shape == (70000, 28, 28) and labels.shape == (70000,)


def test_missing_mnist_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="train-images-idx3-ubyte"):
        datasets.get_dataset_class("RotatedMNIST")(tmp_path, [0], HP)


def test_image_folder_reads_any_domain_directory(tmp_path):
    folder = datasets.get_dataset_class("ImageFolder")(_make_domains(tmp_path), [0], HP)
    assert folder.environments == ["a", "b"] and folder.classes == ["x", "y"] and len(folder[0]) == 4


def test_missing_data_directory(tmp_path):
    with pytest.raises(UsageError, match=r"data directory .*PACS does not exist; pass --data_dir"):
        datasets.get_dataset_class("PACS")(tmp_path, [0], HP)


def test_missing_domain_folder_names_expected_and_found(tmp_path):
    _make_domains(tmp_path / "PACS", domains=("art_painting", "cartoon", "photo"))
    with pytest.raises(UsageError, match=r"domain folder .*sketch does not exist; expected .* found art_painting, cartoon, photo"):
        datasets.get_dataset_class("PACS")(tmp_path, [0], HP)


def test_empty_class_folder(tmp_path):
    _make_domains(tmp_path)
    for png in (tmp_path / "b" / "y").iterdir():
        png.unlink()
    with pytest.raises(UsageError, match=r"class folder .*b/y has no images"):
        datasets.get_dataset_class("ImageFolder")(tmp_path, [0], HP)


def test_domains_with_different_classes(tmp_path):
    _make_domains(tmp_path)
    (tmp_path / "b" / "z").mkdir()
    with pytest.raises(UsageError, match="disagree on classes"):
        datasets.get_dataset_class("ImageFolder")(tmp_path, [0], HP)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_or_truncated_image_is_reported_with_its_path(tmp_path, content):
    _make_domains(tmp_path)
    bad = tmp_path / "a" / "x" / "0.png"
    if content == "truncated":
        Image.fromarray(np.random.randint(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "full.jpg")
        content = (tmp_path / "full.jpg").read_bytes()[:400]
        bad = bad.with_suffix(".jpg")
        (tmp_path / "a" / "x" / "0.png").unlink()
    bad.write_bytes(content)
    folder = datasets.get_dataset_class("ImageFolder")(tmp_path, [0], HP)
    index = [str(p) for p, _ in folder[0].samples].index(str(bad))
    with pytest.raises(UsageError, match=rf"cannot read image {bad}"):
        folder[0][index]


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KeyError, match="unknown dataset 'PAC'; valid: .*PACS"):
        datasets.get_dataset_class("PAC")


def test_split_is_seeded_disjoint_and_complete():
    data = list(range(50))
    out_a, in_a = split_dataset(data, 10, seed=3)
    out_b, _ = split_dataset(data, 10, seed=3)
    out_c, _ = split_dataset(data, 10, seed=4)
    assert out_a.keys == out_b.keys != out_c.keys
    assert sorted(out_a.keys + in_a.keys) == data and len(out_a) == 10


def test_transforms_match_swad():
    image = Image.fromarray(np.random.randint(0, 255, (50, 70, 3), np.uint8))
    assert eval_transform(32)(image).shape == (3, 32, 32)
    assert train_transform(32)(image).shape == (3, 32, 32)
    names = [type(t).__name__ for t in train_transform(32).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "RandomGrayscale", "ToTensor", "Normalize"]
    crop = train_transform(32).transforms[0]
    assert crop.scale == (0.7, 1.0)
    assert [type(t).__name__ for t in eval_transform(32).transforms] == ["Resize", "ToTensor", "Normalize"]


def test_synthetic_is_deterministic():
    a = datasets.get_dataset_class("Synthetic")("", [0], HP)
    b = datasets.get_dataset_class("Synthetic")("", [0], HP)
    assert len(a) == 4 and torch.equal(a[2].tensors[0], b[2].tensors[0])
