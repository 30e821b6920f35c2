"""scikit-learn's bundled 8x8 handwritten digits: real images that need no download."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def load_digits(image_size: int = 16) -> Tuple[Tensor, Tensor]:
    """All 1797 digits as ``(N, 1, image_size, image_size)`` float32 images in [0, 1] (bilinear
    upsampling from 8x8) and their ``(N,)`` int64 labels, in scikit-learn's fixed order."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images.clamp_(0.0, 1.0), labels
