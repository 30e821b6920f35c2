"""CIFAR-10/100 in torchvision's on-disk layout, read without unpickling arbitrary objects.

The "python version" batches are pickles of dicts holding a numpy array. A restricted unpickler
resolves only the three names a numpy array needs (``_reconstruct``, ``ndarray``, ``dtype``) and
refuses everything else, so a hostile file cannot run code. Any well-formed subset of the batch
files is accepted (no md5 check): a real subset such as ``cifar10-mini`` reads like the full set.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

SPECS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", b"label_names"),
        "labels": b"labels",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", b"fine_label_names"),
        "labels": b"fine_labels",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
    },
}


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def read_batch(path: Path) -> dict:
    """One batch file as a dict with bytes keys; raises ValueError for anything malformed."""
    try:
        with open(path, "rb") as fh:
            obj = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a CIFAR batch file ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR batch file (not a dict)")
    return obj


def _images_labels(batch: dict, label_key: bytes, path: Path) -> Tuple[np.ndarray, np.ndarray]:
    data = batch.get(b"data")
    labels = batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be an N x 3072 uint8 array")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != data.shape[0]:
        raise ValueError(f"{path}: '{label_key.decode()}' must hold one label per image")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def find_root(name: str, data_dir: Path) -> Optional[Path]:
    """The folder holding the batch files: ``data_dir`` itself or ``data_dir/<folder>``."""
    folder = SPECS[name]["folder"]
    for candidate in (data_dir / folder, data_dir):
        if candidate.is_dir() and any((candidate / f).exists() for f in SPECS[name]["train"] + SPECS[name]["test"]):
            return candidate
    return None


def load_cifar(name: str, data_dir: Path, split: str) -> Tuple[Tensor, Tensor, List[str]]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,), class names)`` of the ``split``
    ('train' or 'test') files present under ``data_dir``."""
    spec = SPECS[name]
    root = find_root(name, Path(data_dir))
    if root is None:
        raise FileNotFoundError(
            f"no {name} batch files under {data_dir} (expected {spec['folder']}/ with "
            f"{', '.join(spec['train'] + spec['test'])}); download {spec['url']} and extract it there"
        )
    files = [root / f for f in spec[split] if (root / f).exists()]
    if not files:
        raise FileNotFoundError(f"no {split} batch of {name} under {root} (expected {', '.join(spec[split])})")
    images, labels = [], []
    for path in files:
        x, y = _images_labels(read_batch(path), spec["labels"], path)
        images.append(x)
        labels.append(y)
    names: List[str] = []
    meta_file, meta_key = spec["meta"]
    if (root / meta_file).exists():
        meta = read_batch(root / meta_file)
        raw = meta.get(meta_key, [])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    n_classes = 10 if name == "cifar10" else 100
    if len(names) != n_classes:
        names = [str(i) for i in range(n_classes)]
    y = torch.from_numpy(np.concatenate(labels))
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"{name} labels out of range 0..{n_classes - 1} under {root}")
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(images))), y, names


def download_cifar(name: str, data_dir: Path) -> None:
    """Download and extract the official archive (checked by md5) into ``data_dir``."""
    import socket
    from urllib.parse import urlparse

    from torchvision.datasets.utils import download_and_extract_archive

    spec = SPECS[name]
    host = urlparse(spec["url"]).hostname
    try:  # fail fast offline instead of waiting on a download that cannot start
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach {host} ({exc})") from None
    download_and_extract_archive(spec["url"], str(data_dir), md5=spec["md5"])


def class_counts(labels: Tensor, n: int) -> Dict[int, int]:
    return {i: int(c) for i, c in enumerate(torch.bincount(labels, minlength=n).tolist())}
