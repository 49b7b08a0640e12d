"""The gpu input pipeline against the classic torchvision/PIL path.

Augmentation: the parameter distributions (crop scale, aspect ratio and position, flips, colour
factors and their order, grayscale frequency) are compared with torchvision's own samplers over
thousands of draws, with tolerances from the sample size (two-sample Kolmogorov-Smirnov and
binomial bounds at a 1e-3 false-alarm rate per check); the per-sample transform is compared with
torchvision's functional ops under the same parameters; and the augmented images' statistics are
compared with the classic PIL path's. Evaluation inputs and training order are compared exactly.
"""

import json
import math
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from domainbed.data import InfiniteDataLoader, cache
from domainbed.data.gpu_augment import TrainAugment
from domainbed.data.gpu_pipeline import GpuPipeline, build_pipeline, resolve_pipeline
from domainbed.data.pipeline import ClassicPipeline
from domainbed.datasets import get_dataset_class, split_dataset, transforms
from domainbed.errors import UsageError

KS_C = math.sqrt(-math.log(1e-3 / 2) / 2)  # two-sample KS critical constant at alpha = 1e-3
Z = 3.3  # two-sided normal quantile at 1e-3


def ks_distance(a, b) -> float:
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def assert_same_distribution(ours, reference, what):
    n, m = len(ours), len(reference)
    limit = KS_C * math.sqrt((n + m) / (n * m))
    distance = ks_distance(ours, reference)
    assert distance < limit, f"{what}: KS distance {distance:.4f} >= {limit:.4f}"


def assert_frequency(hits, n, p, what):
    tolerance = Z * math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) < tolerance, f"{what}: {hits / n:.4f} vs {p} (tolerance {tolerance:.4f})"


def hparams(**changes):
    base = dict(image_size=32, data_augmentation=True, cache_dir="", num_workers=0, pipeline="gpu")
    return {**base, **changes}


