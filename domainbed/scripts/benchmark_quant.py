"""Step-time overhead of QT-DoG's fake quantization relative to the same model in float.

    python -m domainbed.scripts.benchmark_quant [--algorithm ERM] [--backbone resnet50]
        [--image_size 224] [--batch_size 32] [--domains 3] [--bits 7] [--q_linear]
        [--steps 20] [--warmup 3] [--device auto]

Two copies of the algorithm start from the same weights; one has its layers swapped for LSQ
fake-quantized ones (as `--quant 1` does at `q_steps`). Their training steps (update on random
images, one minibatch of `batch_size` per domain) and evaluation forward passes are timed
alternately, one of each in turn, so that other load on the machine slows both alike. Prints
the median times and the overhead of the quantized model.
"""

import argparse
import statistics

import torch

from domainbed.scripts.timing import timed
from domainbed import algorithms, hparams_registry
from domainbed.quant import quantize_model
from domainbed.trainer import resolve_device


def build(args, device, quantized: bool):
    hparams = hparams_registry.default_hparams(args.algorithm, "PACS")
    hparams.update(backbone=args.backbone, pretrained=False, batch_size=args.batch_size)
    torch.manual_seed(0)
    algorithm = algorithms.get_algorithm_class(args.algorithm)(
        (3, args.image_size, args.image_size), 7, args.domains, hparams).to(device)
    if quantized:
        layers = quantize_model(algorithm, args.bits, q_linear=args.q_linear)
        algorithm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    return algorithm





def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32, help="per domain")
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--bits", type=int, default=7)
    parser.add_argument("--q_linear", action="store_true", help="quantize Linear layers too (ViT)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)

    models = {"float": build(args, device, False), f"{args.bits}-bit": build(args, device, True)}
    generator = torch.Generator().manual_seed(0)

    def minibatches():
        return [(torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device),
                 torch.randint(0, 7, (args.batch_size,), generator=generator).to(device))
                for _ in range(args.domains)]

    eval_x = torch.randn(args.batch_size * args.domains, 3, args.image_size, args.image_size,
                         generator=generator).to(device)
    times = {(name, kind): [] for name in models for kind in ("train", "eval")}
    for step in range(args.warmup + args.steps):
        batches = minibatches()
        for name, model in models.items():
            model.train()
            train_time = timed(lambda: model.update(batches), device)
            model.eval()
            with torch.no_grad():
                eval_time = timed(lambda: model.predict(eval_x), device)
            if step >= args.warmup:
                times[name, "train"].append(train_time)
                times[name, "eval"].append(eval_time)

    n_layers = sum(1 for m in models[f"{args.bits}-bit"].modules() if hasattr(m, "step_size"))
    print(f"{args.algorithm} / {args.backbone} at {args.image_size}px, {args.domains} x {args.batch_size} images "
          f"per step, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{n_layers} quantized layers; median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'model':>8} {'train step (ms)':>16} {'eval forward (ms)':>18}")
    medians = {key: 1000 * statistics.median(values) for key, values in times.items()}
    for name in models:
        print(f"{name:>8} {medians[name, 'train']:16.1f} {medians[name, 'eval']:18.1f}")
    quant = f"{args.bits}-bit"
    for kind in ("train", "eval"):
        overhead = 100 * (medians[quant, kind] / medians["float", kind] - 1)
        print(f"fake-quantization overhead, {kind}: {overhead:+.1f}%")


if __name__ == "__main__":
    main()
