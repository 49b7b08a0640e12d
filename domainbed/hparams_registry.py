"""Hyperparameters: defaults per (algorithm, dataset) and random-search distributions.

As in DomainBed, every hparam is a pair (default, random draw); the random draw of each name
comes from its own RandomState seeded by (random_seed, name), so adding an hparam never changes
the draws of the others. A method's block is one function decorated with
`@_algorithm_hparams("Name")`; it may redefine a common hparam (GradSurgery defaults to
ResNet-18, say) and adds its own.
"""

import numpy as np

from domainbed import misc

SMALL_IMAGES = ["Debug28", "RotatedMNIST", "ColoredMNIST", "Synthetic"]

_ALGORITHM_BLOCKS = {}


def _algorithm_hparams(*names):
    def decorator(block):
        for name in names:
            _ALGORITHM_BLOCKS[name] = block
        return block

    return decorator


class _Definer:
    """Collects (default, random draw) pairs; `__call__` defines or redefines one hparam."""

    def __init__(self, random_seed: int):
        self.random_seed = random_seed
        self.hparams = {}

    def __call__(self, name, default, random_fn):
        random_state = np.random.RandomState(misc.seed_hash(self.random_seed, name))
        self.hparams[name] = (default, random_fn(random_state))


def _common(_hparam, dataset):
    _hparam("data_augmentation", True, lambda r: True)
    _hparam("backbone", "resnet50", lambda r: "resnet50")
    _hparam("pretrained", True, lambda r: True)
    _hparam("pretrained_path", "", lambda r: "")
    _hparam("freeze_bn", True, lambda r: True)
    _hparam("resnet_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])))
    _hparam("nonlinear_classifier", False, lambda r: False)
    _hparam("image_size", 224, lambda r: 224)
    _hparam("optimizer", "adam", lambda r: "adam")
    _hparam("momentum", 0.0, lambda r: 0.0)
    _hparam("mlp_width", 256, lambda r: int(2 ** r.uniform(6, 10)))
    _hparam("mlp_depth", 3, lambda r: int(r.choice([3, 4, 5])))
    _hparam("mlp_dropout", 0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])))

    if dataset in SMALL_IMAGES:
        _hparam("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5))
        _hparam("weight_decay", 0.0, lambda r: 0.0)
        _hparam("batch_size", 64, lambda r: int(2 ** r.uniform(3, 9)))
    else:
        _hparam("lr", 5e-5, lambda r: 10 ** r.uniform(-5, -3.5))
        _hparam("weight_decay", 0.0, lambda r: 10 ** r.uniform(-6, -2))
        high = 5 if dataset == "DomainNet" else 5.5
        _hparam("batch_size", 32, lambda r: int(2 ** r.uniform(3, high)))


def _hparams(algorithm: str, dataset: str, random_seed: int) -> dict:
    from domainbed.algorithms import get_algorithm_class

    get_algorithm_class(algorithm)
    _hparam = _Definer(random_seed)
    _common(_hparam, dataset)
    if algorithm in _ALGORITHM_BLOCKS:
        _ALGORITHM_BLOCKS[algorithm](_hparam, dataset)
    return _hparam.hparams


def default_hparams(algorithm: str, dataset: str) -> dict:
    """The defaults of `algorithm` on `dataset`, as a plain dict."""
    return {name: default for name, (default, _) in _hparams(algorithm, dataset, 0).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict:
    """One random-search draw; DomainBed's sweeps seed it with seed_hash(hparams_seed, trial)."""
    return {name: draw for name, (_, draw) in _hparams(algorithm, dataset, seed).items()}


def search_hparams(algorithm: str, dataset: str, hparams_seed: int, trial_seed: int) -> dict:
    """`--hparams_seed`: 0 is the defaults, N > 0 DomainBed's draw seeded by seed_hash(N, trial_seed)."""
    from domainbed.errors import UsageError

    if hparams_seed < 0:
        raise UsageError(f"--hparams_seed {hparams_seed} is negative; use 0 (defaults) or a positive seed")
    if hparams_seed == 0:
        return default_hparams(algorithm, dataset)
    return random_hparams(algorithm, dataset, misc.seed_hash(hparams_seed, trial_seed))


@_algorithm_hparams("RSC")
def _rsc(_hparam, dataset):
    # official variant (DeLightCMU/RSC); see domainbed/algorithms/rsc.py
    _hparam("rsc_variant", "official", lambda r: "official")
    _hparam("momentum", 0.9, lambda r: 0.9)  # the official code's SGD momentum, used with --optimizer sgd
    _hparam("rsc_drop_strategy", "gradient", lambda r: "gradient")
    _hparam("rsc_mode", "both", lambda r: "both")
    _hparam("rsc_spatial_drop", 1 / 3, lambda r: float(r.uniform(0.1, 0.5)))
    _hparam("rsc_channel_drop", 1 / 3.2, lambda r: float(r.uniform(0.1, 0.5)))
    _hparam("rsc_batch_percent", 0.3, lambda r: float(r.uniform(0.1, 0.5)))
    _hparam("rsc_batch_increment", 0.2, lambda r: 0.2)
    _hparam("rsc_batch_interval", 0.5, lambda r: 0.5)
    _hparam("rsc_batch_interval_steps", 0, lambda r: 0)
    # DomainBed variant
    _hparam("rsc_f_drop_factor", 1 / 3, lambda r: float(r.uniform(0, 0.5)))
    _hparam("rsc_b_drop_factor", 1 / 3, lambda r: float(r.uniform(0, 0.5)))


# lr / resnet_dropout / weight_decay / SAGM alpha of SAGM's released commands (Wang-pengfei/SAGM);
# SAM and GSAM run on the same protocol so the three compare as in SAGM's table
_SAGM_RELEASED = {
    "PACS": (3e-5, 0.5, 1e-4, 1e-3),
    "VLCS": (1e-5, 0.5, 1e-4, 1e-3),
    "OfficeHome": (1e-5, 0.5, 1e-4, 5e-4),
    "TerraIncognita": (1e-5, 0.5, 1e-4, 1e-3),
    "DomainNet": (3e-5, 0.5, 1e-6, 5e-4),
}


def _sharpness_protocol(_hparam, dataset):
    _hparam("rho", 0.05, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1])))
    _hparam("adaptive", False, lambda r: False)
    if dataset in _SAGM_RELEASED:
        lr, dropout, weight_decay, _ = _SAGM_RELEASED[dataset]
        _hparam("lr", lr, lambda r: 10 ** r.uniform(-5, -3.5))
        _hparam("resnet_dropout", dropout, lambda r: float(r.choice([0.0, 0.1, 0.5])))
        _hparam("weight_decay", weight_decay, lambda r: 10 ** r.uniform(-6, -2))


