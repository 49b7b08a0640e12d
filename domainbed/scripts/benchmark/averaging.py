"""The cost of weight averaging: per training step and per checkpoint.

    python -m domainbed.scripts.benchmark averaging [--backbones mnist_cnn resnet18 resnet50]
        [--image_size 64] [--batch_size 8] [--repeats 20] [--device auto]

For each backbone (ERM, pretrained False) it times, as the best of `--repeats`:
- the training step itself (3 domains x batch_size images at image_size px);
- the per-step segment update `AveragedModel.update_parameters` (fused foreach kernels), and the
  per-parameter loop of SWAD's swa_utils with its tensor n_averaged, for comparison;
- the per-checkpoint work of LossValley: a new segment (a copy of the algorithm without its
  optimizer state) and the frozen copy of the finished one moved to the CPU.
The overhead per step is the update's time over the step's. The update's cost depends only on the
parameter count, not on the batch or image size, so on a GPU at 224 px the ratio is smaller still.
"""

import copy

import torch
from prettytable import PrettyTable

from domainbed.averaging.averaged_model import AveragedModel
from domainbed.scripts.timing import build_algorithm, device_name, fastest, random_minibatches
from domainbed.training.trainer import resolve_device


def add_arguments(parser) -> None:
    parser.add_argument("--backbones", nargs="+", default=["mnist_cnn", "resnet18", "resnet50"],
                        help="mnist_cnn is DomainBed's MNIST CNN on 28 px inputs")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8, help="per domain; 3 training domains")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="auto")


class SwadLoopAverage:
    """SWAD's swa_utils update: a python loop over parameters, n_averaged a device tensor."""

    def __init__(self, model, device):
        self.parameters = [p.detach().clone() for p in model.parameters()]
        self.n_averaged = torch.tensor(0, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, model):
        for p_swa, p_model in zip(self.parameters, model.parameters()):
            if self.n_averaged == 0:
                p_swa.copy_(p_model)
            else:
                p_swa.copy_(p_swa + (p_model - p_swa) / (self.n_averaged + 1))
        self.n_averaged += 1


def measure(backbone: str, image_size: int, batch_size: int, repeats: int, device) -> dict:
    input_shape = (3, 28, 28) if backbone == "mnist_cnn" else (3, image_size, image_size)
    overrides = {} if backbone == "mnist_cnn" else {"backbone": backbone, "image_size": image_size}
    algorithm = build_algorithm("ERM", input_shape, 7, 3, device, **overrides)
    minibatches = random_minibatches(3, batch_size, input_shape, 7, device)
    segment = AveragedModel(algorithm)
    loop = SwadLoopAverage(algorithm, device)
    few = max(3, repeats // 4)
    step = fastest(lambda: algorithm.update(minibatches), device, repeats)
    update = fastest(lambda: segment.update_parameters(algorithm, step=0), device, repeats)
    return {
        "backbone": backbone, "parameters": sum(p.numel() for p in algorithm.parameters()),
        "step_ms": 1000 * step, "update_ms": 1000 * update, "overhead": update / step,
        "swad_loop_ms": 1000 * fastest(lambda: loop.update(algorithm), device, repeats),
        "reset_ms": 1000 * fastest(lambda: AveragedModel(algorithm), device, few),
        "freeze_ms": 1000 * fastest(lambda: segment.frozen("cpu"), device, few),
        "deepcopy_with_optimizer_ms": 1000 * fastest(lambda: copy.deepcopy(algorithm), device, few),
    }


def main(args) -> str:
    device = resolve_device(args.device)
    table = PrettyTable(["backbone", "params", "step ms", "update ms", "overhead", "SWAD loop ms",
                         "new segment ms", "freeze ms", "deepcopy+opt ms"])
    for backbone in args.backbones:
        print(f"measuring {backbone}", flush=True)
        r = measure(backbone, args.image_size, args.batch_size, args.repeats, device)
        table.add_row([r["backbone"], f"{r['parameters']:,}", f"{r['step_ms']:.2f}", f"{r['update_ms']:.3f}",
                       f"{100 * r['overhead']:.2f}%", f"{r['swad_loop_ms']:.3f}", f"{r['reset_ms']:.2f}",
                       f"{r['freeze_ms']:.2f}", f"{r['deepcopy_with_optimizer_ms']:.2f}"])
    return (f"device: {device_name(device)}; torch {torch.__version__}; 3 domains x {args.batch_size} images, "
            f"{args.image_size} px (28 px for mnist_cnn); best of {args.repeats}\n{table}")
