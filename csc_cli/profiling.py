"""Measuring memory and time honestly, for benchmarks and the tests that need a real measurement.

Peak memory on CUDA comes from the caching allocator's statistics. On a CPU (Linux) it is the
process's resident-set high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` just before
the measured call; to make freed tensors leave the resident set at once, the measurement runs in a
fresh interpreter with glibc's mmap threshold pinned low (:func:`isolated`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import torch

_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Extra memory at the peak of ``fn()`` above what was in use when it started."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError("CPU peak memory needs Linux /proc (VmHWM)")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark to the current resident set
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024


def layer_train_step_memory(
    backward: str, steps: int, *, batch: int = 16, channels: int = 16, size: int = 64, device: str = "cpu",
    transposed: bool = False,
) -> Dict[str, Any]:
    """Peak extra memory of one forward+backward of a ``CSCConv2d(channels, 2*channels, 3)`` on a
    ``size`` input, or (``transposed``) of a ``CSCConvTranspose2d(2*channels, channels, 4, stride=2)``
    whose code has the same shape, from a ``size / 2`` input."""
    from .layers import CSCConv2d, CSCConvTranspose2d

    torch.manual_seed(0)
    if transposed:
        layer = CSCConvTranspose2d(2 * channels, 2 * channels, 4, stride=2, padding=1, steps=steps,
                                   backward=backward, device=device).train()
        x = torch.randn(batch, 2 * channels, size // 2, size // 2, device=device, requires_grad=True)
    else:
        layer = CSCConv2d(channels, 2 * channels, 3, padding=1, steps=steps, backward=backward, device=device).train()
        x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)

    def step() -> None:
        out = layer(x)
        out.square().sum().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None

    step()  # warm-up: lazily created state (power vector, allocator pools) is not the step's cost
    peak = peak_memory_bytes(step, device)
    return {"backward": backward, "steps": steps, "peak_bytes": peak, "transposed": transposed,
            "code_bytes": batch * 2 * channels * (size // 2 * 2 if transposed else size) ** 2 * x.element_size()}


def isolated(function: str, **kwargs: Any) -> Dict[str, Any]:
    """Run ``csc_cli.profiling.<function>(**kwargs)`` in a fresh interpreter (clean allocator,
    mmap threshold pinned) and return its JSON result."""
    code = (
        "import json, sys, torch; torch.set_num_threads(1); from csc_cli import profiling; "
        f"print(json.dumps(profiling.{function}(**json.loads(sys.argv[1]))))"
    )
    env = {**os.environ, **_MALLOC_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"isolated {function} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_time(fn: Callable[[], Any], *, repeats: int = 7, warmup: int = 2, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_memory(arch: str, csc: str, *, batch: int = 64, size: int = 32, num_classes: int = 10,
                      device: str = "cpu", **csc_options: Any) -> Dict[str, Any]:
    """Peak extra memory of one SGD training step (forward, backward, optimizer) of
    ``build_model(arch, csc=csc)`` on a ``batch x 3 x size x size`` batch."""
    from .models import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes, csc=csc, **csc_options).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # momentum buffers and step sizes exist from here on, as in a running training
    return {"arch": arch, "csc": csc, "peak_bytes": peak_memory_bytes(step, device)}
