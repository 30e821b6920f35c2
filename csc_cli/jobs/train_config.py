"""What a training run is: :class:`TrainConfig`, from flags, a TOML recipe or a resume state.

Torch-free, so the command line can show every default in ``csc train --help`` without importing
torch. :meth:`TrainConfig.from_toml` reads and checks a recipe (``recipes/``);
:meth:`TrainConfig.from_state` recovers the config a ``state.safetensors`` was written with, so
``csc train --resume state.safetensors`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..choices import (AMP_MODES, CSC_MODES, CTRL_ARCHS, CTRL_IMAGES, CTRL_MODES, GAME_OPTIMIZER, OPTIMIZERS, SCHEDULES,
                       SELECT_MODES)


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_dir: Optional[str] = None
    arch: str = "resnet20_cifar"
    csc: str = "stem"
    shortcut: bool = True
    lam: float = 0.1
    steps: int = 2
    nonneg: bool = True
    mu: float = 0.0
    method: str = "fista"
    backward: str = "unrolled"
    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    min_lr: float = 1e-6
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "auto"
    ema: float = 0.0
    clip_grad: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    val_split: float = 0.0
    select: str = "last"
    image_size: Optional[int] = None
    out: Optional[str] = None  # None: runs/<dataset>-<arch>-<csc> (see default_out)
    init: Optional[str] = None
    resume: Optional[str] = None
    checkpoint_every: int = 0
    workers: int = 2  # loader processes for image folders
    max_batches: Optional[int] = None  # per epoch, for smoke tests
    # CSC-CTRL / CTRL (an autoencoder --arch, or an autoencoder --init file): the rate-reduction game
    ctrl_mode: str = "multi"  # multi (labels) or binary (label-free)
    feature_dim: int = 128
    width: Optional[int] = None  # the autoencoder's channel width (None: the architecture's, 64 / 32)
    # CSC-CTRL's image: the synthesis x = D_1 z_1 of the last sparse code (the default since issue 30) or
    # "code", the sparse code itself (the layout before; csc_cli.autoencoders, design choice 3)
    ctrl_image: str = "synthesis"
    encoder_steps: int = 1  # encoder steps per decoder step
    first_step_dr: bool = False  # the first encoder step maximises dR(Z) alone (CTRL's CIFAR-10 setting)
    eps2: float = 0.5  # epsilon squared of the coding rate
    encoder_beta1: float = 0.5  # Adam betas per network
    encoder_beta2: float = 0.999
    decoder_beta1: float = 0.5
    decoder_beta2: float = 0.999
    # sample-wise consistency: departures from the paper's pure game (0 = CTRL's game), added to the
    # decoder's loss -- pixel: mean over images of sum_pixels (g(f(x)) - x)^2 in [0, 1] units;
    # feature: mean over images of ||f(x) - f(g(f(x)))||^2 on the unit sphere
    pixel_weight: float = 0.0
    feature_weight: float = 0.0
    # ... and the pixel term added to the encoder's loss too (through g, whose weights stay put):
    # the encoder is then asked to keep what a reconstruction of each image needs
    encoder_pixel_weight: float = 0.0
    # warm starts (an --init model converted by csc convert, conv units): the continuation path moves
    # its CSC layers from the source convs (lambda 0, signed, one step) to their own settings over
    # this share of the run's optimizer steps (0: off; csc_cli.continuation); each factor ramps
    # over its own window of the path, linearly or along a half cosine
    continuation: float = 0.0
    continuation_lam: List[float] = field(default_factory=lambda: [0.0, 1.0])
    continuation_nonneg: List[float] = field(default_factory=lambda: [0.0, 1.0])
    continuation_tail: List[float] = field(default_factory=lambda: [0.0, 1.0])
    continuation_shape: str = "linear"
    # distillation from a teacher: loss (1 - w) CE + w T^2 KL(softmax(teacher / T) || softmax(student / T));
    # the teacher is a model file, or (None) the --init model's source function: a converted model at
    # the start of its path is the ConvNet it was converted from
    distill: float = 0.0
    distill_temperature: float = 4.0
    teacher: Optional[str] = None
    # robustness (classifiers): gaussian noise augmentation, a per-image sigma drawn from [0, max]
    # (0: off); the first CSC layer's lambda drawn per training image from [lo, hi] ([]: off), so a
    # raised test-time lambda is a setting the network has seen; and the label-free lambda rule
    # calibrated at the end of the run on its training images, as `csc eval --calibrate-lambda`
    # does, stored in model.safetensors so that `csc eval MODEL --lambda auto` works as it is
    noise_augment: float = 0.0
    lambda_jitter: List[float] = field(default_factory=list)
    # the first CSC layer's relative reconstruction error ||x - D z||^2 / ||x||^2 of its input, added to
    # the loss with this weight (0: off): an unsupervised fit of a converted stem's dictionary to
    # synthesise the images it codes, while the cross-entropy (and distillation) hold the function
    reconstruction: float = 0.0
    calibrate_lambda: bool = False
    calibration_images: int = 512
    calibration_rule: str = "best"

    # ------------------------------------------------------------------ construction
    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """Field name -> default value."""
        return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cls)}

    @classmethod
    def from_toml(cls, path, **overrides: Any) -> "TrainConfig":
        """The recipe at ``path`` (every key a field of this class, with a value of the field's
        type), then ``overrides`` that are not None. One clear ``ValueError`` for a bad recipe."""
        return cls(**{**read_recipe(Path(path)), **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_state(cls, path, **overrides: Any) -> "TrainConfig":
        """The config the run that wrote the resume state ``path`` had, set to resume from it and to
        keep writing beside it; ``overrides`` that are not None win."""
        from ..checkpoint import read_state_meta

        stored = stored_config(read_state_meta(path))
        known = {k: v for k, v in stored.items() if k in cls.defaults()}
        known.update(resume=str(path), out=str(Path(path).parent))
        return cls(**{**known, **{k: v for k, v in overrides.items() if v is not None}})

    def default_out(self) -> str:
        """``runs/<dataset>-<arch>-<csc>`` with readable, path-safe names: ``folder:/data/pics``
        becomes ``folder-pics``, ``timm:resnet18`` ``timm-resnet18``."""
        return f"runs/{_slug(self.dataset)}-{_slug(self.arch)}-{_slug(self.csc)}"

    def resolved(self) -> "TrainConfig":
        """A copy with the output directory filled in."""
        return dataclasses.replace(self, out=self.out or self.default_out())

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(message)

        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.optimizer in OPTIMIZERS + (GAME_OPTIMIZER,),
             f"optimizer must be one of {', '.join(OPTIMIZERS)} (or {GAME_OPTIMIZER}, the CTRL game's), "
             f"got {self.optimizer!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        need(self.csc in CSC_MODES, f"csc must be one of {', '.join(CSC_MODES)}, got {self.csc!r}")
        need(self.select in SELECT_MODES, f"select must be 'last' or 'best', got {self.select!r}")
        need(self.select == "last" or self.val_split > 0,
             "select='best' needs a held-out split of the training data: add --val-split 0.1")
        need(0 <= self.val_split < 1, f"val_split must be in [0, 1), got {self.val_split}")
        need(0 <= self.ema < 1, f"ema decay must be in [0, 1), got {self.ema}")
        need(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.warmup_epochs >= 0 and self.weight_decay >= 0 and self.clip_grad >= 0,
             "warmup_epochs, weight_decay and clip_grad must be >= 0")
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0")
        need(self.max_batches is None or self.max_batches >= 1, f"max_batches must be >= 1, got {self.max_batches}")
        out = Path(self.out or self.default_out())
        need(not out.exists() or out.is_dir(), f"output {out} exists and is a file: give a directory")
        need(self.ctrl_mode in CTRL_MODES, f"ctrl_mode must be one of {', '.join(CTRL_MODES)}, got {self.ctrl_mode!r}")
        need(self.feature_dim >= 2, f"feature_dim must be >= 2, got {self.feature_dim}")
        need(self.encoder_steps >= 1, f"encoder_steps must be >= 1, got {self.encoder_steps}")
        need(self.eps2 > 0, f"eps2 must be > 0, got {self.eps2}")
        need(min(self.pixel_weight, self.feature_weight, self.encoder_pixel_weight) >= 0,
             "pixel_weight, feature_weight and encoder_pixel_weight must be >= 0")
        need(self.width is None or self.width >= 1, f"width must be >= 1, got {self.width}")
        need(self.ctrl_image in CTRL_IMAGES, f"ctrl_image must be one of {', '.join(CTRL_IMAGES)}, got {self.ctrl_image!r}")
        need(self.ctrl_image == "synthesis" or self.csc == "all" or not self.autoencoder,
             "--ctrl-image code is CSC-CTRL's (--csc all): CTRL's decoder is a plain transposed conv")
        need(all(0 <= b < 1 for b in (self.encoder_beta1, self.encoder_beta2, self.decoder_beta1, self.decoder_beta2)),
             "Adam betas must be in [0, 1)")
        need(0 <= self.continuation <= 1, f"continuation must be a share of the run in [0, 1], got {self.continuation}")
        for name in ("continuation_lam", "continuation_nonneg", "continuation_tail"):
            window = getattr(self, name)
            need(isinstance(window, (list, tuple)) and len(window) == 2 and 0 <= window[0] <= window[1] <= 1,
                 f"{name} must be [start, end] with 0 <= start <= end <= 1, got {window!r}")
        need(self.continuation_shape in ("linear", "cosine"),
             f"continuation_shape must be linear or cosine, got {self.continuation_shape!r}")
        need(0 <= self.distill <= 1, f"distill must be a weight in [0, 1], got {self.distill}")
        need(self.distill_temperature > 0, f"distill temperature must be > 0, got {self.distill_temperature}")
        need(0 <= self.noise_augment <= 1, f"noise_augment is the largest noise sigma for pixels in [0, 1]: give a "
                                           f"value in [0, 1], got {self.noise_augment}")
        need(self.lambda_jitter == [] or (isinstance(self.lambda_jitter, (list, tuple)) and len(self.lambda_jitter) == 2
                                          and 0 <= self.lambda_jitter[0] <= self.lambda_jitter[1]),
             f"lambda_jitter must be [low, high] with 0 <= low <= high (or [] for off), got {self.lambda_jitter!r}")
        need(self.reconstruction >= 0, f"reconstruction must be a weight >= 0, got {self.reconstruction}")
        need(self.calibration_images >= 4, f"calibration_images must be >= 4, got {self.calibration_images}")
        if self.arch in CTRL_ARCHS and not self.init:
            need(self.csc in ("all", "none"), f"{self.arch} is an autoencoder: --csc all (CSC-CTRL) or none (CTRL), "
                                              f"not {self.csc!r}")

    @property
    def autoencoder(self) -> bool:
        """Whether this run plays the CTRL game (an autoencoder --arch; an --init file says so itself)."""
        return self.arch in CTRL_ARCHS


def stored_config(meta: Dict[str, Any]) -> Dict[str, Any]:
    """The config a resume state's metadata records, with what a state written before a setting
    existed meant by its absence: a CSC-CTRL run from before issue 30 made its image as the sparse
    code (``ctrl_image='code'``)."""
    stored = dict(meta.get("config") or {})
    if stored.get("arch") in CTRL_ARCHS and stored.get("csc") == "all":
        stored.setdefault("ctrl_image", "code")
    return stored


def _slug(name: str) -> str:
    if name.startswith("folder:"):
        path = name[len("folder:"):].rstrip("/\\")
        name = "folder-" + (Path(path).name or "root")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


#: The type of each field whose default is None, when a recipe gives it (they are checked like the rest).
OPTIONAL_TYPES: Dict[str, type] = {"data_dir": str, "image_size": int, "out": str, "init": str, "resume": str,
                                   "max_batches": int, "width": int, "teacher": str}


def read_recipe(path: Path) -> Dict[str, Any]:
    """The keys of a TOML recipe, checked against :class:`TrainConfig`'s fields and their types."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"recipe {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"recipe {path} is a directory: give a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipe {path} is not valid TOML: {exc}") from None
    fields = TrainConfig.defaults()
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"recipe {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    for key, value in data.items():
        default = fields[key]
        expected = type(default) if default is not None else OPTIONAL_TYPES[key]
        if expected is bool and not isinstance(value, bool):
            raise ValueError(f"recipe {path}: {key} must be true or false, got {value!r}")
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"recipe {path}: {key} must be an integer, got {value!r}")
        if expected is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"recipe {path}: {key} must be a number, got {value!r}")
        if expected is str and not isinstance(value, str):
            raise ValueError(f"recipe {path}: {key} must be a string, got {value!r}")
        if expected is list and key == "milestones" and not (
                isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"recipe {path}: {key} must be a list of integers, got {value!r}")
        if expected is list and not (isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"recipe {path}: {key} must be a list of numbers, got {value!r}")
    return data
