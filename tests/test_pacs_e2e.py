"""All four PACS folds on the real images, small and from scratch: the real-data smoke test."""

import json

import pytest


# slow: about a minute on 2 cores; real-PACS training in the default suite is one fold in
# test_official_split_training.py and the PACS subset of test_gpu_pipeline.py
@pytest.mark.slow
def test_pacs_all_folds_at_32px(shared_data, run_train_all):
    result = run_train_all(
        "pacs", "--dataset", "PACS", "--data_dir", shared_data, "--algorithm", "ERM",
        "--pretrained", "False", "--backbone", "resnet18", "--image_size", "32", "--batch_size", "4",
        "--steps", "1", "--checkpoint_freq", "1", "--deterministic", "--swad", "False",
    )
    names = ["art_painting", "cartoon", "photo", "sketch"]
    assert result["environments"] == names
    assert all(set(values) == {*names, "Avg."} for values in result["rows"].values())
    records = [json.loads(line) for line in (result["out_dir"] / "results.jsonl").read_text().splitlines()]
    assert [r["test_envs"] for r in records] == [[0], [0], [1], [1], [2], [2], [3], [3]]
    assert all(0.0 <= r["test_in"] <= 1.0 for r in records)
