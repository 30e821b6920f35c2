"""``csc train``: SDNet (or the plain ConvNet) on a dataset, from flags, a recipe or a resume state."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..choices import DATASET_HELP
from ..jobs.train_config import TrainConfig, read_recipe
from . import render
from .app import command, console, err_console
from .options import Amp, Augment, Backward, CscMode, CtrlImage, CtrlMode, Optimizer, Schedule, Select, floats
from .progress import JobProgress, TrainView

_D = TrainConfig.defaults()

# the panels of `csc train --help`, in this order; "Options" (--recipe, the run, --help) comes first
DATA, MODEL, CSC, OPTIM, LR, WARM, ROBUST, CTRL, HARDWARE = (
    "Data", "Model", "CSC layers", "Optimisation", "Learning rate", "Warm start (--init a converted model)",
    "Robustness (classifiers)", "The CTRL game (autoencoders)", "Hardware & reproducibility")


def _opt(*names: str, help: str, panel: Optional[str] = None, default: object = None,
         metavar: Optional[str] = None):
    """An optional flag (None: not given, so a recipe's or resume state's value stands) whose help
    shows the built-in default (that of the field the first name spells, or ``default``)."""
    shown = _D.get(names[0].lstrip("-").split("/")[0].replace("-", "_")) if default is None else default
    return typer.Option(None, *names, help=help, show_default=str(shown) if shown is not None else False,
                        rich_help_panel=panel, metavar=metavar)


@command(example=[
    ("SDNet (ResNet-20 with a CSC stem) on the built-in digits, offline:", "csc train"),
    ("CSC-CTRL on digits (add --csc none for CTRL itself):", "csc train digits --recipe recipes/ctrl_digits.toml"),
    ("SDNet-18 on CIFAR-10, the paper's recipe:", "csc train --recipe recipes/cifar10_sdnet18.toml --data-dir data"),
])
def train(
    dataset: Annotated[Optional[str], typer.Argument(help=f"{DATASET_HELP}.", show_default="digits (offline)")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="A TOML recipe (recipes/); flags override it.")] = None,
    resume: Optional[str] = _opt("--resume", help="Continue a run from its state.safetensors.", default="none"),
    out: Optional[str] = _opt("--out", help="Folder for the run's files.", default="runs/<dataset>-<arch>-<csc>"),
    checkpoint_every: Optional[int] = _opt("--checkpoint-every", help="Also save state every N steps."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (progress on stderr).")] = False,
    data_dir: Optional[str] = _opt("--data-dir", help="Where the dataset lives (CIFAR: the batches).", panel=DATA),
    image_size: Optional[int] = _opt("--image-size", help="Image size in pixels.", panel=DATA,
                                     default="digits 16, folders 224, CIFAR 32"),
    augment: Optional[Augment] = _opt("--augment", help="Augmentation; auto chooses by dataset.", panel=DATA),
    val_split: Optional[float] = _opt("--val-split", help="Fraction held out for --select.", panel=DATA),
    select: Optional[Select] = _opt("--select", help="The epoch kept: the last, or the best on --val-split.",
                                    panel=DATA),
    workers: Optional[int] = _opt("--workers", help="Loader processes (folders).", panel=DATA),
    max_batches: Optional[int] = _opt("--max-batches", help="Cap on batches per epoch.", panel=DATA,
                                      default="all"),
    arch: Optional[str] = _opt("--arch", help="A CIFAR ResNet, timm:NAME or a ctrl_* autoencoder.", panel=MODEL),
    csc: Optional[CscMode] = _opt("--csc", help="Which convs become CSC layers.", panel=MODEL),
    shortcut: Optional[bool] = _opt("--shortcut/--no-shortcut", help="Shortcuts (off: pure CSC+BN).", panel=MODEL),
    init: Optional[str] = _opt("--init", help="Fine-tune this model file.", panel=MODEL, default="none"),
    lam: Optional[float] = _opt("--lambda", "--lam", help="Sparsity weight lambda.", panel=CSC, default=_D["lam"]),
    steps: Optional[int] = _opt("--steps", help="Unrolled FISTA steps K.", panel=CSC),
    backward: Optional[Backward] = _opt("--backward", help="Gradient of the K steps.", panel=CSC),
    epochs: Optional[int] = _opt("--epochs", help="Training epochs.", panel=OPTIM),
    batch_size: Optional[int] = _opt("--batch-size", help="Batch size per process.", panel=OPTIM),
    optimizer: Optional[Optimizer] = _opt("--optimizer", help="SGD with momentum, or AdamW.", panel=OPTIM),
    momentum: Optional[float] = _opt("--momentum", help="SGD momentum.", panel=OPTIM),
    nesterov: Optional[bool] = _opt("--nesterov/--no-nesterov", help="Nesterov momentum.", panel=OPTIM),
    weight_decay: Optional[float] = _opt("--weight-decay", help="Weight decay.", panel=OPTIM),
    label_smoothing: Optional[float] = _opt("--label-smoothing", help="Label smoothing.", panel=OPTIM),
    ema: Optional[float] = _opt("--ema", help="Weight EMA decay (0: off).", panel=OPTIM),
    clip_grad: Optional[float] = _opt("--clip-grad", help="Gradient-norm clip (0: off).", panel=OPTIM),
    lr: Optional[float] = _opt("--lr", help="Peak learning rate.", panel=LR),
    schedule: Optional[Schedule] = _opt("--schedule", help="cosine: per iteration.", panel=LR),
    milestones: Optional[str] = _opt("--milestones", help="Step decay epochs, e.g. 30,60.", panel=LR,
                                     default="none"),
    warmup_epochs: Optional[float] = _opt("--warmup-epochs", help="Linear warm-up, in epochs.", panel=LR),
    continuation: Optional[float] = _opt("--continuation", help="Share of the run on the path.",
                                         panel=WARM),
    distill: Optional[float] = _opt("--distill", help="Distillation weight.", panel=WARM),
    distill_temperature: Optional[float] = _opt("--distill-temperature", help="Its softmax temperature T.",
                                                panel=WARM),
    teacher: Optional[str] = _opt("--teacher", help="Teacher model file.", panel=WARM,
                                  default="--init's source"),
    noise_augment: Optional[float] = _opt("--noise-augment", help="Noise sigma up to this.",
                                          panel=ROBUST),
    lambda_jitter: Optional[str] = _opt("--lambda-jitter", help="Lambda per image in LO,HI.",
                                        panel=ROBUST, default="off"),
    calibrate_lambda: Optional[bool] = _opt("--calibrate-lambda/--no-calibrate-lambda",
                                            help="Store --lambda auto's rule.", panel=ROBUST),
    ctrl_mode: Optional[CtrlMode] = _opt("--ctrl-mode", help="With labels (multi) or not.", panel=CTRL),
    feature_dim: Optional[int] = _opt("--feature-dim", help="Feature dimension d.", panel=CTRL),
    encoder_steps: Optional[int] = _opt("--encoder-steps", help="Encoder steps per decoder step.", panel=CTRL),
    width: Optional[int] = _opt("--width", help="Width w.", panel=CTRL, default="64 dcgan32, 32 resnet"),
    ctrl_image: Optional[CtrlImage] = _opt("--ctrl-image", help="Image: synthesis or code.", panel=CTRL, metavar="<str>"),
    pixel_weight: Optional[float] = _opt("--pixel-weight", help="Decoder pixel term (0: off).", panel=CTRL),
    feature_weight: Optional[float] = _opt("--feature-weight", help="Decoder feature term (0: off).", panel=CTRL),
    encoder_pixel_weight: Optional[float] = _opt("--encoder-pixel-weight", help="Encoder pixel term (0: off).",
                                                 panel=CTRL),
    device: Optional[str] = _opt("--device", help="auto, cpu, cuda, cuda:1 ...", panel=HARDWARE),
    amp: Optional[Amp] = _opt("--amp", help="Autocast (fp16: CUDA only).", panel=HARDWARE),
    channels_last: Optional[bool] = _opt("--channels-last/--no-channels-last", help="channels_last memory format.",
                                         panel=HARDWARE),
    compile: Optional[bool] = _opt("--compile/--no-compile", help="torch.compile the model.", panel=HARDWARE),
    seed: Optional[int] = _opt("--seed", help="Random seed.", panel=HARDWARE),
    deterministic: Optional[bool] = _opt("--deterministic/--no-deterministic", help="Deterministic algorithms.",
                                         panel=HARDWARE),
) -> None:
    """Train an SDNet, a plain ConvNet or a CTRL autoencoder.

    Values come from the defaults shown, then a --recipe, then the flags given; --resume alone
    continues a run exactly as it was configured. A run writes metrics, the resolved config,
    resumable state and a self-describing model file into --out.

    --arch: resnet20_cifar, resnet18/34_cifar (the CIFAR layout; resnet18 means it), timm:NAME
    (any timm ConvNet, up to 64 px) or the autoencoders ctrl_dcgan32, ctrl_resnet (trained by the
    CTRL game: --csc all is CSC-CTRL, none CTRL). --csc stem is SDNet, all SDNet-All, none plain.

    --continuation F (--init a converted model): the CSC layers go from the source convs to
    their settings over a share F of the steps. --distill W: (1-W) CE + W T^2 KL.
    """
    from ..jobs.train import run_train

    given = dict(dataset=dataset, data_dir=data_dir, arch=arch, csc=csc, shortcut=shortcut, lam=lam, steps=steps,
                 backward=backward, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                 momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, schedule=schedule,
                 milestones=[int(m) for m in floats(milestones)] if milestones else None,
                 warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, augment=augment, ema=ema,
                 clip_grad=clip_grad, amp=amp, channels_last=channels_last, compile=compile, seed=seed,
                 deterministic=deterministic, device=device, val_split=val_split, select=select, out=out,
                 init=init, checkpoint_every=checkpoint_every, max_batches=max_batches,
                 image_size=image_size, workers=workers, ctrl_mode=ctrl_mode, feature_dim=feature_dim,
                 encoder_steps=encoder_steps, width=width, ctrl_image=ctrl_image, pixel_weight=pixel_weight, feature_weight=feature_weight,
                 encoder_pixel_weight=encoder_pixel_weight, continuation=continuation, distill=distill,
                 distill_temperature=distill_temperature, teacher=teacher, noise_augment=noise_augment,
                 lambda_jitter=_pair(lambda_jitter, "--lambda-jitter") if lambda_jitter else None,
                 calibrate_lambda=calibrate_lambda)
    flags = {k: v for k, v in given.items() if v is not None}
    if resume:  # the run's own config, then the recipe's values, then the flags
        config = TrainConfig.from_state(resume, **{**(read_recipe(recipe) if recipe else {}), **flags})
    elif recipe:
        config = TrainConfig.from_toml(recipe, **flags)
    else:
        config = TrainConfig(**flags)
    config = config.resolved()
    with JobProgress(err_console if as_json else console, "starting", transient=False) as bar:
        view = TrainView(bar, f"{config.arch} (csc={config.csc}) on {config.dataset}")
        result = run_train(config, view)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    console.print(view.table)
    render.train(result)



def _pair(text: str, flag: str) -> list:
    values = floats(text)
    if len(values) != 2:
        raise typer.BadParameter(f"{flag} takes two numbers LO,HI (e.g. 0.1,0.5), got {text!r}")
    return values
