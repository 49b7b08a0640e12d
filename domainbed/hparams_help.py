"""One line of meaning for every hparam, for `train_all.py --algorithm NAME --help`.

The registry (hparams_registry.py) holds defaults and search distributions; this table holds
what each key means. tests/test_help.py fails when a registered algorithm's hparam or a key of
config.yaml has no line here. A name that means different things per method (`alpha`) has
per-algorithm lines in PER_ALGORITHM.
"""

DESCRIPTIONS = {
    # every algorithm (hparams_registry._common)
    "data_augmentation": "random crops, flips, colour jitter and grayscale on the training domains (DomainBed's)",
    "backbone": "featurizer for images: resnet18, resnet50, ... (inputs of length 1 get an MLP, 28x28 the MNIST CNN)",
    "pretrained": "start the backbone from ImageNet weights",
    "pretrained_path": "a local file of backbone weights to load instead of the torchvision download",
    "freeze_bn": "keep BatchNorm layers in eval mode while training (SWAD's default)",
    "resnet_dropout": "dropout on the backbone's pooled features",
    "nonlinear_classifier": "a two-layer MLP head instead of one linear layer",
    "image_size": "side of the square crops fed to the backbone, pixels",
    "optimizer": "the base optimizer: adam, adamw or sgd",
    "momentum": "SGD momentum (0: plain SGD, as SWAD's; RSC and DMG use their official 0.9)",
    "mlp_width": "hidden units of the MLP featurizer (1-d inputs)",
    "mlp_depth": "layers of the MLP featurizer (1-d inputs)",
    "mlp_dropout": "dropout between the MLP featurizer's layers (1-d inputs)",
    "lr": "learning rate of the base optimizer",
    "weight_decay": "weight decay of the base optimizer",
    "batch_size": "examples per training domain in each step",
    # CORAL
    "mmd_gamma": "weight of the CORAL penalty (distance between the domains' feature covariances)",
    # DMG
    "mask_layers": "comma-separated layers that get per-domain masks (fc: the features before the head)",
    "mask_init": "initial mask values: random_uniform or scalar",
    "mask_init_scalar": "the initial mask value with mask_init scalar",
    "overlap_lambda": "weight of the penalty on the overlap of the domains' masks",
    "sparsity_lambda": "weight of the L1 penalty on the masks",
    "mask_lr": "learning rate of the masks' own Adam",
    # SAM family
    "rho": "radius of the sharpness-aware weight perturbation",
    "adaptive": "scale the perturbation per weight by |w| (ASAM)",
    "alpha": "method-specific weight (see the algorithm's line)",
    # GradSurgery
    "n_parts": "parts each parameter's gradient is split into along dim 0 for the sign surgery",
    "use_alpha": "apply the outlier rule, which pulls an outlying domain gradient towards the mean",
    "all_layers": "include BatchNorm parameters in the surgery (else Conv2d and Linear only)",
    # Mixstyle
    "mixstyle_p": "probability of mixing feature statistics in a forward pass",
    "mixstyle_alpha": "Beta(alpha, alpha) parameter of the mixing weight",
    # RSC
    "rsc_variant": "official (DeLightCMU/RSC, on the last feature map) or domainbed (on pooled features)",
    "rsc_drop_strategy": "which units are muted: gradient (the method), activation or random",
    "rsc_mode": "spatial, channel or both (a random choice per step, as the paper)",
    "rsc_spatial_drop": "fraction of spatial positions muted",
    "rsc_channel_drop": "fraction of channels muted",
    "rsc_batch_percent": "fraction of the batch whose features are muted, at the start",
    "rsc_batch_increment": "added to rsc_batch_percent at every interval",
    "rsc_batch_interval": "fraction of the run's steps between increments of rsc_batch_percent",
    "rsc_batch_interval_steps": "the interval in steps instead (0: use rsc_batch_interval)",
    "rsc_f_drop_factor": "domainbed variant: fraction of feature units muted",
    "rsc_b_drop_factor": "domainbed variant: fraction of the batch muted",
    # config.yaml
    "swad": "weight averaging: LossValley (SWAD), IIDMax, SMA (EoA), or False",
    "swad_kwargs": "LossValley's n_converge, n_tolerance, tolerance_ratio and bookkeeping (reference or corrected)",
    "sma_start": "SMA averages every step from this one on",
    "swad_bn_steps": "training minibatches that re-estimate the average's BatchNorm statistics (freeze_bn False)",
    "test_batchsize": "batch size of the evaluation loader",
    "num_workers": "DataLoader workers per loader; -1 sizes them to the machine's cores",
    "pipeline": "input pipeline: gpu (uint8 cache, augment on the device), classic (PIL in workers) or auto",
    "cache_dir": "where the gpu pipeline keeps image caches (empty: $DOMAINBED_CACHE or ~/.cache/domainbed)",
    "precision": "arithmetic of training and evaluation: fp32, bf16 or fp16 (fp16 with loss scaling)",
    "compile": "torch.compile the featurizer",
    "quant": "QT-DoG: swap layers for LSQ fake-quantized ones at step q_steps",
    "q_steps": "the step at which QT-DoG quantization starts",
    "q_bits": "bits of QT-DoG's weight quantization",
    "q_linear": "quantize Linear layers too (else Conv2d only)",
    "q_exclude": "comma-separated module names QT-DoG keeps in float",
    "skip_bad_images": "drop images that cannot be decoded (counted) instead of stopping with an error",
}

