"""GradSurgery: part-wise projection of conflicting per-domain gradients.

Zhou, Hu, Zhou, Guan, Jiang, "Rethinking Domain Generalization from Perspective of Gradient
Granularity", ECAI 2024; official code libzwo/CorGrad (`correct_grad` in domainbed/gradient.py).

One step:
0. Per-domain cross-entropy L_d and gradient g_d (one forward and backward per domain).
1. Surgery, for every parameter tensor of a Conv2d or Linear layer (and of BatchNorm layers when
   `all_layers`): split g_d along dim 0 into `n_parts` chunks with torch.chunk semantics (chunks
   of ceil(dim0 / n_parts) rows, so fewer chunks when dim 0 is small). For each domain i in
   environment order, each part j and each other domain p in increasing order:
       if <g_i^j, g_p^j> < 0:  g_i^j -= <g_i^j, g_p^j> / ||g_p^j||^2 * g_p^j      (in place)
   so domain i meets the already-projected parts of the domains before it, and each projection
   starts from what the previous one left.
2. Outlier rule (`use_alpha`), per parameter tensor: n_d = ||g_d|| after the surgery; domain d is
   an outlier when |n_d - mean(n)| > std(n) (population std); M = mean of the non-outliers'
   gradients, taken before any replacement; each outlier becomes alpha * g_d + (1 - alpha) * M.
3. The final gradient is the sum over domains (surgered and other tensors alike); one Adam step.

The logged loss is the mean of the L_d; `conflict_rate` is the fraction of (domain, other
domain, part) triples whose inner product was negative, as the official code logs it.

How: the surgered gradients of each domain are packed into one zero-padded (blocks, 256)
matrix in which every part occupies whole rows, so all parts of all layers are handled by a
few dense operations; only the loop over ordered domain pairs stays in Python. A part's dot
product adds its rows' (BLAS) dot products in float64, as accurate as torch.dot on the part.
A tensor is packed in its memory order (dim 0 stays outermost in the contiguous and the
channels_last layout, so every part is one run of memory) and the surgered gradients come back
in their parameters' layout: channels_last convolutions on CUDA get channels_last gradients,
which Adam's multi-tensor kernels need for their fast path. Nothing inside the step waits for
the device; the loss and the conflict rate are returned as device tensors (read when the
trainer logs them). The per-domain gradients come from one forward and one backward per
domain, as in the official code: that costs the FLOPs of one ERM step, whereas one forward
over the concatenated batch would need one backward over the whole batch per domain; and it
keeps per-domain BatchNorm statistics (and dropout draws) when BatchNorm is not frozen.

Differences from the official code, and why:
- Flags mean what they say and the defaults reproduce the published runs. The official trainer
  passes (all_layers, use_alpha) into a constructor that expects (use_alpha, all_layers), so the
  published commands (`--use_alpha`, no `--all_layers`) ran with BatchNorm surgery on, and the
  outlier rule ran unconditionally (its `use_alpha` only builds an unused schedule value). Our
  defaults: all_layers=True, use_alpha=True, alpha=0.6, n_parts=10.
- We keep DomainBed's linear classifier on the featurizer (surgered as a Linear layer); the
  official network is the bare ResNet whose 512 features are used as logits.
- Tensors that are not surgered get the sum of the domain gradients; the official code leaves
  them with the last domain's gradient only.
- Surgery applies to Conv2d, Linear and (with all_layers) BatchNorm parameters, including
  subclasses; GroupNorm / LayerNorm parameters are summed, as the official isinstance test does.
- The conflict rate is computed on the device; the official code also records a mean "change
  percentage" (sin of the projection angle), which we do not.
- Norms, means and stds of the outlier rule are computed in float64 from float64 part sums
  (the official code takes float32 norms to numpy float64).
- A part that the projections cancel (e.g. g_i^j antiparallel to g_p^j, or inside the span of
  the parts it met) is left with float32 rounding noise whose direction is arbitrary; since a
  projection does not depend on the length of the vector projected on, later domains would
  lose a real component along that noise. We set such a part (norm below 1e-5 of its norm
  before the surgery) to exactly zero, its exact-arithmetic value, so later domains skip it.
  This happens structurally, not by accident: the gradients of a linear layer just before a
  C-class head lie in a (C-1)-dimensional subspace for every domain, so with 2 or 3 classes the
  parts of the MLP's output layer cancel every step; the official code follows the noise there.
- With two domains the outlier test compares equal magnitudes, so rounding decides it (also in
  the official code); should rounding flag every domain of a tensor, that tensor is left as it
  is instead of averaging over an empty set.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError
from domainbed.hparams.rules import int_at_least, nonnegative_float

SURGERED_LAYERS = (nn.Conv2d, nn.Linear)

# A part whose squared norm the projections brought below this fraction of its squared norm
# before the surgery (a norm ratio of 1e-5, some 100 float32 ulps) is rounding noise of a part
# that cancelled exactly, and is set to zero (see the module docstring).
CANCELLED = 1e-10


# lr / resnet_dropout / weight_decay of GradSurgery's published commands (libzwo/CorGrad), which
# also pass --steps 1000 --checkpoint_freq 10 on TerraIncognita and 15000 / 500 on DomainNet
GRAD_SURGERY_RELEASED = {
    "PACS": (3e-5, 0.2, 1e-4),
    "VLCS": (1e-5, 0.1, 5e-3),
    "OfficeHome": (4.5e-5, 0.1, 1e-3),
    "TerraIncognita": (1e-4, 0.1, 1e-4),
    "DomainNet": (3e-5, 0.2, 1e-6),
}


class PartLayout:
    """Where each torch.chunk part of a list of tensors lives in a zero-padded (blocks, BLOCK)
    matrix: every part starts on a new row and fills whole rows, so a dot product over a part
    is a sum of row dot products, and a per-part scalar broadcasts over the part's rows."""

    BLOCK = 256

    def __init__(self, shapes, n_parts: int, device=None):
        self.shapes = [torch.Size(shape) for shape in shapes]
        rows_per_part, parts_per_tensor, self._slots = [], [], []
        row = 0
        for shape in self.shapes:
            n_rows = shape[0]
            chunk = math.ceil(n_rows / n_parts)
            row_elements = shape.numel() // n_rows
            n_full, leftover = divmod(n_rows, chunk)
            # (first block, number of parts, elements per part, blocks per part); torch.chunk
            # gives n_full parts of `chunk` rows, then one shorter part when rows are left over
            slots = []
            for count, length in ((n_full, chunk * row_elements), (1 if leftover else 0, leftover * row_elements)):
                if count:
                    blocks = math.ceil(length / self.BLOCK)
                    slots.append((row, count, length, blocks))
                    rows_per_part += [blocks] * count
                    row += count * blocks
            self._slots.append(slots)
            parts_per_tensor.append(n_full + (1 if leftover else 0))
        self.n_blocks = row
        self.n_parts = len(rows_per_part)
        self.part_of_block = torch.repeat_interleave(torch.arange(self.n_parts), torch.tensor(rows_per_part, dtype=torch.long)).to(device)
        self.tensor_of_part = torch.repeat_interleave(torch.arange(len(self.shapes)), torch.tensor(parts_per_tensor, dtype=torch.long)).to(device)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._matrix = None

    def _views(self, tensors, matrix):
        """Pairs of (view into `matrix`, view into a tensor) covering every part."""
        flat_matrix = matrix.view(-1)
        destinations, sources = [], []
        for tensor, slots in zip(tensors, self._slots):
            flat = _memory_order(tensor)
            offset = 0
            for first_block, count, length, blocks in slots:
                start = first_block * self.BLOCK
                rows = flat_matrix[start:start + count * blocks * self.BLOCK].view(count, blocks * self.BLOCK)
                destinations.append(rows[:, :length])
                sources.append(flat[offset:offset + count * length].view(count, length))
                offset += count * length
        return destinations, sources

    def matrix(self, n_domains: int) -> torch.Tensor:
        """A zeroed float32 (n_domains, blocks, BLOCK) matrix to `pack` into, the same memory
        from step to step (a fresh one would cost page faults on the CPU). It is zeroed every
        time because a non-finite gradient (fp16 loss scaling makes some) spreads NaN into the
        padding."""
        shape = (n_domains, self.n_blocks, self.BLOCK)
        if self._matrix is None or self._matrix.shape != shape:
            self._matrix = torch.empty(shape, device=self.device)
        return self._matrix.zero_()

    def pack(self, tensors, matrix) -> None:
        destinations, sources = self._views(tensors, matrix)
        torch._foreach_copy_(destinations, sources)

    def unpack(self, matrix, like) -> list:
        """The tensors packed in `matrix`, each in the memory layout of its tensor in `like`."""
        tensors = [torch.empty_like(t, dtype=matrix.dtype, device=matrix.device) for t in like]
        destinations, sources = self._views(tensors, matrix)
        torch._foreach_copy_(sources, destinations)
        return tensors

    def part_dots(self, x, y) -> torch.Tensor:
        """(..., blocks, BLOCK) twice -> (..., parts): <x^j, y^j> for each part j, the rows' dot
        products (BLAS) added in float64."""
        row_dots = torch.einsum("...nb,...nb->...n", x, y).double()
        out = torch.zeros(*row_dots.shape[:-1], self.n_parts, dtype=torch.float64, device=x.device)
        return out.index_add_(-1, self.part_of_block, row_dots)

    def tensor_sums(self, per_part) -> torch.Tensor:
        """(..., parts) -> (..., tensors)."""
        out = torch.zeros(*per_part.shape[:-1], len(self.shapes), dtype=per_part.dtype, device=per_part.device)
        return out.index_add_(-1, self.tensor_of_part, per_part)

    def per_row(self, per_part) -> torch.Tensor:
        """(..., parts) -> (..., blocks, 1), to broadcast a per-part value over its rows."""
        return per_part.index_select(-1, self.part_of_block).unsqueeze(-1)

    def per_row_of_tensor(self, per_tensor) -> torch.Tensor:
        """(..., tensors) -> (..., blocks, 1)."""
        return self.per_row(per_tensor.index_select(-1, self.tensor_of_part))


