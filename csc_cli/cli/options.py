"""Option types shared by the commands (``Annotated`` aliases) and the parsers of list-valued flags.

Closed vocabularies are ``Literal`` types, so ``--help`` lists them and a typo is refused before
any work starts. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Literal, Optional

import typer

from ..choices import DATASET_HELP

# ----------------------------------------------------------------------------- choices
CscMode = Literal["stem", "all", "none"]
Method = Literal["fista", "ista", "heavy_ball"]
Backward = Literal["unrolled", "implicit", "recompute"]
Units = Literal["conv", "code"]
CtrlMode = Literal["multi", "binary"]
CtrlImage = Literal["synthesis", "code"]
RuleName = Literal["best", "residual", "sigma", "sigma_table", "discrepancy"]
Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "step", "constant", "linear"]
Augment = Literal["auto", "none", "crop", "crop_flip", "imagenet"]
Amp = Literal["none", "bf16", "fp16"]
Select = Literal["last", "best"]
LambdaLayers = Literal["first", "all"]
AttackPreset = Literal["quick"]

# the panels two or more commands share (Typer's rich_help_panel); options without one go to "Options"
DATA_PANEL = "Data"
LAMBDA_PANEL = "Test-time lambda"

# ----------------------------------------------------------------------------- shared options
ModelFile = Annotated[Path, typer.Argument(help="A csc model file (.safetensors).", exists=True, dir_okay=False,
                                           show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON (progress on stderr).")]
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help="Where the dataset lives (default: its usual place).",
                                                rich_help_panel=DATA_PANEL)]
Device = Annotated[str, typer.Option(help="auto (CUDA if there is one), cpu, cuda:1 ...")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
LamPolicy = Annotated[Optional[str], typer.Option(
    "--lambda", help="auto, a number (first CSC layer) or layer=value,... Default: as trained.",
    rich_help_panel=LAMBDA_PANEL)]
LamScale = Annotated[Optional[float], typer.Option(help="Multiply the trained lambda by this.",
                                                   rich_help_panel=LAMBDA_PANEL)]
LamLayers = Annotated[LambdaLayers, typer.Option(help="Which layers --lambda-scale scales.",
                                                 rich_help_panel=LAMBDA_PANEL)]
EvalDataset = Annotated[Optional[str], typer.Argument(
    help=f"{DATASET_HELP}. Default: the model file's.", show_default=False)]


# ----------------------------------------------------------------------------- parsers
def floats(text: str) -> List[float]:
    """'0.1,0.2' -> [0.1, 0.2]; a one-line usage error otherwise."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def grid(text: str) -> List[float]:
    """'0.1:1.4:0.1' (inclusive) or '0.1,0.3,0.5'."""
    if ":" in text:
        try:
            start, stop, step = (float(v) for v in text.split(":"))
        except ValueError:
            raise typer.BadParameter(f"expected start:stop:step, got {text!r}") from None
        if step <= 0 or stop < start:
            raise typer.BadParameter(f"expected start <= stop and step > 0, got {text!r}")
        n = int(round((stop - start) / step)) + 1
        return [round(start + i * step, 10) for i in range(n)]
    return floats(text)


def names(text: Optional[str]) -> Optional[List[str]]:
    """'a, b,c' -> ['a', 'b', 'c']; None stays None."""
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]
