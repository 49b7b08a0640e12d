"""SAGM_DG: Sharpness-Aware Gradient Matching (Wang et al., CVPR 2023).

Wang, Zhang, Lei, Zhang, "Sharpness-Aware Gradient Matching for Domain Generalization",
CVPR 2023; official code Wang-pengfei/SAGM.
"""

from domainbed import optim
from domainbed.algorithms.registry import register_algorithm
from domainbed.algorithms.sam import SAGM_RELEASED, SAM
from domainbed.hparams.rules import nonnegative_float


@register_algorithm("SAGM_DG")
class SAGM_DG(SAM):
    """One step on the concatenation of all training domains' minibatches (mean cross-entropy L):

        g   = grad L(w)
        e   = (rho / (||g||_2 + 1e-12) - alpha) * g       (||.|| over all trainable parameters)
        g_p = grad L(w + e)   (same batch; BatchNorm running statistics untouched)
        Adam step on (g + g_p) / 2 at w                  (coupled L2 weight decay)

    and the reported loss is L(w). The step itself is `domainbed.optim.SAGM`; `update` is SAM's.

    Hparams: `rho` (0.05), `alpha` (per dataset, 1e-3 or 5e-4 as the released commands),
    `adaptive` (False: multiply e by w^2 and take the norm of |w| * g, as the official optimizer's
    option). Per-dataset lr / resnet_dropout / weight_decay follow the released commands.

    Differences from the official code:
    - `rho` is used. The official algorithm ignores its `rho` hparam and hard-codes a rho
      scheduler with max = min = 0.05; our default equals that behaviour.
    - The official lr "scheduler" is linear from lr to lr, i.e. constant; we keep lr constant
      and have no scheduler object.
    - `num_batches_tracked` of BatchNorm layers is restored after the perturbed pass (the
      official code sets momentum to 0 but lets it count); it changes nothing unless a layer
      uses momentum=None.
    - g and e are kept in float32 (see `domainbed.optim.sam`).
    """

    DATA_PARALLEL = True  # as SAM; both gradients are averaged over the processes before SAGM combines them

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        alpha = SAGM_RELEASED[dataset][3] if dataset in SAGM_RELEASED else 1e-3
        hparam("alpha", alpha, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1])), valid=nonnegative_float(),
               help="weight of SAGM's gradient-alignment term (perturbed minus clean loss gradient)")

    def new_perturbation_optimizer(self, base_optimizer):
        return optim.SAGM(base_optimizer, rho=self.hparams["rho"], alpha=self.hparams["alpha"],
                          adaptive=self.hparams["adaptive"])
