"""The `Algorithm` base class: the contract between a method and the shared trainer.

A method is a subclass registered with `@register_algorithm("Name")` in its own module of this
package. The trainer only ever calls the methods below; when a new feature needs the trainer to
reach into algorithms, it gets a new hook here (with a default that does the right thing for
every existing method) rather than a branch on an algorithm's name.
"""

import torch
import torch.nn as nn

from domainbed.optim import get_optimizer


class Algorithm(nn.Module):
    """A domain-generalization method, as DomainBed defines it.

    Args:
        input_shape: shape of one input, e.g. (3, 224, 224), (2, 28, 28) or (16,).
        num_classes: number of classes.
        num_domains: number of training domains; `update` receives one minibatch per domain.
        hparams: a plain dict of hyperparameters (see `domainbed.hparams_registry`).

    Resumable runs (domainbed/checkpoint.py) save the state dict, every optimizer of
    `optimizers()` and the RNG states, and set `step` through `on_step_begin`. Any other state
    that changes during training (a counter, a scheduler, a memory bank that is not a buffer)
    belongs in `nn.Module.get_extra_state()` / `set_extra_state()`, which the state dict carries.
    """

    def __init__(self, input_shape, num_classes: int, num_domains: int, hparams: dict):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.hparams = hparams
        self.step = 0
        self.n_steps = None

    def update(self, minibatches) -> dict:
        """One training step on `minibatches`: a list of (x, y), one pair per training domain,
        in environment order. Returns a dict of python floats (at least `loss`)."""
        raise NotImplementedError

    def predict(self, x, env: int | None = None):
        """Logits for `x`. `env` is the index of a training domain (its position in the list
        `update` receives) when `x` comes from that domain, None for an unseen domain."""
        raise NotImplementedError

    def forward(self, x):
        return self.predict(x)

    def on_step_begin(self, step: int, n_steps: int) -> None:
        """Called by the trainer before every `update`: schedules (RSC's curriculum, warm-ups)
        read `self.step` and `self.n_steps` instead of counting calls themselves."""
        self.step = step
        self.n_steps = n_steps

    # set by domainbed.precision under --precision fp16; None: backward/optimizer_step are plain
    loss_scaler = None

    def backward(self, loss) -> None:
        """`loss.backward()`, with the loss scaled under fp16 mixed precision. A method that
        back-propagates through this and steps through `optimizer_step` trains under every
        `--precision`; one that calls them directly trains under fp32 and bf16."""
        if self.loss_scaler is None:
            loss.backward()
        else:
            self.loss_scaler.backward(loss)

    def optimizer_step(self, optimizer) -> None:
        """`optimizer.step()`; under fp16 the gradients are unscaled first and the step is
        skipped when one of them is inf or nan (torch.amp.GradScaler.step)."""
        if self.loss_scaler is None:
            optimizer.step()
        else:
            self.loss_scaler.step(optimizer)

    def optimizers(self) -> dict:
        """Every optimizer this method steps with, by name, for checkpoints and resumption.
        Methods with other optimizer attributes than `self.optimizer` override this."""
        optimizer = getattr(self, "optimizer", None)
        return {} if optimizer is None else {"optimizer": optimizer}

    def new_optimizer(self, params) -> torch.optim.Optimizer:
        """The base optimizer named by the hparams (`optimizer`, `lr`, `weight_decay`, `momentum`)."""
        return get_optimizer(self.hparams["optimizer"], params, self.hparams["lr"], self.hparams["weight_decay"],
                             self.hparams.get("momentum", 0.0))

    def add_parameters_to_optimizers(self, params_beside) -> list:
        """Let parameters created after construction learn (quantization's step sizes, say).

        `params_beside` is a list of (new parameter, existing parameter) pairs: each new one
        joins the param group that already holds its existing partner, in whichever optimizer
        of `optimizers()` that is, so it shares that group's lr, weight decay and schedule while
        every other parameter keeps its optimizer state. Returns the new parameters that no
        optimizer took (their partner is not optimized). Methods that keep optimizers outside
        `optimizers()` or build them in another way override this.
        """
        groups = {id(group): group for optimizer in self.optimizers().values() for group in optimizer.param_groups}
        owner = {id(p): group for group in groups.values() for p in group["params"]}
        left_out = []
        for new, existing in params_beside:
            group = owner.get(id(existing))
            if group is None:
                left_out.append(new)
            elif id(new) not in owner:
                group["params"].append(new)
                owner[id(new)] = group
        return left_out