@_algorithm_hparams("SAM")
def _sam(_hparam, dataset):
    _sharpness_protocol(_hparam, dataset)


@_algorithm_hparams("GSAM")
def _gsam(_hparam, dataset):
    _sharpness_protocol(_hparam, dataset)
    _hparam("alpha", 0.01, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1, 0.2, 0.3])))


@_algorithm_hparams("SAGM_DG")
def _sagm(_hparam, dataset):
    _sharpness_protocol(_hparam, dataset)
    alpha = _SAGM_RELEASED[dataset][3] if dataset in _SAGM_RELEASED else 1e-3
    _hparam("alpha", alpha, lambda r: float(r.choice([0.01, 0.02, 0.05, 0.1])))


# lr / resnet_dropout / weight_decay of GradSurgery's published commands (libzwo/CorGrad), which
# also pass --steps 1000 --checkpoint_freq 10 on TerraIncognita and 15000 / 500 on DomainNet
_GRAD_SURGERY_RELEASED = {
    "PACS": (3e-5, 0.2, 1e-4),
    "VLCS": (1e-5, 0.1, 5e-3),
    "OfficeHome": (4.5e-5, 0.1, 1e-3),
    "TerraIncognita": (1e-4, 0.1, 1e-4),
    "DomainNet": (3e-5, 0.2, 1e-6),
}


@_algorithm_hparams("GradSurgery")
def _grad_surgery(_hparam, dataset):
    _hparam("backbone", "resnet18", lambda r: "resnet18")
    _hparam("n_parts", 10, lambda r: int(r.choice([1, 5, 10, 20])))
    _hparam("alpha", 0.6, lambda r: float(r.uniform(0.0, 1.0)))
    _hparam("use_alpha", True, lambda r: True)
    _hparam("all_layers", True, lambda r: True)
    if dataset in _GRAD_SURGERY_RELEASED:
        lr, dropout, weight_decay = _GRAD_SURGERY_RELEASED[dataset]
        _hparam("lr", lr, lambda r: 10 ** r.uniform(-5, -3.5))
        _hparam("resnet_dropout", dropout, lambda r: float(r.choice([0.0, 0.1, 0.2, 0.5])))
        _hparam("weight_decay", weight_decay, lambda r: 10 ** r.uniform(-6, -2))