# --- parameter distributions ---------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(227, 227), (120, 200), (37, 30)])
def test_crop_boxes_follow_torchvision_random_resized_crop(height, width):
    n = 4000
    augment = TrainAugment(32)
    boxes = augment.draw_boxes(torch.tensor([[height, width]] * n), torch.Generator().manual_seed(0)).double()
    torch.manual_seed(1)
    image = torch.zeros(3, height, width)
    reference = torch.tensor([T.RandomResizedCrop.get_params(image, [0.7, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    reference = reference.double()
    for boxes_ in (boxes, reference):
        top, left, h, w = boxes_.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    statistics = {
        "area scale": lambda b: b[:, 2] * b[:, 3] / (height * width),
        "log aspect ratio": lambda b: torch.log(b[:, 3] / b[:, 2]),
        "vertical position": lambda b: (b[:, 0] + b[:, 2] / 2) / height,
        "horizontal position": lambda b: (b[:, 1] + b[:, 3] / 2) / width,
    }
    for what, statistic in statistics.items():
        assert_same_distribution(statistic(boxes), statistic(reference), f"{what} at {height}x{width}")
    # the fallback crop (no proposal fits: frequent at scale >= 0.7) is an atom of the area
    # distribution, so the KS check on the area scale also compares its frequency


def test_flip_colour_order_and_grayscale_follow_torchvision():
    n = 20000
    params = TrainAugment(32).draw(torch.tensor([[40, 40]] * n), torch.Generator().manual_seed(0))
    assert_frequency(int(params.flip.sum()), n, 0.5, "flips")
    assert_frequency(int(params.grayscale.sum()), n, 0.1, "grayscale")

    torch.manual_seed(2)
    jitter = T.ColorJitter(0.3, 0.3, 0.3, 0.3)
    draws = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
             for _ in range(4000)]
    reference = torch.tensor([[b, c, s, h] for _, b, c, s, h in draws])
    for column, what in enumerate(["brightness", "contrast", "saturation", "hue"]):
        assert_same_distribution(params.factors[:, column], reference[:, column], f"{what} factor")

    # every permutation of the four colour operations equally likely, drawn per sample
    codes = (params.order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.bincount(codes, minlength=256)[torch.unique(codes)].double()
    assert len(counts) == 24
    chi2 = float(((counts - n / 24) ** 2 / (n / 24)).sum())
    assert chi2 < 49.7, f"permutation counts are not uniform (chi2 {chi2:.1f}, 23 dof, limit at p=1e-3)"
    reference_orders = torch.stack([fn_idx for fn_idx, *_ in draws])
    for position in range(4):
        for op in range(4):
            for orders in (params.order, reference_orders):
                assert_frequency(int((orders[:, position] == op).sum()), len(orders), 0.25, f"op {op} at {position}")


def test_draws_are_a_pure_function_of_the_generator_seed():
    augment = TrainAugment(32)
    sizes = torch.tensor([[50, 60], [30, 30]])
    first = augment.draw(sizes, torch.Generator().manual_seed(5))
    second = augment.draw(sizes, torch.Generator().manual_seed(5))
    for name in ["boxes", "flip", "factors", "order", "grayscale"]:
        assert torch.equal(getattr(first, name), getattr(second, name))


# --- the transform itself ------------------------------------------------------------------


def _reference_transform(image_uint8, params, index, size):
    """torchvision's functional ops, one sample, the parameters of `params[index]`."""
    top, left, h, w = params.boxes[index].tolist()
    x = TF.resized_crop(image_uint8.float() / 255, top, left, h, w, [size, size], antialias=True)
    if params.flip[index]:
        x = TF.horizontal_flip(x)
    b, c, s, hue = params.factors[index].tolist()
    ops = [lambda t: TF.adjust_brightness(t, b), lambda t: TF.adjust_contrast(t, c),
           lambda t: TF.adjust_saturation(t, s), lambda t: TF.adjust_hue(t, hue)]
    for op in params.order[index].tolist():
        x = ops[op](x)
    if params.grayscale[index]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return TF.normalize(x, list(transforms.IMAGENET_MEAN), list(transforms.IMAGENET_STD))


def test_batched_transform_matches_torchvision_per_sample():
    size = 48
    augment = TrainAugment(size)
    generator = torch.Generator().manual_seed(3)
    n = 24
    sizes = torch.randint(24, 42, (n, 2), generator=generator)
    images = torch.zeros(n, 3, 42, 42, dtype=torch.uint8)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=generator), size=(42, 42),
                                             mode="bicubic").clamp(0, 1)
    images[:] = (smooth * 255).round().to(torch.uint8)
    params = augment.draw(sizes, generator)
    params.grayscale[:3] = True
    ours = augment.apply(images, params)
    for index in range(n):
        h, w = sizes[index].tolist()
        reference = _reference_transform(images[index, :, :h, :w], params, index, size)
        # same up to the border handling of the up-scaling resize (roi_align reads the pixels
        # beyond the crop edge that interpolate clamps away)
        assert (ours[index] - reference).abs().mean() < 0.02
        assert (ours[index, :, 2:-2, 2:-2] - reference[:, 2:-2, 2:-2]).abs().max() < 1e-3


def test_colour_operations_equal_torchvision_formulas():
    augment = TrainAugment(16)
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(40, 3, 16, 16, generator=generator)
    params = augment.draw(torch.tensor([[16, 16]] * 40), generator)
    ours = augment.color_jitter_(x.clone(), params.factors, params.order)
    for index in range(40):
        b, c, s, hue = params.factors[index].tolist()
        reference = x[index]
        ops = [lambda t: TF.adjust_brightness(t, b), lambda t: TF.adjust_contrast(t, c),
               lambda t: TF.adjust_saturation(t, s), lambda t: TF.adjust_hue(t, hue)]
        for op in params.order[index].tolist():
            reference = ops[op](reference)
        torch.testing.assert_close(ours[index], reference, atol=1e-5, rtol=0)


def test_augmented_images_match_the_classic_pil_path_in_distribution():
    """The same source image through the classic PIL transform and through the gpu pipeline,
    2,000 times each: per-image channel means, contrast and left-right balance agree."""
    n, size = 2000, 32
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((36, 30), Image.BICUBIC)
    torch.manual_seed(0)
    classic = transforms.train_transform(size)
    reference = torch.stack([classic(source) for _ in range(n)])
    slot = torch.zeros(n, 3, 36, 36, dtype=torch.uint8)
    slot[:, :, :30, :36] = torch.from_numpy(np.asarray(source).transpose(2, 0, 1).copy())
    augment = TrainAugment(size)
    ours = augment.apply(slot, augment.draw(torch.tensor([[30, 36]] * n), torch.Generator().manual_seed(0)))

    def statistics(x):
        half = x.shape[-1] // 2
        return {
            **{f"channel {c} mean": x[:, c].mean(dim=(-2, -1)) for c in range(3)},
            "contrast": x.std(dim=(-3, -2, -1)),
            "left-right balance": x[..., :half].mean(dim=(-3, -2, -1)) - x[..., half:].mean(dim=(-3, -2, -1)),
            "channel spread": x.std(dim=-3).mean(dim=(-2, -1)),
        }

    for (what, a), b in zip(statistics(ours).items(), statistics(reference).values()):
        assert_same_distribution(a, b, what)


# --- caches and the pipeline ---------------------------------------------------------------


def test_evaluation_inputs_equal_the_classic_path(image_root):
    dataset = get_dataset_class("ImageFolder")(str(image_root), [], hparams())
    out, in_ = split_dataset(dataset[1], 4, 0)
    pipeline = GpuPipeline(dataset, hparams(), "cpu")
    batches = list(pipeline.eval_batches([out, in_], 3))
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    for split in (out, in_):
        split.transform = dataset.eval_transform
    expected = [split[i] for split in (out, in_) for i in range(len(split))]
    torch.testing.assert_close(x, torch.stack([e[0] for e in expected]), atol=1e-6, rtol=0)
    assert y.tolist() == [e[1] for e in expected]
    assert [len(b[0]) for b in batches] == [3, 1, 3, 3, 2]  # batches never cross a split


def test_training_items_follow_the_classic_sampler(image_root):
    """Without augmentation both pipelines give the same tensors, step by step, from the same
    stream seeds; with it, the same labels (the same items)."""
    for augmentation in (False, True):
        hp = hparams(data_augmentation=augmentation)
        dataset = get_dataset_class("ImageFolder")(str(image_root), [], hp)
        splits = [split_dataset(dataset[env], 3, env)[1] for env in (0, 2)]
        for split in splits:
            split.transform = dataset.eval_transform
        classic = [InfiniteDataLoader(split, 5, 0, seed) for split, seed in zip(splits, (11, 12))]
        gpu = GpuPipeline(dataset, hp, "cpu").train_minibatches(splits, [11, 12], 5)
        for _ in range(3):
            for (x, y), (cx, cy) in zip(next(gpu), [next(loader) for loader in classic]):
                assert torch.equal(y, cy)
                assert x.shape == cx.shape == (5, 3, 32, 32)
                if not augmentation:
                    torch.testing.assert_close(x, cx, atol=1e-6, rtol=0)


def test_training_resumes_at_any_step(image_root):
    dataset = get_dataset_class("ImageFolder")(str(image_root), [], hparams())
    splits = [split_dataset(dataset[0], 3, 0)[1]]
    pipeline = GpuPipeline(dataset, hparams(), "cpu")
    stream = pipeline.train_minibatches(splits, [7], 4)
    batches = [next(stream) for _ in range(3)]
    resumed = next(pipeline.train_minibatches(splits, [7], 4, start_step=2))
    assert torch.equal(resumed[0][0], batches[2][0][0]) and torch.equal(resumed[0][1], batches[2][0][1])


def test_host_gathers_one_step_ahead_give_the_same_batches(image_root):
    """The path for caches too large for the device: gathers on the host in a thread."""
    dataset = get_dataset_class("ImageFolder")(str(image_root), [], hparams())
    splits = [split_dataset(dataset[env], 3, env)[1] for env in (0, 1)]
    resident = GpuPipeline(dataset, hparams(), "cpu").train_minibatches(splits, [3, 4], 4)
    host = GpuPipeline(dataset, hparams(), "cpu")
    host.resident = False
    host = host.train_minibatches(splits, [3, 4], 4)
    for _ in range(3):
        for (x, y), (hx, hy) in zip(next(resident), next(host)):
            assert torch.equal(x, hx) and torch.equal(y, hy)
    host.close()


def test_disk_cache_is_built_once_and_reused(image_root, tmp_path, monkeypatch):
    environment = get_dataset_class("ImageFolder")(str(image_root), [], hparams())[0]
    in_memory = cache.image_cache(environment, "train", 37, in_memory=True)
    on_disk = cache.image_cache(environment, "train", 37, tmp_path, in_memory=False, name="dA")
    assert on_disk.path is not None and on_disk.path.parent == tmp_path
    assert torch.equal(on_disk.images, in_memory.images) and torch.equal(on_disk.sizes, in_memory.sizes)
    assert torch.equal(on_disk.labels, torch.tensor(environment.targets))
    # longer side at most 37, aspect ratio kept; smaller images as decoded
    for (path, _), (h, w) in zip(environment.samples, on_disk.sizes.tolist()):
        width, height = Image.open(path).size
        assert max(h, w) == min(37, max(width, height))
        assert abs(w / h - width / height) < 0.1 * width / height + 1 / min(h, w)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and not any(name.endswith(".tmp") for name in files)

    monkeypatch.setattr(cache, "_CACHES", {})
    monkeypatch.setattr(cache, "_build", lambda *args: pytest.fail("a complete cache was decoded again"))
    again = cache.image_cache(environment, "train", 37, tmp_path, in_memory=False, name="dA")
    assert torch.equal(again.images, in_memory.images)
    # another resolution or file list is another cache
    assert cache.cache_key(environment, "train", 38) != cache.cache_key(environment, "train", 37)
    assert cache.cache_key(environment, "eval", 37) != cache.cache_key(environment, "train", 37)


def test_unreadable_image_is_a_usage_error(tmp_path):
    for domain in ["d0", "d1"]:
        (tmp_path / domain / "c").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / domain / "c" / "ok.png")
    (tmp_path / "d1" / "c" / "bad.jpg").write_bytes(b"not a jpeg")
    dataset = get_dataset_class("ImageFolder")(str(tmp_path), [], hparams())
    with pytest.raises(UsageError, match="bad.jpg"):
        cache.image_cache(dataset[1], "eval", 8, in_memory=True)


def test_pipeline_choice_and_bad_names():
    assert resolve_pipeline("auto", torch.device("cpu")) == "classic"
    assert resolve_pipeline("auto", torch.device("cuda")) == "gpu"
    assert resolve_pipeline("gpu", torch.device("cpu")) == "gpu"
    dataset = get_dataset_class("Synthetic")("", [], {})
    assert isinstance(build_pipeline({"pipeline": "classic", "num_workers": 0}, dataset, torch.device("cpu")),
                      ClassicPipeline)
    assert isinstance(build_pipeline(hparams() | {"pipeline": "gpu"}, dataset, torch.device("cpu")), GpuPipeline)
    with pytest.raises(UsageError, match="unknown pipeline 'dali'; valid: auto, classic, gpu"):
        resolve_pipeline("dali", torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown cache mode"):
        cache.image_cache([], "test", 8)
    dataset = get_dataset_class("Synthetic")("", [], {})
    with pytest.raises(UsageError, match="SplitDataset"):
        GpuPipeline(dataset, hparams(), "cpu").eval_batches([dataset[0]], 4)


# --- end to end ----------------------------------------------------------------------------

FAST = ["--algorithm", "ERM", "--steps", "4", "--checkpoint_freq", "2", "--batch_size", "8", "--test_envs", "0"]


def _records(result):
    return [json.loads(line) for line in (result["out_dir"] / "results.jsonl").read_text().splitlines()]


def test_train_all_gpu_pipeline_equals_classic_on_synthetic(run_train_all):
    gpu = _records(run_train_all("gpu", "--dataset", "Synthetic", *FAST, "--pipeline", "gpu"))
    classic = _records(run_train_all("classic", "--dataset", "Synthetic", *FAST, "--pipeline", "classic"))
    assert [r["step"] for r in gpu] == [0, 2, 4]
    for a, b in zip(gpu, classic):
        for key in ["loss", "test_in", "test_out", "train_out", "tr_outloss"]:
            assert a[key] == pytest.approx(b[key], abs=1e-6)


# slow: some 17 s on 2 cores; the pipeline's training path stays in the default suite with
# test_train_all_gpu_pipeline_equals_classic_on_synthetic, real PACS images with test_official_split_training.py
@pytest.mark.slow
def test_train_all_gpu_pipeline_on_a_pacs_subset(run_train_all, shared_data, tmp_path):
    """Two images per class and domain of the real PACS, linked into a private folder, at 32 px."""
    root = tmp_path / "subset"
    for domain in get_dataset_class("PACS").DOMAIN_DIRS:
        for label in sorted(os.listdir(shared_data / "PACS" / domain)):
            folder = root / "PACS" / domain / label
            folder.mkdir(parents=True)
            for name in sorted(os.listdir(shared_data / "PACS" / domain / label))[:2]:
                (folder / name).symlink_to(shared_data / "PACS" / domain / label / name)
    common = ["--dataset", "PACS", "--data_dir", str(root), "--backbone", "resnet18", "--pretrained", "False",
              "--image_size", "32", "--cache_dir", str(tmp_path / "cache"), "--num_workers", "0", *FAST,
              "--batch_size", "4"]
    result = run_train_all("pacs", *common, "--pipeline", "gpu")
    records = _records(result)
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(math.isfinite(r["loss"]) and 0 <= r["test_in"] <= 1 for r in records)
    assert set(result["rows"]) >= {"oracle", "iid", "last"}


@pytest.mark.filterwarnings("ignore:--precision bf16:UserWarning")
def test_benchmark_prints_every_row():
    from domainbed.scripts import benchmark

    rows = benchmark.run(benchmark.parse_args([
        "--dataset", "Synthetic", "--algorithm", "ERM", "--batch_size", "4", "--steps", "1", "--warmup", "1",
        "--precision", "bf16", "--device", "cpu"]))
    assert [(r["pipeline"], r["precision"]) for r in rows] == [("classic", "fp32"), ("gpu", "bf16")]
    assert all(r["train_ips"] > 0 and r["eval_ips"] > 0 and r["peak_gb"] is None for r in rows)
    text = benchmark.table(rows, torch.device("cpu"))
    assert "train x classic fp32" in text and "1.00" in text
