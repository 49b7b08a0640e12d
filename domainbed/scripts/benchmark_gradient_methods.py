"""Training-step time of SAM, GSAM, SAGM_DG and GradSurgery relative to ERM, on the same batch.

    python -m domainbed.scripts.benchmark_gradient_methods --image_size 64 --batch_size 8

For each model (a ResNet at `--image_size`, and DomainBed's MLP) every method is built from the
same seed and stepped on the same minibatches (one per domain); the methods take turns step by
step so that machine load hits them alike, and the median step time is reported. The sharpness
methods need two forward-backward passes (about 2x ERM); for GradSurgery the surgery itself
(projection, outlier rule and sum, timed alone on that step's per-domain gradients) is also
given as a fraction of its step.
"""

import argparse
import statistics

import torch
from prettytable import PrettyTable

from domainbed.scripts.timing import timed
from domainbed import algorithms, hparams_registry
from domainbed.algorithms.grad_surgery import gradient_surgery

METHODS = ["ERM", "SAM", "GSAM", "SAGM_DG", "GradSurgery"]


def build(name, input_shape, n_classes, n_domains, args, device):
    hparams = hparams_registry.default_hparams(name, "PACS")
    hparams.update(pretrained=False, backbone=args.backbone, mlp_width=args.mlp_width, mlp_depth=3)
    torch.manual_seed(0)
    return algorithms.get_algorithm_class(name)(input_shape, n_classes, n_domains, hparams).to(device)


def benchmark(label, input_shape, args, device):
    generator = torch.Generator().manual_seed(0)
    minibatches = [(torch.randn(args.batch_size, *input_shape, generator=generator).to(device),
                    torch.randint(0, args.n_classes, (args.batch_size,), generator=generator).to(device))
                   for _ in range(args.n_domains)]
    methods = {name: build(name, input_shape, args.n_classes, args.n_domains, args, device) for name in METHODS}
    surgery = methods["GradSurgery"]
    _, surgered, _ = surgery.domain_gradients(minibatches)

    def surgery_only():
        gradient_surgery(surgered, surgery.n_parts, surgery.alpha, surgery.use_alpha, surgery.layout())

    times = {name: [] for name in METHODS + ["surgery"]}
    for step in range(args.warmup + args.steps):
        for name, algorithm in methods.items():
            elapsed = timed(lambda: algorithm.update(minibatches), device)
            if step >= args.warmup:
                times[name].append(elapsed)
        elapsed = timed(surgery_only, device)
        if step >= args.warmup:
            times["surgery"].append(elapsed)

    median = {name: statistics.median(values) for name, values in times.items()}
    table = PrettyTable(["model", "method", "step (ms)", "x ERM", "surgery (ms)", "surgery / step"])
    for name in METHODS:
        surgery_cells = ["", ""]
        if name == "GradSurgery":
            surgery_cells = [f"{1e3 * median['surgery']:.1f}", f"{median['surgery'] / median[name]:.1%}"]
        table.add_row([label, name, f"{1e3 * median[name]:.1f}", f"{median[name] / median['ERM']:.2f}", *surgery_cells])
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8, help="per domain")
    parser.add_argument("--n_domains", type=int, default=3)
    parser.add_argument("--n_classes", type=int, default=7)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--mlp_input", type=int, default=392)
    parser.add_argument("--mlp_width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.n_domains} domains x batch {args.batch_size}; median of {args.steps} steps")
    print(benchmark(f"{args.backbone} {args.image_size}px", (3, args.image_size, args.image_size), args, device))
    print(benchmark(f"MLP {args.mlp_input}-{args.mlp_width}", (args.mlp_input,), args, device))


if __name__ == "__main__":
    main()