@_algorithm_hparams("DMG")
def _dmg(_hparam, dataset):
    # the official configs' keys (prithv1/DMG); see domainbed/algorithms/dmg.py
    _hparam("resnet_dropout", 0.0, lambda r: 0.0)
    _hparam("mlp_dropout", 0.0, lambda r: 0.0)
    _hparam("mask_layers", "fc", lambda r: "fc")
    _hparam("momentum", 0.9, lambda r: 0.9)  # the official code's SGD momentum, used with --optimizer sgd
    _hparam("mask_init", "random_uniform", lambda r: "random_uniform")
    _hparam("mask_init_scalar", 1.0, lambda r: 1.0)
    _hparam("overlap_lambda", 0.1, lambda r: float(10 ** r.uniform(-2, 0)))
    _hparam("sparsity_lambda", 0.0, lambda r: 0.0)
    if dataset in SMALL_IMAGES:
        _hparam("mask_lr", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)))
    else:
        _hparam("mask_lr", 1e-4, lambda r: float(10 ** r.uniform(-5, -3)))


@_algorithm_hparams("CORAL")
def _coral(_hparam, dataset):
    # DomainBed's (shared with its MMD); see domainbed/algorithms/coral.py
    _hparam("mmd_gamma", 1.0, lambda r: float(10 ** r.uniform(-1, 1)))


@_algorithm_hparams("Mixstyle")
def _mixstyle(_hparam, dataset):
    # SWAD's resnet*_mixstyle_L234_p0d5_a0d1; see domainbed/algorithms/mixstyle.py
    _hparam("mixstyle_p", 0.5, lambda r: 0.5)
    _hparam("mixstyle_alpha", 0.1, lambda r: float(r.choice([0.1, 0.2, 0.3])))


# --- SWAD-harness baselines (IRM ... Mixstyle2) ---
# DomainBed's names, defaults and random-search ranges (facebookresearch/DomainBed,
# hparams_registry.py); SWAD's own where it differs (khanrc/swad). See docs/methods_baselines_swad.md.


@_algorithm_hparams("IRM")
def _irm(_hparam, dataset):
    _hparam("irm_lambda", 1e2, lambda r: float(10 ** r.uniform(-1, 5)))
    _hparam("irm_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)))


@_algorithm_hparams("VREx")
def _vrex(_hparam, dataset):
    _hparam("vrex_lambda", 1e1, lambda r: float(10 ** r.uniform(-1, 5)))
    _hparam("vrex_penalty_anneal_iters", 500, lambda r: int(10 ** r.uniform(0, 4)))


@_algorithm_hparams("GroupDRO")
def _group_dro(_hparam, dataset):
    _hparam("groupdro_eta", 1e-2, lambda r: float(10 ** r.uniform(-3, -1)))


@_algorithm_hparams("Mixup", "OrgMixup")
def _mixup(_hparam, dataset):
    _hparam("mixup_alpha", 0.2, lambda r: float(10 ** r.uniform(-1, 1)))


@_algorithm_hparams("CutMix")
def _cutmix(_hparam, dataset):
    # SWAD's fixed values (DomainBed has no CutMix)
    _hparam("beta", 1.0, lambda r: 1.0)
    _hparam("cutmix_prob", 1.0, lambda r: 1.0)


@_algorithm_hparams("MLDG")
def _mldg(_hparam, dataset):
    _hparam("mldg_beta", 1.0, lambda r: float(10 ** r.uniform(-1, 1)))


@_algorithm_hparams("DANN", "CDANN")
def _dann(_hparam, dataset):
    _hparam("lambda", 1.0, lambda r: float(10 ** r.uniform(-2, 2)))
    _hparam("weight_decay_d", 0.0, lambda r: float(10 ** r.uniform(-6, -2)))
    _hparam("d_steps_per_g_step", 1, lambda r: int(2 ** r.uniform(0, 3)))
    _hparam("grad_penalty", 0.0, lambda r: float(10 ** r.uniform(-2, 1)))
    _hparam("beta1", 0.5, lambda r: float(r.choice([0.0, 0.5])))
    if dataset in SMALL_IMAGES:
        _hparam("lr_g", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)))
        _hparam("lr_d", 1e-3, lambda r: float(10 ** r.uniform(-4.5, -2.5)))
        _hparam("weight_decay_g", 0.0, lambda r: 0.0)
    else:
        _hparam("lr_g", 5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)))
        _hparam("lr_d", 5e-5, lambda r: float(10 ** r.uniform(-5, -3.5)))
        _hparam("weight_decay_g", 0.0, lambda r: float(10 ** r.uniform(-6, -2)))


