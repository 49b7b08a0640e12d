"""Stop a run whose training loss stops being a finite number.

A NaN or infinite loss (too high a learning rate, say) poisons the weights for good: every later
step, checkpoint and record would be wasted or, worse, reported. This extension checks every
step's losses (each stat whose name contains "loss") and ends the run with a one-line
`NonFiniteLossError` before the step's checkpoint is written, so the checkpoints from before it
stay intact for inspection or a resume with other settings.
"""

import math

from domainbed.errors import UsageError
from domainbed.training.extensions import Extension, register_extension

ORDER = -100  # before any extension that would consume the poisoned weights (weight averaging)


class NonFiniteLossError(UsageError):
    """The training loss became NaN or infinite."""


class FiniteLoss(Extension):
    def after_step(self, fold, step: int) -> None:
        for key, value in fold.stats.items():
            if "loss" in key and not math.isfinite(value):
                raise NonFiniteLossError(
                    f"[{fold.name}] training {key} is {value} at step {step}; the run stops here (checkpoints "
                    f"before step {step} are kept): lower the lr (now {fold.hparams.get('lr')}) or check the inputs"
                )


@register_extension(ORDER)
def finite_loss(hparams: dict) -> FiniteLoss:
    return FiniteLoss()
