from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from domainbed.data import InfiniteDataLoader, num_workers_for
from domainbed.data.pipeline import ClassicPipeline
from domainbed.data.sampling import StepBatchSampler, batch_indices


def test_worker_count_follows_cores_and_dataset(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert num_workers_for(-1, 8, 3) == 5
    assert num_workers_for(-1, 4, 1) == 4
    assert num_workers_for(-1, 0, 3) == 0  # in-memory datasets need no workers
    assert num_workers_for(2, 8, 3) == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert num_workers_for(-1, 8, 3) == 1


def test_batches_are_a_function_of_seed_and_step():
    sampler = iter(StepBatchSampler(seed=7, dataset_size=100, batch_size=5))
    batches = [next(sampler) for _ in range(4)]
    resumed = iter(StepBatchSampler(seed=7, dataset_size=100, batch_size=5, start_step=2))
    assert next(resumed) == batches[2]
    assert batch_indices(7, 3, 100, 5).tolist() == batches[3]
    assert batches[0] != next(iter(StepBatchSampler(seed=8, dataset_size=100, batch_size=5)))


def test_infinite_loader_draws_uniformly_with_replacement():
    data = TensorDataset(torch.arange(10), torch.zeros(10))
    # 4032 draws in 63 batches (not 500 of 8): the same statistics, an eighth of the batches
    loader = InfiniteDataLoader(data, batch_size=64, num_workers=0, seed=1)
    seen = torch.cat([next(loader)[0] for _ in range(63)])
    counts = torch.bincount(seen, minlength=10).float()
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_classic_evaluation_with_workers_leaves_the_global_rng_alone():
    """A DataLoader with workers and no generator draws its workers' base seed from the global
    RNG at every new iterator: a resumed run would then draw differently from an uninterrupted one."""
    pipeline = ClassicPipeline(SimpleNamespace(N_WORKERS=8), {"num_workers": 1}, "cpu", eval_seed=3)
    splits = [TensorDataset(torch.arange(6.0), torch.zeros(6, dtype=torch.long)) for _ in range(2)]
    batches = pipeline.eval_batches(splits, batch_size=4)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    seen = [torch.cat([x for x, _ in batches]) for _ in range(2)]
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(x, torch.cat([torch.arange(6.0)] * 2)) for x in seen)


def test_classic_training_batches_are_the_loaders_on_the_device():
    pipeline = ClassicPipeline(SimpleNamespace(N_WORKERS=0), {"num_workers": 0}, "cpu")
    splits = [TensorDataset(torch.arange(10), torch.zeros(10, dtype=torch.long)) for _ in range(2)]
    stream = pipeline.train_minibatches(splits, [5, 6], batch_size=4, start_step=2)
    reference = [InfiniteDataLoader(split, 4, 0, seed, start_step=2) for split, seed in zip(splits, [5, 6])]
    step = next(stream)
    assert len(step) == 2 and all(torch.equal(x, next(loader)[0]) for (x, _), loader in zip(step, reference))


class _FailsAt(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        if index == 9:
            raise ValueError("item 9 is bad")
        return torch.zeros(2)


def test_a_failing_loader_stops_its_workers_at_once():
    import multiprocessing

    from domainbed.data.loaders import DataLoader

    loader = DataLoader(_FailsAt(), batch_size=4, num_workers=2, persistent_workers=True)
    with pytest.raises(ValueError, match="item 9 is bad") as caught:
        list(loader)
    assert caught.value is not None and multiprocessing.active_children() == []  # the traceback still lives