@_algorithm_hparams("MTL")
def _mtl(_hparam, dataset):
    _hparam("mtl_ema", 0.99, lambda r: float(r.choice([0.5, 0.9, 0.99, 1.0])))
    _hparam("mtl_noise_quirk", False, lambda r: False)


@_algorithm_hparams("SagNet")
def _sagnet(_hparam, dataset):
    _hparam("sag_w_adv", 0.1, lambda r: float(10 ** r.uniform(-2, 1)))


@_algorithm_hparams("Mixstyle2")
def _mixstyle2(_hparam, dataset):
    _mixstyle(_hparam, dataset)  # SWAD's resnet*_mixstyle2_L234_p0d5_a0d1: Mixstyle's values


@_algorithm_hparams("ARM")
def _arm(_hparam, dataset):
    if dataset not in SMALL_IMAGES:  # DomainBed: the support size is fixed on large images
        _hparam("batch_size", 8, lambda r: 8)


# --- DomainBed baselines (MMD ... CausIRL) ---
# DomainBed's own names, defaults and random-search ranges (facebookresearch/DomainBed,
# hparams_registry.py); see domainbed/algorithms/{mmd,causirl,sd,iga,and_mask,selfreg,eqrm,fish,fishr}.py.
# SelfReg has no hparams of its own.


@_algorithm_hparams("MMD", "CausIRL_CORAL", "CausIRL_MMD")
def _feature_matching(_hparam, dataset):
    _hparam("mmd_gamma", 1.0, lambda r: float(10 ** r.uniform(-1, 1)))


@_algorithm_hparams("SD")
def _sd(_hparam, dataset):
    _hparam("sd_reg", 0.1, lambda r: float(10 ** r.uniform(-5, -1)))


@_algorithm_hparams("IGA")
def _iga(_hparam, dataset):
    _hparam("penalty", 1000.0, lambda r: float(10 ** r.uniform(1, 5)))  # DomainBed: int 1000; float so --penalty 1e3 parses


@_algorithm_hparams("ANDMask")
def _and_mask(_hparam, dataset):
    _hparam("tau", 1.0, lambda r: float(r.uniform(0.5, 1.0)))  # DomainBed: int 1


@_algorithm_hparams("SANDMask")
def _sand_mask(_hparam, dataset):
    _hparam("tau", 1.0, lambda r: float(r.uniform(0.0, 1.0)))
    _hparam("k", 1e1, lambda r: float(10 ** r.uniform(-3, 5)))


@_algorithm_hparams("EQRM")
def _eqrm(_hparam, dataset):
    _hparam("eqrm_quantile", 0.75, lambda r: float(r.uniform(0.5, 0.99)))
    # a float draw, as DomainBed's: see the exact-equality reset quirk in eqrm.py
    _hparam("eqrm_burnin_iters", 2500, lambda r: float(10 ** r.uniform(2.5, 3.5)))
    _hparam("eqrm_lr", 1e-6, lambda r: float(10 ** r.uniform(-7, -5)))


@_algorithm_hparams("Fish")
def _fish(_hparam, dataset):
    _hparam("meta_lr", 0.5, lambda r: float(r.choice([0.05, 0.1, 0.5])))


@_algorithm_hparams("Fishr")
def _fishr(_hparam, dataset):
    _hparam("lambda", 1000.0, lambda r: float(10 ** r.uniform(1.0, 4.0)))
    _hparam("penalty_anneal_iters", 1500, lambda r: int(r.uniform(0.0, 5000.0)))
    _hparam("ema", 0.95, lambda r: float(r.uniform(0.90, 0.99)))
