"""The benchmark entry: every subcommand runs at a tiny size on the CPU and prints its table;
the form without a subcommand is the training benchmark (the docs cite it)."""

import pytest
import torch

from domainbed.scripts import benchmark, timing

CPU = ["--device", "cpu"]
TINY = {
    "augment": ["--batch_size", "2", "--image_size", "32", "--repeats", "1"],
    "averaging": ["--backbones", "mnist_cnn", "--batch_size", "2", "--repeats", "1"],
    "gradient": ["--image_size", "32", "--batch_size", "2", "--mlp_input", "8", "--mlp_width", "8", "--steps", "1",
                 "--warmup", "0"],
    "masking": ["--image_size", "32", "--batch_size", "2", "--rounds", "1", "--warmup", "0"],
    "quant": ["--backbone", "resnet18", "--image_size", "32", "--batch_size", "2", "--steps", "1", "--warmup", "0",
              "--bits", "4"],
}
EXPECTED = {
    "augment": ["ours", "torchvision v2 loop", "x ours"],
    "averaging": ["mnist_cnn", "update ms", "SWAD loop ms"],
    "gradient": ["SAGM_DG", "GradSurgery", "MLP 8-8", "x ERM"],
    "masking": ["RSC official", "DMG layer3,layer4,fc", "MultiHead", "ERM head fwd-bwd"],
    "quant": ["4-bit", "float", "fake-quantization overhead, train", "fake-quantization overhead, eval"],
}


@pytest.mark.parametrize("command", sorted(TINY))
def test_every_subcommand_prints_its_table(command, capsys):
    assert benchmark.main([command, *TINY[command], *CPU]) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in EXPECTED[command]), out
    assert "CPU (" in out


@pytest.mark.filterwarnings("ignore:--precision bf16:UserWarning")
def test_without_a_subcommand_it_is_the_training_benchmark(capsys):
    argv = ["--dataset", "Synthetic", "--algorithm", "ERM", "--batch_size", "4", "--steps", "1", "--warmup", "1",
            "--precision", "fp32", "--pipeline", "classic", *CPU]
    assert benchmark.parse_args(argv).command == "training"
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "ERM classic fp32:" in out and "train x classic fp32" in out
    rows = [line for line in out.splitlines() if line.startswith("|") and line.split("|")[2].strip() == "classic"]
    assert len(rows) == 1  # the requested configuration is the reference: measured once


def test_bad_subcommand_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["quant", "--bits", "many"])
    assert exit_info.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err


def test_round_robin_gives_every_function_its_median_and_rotates_the_order():
    calls = []
    medians = timing.round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                 torch.device("cpu"), warmup=1, rounds=2)
    assert set(medians) == {"a", "b"} and all(seconds >= 0 for seconds in medians.values())
    assert calls == ["a", "b", "b", "a", "a", "b"]
