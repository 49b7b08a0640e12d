"""SAM and GSAM: ERM's network and loss, stepped by a sharpness-aware optimizer wrapper.

One step on the concatenation of all training domains' minibatches (mean cross-entropy L):
g = grad L(w); w <- w + e(g); g_p = grad L at the perturbed point on the same batch, with
BatchNorm running statistics left untouched; w <- w - e; one base-optimizer (Adam) step on the
method's combination of g and g_p (see `domainbed.optim.sam`). The reported loss is L(w).

Differences from the SAM that the SAGM and CorGrad repositories ship (DomainBed style):
- theirs reports the loss at the perturbed point and lets the perturbed pass update BatchNorm
  running statistics (moot with the default frozen BatchNorm); we report L(w) and freeze them,
  as davda54/sam, GSAM and SAGM's own optimizer do;
- theirs has no eps in rho / ||g|| and no `adaptive` variant.
"""

from domainbed import optim
from domainbed.algorithms.erm import ERM
from domainbed.algorithms.registry import register_algorithm
from domainbed.hparams.rules import nonnegative_float


# lr / resnet_dropout / weight_decay / SAGM alpha of SAGM's released commands (Wang-pengfei/SAGM);
# SAM and GSAM run on the same protocol so the three compare as in SAGM's table
SAGM_RELEASED = {
    "PACS": (3e-5, 0.5, 1e-4, 1e-3),
    "VLCS": (1e-5, 0.5, 1e-4, 1e-3),
    "OfficeHome": (1e-5, 0.5, 1e-4, 5e-4),
    "TerraIncognita": (1e-5, 0.5, 1e-4, 1e-3),
    "DomainNet": (3e-5, 0.5, 1e-6, 5e-4),
}


@register_algorithm("SAM")
class SAM(ERM):
    """Sharpness-Aware Minimization (Foret et al., "Sharpness-Aware Minimization for Efficiently
    Improving Generalization", ICLR 2021): e = rho * g / ||g||, step with g_p.

    Hparams: `rho` (0.05, the paper's default), `adaptive` (False; ASAM's variant).
    Subclasses change only `new_perturbation_optimizer`.
    """

    DATA_PARALLEL = True  # g and g_p are averaged over the processes before the norm that scales e

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("rho", 0.05, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1])), valid=nonnegative_float(),
               help="radius of the sharpness-aware weight perturbation")
        hparam("adaptive", False, help="scale the perturbation per weight by |w| (ASAM)")
        if dataset in SAGM_RELEASED:
            lr, dropout, weight_decay, _ = SAGM_RELEASED[dataset]
            hparam("lr", lr, lambda r: 10 ** r.uniform(-5, -3.5))
            hparam("resnet_dropout", dropout, lambda r: float(r.choice([0.0, 0.1, 0.5])))
            hparam("weight_decay", weight_decay, lambda r: 10 ** r.uniform(-6, -2))

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.perturbation = self.new_perturbation_optimizer(self.optimizer)

    def new_perturbation_optimizer(self, base_optimizer):
        return optim.SAM(base_optimizer, rho=self.hparams["rho"], adaptive=self.hparams["adaptive"])

    def update(self, minibatches):
        loss = self.empirical_risk(minibatches)  # L(w)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        # e is computed from g: under fp16 it must be the true gradient; a g that overflowed
        # gives e = 0 and skips the base step (GradScaler then lowers the scale), decided on the
        # device so that the host never waits for it
        g_finite = self.unscale_gradients(self.perturbation)
        self.perturbation.first_step(zero_grad=True, finite=g_finite)

        with optim.frozen_running_stats(self.network):
            self.backward(self.empirical_risk(minibatches))  # L(w + e)
        self.perturbation.skip_base_step_unless(g_finite)
        self.unscale_gradients(self.optimizer)  # g_p; an inf/nan here (or in g) skips the base step
        self.perturbation.second_step(zero_grad=True, base_step=self.optimizer_step)

        return {"loss": loss.detach()}


@register_algorithm("GSAM")
class GSAM(SAM):
    """Surrogate Gap Guided SAM (Zhuang et al., "Surrogate Gap Minimization Improves
    Sharpness-Aware Training", ICLR 2022): SAM's perturbation, step with g_p - alpha * g_orth,
    g_orth being the component of g orthogonal to g_p.

    Hparams: `rho` (0.05, constant: GSAM ties rho to the learning-rate schedule, which is
    constant here), `alpha` (0.01), `adaptive` (False). Differences from juntang-zhuang/GSAM:
    see `domainbed.optim.sam`.
    """

    DATA_PARALLEL = True  # as SAM; the decomposition of g runs on the averaged gradients

    @classmethod
    def declare_hparams(cls, hparam, dataset):
        hparam("alpha", 0.01, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1, 0.2, 0.3])), valid=nonnegative_float(),
               help="weight of GSAM's surrogate-gap step, orthogonal to the loss gradient")

    def new_perturbation_optimizer(self, base_optimizer):
        return optim.GSAM(base_optimizer, rho=self.hparams["rho"], alpha=self.hparams["alpha"],
                          adaptive=self.hparams["adaptive"])
