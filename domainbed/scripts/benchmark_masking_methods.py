"""Step time of the feature-masking methods (RSC, DMG, MultiHead) relative to ERM, in one run.

    python -m domainbed.scripts.benchmark_masking_methods [--image_size 96 --batch_size 8 ...]

Every method gets the same random minibatches and a ResNet built with the same seed. The
methods take turns step by step (round-robin, the order rotating every round) so that machine
noise falls on all of them alike; each row is the median over the timed rounds. RSC's official
variant should cost about one extra forward-backward of the head (printed for reference) on top
of ERM, since it reuses the backbone's forward and backward.
"""

import argparse
import statistics

import torch

from domainbed.scripts.timing import timed
from domainbed import hparams_registry
from domainbed.algorithms import get_algorithm_class

METHODS = [
    ("ERM", "ERM", {}),
    ("RSC official", "RSC", {}),
    ("RSC domainbed", "RSC", {"rsc_variant": "domainbed"}),
    ("DMG fc", "DMG", {}),
    ("DMG layer3,layer4,fc", "DMG", {"mask_layers": "layer3,layer4,fc"}),
    ("MultiHead", "MultiHead", {}),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8, help="per domain")
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def build(algorithm, overrides, args):
    hparams = hparams_registry.default_hparams(algorithm, "PACS")
    hparams.update(pretrained=False, backbone=args.backbone, **overrides)
    torch.manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    return get_algorithm_class(algorithm)(shape, args.classes, args.domains, hparams).to(args.device)



def head_forward_backward(algorithm, minibatches):
    """One forward-backward of ERM's head alone on the batch's pooled features."""
    with torch.no_grad():
        features = algorithm.featurizer(torch.cat([x for x, _ in minibatches]))
    y = torch.cat([y for _, y in minibatches])

    def run():
        loss = torch.nn.functional.cross_entropy(algorithm.classifier(features.requires_grad_()), y)
        torch.autograd.grad(loss, [features, *algorithm.classifier.parameters()])

    return run


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.device = device
    generator = torch.Generator().manual_seed(0)
    minibatches = [
        (torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device),
         torch.randint(0, args.classes, (args.batch_size,), generator=generator).to(device))
        for _ in range(args.domains)
    ]
    algorithms = {label: build(algorithm, overrides, args) for label, algorithm, overrides in METHODS}
    for algorithm in algorithms.values():
        algorithm.on_step_begin(0, 1000)
    head = head_forward_backward(algorithms["ERM"], minibatches)
    times = {label: [] for label in algorithms}
    times["ERM head fwd-bwd"] = []
    labels = list(times)
    for round_ in range(args.warmup + args.rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if label == "ERM head fwd-bwd":
                elapsed = timed(head, device)
            else:
                elapsed = timed(lambda: algorithms[label].update(minibatches), device)
            if round_ >= args.warmup:
                times[label].append(elapsed)

    erm = statistics.median(times["ERM"])
    print(f"{args.backbone} at {args.image_size} px, {args.domains} domains x {args.batch_size} images, "
          f"{device}, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print(f"{'method':<24}{'ms / step':>12}{'x ERM':>10}")
    for label in labels:
        median = statistics.median(times[label])
        print(f"{label:<24}{1000 * median:>12.1f}{median / erm:>10.2f}")


if __name__ == "__main__":
    main()
