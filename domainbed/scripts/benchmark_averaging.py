"""The cost of weight averaging: per training step and per checkpoint.

    python -m domainbed.scripts.benchmark_averaging [--backbones mnist_cnn resnet18 resnet50]
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

import argparse
import copy
import sys

import torch

from domainbed.scripts.timing import fastest
from domainbed import hparams_registry
from domainbed.averaging.averaged_model import AveragedModel
from domainbed.algorithms import get_algorithm_class
from domainbed.trainer import resolve_device





def build(backbone: str, image_size: int, device):
    if backbone == "mnist_cnn":
        hparams, input_shape = hparams_registry.default_hparams("ERM", "Synthetic"), (3, 28, 28)
    else:
        hparams = {**hparams_registry.default_hparams("ERM", "PACS"), "backbone": backbone, "pretrained": False,
                   "image_size": image_size}
        input_shape = (3, image_size, image_size)
    algorithm = get_algorithm_class("ERM")(input_shape, 7, 3, hparams).to(device)
    return algorithm, input_shape


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
    torch.manual_seed(0)
    algorithm, input_shape = build(backbone, image_size, device)
    minibatches = [(torch.randn(batch_size, *input_shape, device=device),
                    torch.randint(0, 7, (batch_size,), device=device)) for _ in range(3)]
    segment = AveragedModel(algorithm)
    loop = SwadLoopAverage(algorithm, device)
    step = fastest(lambda: algorithm.update(minibatches), device, repeats)
    update = fastest(lambda: segment.update_parameters(algorithm, step=0), device, repeats)
    loop_update = fastest(lambda: loop.update(algorithm), device, repeats)
    reset = fastest(lambda: AveragedModel(algorithm), device, max(3, repeats // 4))
    freeze = fastest(lambda: segment.frozen("cpu"), device, max(3, repeats // 4))
    with_optimizer = fastest(lambda: copy.deepcopy(algorithm), device, max(3, repeats // 4))
    return {
        "backbone": backbone,
        "parameters": sum(p.numel() for p in algorithm.parameters()),
        "step_ms": 1000 * step, "update_ms": 1000 * update, "swad_loop_ms": 1000 * loop_update,
        "overhead": update / step, "reset_ms": 1000 * reset, "freeze_ms": 1000 * freeze,
        "deepcopy_with_optimizer_ms": 1000 * with_optimizer,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Per-step and per-checkpoint cost of weight averaging")
    parser.add_argument("--backbones", nargs="+", default=["mnist_cnn", "resnet18", "resnet50"])
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8, help="per domain; 3 training domains")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; 3 domains x {args.batch_size} images, "
          f"{args.image_size} px (28 px for mnist_cnn); best of {args.repeats}")
    header = (f"{'backbone':<10} {'params':>11} {'step ms':>9} {'update ms':>10} {'overhead':>9} "
              f"{'SWAD loop ms':>13} {'new segment ms':>15} {'freeze ms':>10} {'deepcopy+opt ms':>16}")
    print(header)
    for backbone in args.backbones:
        r = measure(backbone, args.image_size, args.batch_size, args.repeats, device)
        print(f"{r['backbone']:<10} {r['parameters']:>11,} {r['step_ms']:>9.2f} {r['update_ms']:>10.3f} "
              f"{100 * r['overhead']:>8.2f}% {r['swad_loop_ms']:>13.3f} {r['reset_ms']:>15.2f} "
              f"{r['freeze_ms']:>10.2f} {r['deepcopy_with_optimizer_ms']:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