DESCRIPTIONS.update({
    # DomainBed baselines (hparams_registry, "DomainBed baselines")
    "sd_reg": "SD: weight of the squared-logits penalty (spectral decoupling)",
    "penalty": "IGA: weight of the variance of the domains' gradients",
    "tau": "AND-mask / SAND-mask: agreement threshold of the gradient signs",
    "k": "SAND-mask: steepness of the smooth agreement mask",
    "eqrm_quantile": "EQRM: the quantile of the per-domain risks that is minimised",
    "eqrm_burnin_iters": "EQRM: steps of plain ERM before the quantile risk (then the optimizer restarts)",
    "eqrm_lr": "EQRM: learning rate after the burn-in",
    "meta_lr": "Fish: step size of the meta update towards the inner loop's weights",
    "ema": "Fishr: moving-average factor of the per-domain gradient variances",
    "penalty_anneal_iters": "steps before the penalty weight switches from 1 to its full value",
})

DESCRIPTIONS.update({
    # SWAD-harness baselines (hparams_registry, "SWAD-harness baselines")
    "irm_lambda": "IRM: weight of the invariance penalty (squared gradient of the risk w.r.t. a dummy scale)",
    "irm_penalty_anneal_iters": "IRM: steps with penalty weight 1 before irm_lambda applies (then Adam restarts)",
    "vrex_lambda": "VREx: weight of the variance of the domains' risks",
    "vrex_penalty_anneal_iters": "VREx: steps with penalty weight 1 before vrex_lambda applies (then Adam restarts)",
    "groupdro_eta": "GroupDRO: step size of the exponentiated-gradient update of the domain weights",
    "mixup_alpha": "Mixup: Beta(alpha, alpha) parameter of the mixing weight",
    "cutmix_prob": "CutMix: probability that a batch is cut-and-mixed",
    "beta": "CutMix: Beta(beta, beta) parameter of the pasted area",
    "mldg_beta": "MLDG: weight of the meta-test loss",
    "mtl_ema": "MTL: moving-average factor of the domain embeddings",
    "mtl_noise_quirk": "MTL: feed the head Gaussian noise instead of the domain embedding in training, as DomainBed's predict does",
    "sag_w_adv": "SagNet: weight of the adversarial style loss",
    "lr_g": "DANN/CDANN: learning rate of the featurizer and classifier",
    "lr_d": "DANN/CDANN: learning rate of the domain discriminator",
    "weight_decay_g": "DANN/CDANN: weight decay of the featurizer and classifier",
    "weight_decay_d": "DANN/CDANN: weight decay of the discriminator",
    "d_steps_per_g_step": "DANN/CDANN: discriminator steps per generator step",
    "grad_penalty": "DANN/CDANN: weight of the discriminator's gradient penalty",
    "beta1": "DANN/CDANN: Adam's beta1 of both optimizers",
})

PER_ALGORITHM = {
    ("DANN", "lambda"): "DANN: weight of the adversarial domain loss in the generator's objective",
    ("CDANN", "lambda"): "CDANN: weight of the adversarial (class-conditional) domain loss",
    ("Fishr", "lambda"): "Fishr: weight of the distance between the domains' gradient variances",
    ("SAGM_DG", "alpha"): "weight of SAGM's gradient-alignment term (perturbed minus clean loss gradient)",
    ("GSAM", "alpha"): "weight of GSAM's surrogate-gap step, orthogonal to the loss gradient",
    ("GradSurgery", "alpha"): "outlier rule: an outlier gradient becomes alpha * g_d + (1 - alpha) * mean",
}


def describe(name: str, algorithm: str | None = None) -> str | None:
    """The line for `name` (the algorithm's own line first), or None without one."""
    return PER_ALGORITHM.get((algorithm, name), DESCRIPTIONS.get(name))
