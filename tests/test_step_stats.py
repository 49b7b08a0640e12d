"""The stats of `update` stay on the device until the trainer logs them: read in one go, every
`tb_freq` steps and at checkpoints, as exactly the numbers `.item()` gave at each step."""

import json

import pytest
import torch

from domainbed.training import step_stats
from domainbed.training.step_stats import PendingStats, as_numbers


def test_a_read_gives_each_steps_numbers_as_item_does_in_step_order():
    values = [torch.tensor(1 / 3), torch.tensor(2 / 3, dtype=torch.bfloat16), torch.tensor(0.1, dtype=torch.float64),
              torch.tensor(1 / 7, dtype=torch.float16)]
    pending = PendingStats()
    pending.add(4, {"loss": values[0], "penalty": values[1]})
    pending.add(5, {"loss": values[2], "conflict_rate": values[3], "plain": 0.25})
    pending.add(6, {"disc_loss": values[0]})  # the same tensor again, under another key
    read = pending.read()
    assert [step for step, _ in read] == [4, 5, 6]
    assert read[0][1] == {"loss": values[0].item(), "penalty": values[1].item()}
    assert read[1][1] == {"loss": values[2].item(), "conflict_rate": values[3].item(), "plain": 0.25}
    assert read[2][1] == {"disc_loss": values[0].item()}
    assert all(type(v) is float for _, stats in read for v in stats.values())
    assert len(pending) == 0 and pending.read() == []


def test_a_read_maps_every_stack_once_before_the_host_copies_it():
    """The data-parallel mean is applied where the host reads (one all-reduce per read): here a
    stand-in that doubles, called once per device and dtype however many steps are pending."""
    stacks = []

    def double(stacked):
        stacks.append(stacked.shape)
        return stacked * 2

    pending = PendingStats()
    pending.add(0, {"loss": torch.tensor(1.0), "lr": 0.5})
    pending.add(1, {"loss": torch.tensor(3.0), "penalty": torch.tensor(0.25, dtype=torch.float64)})
    assert pending.read(double) == [(0, {"loss": 2.0, "lr": 0.5}), (1, {"loss": 6.0, "penalty": 0.5})]
    assert sorted(stacks) == [torch.Size([1]), torch.Size([2])]


def test_pending_stats_keep_no_autograd_graph():
    weight = torch.ones(3, requires_grad=True)
    pending = PendingStats()
    pending.add(0, {"loss": (weight * 2).sum()})
    assert not pending._steps[0][1]["loss"].requires_grad
    assert pending.read() == [(0, {"loss": 6.0})]


def test_as_numbers_reads_tensors_and_keeps_numbers():
    assert as_numbers({"loss": torch.tensor(0.5), "count": 3, "rate": 0.25}) == {"loss": 0.5, "count": 3, "rate": 0.25}


FAST = ["--dataset", "Synthetic", "--algorithm", "ERM", "--steps", "6", "--checkpoint_freq", "2",
        "--batch_size", "8", "--test_envs", "0", "--swad", "False"]


@pytest.mark.parametrize("tb_freq, reads", [("0", [0, 2, 4, 6]), ("3", [0, 2, 3, 4, 6])])
def test_the_trainer_reads_the_stats_only_every_tb_freq_steps_and_at_checkpoints(run_train_all, monkeypatch,
                                                                                 tb_freq, reads):
    seen = []
    read = PendingStats.read

    def recording_read(self, *combine):
        result = read(self, *combine)
        seen.append([step for step, _ in result])
        return result

    monkeypatch.setattr(step_stats.PendingStats, "read", recording_read)
    result = run_train_all("reads", *FAST, "--tb_freq", tb_freq)
    assert [steps[-1] for steps in seen] == reads
    assert sum(seen, []) == list(range(7))  # every step (6 and SWAD's extra one) read once, in order
    records = [json.loads(line) for line in (result["out_dir"] / "results.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [0, 2, 4, 6]
    assert all(isinstance(record["loss"], float) and record["step_time"] > 0 for record in records)
