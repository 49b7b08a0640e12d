"""`--split official` trains on exactly PACS's listed files and tests on the whole held-out domain."""

import pytest

import train_all
from domainbed import hparams_registry
from domainbed.datasets import get_dataset_class
from domainbed.training.fold_splits import make_splits

DOMAINS = ["art_painting", "cartoon", "photo", "sketch"]


def _lines(split_dir, domain, split):
    return [line for line in (split_dir / f"{domain}_{split}_kfold.txt").read_text().splitlines() if line.strip()]


def test_the_splits_are_the_lists_and_the_whole_test_domain(shared_data):
    split_dir = shared_data / "PACS_splits"
    hparams = hparams_registry.default_hparams("ERM", "PACS") | {"image_size": 32}
    dataset = get_dataset_class("PACS")(shared_data, [], hparams)
    train_splits, eval_splits = make_splits(dataset, [3], 0.2, 0, split="official", split_dir=str(split_dir))
    for env, split in enumerate(train_splits):
        assert len(split) == len(_lines(split_dir, DOMAINS[env], "train"))
        listed = {line.split()[0] for line in _lines(split_dir, DOMAINS[env], "train")}
        root = dataset[env].root
        trained = {f"{DOMAINS[env]}/" + dataset[env].samples[key][0].relative_to(root).as_posix() for key in split.keys}
        assert trained == listed
    by_name = {split.name: split.dataset for split in eval_splits}
    for env in range(3):
        assert len(by_name[f"env{env}_out"]) == len(_lines(split_dir, DOMAINS[env], "crossval"))
    assert len(by_name["env3_in"]) == len(dataset[3])  # the whole held-out domain


def test_missing_list_and_other_datasets_are_one_line_errors(shared_data, tmp_path, capsys):
    common = ["o", "--dataset", "PACS", "--data_dir", str(shared_data), "--split", "official",
              "--output_dir", str(tmp_path / "out")]
    assert train_all.main([*common, "--split_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "art_painting_train_kfold.txt does not exist" in err and "\n" not in err
    assert train_all.main(["o", "--dataset", "Synthetic", "--split", "official",
                           "--output_dir", str(tmp_path / "out")]) == 2
    assert "--split official exists for PACS only, not Synthetic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("split", ["official"])
def test_a_pacs_fold_trains_on_the_official_split(shared_data, run_train_all, split):
    result = run_train_all("off", "--dataset", "PACS", "--data_dir", shared_data, "--split", split,
                           "--pretrained", "False", "--backbone", "resnet18", "--image_size", "32",
                           "--batch_size", "4", "--steps", "1", "--checkpoint_freq", "1", "--test_envs", "0",
                           "--swad", "False")
    assert set(result["rows"]["iid"]) == {"art_painting", "Avg."}
    assert "split: official" in (result["out_dir"] / "log.txt").read_text()
