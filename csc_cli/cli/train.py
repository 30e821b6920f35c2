"""``csc train``: SDNet (or the plain ConvNet) on a dataset, from flags, a recipe or a resume state."""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..choices import DATASET_HELP
from ..jobs.train_config import TrainConfig, read_recipe
from . import render
from .app import app, console, err_console
from .options import BACKWARD_HELP, Amp, Augment, Backward, CscMode, CtrlMode, Optimizer, Schedule, Select, floats
from .progress import JobProgress, TrainView

_D = TrainConfig.defaults()


def _opt(*names: str, help: str, default: object = None):
    """An optional flag (None: not given, so a recipe's or resume state's value stands) whose help
    shows the built-in default (that of the field the first name spells, or ``default``)."""
    shown = _D.get(names[0].lstrip("-").split("/")[0].replace("-", "_")) if default is None else default
    return typer.Option(None, *names, help=help, show_default=str(shown) if shown is not None else False)


@app.command()
def train(
    dataset: Annotated[Optional[str], typer.Argument(help=f"{DATASET_HELP}.", show_default="digits (offline)")] = None,
    data_dir: Optional[str] = _opt("--data-dir", help="Where the dataset lives (CIFAR: the extracted batches)."),
    recipe: Annotated[Optional[Path], typer.Option(help="A TOML recipe (see recipes/): its values replace the defaults "
                                                    "shown here; flags override both.")] = None,
    arch: Optional[str] = _opt("--arch", help="resnet18_cifar, resnet34_cifar, resnet20_cifar or any timm ConvNet; on images up "
                                              "to 64 px resnet18/34 mean the CIFAR layout (timm:resnet18 for timm's); "
                                              "ctrl_dcgan32 / ctrl_resnet: an autoencoder trained by the CTRL game."),
    csc: Optional[CscMode] = _opt("--csc", help="stem (SDNet), all (SDNet-All; CSC-CTRL for an autoencoder) or none "
                                                "(the plain ConvNet; CTRL)."),
    shortcut: Optional[bool] = _opt("--shortcut/--no-shortcut", help="--no-shortcut: the pure CSC+BN stack (SDNet-All, "
                                                                     "CIFAR ResNets)."),
    lam: Optional[float] = _opt("--lambda", "--lam", help="Sparsity weight of the CSC layers.", default=_D["lam"]),
    steps: Optional[int] = _opt("--steps", help="Unrolled FISTA steps K."),
    backward: Optional[Backward] = _opt("--backward", help=BACKWARD_HELP),
    epochs: Optional[int] = _opt("--epochs", help="Training epochs."),
    batch_size: Optional[int] = _opt("--batch-size", help="Batch size (per process)."),
    optimizer: Optional[Optimizer] = _opt("--optimizer", help="SGD (Nesterov momentum) or AdamW."),
    lr: Optional[float] = _opt("--lr", help="Peak learning rate."),
    momentum: Optional[float] = _opt("--momentum", help="SGD momentum."),
    nesterov: Optional[bool] = _opt("--nesterov/--no-nesterov", help="Nesterov momentum."),
    weight_decay: Optional[float] = _opt("--weight-decay", help="Weight decay."),
    schedule: Optional[Schedule] = _opt("--schedule", help="cosine (per iteration), step (at --milestones) or constant."),
    milestones: Optional[str] = _opt("--milestones", help="Epochs at which a step schedule decays, e.g. 30,60,90.",
                     default="none"),
    warmup_epochs: Optional[float] = _opt("--warmup-epochs", help="Linear warm-up, in epochs."),
    label_smoothing: Optional[float] = _opt("--label-smoothing", help="Label smoothing."),
    augment: Optional[Augment] = _opt("--augment", help="auto: crop for digits, crop_flip for CIFAR, imagenet for ImageNet, none otherwise."),
    ema: Optional[float] = _opt("--ema", help="EMA decay of the weights (0: off)."),
    clip_grad: Optional[float] = _opt("--clip-grad", help="Gradient norm clipping (0: off)."),
    amp: Optional[Amp] = _opt("--amp", help="Autocast: bf16 (CPU or CUDA) or fp16 (CUDA)."),
    channels_last: Optional[bool] = _opt("--channels-last/--no-channels-last", help="channels_last memory format."),
    compile: Optional[bool] = _opt("--compile/--no-compile", help="torch.compile the model."),
    seed: Optional[int] = _opt("--seed", help="Random seed."),
    deterministic: Optional[bool] = _opt("--deterministic/--no-deterministic", help="Deterministic algorithms."),
    device: Optional[str] = _opt("--device", help="auto, cpu, cuda, cuda:1 ..."),
    val_split: Optional[float] = _opt("--val-split", help="Hold out this fraction of the training data for selection."),
    select: Optional[Select] = _opt("--select", help="last, or best (on the held-out split; needs --val-split)."),
    out: Optional[str] = _opt("--out", help="Output directory (with --resume: the state's folder).",
              default="runs/<dataset>-<arch>-<csc>"),
    init: Optional[str] = _opt("--init", help="Fine-tune this model file (e.g. from csc convert).", default="none"),
    resume: Optional[str] = _opt("--resume", help="Continue from a state.safetensors: alone it resumes that run as it was "
                                                  "configured; flags given with it override.", default="none"),
    checkpoint_every: Optional[int] = _opt("--checkpoint-every", help="Also save resumable state every N steps (0: per epoch only)."),
    max_batches: Optional[int] = _opt("--max-batches", help="At most this many batches per epoch (smoke tests).", default="all"),
    image_size: Optional[int] = _opt("--image-size", help="Image size.", default="digits 16, folders 224, CIFAR 32"),
    workers: Optional[int] = _opt("--workers", help="Loader processes for image folders."),
    ctrl_mode: Optional[CtrlMode] = _opt("--ctrl-mode", help="Autoencoders (--arch ctrl_dcgan32 / ctrl_resnet): the "
                                                             "rate-reduction game with labels (multi) or without (binary)."),
    feature_dim: Optional[int] = _opt("--feature-dim", help="Autoencoders: feature dimension d."),
    encoder_steps: Optional[int] = _opt("--encoder-steps", help="Autoencoders: encoder steps per decoder step."),
    width: Optional[int] = _opt("--width", help="Autoencoders: channel width (ctrl_dcgan32 w/2w/4w, ctrl_resnet w..8w).",
                                default="64 dcgan32, 32 resnet"),
    pixel_weight: Optional[float] = _opt("--pixel-weight", help="Autoencoders: weight of the per-image pixel term "
                                                                "||x - g(f(x))||^2 in the decoder's loss (0: CTRL's "
                                                                "pure game)."),
    feature_weight: Optional[float] = _opt("--feature-weight", help="Autoencoders: weight of the per-image feature "
                                                                    "term ||f(x) - f(g(f(x)))||^2 in the decoder's "
                                                                    "loss (0: CTRL's pure game)."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (progress, if any, on stderr).")] = False,
) -> None:
    """Train an SDNet (or the plain ConvNet) on a dataset: `csc train` alone trains SDNet on the
    built-in digits in well under a minute. Writes metrics, the resolved config, resumable state
    and a self-describing model file."""
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
                 encoder_steps=encoder_steps, width=width, pixel_weight=pixel_weight, feature_weight=feature_weight)
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