def _memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """The elements of `tensor` as a 1-D view in memory order: for a channels_last tensor its
    (N, H, W, C) order, whose dim 0 is outermost as in the contiguous layout."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).view(-1)
    return tensor.reshape(-1)


def project_conflicts(G, layout: PartLayout):
    """Step 1 on G (domains, blocks, BLOCK), in place. Returns the number of conflicts (a tensor)
    and the squared norms of the projected parts (domains, parts)."""
    n_domains = G.shape[0]
    squared_norms = layout.part_dots(G, G)               # ||g_d^j||^2, kept current for each d
    squared_norms_before = squared_norms.clone()
    conflicts = torch.zeros((), dtype=torch.long, device=G.device)
    for i in range(n_domains):
        for p in range(n_domains):
            if p == i:
                continue
            inner = layout.part_dots(G[i], G[p])         # <g_i^j, g_p^j>
            conflict = inner < 0
            coefficient = torch.where(conflict, inner / squared_norms[p], 0.0)
            G[i].addcmul_(layout.per_row(coefficient).to(G.dtype), G[p], value=-1)
            conflicts += conflict.sum()
        squared_norm = layout.part_dots(G[i], G[i])
        cancelled = squared_norm <= CANCELLED * squared_norms_before[i]
        G[i].mul_(layout.per_row(~cancelled).to(G.dtype))
        squared_norms[i] = torch.where(cancelled, 0.0, squared_norm)
    return conflicts, squared_norms


def outlier_rule(G, squared_norms, layout: PartLayout, alpha: float) -> None:
    """Step 2 on G (domains, blocks, BLOCK), in place: in each tensor, each outlier domain
    becomes alpha * g_d + (1 - alpha) * M; `squared_norms` (domains, parts) are those of G's
    parts. The arithmetic is the official code's (mean = sum / n_in, then alpha * g_d plus
    (1 - alpha) * M) so that the rounding matches a plain implementation; Adam magnifies any
    difference on near-zero gradient entries."""
    norms = layout.tensor_sums(squared_norms).sqrt()                  # n_d per tensor
    outlier = (norms - norms.mean(0)).abs() > norms.std(0, correction=0)
    inlier = ~outlier
    n_inliers = inlier.sum(0)
    outlier &= n_inliers > 0
    M = (G * layout.per_row_of_tensor(inlier.to(G.dtype))).sum(0)
    M /= layout.per_row_of_tensor(n_inliers.clamp(min=1).to(G.dtype))
    outlier_rows = layout.per_row_of_tensor(outlier.to(G.dtype))
    # multiplying by 1 and adding 0 * x are exact, so the non-outliers stay as they are
    G.mul_(torch.where(outlier_rows.bool(), alpha, 1.0))
    G.addcmul_(outlier_rows, (1 - alpha) * M)


def gradient_surgery(domain_grads, n_parts: int, alpha: float, use_alpha: bool, layout=None):
    """Steps 1-3 on `domain_grads` (one list of tensors per domain, same shapes across domains).

    Returns (one summed tensor per position, conflict rate as a 0-dim tensor)."""
    if layout is None:
        layout = PartLayout([g.shape for g in domain_grads[0]], n_parts, domain_grads[0][0].device)
    n_domains = len(domain_grads)
    G = layout.matrix(n_domains)
    for d, grads in enumerate(domain_grads):
        layout.pack(grads, G[d])
    conflicts, squared_norms = project_conflicts(G, layout)
    if use_alpha:
        outlier_rule(G, squared_norms, layout, alpha)
    total = G.sum(0)
    comparisons = layout.n_parts * n_domains * (n_domains - 1)
    return layout.unpack(total, like=domain_grads[0]), conflicts / max(comparisons, 1)


@register_algorithm("GradSurgery")
class GradSurgery(ERM):
    """ERM's network stepped with the surgered sum of per-domain gradients (see the module).

    Hparams: `n_parts` (10), `alpha` (0.6), `use_alpha` (True: apply the outlier rule),
    `all_layers` (True: BatchNorm parameters are surgered too), backbone resnet18.
    """

    DATA_PARALLEL = True  # each domain's gradient is averaged over the processes before the surgery

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("backbone", "resnet18")
        hparam("n_parts", 10, lambda r: int(r.choice([1, 5, 10, 20])), valid=int_at_least(1),
               help="parts each parameter's gradient is split into along dim 0 for the sign surgery")
        hparam("alpha", 0.6, lambda r: float(r.uniform(0.0, 1.0)), valid=nonnegative_float(),
               help="outlier rule: an outlier gradient becomes alpha * g_d + (1 - alpha) * mean")
        hparam("use_alpha", True, help="apply the outlier rule, which pulls an outlying domain gradient towards the mean")
        hparam("all_layers", True, help="include BatchNorm parameters in the surgery (else Conv2d and Linear only)")
        if dataset in GRAD_SURGERY_RELEASED:
            lr, dropout, weight_decay = GRAD_SURGERY_RELEASED[dataset]
            hparam("lr", lr, lambda r: 10 ** r.uniform(-5, -3.5))
            hparam("resnet_dropout", dropout, lambda r: float(r.choice([0.0, 0.1, 0.2, 0.5])))
            hparam("weight_decay", weight_decay, lambda r: 10 ** r.uniform(-6, -2))

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.n_parts = hparams["n_parts"]
        self.alpha = hparams["alpha"]
        self.use_alpha = bool(hparams["use_alpha"])
        self.all_layers = bool(hparams["all_layers"])
        if isinstance(self.n_parts, bool) or not isinstance(self.n_parts, int) or self.n_parts < 1:
            raise UsageError(f"n_parts must be an integer >= 1, got {self.n_parts!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha must be in [0, 1] for GradSurgery, got {self.alpha!r}")
        layers = SURGERED_LAYERS + ((nn.modules.batchnorm._BatchNorm,) if self.all_layers else ())
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        chosen = {id(p) for m in self.network.modules() if isinstance(m, layers)
                  for p in m.parameters(recurse=False) if p.requires_grad}
        self.surgered = [p for p in trainable if id(p) in chosen]
        self.summed = [p for p in trainable if id(p) not in chosen]
        self._layout = None

    def layout(self) -> PartLayout:
        device = self.surgered[0].device if self.surgered else torch.device("cpu")
        if self._layout is None or self._layout.device != device:
            self._layout = PartLayout([p.shape for p in self.surgered], self.n_parts, device)
        return self._layout

    def domain_gradients(self, minibatches):
        """Per-domain losses and gradients: (losses, [surgered grads per domain], [summed grads
        per domain]), one forward and one backward per domain as the official code. Under fp16
        the gradients are all scaled by the same loss scale, which the surgery does not mind
        (projections and the outlier test are scale-free) and `optimizer_step` removes."""
        params = self.surgered + self.summed
        losses, surgered, summed = [], [], []
        for x, y in minibatches:
            loss = F.cross_entropy(self.predict(x), y)
            self.backward(loss)
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            for p in params:
                p.grad = None
            losses.append(loss.detach())
            surgered.append(grads[:len(self.surgered)])
            summed.append(grads[len(self.surgered):])
        return losses, surgered, summed

    def update(self, minibatches):
        losses, surgered, summed = self.domain_gradients(minibatches)
        # the surgery's dot products are float32 arithmetic on gradients: under the trainer's
        # autocast, einsum would run in fp16 (overflowing on loss-scaled gradients) or bf16
        device_type = self.surgered[0].device.type if self.surgered else "cpu"
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            final, conflict_rate = gradient_surgery(surgered, self.n_parts, self.alpha, self.use_alpha, self.layout())
            final += [torch.stack(grads).sum(0) for grads in zip(*summed)]
        for p, g in zip(self.surgered + self.summed, final):
            p.grad = g
        self.optimizer_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": torch.stack(losses).mean(), "conflict_rate": conflict_rate.to(losses[0].dtype)}
