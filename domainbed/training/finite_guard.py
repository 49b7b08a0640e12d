"""Stop a run as soon as a training loss, a checkpoint's evaluation or a selection row is not finite.

A NaN or infinite loss (too high a learning rate, say) poisons the weights for good: every later
step, checkpoint and record would be wasted or, worse, reported. The training loss can stay
finite while the model already predicts NaN (the validation loss is NaN from the first checkpoint
with `--lr 1e3`), and an accuracy of NaN logits is a meaningless number, so three checks:

- each stat of every step whose name contains "loss", when the trainer reads the step's stats on
  the host (every `tb_freq` steps and before every checkpoint's evaluation: reading them after
  every step would make the host wait for the device every step); the line names the step;
- at every checkpoint, before any extension consumes the record (weight averaging would converge
  on a NaN threshold), every number of the record: the split accuracies and losses and their
  summaries; the trainer still writes that record to results.jsonl, so the user sees it;
- after every extension's `finish`, each selection row, so no table row is built on NaN.

Each raises a one-line `NonFiniteNumberError` before the step's checkpoint is written, so the
checkpoints from before it stay intact for inspection or a resume with other settings.
"""

from domainbed.training.extensions import Extension, register_extension
from domainbed.training.finite_numbers import require_finite

ORDER = -100  # before any extension that would consume the poisoned weights or numbers (weight averaging)
ROWS_ORDER = 10_000  # after every extension has added its rows


def _stops(fold, step: int, kept: str = "") -> str:
    return (f"the run stops here ({kept}checkpoints before step {step} are kept): lower the lr "
            f"(now {fold.hparams.get('lr')}) or check the inputs")


class FiniteGuard(Extension):
    def on_stats(self, fold, step: int, stats: dict) -> None:
        losses = {f"training {key}": value for key, value in stats.items() if "loss" in key}
        require_finite(losses, f"[{fold.name}] step {step}", _stops(fold, step))

    def at_checkpoint(self, fold, step: int, record: dict) -> None:
        require_finite(record, f"[{fold.name}] evaluation at step {step}",
                       _stops(fold, step, kept="results.jsonl keeps this record, "))


class FiniteRows(Extension):
    def finish(self, fold, rows: dict) -> None:
        require_finite(rows, f"[{fold.name}] selection row",
                       "no table is built on it; results.jsonl and log.txt hold the records it came from")


@register_extension(ORDER)
def finite_numbers(hparams: dict) -> FiniteGuard:
    return FiniteGuard()


@register_extension(ROWS_ORDER)
def finite_rows(hparams: dict) -> FiniteRows:
    return FiniteRows()
