"""Mixed precision for the whole run: `--precision fp32 | bf16 | fp16`.

The trainer runs every `algorithm.update` and every evaluation inside `Precision.autocast()`
(torch.autocast on the run's device: CUDA, or the CPU's bf16 units), so methods need no change
for bf16: parameters, gradients and optimizer state stay float32 (autocast casts only the
inputs of matmuls and convolutions), and so does the state of the SAM family, which keeps g and
e in float32 explicitly (domainbed/optim/sam.py).

fp16 also needs loss scaling, and algorithms step their own optimizers. The scaling goes
through two hooks of `Algorithm` (algorithms/base.py): `self.backward(loss)` and
`self.optimizer_step(optimizer)`, plain `loss.backward()` and `optimizer.step()` unless
fp16 is on, when they are torch.amp.GradScaler's `scale(loss).backward()` and `step(optimizer)`
(which unscales, and skips the step when a gradient is inf or nan). The scale is updated once
per training step, after `update`. A method that needs the true gradient before stepping (the
SAM family's perturbation is computed from the first gradient) calls
`self.unscale_gradients(optimizer)` (GradScaler.unscale_), which says whether that gradient is
finite. Every registered method goes through these hooks (tests/test_contract.py); a method
that calls `backward()` or `step()` directly is refused under fp16 with a UsageError.
"""

import contextlib
import warnings

import torch

from domainbed.errors import UsageError, unknown_choice
from domainbed.hparams.declare import run_settings
from domainbed.hparams.rules import choice

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_cpu_bf16() -> bool | None:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX); None when torch cannot tell.
    Without it oneDNN emulates bf16 by conversions, slower than fp32 (1.9x for a ResNet-50
    step on an AVX512 Xeon without them)."""
    try:
        capability = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None
    return bool(capability.get("avx512_bf16") or capability.get("amx_bf16"))


class LossScaler:
    """What `Algorithm.backward` / `optimizer_step` call under fp16; counts its uses so the
    trainer can tell a method that bypasses it."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler
        self.backwards = 0
        self.steps = 0
        self._stepped, self._unscaled = set(), set()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        self.backwards += 1

    def _update_if_used(self, optimizer, used) -> None:
        # GradScaler allows one unscale_ and one step per optimizer between two updates; a
        # method that steps an optimizer twice in one update (SagNet) gets an update between
        if id(optimizer) in used:
            self.update()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self._update_if_used(optimizer, self._stepped)
        self.scaler.step(optimizer)
        self._stepped.add(id(optimizer))
        self.steps += 1

    def unscale(self, optimizer: torch.optim.Optimizer) -> bool:
        """GradScaler.unscale_(optimizer), then whether every gradient it holds is finite. A step
        abandoned on False counts as a (skipped) step."""
        self._update_if_used(optimizer, self._stepped | self._unscaled)
        self.scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))
        self.steps += 1
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return True
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def update(self) -> None:
        """GradScaler.update: the new scale from the inf checks since the last update."""
        self.scaler.update()
        self._stepped.clear()
        self._unscaled.clear()


class Precision:
    def __init__(self, name: str, device):
        if name not in DTYPES:
            raise unknown_choice("precision", name, list(DTYPES))
        self.name = name
        self.device = torch.device(device)
        self.dtype = DTYPES[name]
        self.loss_scaler = LossScaler(torch.amp.GradScaler(self.device.type)) if name == "fp16" else None
        if name == "bf16" and self.device.type == "cpu" and native_cpu_bf16() is False:
            warnings.warn("--precision bf16: this CPU has no bf16 units (AVX512-BF16 or AMX), so bf16 is "
                          "emulated and slower than fp32", stacklevel=2)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def attach(self, algorithm) -> None:
        """Give the algorithm's backward/step hooks the loss scaler (None: plain calls)."""
        algorithm.loss_scaler = self.loss_scaler

    @contextlib.contextmanager
    def training_step(self, algorithm):
        """Around one `algorithm.update`: autocast, then the loss-scale update under fp16."""
        with self.autocast():
            yield
        scaler = self.loss_scaler
        if scaler is None:
            return
        if scaler.backwards == 0 or scaler.steps == 0:
            raise UsageError(
                f"--precision fp16 needs loss scaling, but {type(algorithm).__name__}.update calls "
                f"{'backward()' if scaler.backwards == 0 else 'optimizer.step()'} directly instead of "
                "self.backward(loss) / self.optimizer_step(optimizer); use --precision bf16 (no scaling "
                "needed) or fp32"
            )
        scaler.update()
        scaler.backwards = scaler.steps = 0

    def state_dict(self) -> dict:
        return {} if self.loss_scaler is None else {"grad_scaler": self.loss_scaler.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.loss_scaler is not None and "grad_scaler" in state:
            self.loss_scaler.scaler.load_state_dict(state["grad_scaler"])


@run_settings
def _precision_settings(hparam, dataset):
    hparam("precision", "fp32", valid=choice(DTYPES),
           help="arithmetic of training and evaluation: fp32, bf16 or fp16 (fp16 with loss scaling)")
