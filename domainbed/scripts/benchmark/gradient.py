"""Training-step time of SAM, GSAM, SAGM_DG and GradSurgery relative to ERM, on the same batch.

    python -m domainbed.scripts.benchmark gradient --image_size 64 --batch_size 8

For each model (a ResNet at `--image_size`, and DomainBed's MLP) every method is built from the
same seed and stepped on the same minibatches (one per domain); the methods take turns step by
step so that machine load hits them alike, and the median step time is reported. The sharpness
methods need two forward-backward passes (about 2x ERM); for GradSurgery the surgery itself
(projection, outlier rule and sum, timed alone on that step's per-domain gradients) is also
given as a fraction of its step.
"""

from prettytable import PrettyTable

from domainbed.algorithms.grad_surgery import gradient_surgery
from domainbed.scripts.timing import build_algorithm, device_name, random_minibatches, round_robin
from domainbed.training.trainer import resolve_device

METHODS = ["ERM", "SAM", "GSAM", "SAGM_DG", "GradSurgery"]


def add_arguments(parser) -> None:
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8, help="per domain")
    parser.add_argument("--n_domains", type=int, default=3)
    parser.add_argument("--n_classes", type=int, default=7)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--mlp_input", type=int, default=392)
    parser.add_argument("--mlp_width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")


def benchmark(label, input_shape, args, device) -> PrettyTable:
    minibatches = random_minibatches(args.n_domains, args.batch_size, input_shape, args.n_classes, device)
    methods = {name: build_algorithm(name, input_shape, args.n_classes, args.n_domains, device,
                                     backbone=args.backbone, mlp_width=args.mlp_width, mlp_depth=3)
               for name in METHODS}
    surgery = methods["GradSurgery"]
    _, surgered, _ = surgery.domain_gradients(minibatches)
    functions = {name: (lambda algorithm=algorithm: algorithm.update(minibatches)) for name, algorithm in methods.items()}
    functions["surgery"] = lambda: gradient_surgery(surgered, surgery.n_parts, surgery.alpha, surgery.use_alpha,
                                                    surgery.layout())
    median = round_robin(functions, device, args.warmup, args.steps)
    table = PrettyTable(["model", "method", "step (ms)", "x ERM", "surgery (ms)", "surgery / step"])
    for name in METHODS:
        surgery_cells = ["", ""]
        if name == "GradSurgery":
            surgery_cells = [f"{1e3 * median['surgery']:.1f}", f"{median['surgery'] / median[name]:.1%}"]
        table.add_row([label, name, f"{1e3 * median[name]:.1f}", f"{median[name] / median['ERM']:.2f}", *surgery_cells])
    return table


def main(args) -> str:
    device = resolve_device(args.device)
    header = f"device: {device_name(device)}; {args.n_domains} domains x batch {args.batch_size}; " \
             f"median of {args.steps} steps"
    print(f"measuring {args.backbone} at {args.image_size} px", flush=True)
    resnet = benchmark(f"{args.backbone} {args.image_size}px", (3, args.image_size, args.image_size), args, device)
    print(f"measuring the MLP {args.mlp_input}-{args.mlp_width}", flush=True)
    mlp = benchmark(f"MLP {args.mlp_input}-{args.mlp_width}", (args.mlp_input,), args, device)
    return f"{header}\n{resnet}\n{mlp}"
