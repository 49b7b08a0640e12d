"""Step-time overhead of QT-DoG's fake quantization relative to the same model in float.

    python -m domainbed.scripts.benchmark quant [--algorithm ERM] [--backbone resnet50]
        [--image_size 224] [--batch_size 32] [--domains 3] [--bits 7] [--q_linear]
        [--steps 20] [--warmup 3] [--device auto]

Two copies of the algorithm start from the same weights; one has its layers swapped for LSQ
fake-quantized ones (as `--quant 1` does at `q_steps`). Their training steps (update on random
images, one minibatch of `batch_size` per domain) and evaluation forward passes take turns, so
that other load on the machine slows both alike. Prints the median times and the overhead of
the quantized model.
"""

import torch
from prettytable import PrettyTable

from domainbed.quant import quantize_model
from domainbed.scripts.timing import build_algorithm, device_name, random_minibatches, round_robin
from domainbed.training.trainer import resolve_device


def add_arguments(parser) -> None:
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


def build(args, device, quantized: bool):
    shape = (3, args.image_size, args.image_size)
    algorithm = build_algorithm(args.algorithm, shape, 7, args.domains, device, backbone=args.backbone,
                                batch_size=args.batch_size)
    if quantized:
        layers = quantize_model(algorithm, args.bits, q_linear=args.q_linear)
        algorithm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
    return algorithm


def main(args) -> str:
    device = resolve_device(args.device)
    quant = f"{args.bits}-bit"
    models = {"float": build(args, device, False), quant: build(args, device, True)}
    shape = (3, args.image_size, args.image_size)
    minibatches = random_minibatches(args.domains, args.batch_size, shape, 7, device)
    eval_x = torch.cat([x for x, _ in minibatches])

    def train(model):
        model.train()
        model.update(minibatches)

    @torch.no_grad()
    def evaluate(model):
        model.eval()
        model.predict(eval_x)

    functions = {}
    for name, model in models.items():
        functions[name, "train"] = lambda model=model: train(model)
        functions[name, "eval"] = lambda model=model: evaluate(model)
    medians = {key: 1000 * seconds for key, seconds in round_robin(functions, device, args.warmup, args.steps).items()}
    table = PrettyTable(["model", "train step (ms)", "eval forward (ms)"])
    for name in models:
        table.add_row([name, f"{medians[name, 'train']:.1f}", f"{medians[name, 'eval']:.1f}"])
    n_layers = sum(1 for m in models[quant].modules() if hasattr(m, "step_size"))
    overheads = [f"fake-quantization overhead, {kind}: {100 * (medians[quant, kind] / medians['float', kind] - 1):+.1f}%"
                 for kind in ("train", "eval")]
    return "\n".join([
        f"{args.algorithm} / {args.backbone} at {args.image_size}px, {args.domains} x {args.batch_size} images per "
        f"step, {device_name(device)}, torch {torch.__version__}; {n_layers} quantized layers; median of "
        f"{args.steps} steps after {args.warmup} warm-up", str(table), *overheads])
