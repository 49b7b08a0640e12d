"""The `Algorithm` base class: the contract between a method and the shared trainer.

A method is a subclass registered with `@register_algorithm("Name")` in its own module of this
package. The trainer only ever calls the methods below; when a new feature needs the trainer to
reach into algorithms, it gets a new hook here (with a default that does the right thing for
every existing method) rather than a branch on an algorithm's name.
"""

import torch
import torch.nn as nn

from domainbed import distributed
from domainbed.optim import get_optimizer


class Algorithm(nn.Module):
    """A domain-generalization method, as DomainBed defines it. This docstring is the contract
    every registered method keeps; domainbed/algorithms/contract.py checks it, for every name in
    `ALGORITHMS` (tests/test_contract.py) and for any method outside the repository
    (`python -m domainbed.scripts.check_method package.module:Class`).

    Construction: `Algorithm(input_shape, num_classes, num_domains, hparams)`. `input_shape` is
    one input's shape ((16,): MLP, (C, 28, 28): MNIST CNN, larger images: `hparams["backbone"]`),
    `num_domains` the number of training domains, `hparams` a plain dict (hparams_registry).
    Methods with a featurizer and a head expose `featurizer`, `classifier` and `network`.

    update(minibatches) -> dict
        One training step. `minibatches` is a list of (x, y), one pair per training domain, in
        environment order (all on the algorithm's device). Returns its statistics, at least
        `loss`, all finite for finite inputs, each a detached 0-dim floating-point tensor (left on
        the device: the trainer reads them on the host only when it logs them,
        domainbed/training/step_stats.py) or a python float. The step changes trainable
        parameters (fp16 may skip a step whose gradients are inf or nan, as GradScaler does).
        On a GPU nothing in it should wait for the device: no `.item()`, `float()`, `bool()` or
        `.tolist()` of a device tensor, no tensor built from python numbers on the device
        (tests/test_host_sync.py checks the methods of the GPU path).

    predict(x, env=None) -> logits
        `env` is a training domain's index (its position in `update`'s list) for in-domain
        validation; None for an unseen domain. In eval mode, predict is a deterministic function
        of the parameters, buffers and x (no sampling, no state change).

    on_checkpoint(step, validation) -> bool
        After the evaluation at every checkpoint, the training domains' validation numbers (for
        schedules driven by them); True ends training after this checkpoint. Default: False.

    optimizers() -> {name: torch.optim.Optimizer}
        Every optimizer `update` steps. Every trainable parameter of the module is in exactly one
        of them (one param group), so checkpoints, quantization and averaging see them all.

    State round trip
        `load_state_dict(state_dict(), strict=True)` plus each optimizer's `load_state_dict`
        on a fresh instance built with the same arguments continues bit-identically for the same
        minibatches and RNG state. Counters, schedules and memory banks that change in training
        are buffers or go through `get_extra_state()` / `set_extra_state()`; `step` and
        `n_steps` are set by the trainer through `on_step_begin`. Resumable runs
        (domainbed/runs/checkpoint.py) save exactly this plus the RNG states.

    Precision (domainbed/training/precision.py)
        The trainer runs `update` and evaluation inside `torch.autocast` (bf16 or fp16), so every
        forward pass is autocast with no work from the method; parameters and optimizer state stay
        float32. Every backward goes through `self.backward(loss)` and every optimizer step through
        `self.optimizer_step(optimizer)`: plain calls under fp32/bf16, GradScaler's scaled
        backward and unscale-then-step (skipped on inf/nan) under fp16. A method that needs the
        true gradient between backward and step (the SAM family's perturbation) calls
        `self.unscale_gradients(optimizer)` first, which says whether every gradient is finite
        (under fp16 as a bool tensor on the device, to be used in tensor arithmetic, not in an
        `if`). `torch.autograd.grad` on a loss inside `update` (penalties on gradients) is not
        scaled; such methods keep the gradient graph in the autocast dtype's range themselves.

    Weight averaging (domainbed/averaging/)
        An averaged model is a copy of the method holding its parameters and buffers only:
        optimizers, gradients and any other tensor held in a plain attribute (caches, scratch
        memory, GradSurgery's layout) are left out of the copy (the attribute is None there),
        so nothing of the training step is duplicated in every SWAD segment. A tensor that
        `predict` needs is therefore a parameter or a buffer (`persistent=False` for a
        constant).

    Quantization (domainbed/quant/swap.py)
        `quantize_model` may swap Conv2d/Linear modules in place for quantized ones that keep the
        same weight and bias Parameters (same identity, same optimizer entries) and add a
        `step_size` Parameter per layer; the trainer hands those to
        `add_parameters_to_optimizers`, which puts each into the param group of its layer's
        weight. Nothing else changes, but a swapped layer is a new module object: a method that
        keeps references to, or hooks on, individual Conv2d/Linear layers loses them, so hooks
        go on containers (ResNet stages from `mask_sites()` / `style_sites()`). Known limit:
        DMG's masks on AlexNet's fc6/fc7 are hooks on Linear layers, lost under `--q_linear`.

    Training-only parts (`TRAINING_ONLY`)
        Submodules that `update` uses and `predict` never does (MIRO's frozen copy of the
        pretrained featurizer and its variance encoders), named by attribute
        (domainbed/training_only.py). Copies made for prediction (weight averages) leave them out,
        saved final models omit them (a rebuilt algorithm keeps its freshly built ones),
        quantization keeps them in float and model sizes do not count them. Checkpoints for
        resuming keep them: `state_dict()` is unchanged.

    Run settings of its own (`own_run_settings(dataset)`)
        The run settings (config.yaml's keys) that the method's own repository configures
        otherwise than SWAD's config.yaml, such as MIRO's `swad: False`: they apply over
        config.yaml and under extra yaml files and the command line
        (domainbed/hparams/config.py), so the method's published lines run as its code ran them.

    Data parallelism (`DATA_PARALLEL`, domainbed/distributed.py)
        Under `torchrun --nproc_per_node N` every process updates on its equal share of every
        domain's minibatch, and `self.backward` averages the gradients over the processes after
        each backward pass. A method sets `DATA_PARALLEL = True` when its update then equals the
        single-process update on the whole batch: its loss is a mean over samples, or it computes
        whatever needs a domain's whole batch (per-domain risks, feature statistics) through
        `distributed.global_mean` / `distributed.all_gather`, and it draws nothing per sample at
        random. The others (False, the default) are refused in one line under N > 1.
        The contract test checks every method that claims it against the single-process step.

    A method that needs something else from the trainer gets a new hook here, with a default
    that keeps every existing method as it is.
    """

    # How the contract checks (domainbed/algorithms/contract.py) build the method. "features": an
    # MLP on (8,) inputs, the fast default; "images": a ResNet-18 from scratch on (3, 32, 32)
    # images, for methods that act on feature maps or backbone stages (MixStyle, CutMix, ARM).
    CONTRACT_INPUT = "features"
    # hparams set on top of the method's Synthetic defaults in those checks: for a default that
    # trains nothing on a fresh network (say why beside it); values the random search draws
    CONTRACT_HPARAMS = {}
    # attribute names of the submodules that only `update` uses (see "Training-only parts")
    TRAINING_ONLY = ()
    # whether the update on N processes equals the one-process update (see "Data parallelism")
    DATA_PARALLEL = False

    def __init__(self, input_shape, num_classes: int, num_domains: int, hparams: dict):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.hparams = hparams
        self.step = 0
        self.n_steps = None

    @classmethod
    def data_parallel(cls) -> bool:
        """Whether this class itself declares `DATA_PARALLEL = True`. Not inherited: a subclass
        changes the update, so it claims data parallelism again once it keeps it."""
        return bool(cls.__dict__.get("DATA_PARALLEL", False))

    @classmethod
    def own_run_settings(cls, dataset: str) -> dict:
        """{run setting: value} that this method's own repository sets otherwise than SWAD's
        config.yaml (see "Run settings of its own"); none by default."""
        return {}

    def update(self, minibatches) -> dict:
        """One training step on `minibatches`: a list of (x, y), one pair per training domain,
        in environment order. Returns a dict of detached 0-dim tensors or python floats (at
        least `loss`)."""
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

    def on_checkpoint(self, step: int, validation: dict) -> bool:
        """Called by the trainer after the evaluation at every checkpoint (the one after the
        update of `step`), before the fold is checkpointed. `validation` holds the training
        domains' held-out numbers of that evaluation, of `predict`: `train_out` and `tr_outloss`
        (accuracy and cross-entropy averaged over the domains) and each domain's `env{i}_out` /
        `env{i}_out_loss`; never a test domain's. Schedules driven by validation (ERM++'s
        ReduceLROnPlateau) step here, their state a buffer or in `get_extra_state()`. Returns
        True to end training after this checkpoint; the default does nothing and returns False."""
        return False

    # set by domainbed.training.precision under --precision fp16; None: backward/optimizer_step are plain
    loss_scaler = None

    def backward(self, loss) -> None:
        """`loss.backward()`, with the loss scaled under fp16 mixed precision. A method that
        back-propagates through this and steps through `optimizer_step` trains under every
        `--precision`; one that calls them directly trains under fp32 and bf16. Under data
        parallelism the gradients are then the mean over the processes (`DATA_PARALLEL`)."""
        if self.loss_scaler is None:
            loss.backward()
        else:
            self.loss_scaler.backward(loss)
        distributed.average_gradients(self.parameters())

    def unscale_gradients(self, optimizer):
        """Make the `.grad` of `optimizer`'s parameters the true gradients now (under fp16 they
        are divided by the loss scale, GradScaler.unscale_; at most once per optimizer and step)
        and say whether they are all finite: plain True, with no work, under fp32 and bf16; under
        fp16 a 0-dim bool tensor on the device (GradScaler's verdict; branching on it in python
        would make the host wait for the device)."""
        if self.loss_scaler is None:
            return True
        return self.loss_scaler.unscale(optimizer)

    def loss_scale(self) -> float:
        """The factor that gradients from `self.backward` carry until they are unscaled: 1 under
        fp32 and bf16, GradScaler's scale under fp16 (a method that reads `.grad` itself, such as
        SAND-mask's variance, divides by it)."""
        return 1.0 if self.loss_scaler is None else float(self.loss_scaler.scaler.get_scale())

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
