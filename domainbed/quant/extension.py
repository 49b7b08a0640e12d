"""QT-DoG as a trainer extension: quantization-aware training for any algorithm.

QT-DoG (Javed, Le, Salzmann, "QT-DoG: Quantization-aware Training for Domain Generalization")
trains in float until step `q_steps`, then swaps every convolution for an LSQ fake-quantized one
(`q_bits` = 7 bits per weight, one step per output channel) and trains on; the quantization
noise drives the weights to flatter minima. Ensembles of several such runs are EoQ (see
domainbed/scripts/ensemble.py). Run-level hparams (config.yaml):

    quant      False   True (or 1, as QT-DoG's `--quant 1`) turns it on
    q_steps    2000    the step before whose update the model is swapped (QT-DoG's default)
    q_bits     7       bits per weight
    q_linear   False   quantize Linear layers too (the ViT table of the paper)
    q_exclude  ""      comma-separated module names (or prefixes) to keep in float

At the swap the latent weights stay the very Parameter objects the optimizer holds, so their
optimizer state carries on, and the new step sizes join the param group of their layer's weight
(`Algorithm.add_parameters_to_optimizers`); weight averaging, if on, restarts from the quantized
model (domainbed/averaging/extension.py sees the parameters change). The log and the table's legend give the model size with quantized weights at `q_bits`
bits and the rest at 32, and the compression ratio; with `--model_save` each fold also writes
models/compact/TE{i}_final.pth, the final model as packed integer codes plus step sizes.

Differences from QT-DoG's code (saqibjaved1/QT-DoG, domainbed/training/trainer.py and quan/):
- The official swap builds new Parameters for every convolution (and new step sizes) but keeps
  the optimizer built before the swap, which holds only the old Parameters: after `q_steps` the
  convolutions' latent weights and step sizes never change again and only BatchNorm and the
  classifier train. We keep training the latent weights and the step sizes, as LSQ intends and
  as the paper describes; the optimizer state of every other parameter is kept.
- The official code quantizes only `nn.Conv2d` (its Linear mapping is commented out); `q_linear`
  adds Linear layers, which the paper's DeiT-Small results need.
- Like the official code we quantize every convolution, the stem included (its `conv1`/`fc`
  exceptions never match the real module names); `q_exclude` makes exceptions that do match.
- Weight averaging restarts at the swap, as the official code's new averaged model and new SWAD
  object do: domainbed/averaging/extension.py restarts by itself when the algorithm's parameters change.
- The model size and compression ratio are reported (the paper's tables give them; the code
  does not compute them), and the compact checkpoint is ours.
"""

from domainbed.errors import UsageError
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import int_at_least, int_between
from domainbed.training.extensions import Extension, register_extension
from domainbed.runs import model_io
from domainbed.runs.layout import compact_model_path
from domainbed.runs.model_io import register_rebuild
from domainbed.quant.compact import model_size_mb, save_compact
from domainbed.quant.lsq import MAX_BITS, MIN_BITS
from domainbed.quant.swap import check_exclude, parse_exclude, quantizable_names, quantize_model

ORDER = 90  # after weight averaging, so that `finish` sees its final model and its rows


class Quantization(Extension):
    def __init__(self, q_steps: int, bits: int, q_linear: bool, exclude: tuple):
        self.q_steps = q_steps
        self.bits = bits
        self.q_linear = q_linear
        self.exclude = exclude
        self.swapped = False

    def transform(self, layers) -> dict:
        return {"bits": self.bits, "q_linear": self.q_linear, "exclude": list(self.exclude), "layers": list(layers)}

    def check_model(self, algorithm, algorithm_name):
        if not quantizable_names(algorithm, self.q_linear):
            kinds = "Conv2d or Linear" if self.q_linear else "Conv2d (pass --q_linear True for Linear layers)"
            raise UsageError(f"--quant found no {kinds} layer to quantize in {algorithm_name}")
        check_exclude(algorithm, self.q_linear, self.exclude)

    def setup(self, fold):
        self.check_model(fold.algorithm, fold.settings.algorithm)
        if self.q_steps >= fold.settings.n_steps:
            fold.log(f"[{fold.name}] q_steps {self.q_steps} >= {fold.settings.n_steps} steps: "
                     "the model is never quantized and stays in float")

    def quantize(self, fold) -> dict:
        """Swap the layers, let the step sizes learn, record the swap for model_io."""
        layers = quantize_model(fold.algorithm, self.bits, self.q_linear, self.exclude)
        fold.algorithm.add_parameters_to_optimizers([(m.step_size, m.weight) for m in layers.values()])
        fold.model_transforms["quant"] = self.transform(layers)
        self.swapped = True
        return layers

    def before_step(self, fold, step):
        if step != self.q_steps or self.swapped:
            return
        layers = self.quantize(fold)
        size, float_size = model_size_mb(fold.algorithm)
        fold.log(f"[{fold.name}] step {step}: {len(layers)} layers quantized to {self.bits} bits; "
                 f"model {float_size:.2f} MB -> {size:.2f} MB ({float_size / size:.2f}x smaller)")

    def finish(self, fold, rows):
        if not self.swapped:
            return
        model = fold.final_model or fold.algorithm
        size, float_size = model_size_mb(model)
        note = f"model {size:.2f} MB at {self.bits} bits ({float_size / size:.2f}x smaller than float)"
        fold.log(f"[{fold.name}] {note}; {float_size:.2f} MB in float")
        fold.row_rules["model size"] = note
        settings = fold.settings
        if settings.model_save is not None and settings.out_dir is not None:
            path = compact_model_path(settings.out_dir, settings.test_envs)
            save_compact(path, model, model_io.model_meta(
                settings.algorithm, fold.dataset, fold.algorithm.num_domains, fold.hparams, settings.test_envs,
                fold.model_transforms))
            fold.log(f"[{fold.name}] compact {self.bits}-bit model: {path} ({path.stat().st_size / 2**20:.2f} MB)")

    def state_dict(self):
        return {"swapped": self.swapped}

    def load_state_dict(self, state):
        """On resumption the checkpoint has already replayed the swap through the "quant"
        rebuild below (and put the step sizes back in their param groups)."""
        self.swapped = bool(state.get("swapped"))


@register_extension(ORDER)
def make_quantization(hparams):
    if not hparams.get("quant", False):
        return None
    return Quantization(hparams["q_steps"], hparams["q_bits"], bool(hparams["q_linear"]),
                        parse_exclude(hparams["q_exclude"]))


@register_rebuild("quant")
def rebuild_quantized(algorithm, transform: dict) -> None:
    """Swap a freshly built algorithm's layers as the saved run did, before its state loads."""
    layers = quantize_model(algorithm, transform["bits"], transform["q_linear"], transform["exclude"])
    if list(layers) != list(transform["layers"]):
        raise UsageError(f"the saved model quantized layers {transform['layers']}, "
                         f"but this algorithm quantizes {list(layers)}")


@run_settings
def _quantization_settings(hparam, dataset):
    hparam("quant", False, help="QT-DoG: swap layers for LSQ fake-quantized ones at step q_steps")
    hparam("q_steps", 2000, valid=int_at_least(0), help="the step at which QT-DoG quantization starts")
    hparam("q_bits", 7, valid=int_between(MIN_BITS, MAX_BITS), help="bits of QT-DoG's weight quantization")
    hparam("q_linear", False, help="quantize Linear layers too (else Conv2d only)")
    hparam("q_exclude", "", help="comma-separated module names QT-DoG keeps in float")
