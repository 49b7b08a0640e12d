"""TensorBoard scalars of a fold, readable with a stock `tensorboard --logdir OUTPUT_DIR`.

Each fold writes to RUN_DIR/tensorboard/TE{envs}: every `tb_freq` steps the update's statistics
(`train/loss`, ...), `train/step_time` and the learning rate of every optimizer (`lr/NAME`, its
first parameter group); at every checkpoint each number of the record (`checkpoint/test_in`,
`checkpoint/env0_out`, `checkpoint/env0_out_loss`, ...). A fold purges the events from its first
step on (after its checkpoint when resumed), so TensorBoard shows one curve, not a crashed run's
tail and the resumed one on top of each other. `tb_freq` 0, or no `tensorboard` package installed,
writes nothing.
"""

SKIPPED = {"step", "test_envs"}


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class ScalarLog:
    """The fold's events in `log_dir` (domainbed/runs/layout.py's `tensorboard_dir`); None writes nothing."""

    def __init__(self, log_dir, start_step: int, tb_freq: int):
        writer_class = _summary_writer() if log_dir is not None and tb_freq > 0 else None
        self.tb_freq = tb_freq
        self.writer = None
        if writer_class is not None:
            self.writer = writer_class(str(log_dir), purge_step=start_step)

    def train(self, step: int, stats: dict, step_time: float, optimizers: dict) -> None:
        if self.writer is None or step % self.tb_freq:
            return
        for key, value in stats.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.add_scalar("train/step_time", step_time, step)
        for name, optimizer in optimizers.items():
            self.writer.add_scalar(f"lr/{name}", optimizer.param_groups[0]["lr"], step)

    def checkpoint(self, step: int, record: dict) -> None:
        """Also flushes, so that what precedes a resume checkpoint is on disk with it."""
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"checkpoint/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
