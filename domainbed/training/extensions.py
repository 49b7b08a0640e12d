"""Trainer extensions: run-level features that compose with every algorithm.

Weight averaging, quantization-aware training and the like are not algorithms: any method can
be trained with them. Each is an `Extension` whose hooks the trainer calls at fixed points of a
fold; a factory registered with `@register_extension(order)` reads the hparams and returns an
extension, or None when the feature is off. The trainer knows nothing about any of them.

Hooks receive the `Fold` (see trainer.py): its algorithm, hparams, evaluator, log, paths and
records. Extensions run in increasing `order` at every hook.

An extension from outside the repository registers the same way: its module decorates a factory
with `@register_extension(order)` (and declares the hparams it reads with
`domainbed.hparams.declare.run_settings`), and its package names that module in an entry point,

    [project.entry-points."domainbed.extensions"]
    my_extension = "my_package.my_extension"

which every run imports before it builds its extensions (domainbed/plugins.py).
"""

import importlib

from domainbed import plugins

EXTENSION_FACTORIES = []

# The harness's own modules that register extensions, imported when the first run builds its
# extensions; installed packages' come in through their entry points (domainbed/plugins.py).
EXTENSION_MODULES = ("domainbed.training.finite_guard", "domainbed.quant.extension", "domainbed.averaging.extension",
                     "domainbed.search.extension")
ENDED_EXIT_CODE = 3  # train_all.py's exit status when a hook ended the run (`EndRun`)


class EndRun(Exception):
    """Raised by a hook to end the whole run where it is, by decision rather than on an error (the
    hparam search pruning its trial at a checkpoint): the records so far stay, no table is
    written, log.txt and stderr end with the message, and train_all.py exits with
    ENDED_EXIT_CODE. `fold.stop` ends only the fold; the run would go on to the next one."""


def register_extension(order: int):
    """Register `factory(hparams) -> Extension | None`; lower `order` runs first."""

    def decorator(factory):
        EXTENSION_FACTORIES.append((order, factory))
        EXTENSION_FACTORIES.sort(key=lambda item: item[0])
        return factory

    return decorator


def import_extension_modules() -> None:
    """Import every module that registers extensions (and the model rebuilds they bring),
    installed packages' entry points included."""
    for module in EXTENSION_MODULES:
        importlib.import_module(module)
    plugins.load_entry_points()


def build_extensions(hparams: dict) -> list:
    import_extension_modules()
    extensions = (factory(hparams) for _, factory in EXTENSION_FACTORIES)
    return [extension for extension in extensions if extension is not None]


class Extension:
    """No-op defaults for every hook; override the ones a feature needs."""

    def check_model(self, algorithm, algorithm_name: str) -> None:
        """Before the run directory exists, on the run's algorithm freshly built on the CPU: raise a
        one-line UsageError for a setting this model cannot take (no layer to quantize, say)."""

    def setup(self, fold) -> None:
        """Once the algorithm is built and on its device, before the first step."""

    def before_step(self, fold, step: int) -> None:
        """Before `algorithm.update` at `step`."""

    def after_step(self, fold, step: int) -> None:
        """After `algorithm.update` at `step`; `fold.stats` holds the dict it returned (tensors
        still on the device: reading one here would synchronise every step)."""

    def on_stats(self, fold, step: int, stats: dict) -> None:
        """The stats of `step` as python numbers, when the trainer reads them on the host: every
        `tb_freq` steps and at every checkpoint (before its evaluation), each pending step in
        order (domainbed/training/step_stats.py)."""

    def at_checkpoint(self, fold, step: int, record: dict) -> None:
        """After the evaluation at `step`; `record` is the checkpoint's record, which the
        extension may extend. Setting `fold.stop = True` ends training after this checkpoint."""

    def finish(self, fold, rows: dict) -> None:
        """After training: add selection rows (name -> accuracy) to `rows`, describe them in
        `fold.row_rules` (a key that is no row becomes a note under the table), and set
        `fold.final_model` if the fold's result is another model."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
