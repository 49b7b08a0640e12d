"""`--compile`: torch.compile the featurizer of an algorithm, in place.

`nn.Module.compile()` compiles the module's call and keeps its parameters and state-dict keys,
so checkpoints, saved models and extensions see the same module tree. Only the featurizer is
compiled: it holds nearly all the arithmetic and every method calls it; a method's own step
(perturbations, per-domain losses, masks) stays eager, so nothing a method does can break under
compilation, it just runs uncompiled. Methods that call `featurizer.feature_map` directly (RSC)
do not gain from it.
"""

import torch.nn as nn

from domainbed.errors import UsageError
from domainbed.hparams.declare import run_settings


def compile_featurizer(algorithm) -> None:
    featurizer = getattr(algorithm, "featurizer", None)
    if not isinstance(featurizer, nn.Module):
        raise UsageError(f"--compile compiles the featurizer, and {type(algorithm).__name__} has none; drop --compile")
    featurizer.compile()


@run_settings
def _compile_settings(hparam, dataset):
    hparam("compile", False, help="torch.compile the featurizer")
