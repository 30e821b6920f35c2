"""Jobs: library functions that take a typed config and return a result dataclass.

No argument parsing and no printing here; ``csc_cli.cli`` renders the results.
"""

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when there is one, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """Autocast for 'bf16' / 'fp16'; a no-op for 'none'."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
