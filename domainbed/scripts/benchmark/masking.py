"""Step time of the feature-masking methods (RSC, DMG, MultiHead) relative to ERM, in one run.

    python -m domainbed.scripts.benchmark masking [--image_size 96 --batch_size 8 ...]

Every method gets the same random minibatches and a ResNet built with the same seed. The
methods take turns step by step (round-robin, the order rotating every round) so that machine
noise falls on all of them alike; each row is the median over the timed rounds. RSC's official
variant should cost about one extra forward-backward of the head (printed for reference) on top
of ERM, since it reuses the backbone's forward and backward.
"""

import torch
from prettytable import PrettyTable

from domainbed.scripts.timing import build_algorithm, device_name, random_minibatches, round_robin
from domainbed.training.trainer import resolve_device

METHODS = [
    ("ERM", "ERM", {}),
    ("RSC official", "RSC", {}),
    ("RSC domainbed", "RSC", {"rsc_variant": "domainbed"}),
    ("DMG fc", "DMG", {}),
    ("DMG layer3,layer4,fc", "DMG", {"mask_layers": "layer3,layer4,fc"}),
    ("MultiHead", "MultiHead", {}),
]
HEAD = "ERM head fwd-bwd"


def add_arguments(parser) -> None:
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=8, help="per domain")
    parser.add_argument("--domains", type=int, default=3)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="auto")


def head_forward_backward(algorithm, minibatches):
    """One forward-backward of ERM's head alone on the batch's pooled features."""
    with torch.no_grad():
        features = algorithm.featurizer(torch.cat([x for x, _ in minibatches]))
    y = torch.cat([y for _, y in minibatches])

    def run():
        loss = torch.nn.functional.cross_entropy(algorithm.classifier(features.requires_grad_()), y)
        torch.autograd.grad(loss, [features, *algorithm.classifier.parameters()])

    return run


def main(args) -> str:
    device = resolve_device(args.device)
    shape = (3, args.image_size, args.image_size)
    minibatches = random_minibatches(args.domains, args.batch_size, shape, args.classes, device)
    algorithms = {label: build_algorithm(name, shape, args.classes, args.domains, device,
                                         backbone=args.backbone, **overrides)
                  for label, name, overrides in METHODS}
    for algorithm in algorithms.values():
        algorithm.on_step_begin(0, 1000)
    functions = {label: (lambda algorithm=algorithm: algorithm.update(minibatches))
                 for label, algorithm in algorithms.items()}
    functions[HEAD] = head_forward_backward(algorithms["ERM"], minibatches)
    median = round_robin(functions, device, args.warmup, args.rounds)
    table = PrettyTable(["method", "ms / step", "x ERM"])
    for label, seconds in median.items():
        table.add_row([label, f"{1000 * seconds:.1f}", f"{seconds / median['ERM']:.2f}"])
    return (f"{args.backbone} at {args.image_size} px, {args.domains} domains x {args.batch_size} images, "
            f"{device_name(device)}, median of {args.rounds} rounds\n{table}")
