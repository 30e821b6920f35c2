"""The closed vocabularies of csc's options, in one torch-free place.

The library validates against these names and the command line shows them in ``--help`` without
importing torch (``csc --help`` must start in well under a second).
"""

from __future__ import annotations

# solver (csc_cli.core.lasso)
METHODS = ("fista", "ista", "heavy_ball")
BACKWARDS = ("unrolled", "implicit", "recompute")

# training (csc_cli.jobs.train)
CSC_MODES = ("stem", "all", "none")
OPTIMIZERS = ("sgd", "adamw")  # a classifier's
GAME_OPTIMIZER = "adam"  # the CTRL game's, whatever --optimizer says: Adam with its betas per network
SCHEDULES = ("cosine", "step", "constant", "linear")
# CSC-CTRL (csc_cli.jobs.autoencoder.train): the autoencoders and the two forms of the rate-reduction game
CTRL_ARCHS = ("ctrl_dcgan32", "ctrl_resnet")
CTRL_MODES = ("multi", "binary")
# how CSC-CTRL's decoder makes the image: the synthesis x = D_1 z_1 (default) or the sparse code itself
CTRL_IMAGES = ("synthesis", "code")
AMP_MODES = ("none", "bf16", "fp16")
SELECT_MODES = ("last", "best")
AUGMENTATIONS = ("none", "crop_flip", "crop", "imagenet")  # csc_cli.data.pipeline
AUGMENT_CHOICES = ("auto",) + AUGMENTATIONS

# data (csc_cli.data); image folders are named folder:PATH
DATASETS = ("digits", "cifar10", "cifar100", "fake")
DATASET_HELP = "digits, cifar10, cifar100, imagenet, folder:PATH or fake"
CORRUPTIONS_STANDARD = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
CORRUPTIONS_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTION_GROUPS = ("all", "standard", "extra", "noise")

# robustness (csc_cli.robust)
ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square", "autoattack")
NORMS = ("Linf", "L2")
GRADIENT_MODES = ("unrolled", "implicit", "smooth", "more-steps")
RULE_MODES = ("bpda", "through-rule")  # for a per-input lambda rule
LAMBDA_LAYERS = ("first", "all")
LAMBDA_RULES = ("residual", "sigma", "sigma_table", "discrepancy")  # csc_cli.robust.rules
RULE_CHOICES = ("best",) + LAMBDA_RULES

# csc attack --preset: a named set of defaults (flags given on the command line still win)
ATTACK_PRESETS = {
    "quick": {"attacks": ["fgsm", "pgd"], "steps": 10, "restarts": 1, "modes": ["unrolled"],
              "square_queries": 1000},
}
ATTACK_PRESET_HELP = ("quick: FGSM + PGD-10 through the unrolled gradient only, with the sanity checks -- "
                      "minutes instead of hours, a first look and not a robustness claim")
