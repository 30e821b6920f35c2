import torch
from torchvision.utils import save_image


def write_image_folder(root, per_class, classes=3, seed=0):
    """An ImageFolder tree under ``root``: ``{split: images per class}``, 40x36 PNGs whose
    brightness depends on the class (so a model can learn something)."""
    gen = torch.Generator().manual_seed(seed)
    for split, n in per_class.items():
        for cls in range(classes):
            (root / split / f"class{cls}").mkdir(parents=True)
            for i in range(n):
                img = torch.rand(3, 40, 36, generator=gen) * 0.3 + 0.2 * cls
                save_image(img, root / split / f"class{cls}" / f"{i}.png")
    return root
