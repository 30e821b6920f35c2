"""csc: convolutional sparse coding for real vision models.

Public API::

    from csc_cli import CSCConv2d, CSCConv1d, CSCConvTranspose2d
    layer = CSCConv2d(3, 64, 3, padding=1, lam=0.1, steps=2)   # a drop-in for nn.Conv2d(3, 64, 3, padding=1)
    up = CSCConvTranspose2d(64, 32, 4, stride=2, padding=1)    # a drop-in for nn.ConvTranspose2d (sparse deconvolution)
"""

__version__ = "0.1.0"

from .layers import (  # noqa: E402
    CSC_OPTION_DEFAULTS,
    CSCConv1d,
    CSCConv2d,
    CSCConvNd,
    CSCConvTranspose1d,
    CSCConvTranspose2d,
    csc_layers,
)
from .convert import ConversionPlan, convert  # noqa: E402
from .models import build_model, create_model  # noqa: E402
from .card import ModelCard  # noqa: E402
from .checkpoint import ModelFileError, load, read_card, read_metadata, save  # noqa: E402
from .surgery import set_input_normalization  # noqa: E402

__all__ = [
    "CSCConv1d",
    "CSCConv2d",
    "CSCConvNd",
    "CSCConvTranspose1d",
    "CSCConvTranspose2d",
    "CSC_OPTION_DEFAULTS",
    "ConversionPlan",
    "ModelCard",
    "ModelFileError",
    "build_model",
    "convert",
    "create_model",
    "csc_layers",
    "load",
    "read_card",
    "read_metadata",
    "save",
    "set_input_normalization",
    "__version__",
]
