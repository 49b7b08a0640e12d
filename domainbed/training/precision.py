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

Under fp16 nothing of this waits for the device: whether a gradient is finite is GradScaler's own
`found_inf`, a device tensor (not a recomputation read on the host), and the optimizers of
`algorithm.optimizers()` that torch can fuse (Adam, AdamW, SGD) take their fused kernels, to which
GradScaler hands `found_inf`: the kernel skips the step on the device, where GradScaler would
otherwise read `found_inf` on the host before every step. (The fused kernels round slightly
differently from the default multi-tensor ones, so they are switched on for fp16 only, which has
no earlier results to keep.)

bf16 needs arithmetic units for it: on a CUDA device older than Ampere (compute capability 8.0:
V100, T4) `check_precision` refuses it with one line suggesting fp16, before the run directory
exists; a CPU without bf16 units emulates it, slower than fp32, with a warning.
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


def check_precision(name: str, device) -> None:
    """A one-line UsageError for a precision the device cannot compute in: bf16 on a CUDA
    device below compute capability 8.0, which has no bf16 arithmetic (torch's autocast then
    fails deep inside, or emulates it far slower than fp16)."""
    if name not in DTYPES:
        raise unknown_choice("precision", name, list(DTYPES))
    device = torch.device(device)
    if name != "bf16" or device.type != "cuda" or not torch.cuda.is_available():
        return
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} (compute capability "
                         f"{major}.{minor}) has no bf16 arithmetic, which needs 8.0 (Ampere) or newer; use "
                         "--precision fp16 (with loss scaling) or fp32")


FUSABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
FUSED_DEVICES = ("cuda", "cpu")


def fuse(optimizer: torch.optim.Optimizer) -> bool:
    """Switch `optimizer` to torch's fused kernel, as if built with `fused=True`, when it is a
    fresh Adam, AdamW or SGD on devices with fused kernels; returns whether it did. GradScaler then
    passes its device-side `found_inf` to the kernel instead of reading it on the host."""
    if type(optimizer) not in FUSABLE or optimizer.state:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(group.get("differentiable") for group in optimizer.param_groups) or not all(
            p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params):
        return False
    for group in [optimizer.defaults, *optimizer.param_groups]:
        group["fused"], group["foreach"] = True, False
    # what the constructors set for fused=True (torch/optim/adam.py, sgd.py)
    optimizer._step_supports_amp_scaling = True
    if isinstance(optimizer, torch.optim.SGD):
        optimizer._need_device_dtype_check_for_fused = True
    return True


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
        if getattr(optimizer, "_step_supports_amp_scaling", False) and not all(
                group.get("fused") for group in optimizer.param_groups):
            # a fused optimizer that loaded the groups of a checkpoint written with the other
            # kernels runs those, which take no found_inf: GradScaler reads it on the host then
            optimizer._step_supports_amp_scaling = False
        self.scaler.step(optimizer)
        self._stepped.add(id(optimizer))
        self.steps += 1

    def unscale(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """GradScaler.unscale_(optimizer), then whether every gradient it holds is finite: a 0-dim
        bool tensor on the device, GradScaler's own verdict (its found_inf), so nothing waits for
        the device. A step abandoned on False counts as a (skipped) step."""
        self._update_if_used(optimizer, self._stepped | self._unscaled)
        self.scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))
        self.steps += 1
        # GradScaler keeps found_inf per device in its per-optimizer state, which it has no public
        # accessor for; unscale_ has just filled it (zeros when no gradient was found)
        found_inf = self.scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values()
        return torch.stack([f.to(self.scaler._scale.device, non_blocking=True) for f in found_inf]).sum() == 0

    def update(self) -> None:
        """GradScaler.update: the new scale from the inf checks since the last update."""
        self.scaler.update()
        self._stepped.clear()
        self._unscaled.clear()


class Precision:
    def __init__(self, name: str, device):
        check_precision(name, device)
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
        """Give the algorithm's backward/step hooks the loss scaler (None: plain calls); under
        fp16 also switch its optimizers to their fused kernels (`fuse`), before any step."""
        algorithm.loss_scaler = self.loss_scaler
        if self.loss_scaler is not None:
            for optimizer in algorithm.optimizers().values():
                fuse(optimizer)

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
