"""CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", ICCV 2019) on all domains pooled, as SWAD's harness (khanrc/swad) runs it.

With probability `cutmix_prob`: lam ~ Beta(beta, beta); a box of side ratio sqrt(1 - lam)
centred uniformly (clipped at the borders) is pasted from a permuted batch x_pi, and with the
box's actual area fraction a, loss = (1 - a) * CE(f(x~), y) + a * CE(f(x~), y_pi). Otherwise
plain ERM. Hparams `beta` (1.0), `cutmix_prob` (1.0), SWAD's.

Departures from SWAD's code: the pasted batch is a copy (SWAD writes into the input tensor in
place, which changes the caller's minibatch); the draws come from numpy's and torch's global
generators in SWAD's order (r, lam, permutation, box centre).
"""

import numpy as np
import torch
import torch.nn.functional as F

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.errors import UsageError


def random_box(height: int, width: int, lam: float):
    """(top, bottom, left, right) of a box covering about 1 - lam of the image, SWAD's rand_bbox
    (whose W and H are the tensor's dims 2 and 3)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = np.random.randint(height), np.random.randint(width)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(top), int(bottom), int(left), int(right)


@register_algorithm("CutMix")
class CutMix(ERM):
    CONTRACT_INPUT = "images"  # cuts and pastes boxes of images

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        # SWAD's fixed values (DomainBed has no CutMix)
        hparam("beta", 1.0, help="Beta(beta, beta) parameter of the pasted area")
        hparam("cutmix_prob", 1.0, help="probability that a batch is cut-and-mixed")

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        if len(input_shape) != 3:
            raise UsageError(f"CutMix needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        super().__init__(input_shape, num_classes, num_domains, hparams)

    def update(self, minibatches):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        r = np.random.rand(1)
        if self.hparams["beta"] > 0 and r < self.hparams["cutmix_prob"]:
            lam = np.random.beta(self.hparams["beta"], self.hparams["beta"])
            permutation = torch.randperm(len(x)).to(x.device)
            top, bottom, left, right = random_box(x.shape[2], x.shape[3], lam)
            x = x.clone()
            x[:, :, top:bottom, left:right] = x[permutation, :, top:bottom, left:right]
            area = (bottom - top) * (right - left) / (x.shape[2] * x.shape[3])
            logits = self.predict(x)
            loss = (1 - area) * F.cross_entropy(logits, y) + area * F.cross_entropy(logits, y[permutation])
        else:
            loss = F.cross_entropy(self.predict(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step(self.optimizer)
        return {"loss": loss.detach()}
