"""The inspect job: what a sparse model learned, as numbers (JSON) and pictures (PNG).

Model card (every CSC layer: geometry, lambda, steps, step size, L, dictionary size, coherence of
its atoms, the stored training summary); dictionary atoms; sparse-code statistics on N images and
as lambda varies; reconstructions ``A z`` of the stem's input and, for an all-CSC no-shortcut model,
the layer-by-layer push-back of hidden codes to image space; convergence of each layer's K steps
against a converged solve. Deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...checkpoint import load
from ...core import lasso_terms
from ...plots import codes_figure, lines_figure
from ...surgery import card_of
from ...layers import CSCConvNd, csc_layers
from ...robust.lam import lambda_override
from ..common import evaluation_data
from ..events import ProgressFn, Step, ignore

STAGES = ("card", "atoms", "codes", "sparsity", "reconstruction", "convergence")


@dataclass
class InspectConfig:
    model: str
    out: str = "inspect"
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    images: int = 64
    image_files: List[str] = field(default_factory=list)
    layers: List[str] = field(default_factory=list)  # restrict to these CSC layers (default: all)
    lambda_scales: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    max_steps: int = 50
    converged_steps: int = 500
    max_atoms: int = 64
    seed: int = 0


@dataclass
class InspectResult:
    model: str
    card: Dict[str, Any]
    atoms: Dict[str, Any]
    codes: Optional[Dict[str, Any]]
    sparsity_vs_lambda: Optional[Dict[str, Any]]
    reconstruction: Optional[Dict[str, Any]]
    pushback: Optional[Dict[str, Any]]
    convergence: Optional[Dict[str, Any]]
    images: List[str]
    notes: List[str]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- numbers
def coherence(atoms: torch.Tensor) -> float:
    """Mutual coherence ``max_{i != j} |<d_i, d_j>|`` of unit-norm atoms (aligned, no shifts)."""
    flat = F.normalize(atoms.flatten(1).double(), dim=1)
    if flat.shape[0] < 2:
        return 0.0
    gram = (flat @ flat.T).abs()
    gram.fill_diagonal_(0)
    return float(gram.max())


def shift_coherence(atoms: torch.Tensor) -> float:
    """Coherence over all relative shifts of the atoms (the convolutional dictionary's own)."""
    d = F.normalize(atoms.flatten(1).double(), dim=1).view_as(atoms).double()
    k = d.shape[-1]
    corr = F.conv2d(d, d, padding=k - 1).abs()  # (M, M, 2k-1, 2k-1): <d_i, shifted d_j>
    m = d.shape[0]
    centre = corr[:, :, k - 1, k - 1]
    corr[torch.arange(m), torch.arange(m), k - 1, k - 1] = 0  # an atom against itself unshifted
    del centre
    return float(corr.max())


def layer_card(name: str, layer: CSCConvNd) -> Dict[str, Any]:
    atoms = layer.atom_bank().detach()  # one per code channel, for convs and transposed convs alike
    norms = layer.atom_bank(normalized=False).detach().flatten(1).norm(dim=1)
    card = {
        "name": name, "class": type(layer).__name__, "in_channels": layer.in_channels,
        "out_channels": layer.out_channels, "kernel_size": list(layer.kernel_size), "stride": list(layer.stride),
        "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
        "dilation": list(layer.dilation), "groups": layer.groups, "padding_mode": layer.padding_mode,
        **layer.csc_options(), "dictionary_size": int(atoms.numel()),
        "lipschitz": float(layer.lipschitz) if layer.trained_size else None,
        "step_size": float(layer.step_size) if layer.trained_size else None,
        "lipschitz_size": list(layer.trained_size) if layer.trained_size else None,
        "coherence": coherence(atoms),
        "atoms_unit_norm": bool(torch.allclose(atoms.flatten(1).norm(dim=1), torch.ones(atoms.shape[0]), atol=1e-4)),
        "weight_norm_range": [float(norms.min()), float(norms.max())],
    }
    if atoms.dim() == 4 and atoms.shape[0] * atoms.shape[1] <= 64 * 64 and layer.groups == 1:
        card["shift_coherence"] = shift_coherence(atoms)
    return card


# ----------------------------------------------------------------------------- pictures
def _unit_range(t: torch.Tensor) -> torch.Tensor:
    lo = t.flatten(1).amin(1).view(-1, *([1] * (t.dim() - 1)))
    hi = t.flatten(1).amax(1).view(-1, *([1] * (t.dim() - 1)))
    return (t - lo) / (hi - lo).clamp_min(1e-12)


def _save_grid(images: torch.Tensor, path: Path, nrow: int, scale: int = 1) -> Tuple[int, int]:
    from PIL import Image
    from torchvision.utils import save_image

    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images.clamp(0, 1), path, nrow=nrow, padding=2, pad_value=1.0)
    with Image.open(path) as im:
        return im.size


def atom_images(layer_weight: torch.Tensor, max_atoms: int) -> torch.Tensor:
    """RGB atoms as colour patches (first layer); otherwise channel-averaged grey patches."""
    w = layer_weight.detach().float()[:max_atoms]
    if w.dim() != 4:
        raise ValueError("atom pictures need 2-D atoms")
    if w.shape[1] == 3:
        return _unit_range(w)
    return _unit_range(w.mean(1, keepdim=True))


# ----------------------------------------------------------------------------- data
def _load_images(config: InspectConfig, model: nn.Module) -> Tuple[torch.Tensor, str]:
    card = card_of(model)
    if config.image_files:
        from PIL import Image, UnidentifiedImageError

        c, h, w = (list(card.data.input_size) if card.data.input_size else [3, 32, 32])[-3:]
        tensors = []
        for file in config.image_files:
            try:
                with Image.open(file) as im:
                    im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"cannot read image {file}: {type(exc).__name__}") from None
            t = torch.from_numpy(arr)
            tensors.append(t.permute(2, 0, 1) if t.dim() == 3 else t.unsqueeze(0))
        return torch.stack(tensors), f"{len(tensors)} image file(s)"
    if not (config.dataset or card.data.dataset):
        raise ValueError("give --data DATASET or --image FILE (the model file does not name its dataset)")
    sample = evaluation_data(card, config.dataset, config.data_dir, config.images, config.seed)
    return sample.take()[0], f"{len(sample)} {sample.split.name} test images"


def _capture(model: nn.Module, layers: Dict[str, CSCConvNd], x: torch.Tensor) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Each CSC layer's (input, code) when ``model`` runs on ``x``."""
    seen: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, layer in layers.items():
        def hook(mod, inputs, output, name=name):
            z = mod.code_from_output(output, inputs[0].shape[2:])
            seen[name] = (inputs[0].detach(), z.detach())
        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# ----------------------------------------------------------------------------- the job
def run_inspect(config: InspectConfig, progress: Optional[ProgressFn] = None) -> InspectResult:
    emit = progress or ignore

    def stage(name: str) -> None:
        emit(Step(name, STAGES.index(name) + 1, len(STAGES)))

    torch.manual_seed(config.seed)
    model = load(config.model).eval()
    model_card = card_of(model)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory")
    out.mkdir(parents=True, exist_ok=True)
    all_csc = csc_layers(model)
    if config.layers:
        unknown = [n for n in config.layers if n not in all_csc]
        if unknown:
            raise ValueError(f"--layer {unknown[0]!r} names no CSC layer; CSC layers: {', '.join(all_csc) or 'none'}")
        layers = {n: all_csc[n] for n in config.layers}
    else:
        layers = all_csc
    notes: List[str] = []
    written: List[str] = []
    card = {"arch": model_card.arch, "parameters": sum(p.numel() for p in model.parameters()),
            "csc_layers": [layer_card(n, m) for n, m in layers.items()],
            "convs": sum(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()),
            "training": model_card.training, "dataset": model_card.data.dataset,
            "normalization": model_card.data.normalization, "lambda_rule": model_card.lambda_rule}
    stage("card")

    # atoms
    atoms: Dict[str, Any] = {}
    if layers:
        for name, layer in layers.items():
            if layer.weight.dim() != 4:
                continue
            path = out / f"atoms_{name.replace('.', '_')}.png"
            size = _save_grid(atom_images(layer.atom_bank(), config.max_atoms), path, nrow=16,
                              scale=max(1, 32 // layer.kernel_size[0]))
            atoms[name] = {"file": str(path), "size": list(size), "shown": min(config.max_atoms, layer.out_channels),
                           "channel_averaged": layer.in_channels != 3}
            written.append(str(path))
    else:
        notes.append("no CSC layer: this is a plain ConvNet -- showing its first conv's filters, "
                     "not a dictionary; codes, reconstructions and convergence do not apply")
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            path = out / "conv_filters.png"
            size = _save_grid(atom_images(first.weight, config.max_atoms), path, nrow=16,
                              scale=max(1, 32 // first.kernel_size[0]))
            atoms["first_conv"] = {"file": str(path), "size": list(size), "shown": min(config.max_atoms, first.out_channels),
                                   "channel_averaged": first.in_channels != 3, "dictionary": False}
            written.append(str(path))
    stage("atoms")
    if not layers:
        return InspectResult(config.model, card, atoms, None, None, None, None, None, written, notes)

    raw, described = _load_images(config, model)
    # the model normalises its own input; pictures of a CSC layer's input undo that normalisation
    own = model_card.data.normalization or {"mean": [0.0] * raw.shape[1], "std": [1.0] * raw.shape[1]}
    mean, std = own["mean"], own["std"]
    captured = _capture(model, layers, raw)

    # codes
    codes: Dict[str, Any] = {"images": described, "layers": {}}
    bins = np.linspace(0, 1, 21)
    for name, (_, z) in captured.items():
        active = (z != 0)
        per_channel = active.transpose(0, 1).flatten(1).float().mean(1)
        positive = z[z > 0]
        top = float(positive.max()) if positive.numel() else 0.0
        hist, edges = np.histogram((positive / max(top, 1e-12)).cpu().numpy(), bins=bins)
        codes["layers"][name] = {
            "nonzero": float(active.float().mean()), "per_channel_nonzero": per_channel.tolist(),
            "dead_atoms": [int(i) for i in torch.nonzero(per_channel == 0).flatten()],
            "max_code": top, "histogram": {"counts": hist.tolist(), "bin_edges_fraction_of_max": edges.tolist()},
        }
    path = out / "codes.png"
    codes_figure(codes, path)
    written.append(str(path))
    stage("codes")

    # sparsity as lambda varies (every inspected layer's lambda scaled together)
    sweep: Dict[str, Any] = {"scales": config.lambda_scales, "layers": {}}
    for scale in config.lambda_scales:
        values = {n: float(m.lam) * scale for n, m in layers.items()}
        with lambda_override(model, values):
            got = _capture(model, layers, raw)
        for name, (_, z) in got.items():
            sweep["layers"].setdefault(name, []).append(float((z != 0).float().mean()))
    path = out / "sparsity_vs_lambda.png"
    lines_figure({n: (config.lambda_scales, v) for n, v in sweep["layers"].items()}, "lambda / trained lambda",
                  "fraction of non-zero codes", path, logx=True)
    written.append(str(path))
    stage("sparsity")

    # reconstructions of each layer's input, and the stem's as pictures
    recon: Dict[str, Any] = {"layers": {}}
    for name, (inp, z) in captured.items():
        layer = layers[name]
        with torch.no_grad():
            rebuilt = layer.decode(z, inp.shape[2:])
        err = (inp - rebuilt).square().flatten(1).sum(1)
        energy = inp.square().flatten(1).sum(1)
        recon["layers"][name] = {"relative_error": float((err / energy.clamp_min(1e-12)).mean()),
                                 "error": float(err.mean()), "input_energy": float(energy.mean())}
    stem_name = next(iter(all_csc))
    if stem_name in captured and captured[stem_name][0].shape[1] in (1, 3):
        inp, z = captured[stem_name]
        rebuilt = layers[stem_name].decode(z, inp.shape[2:])
        pair = torch.cat([_denormalize(inp[:8], mean, std), _denormalize(rebuilt[:8], mean, std)])
        path = out / "reconstruction_stem.png"
        size = _save_grid(pair, path, nrow=min(8, inp.shape[0]), scale=max(1, 64 // inp.shape[-1]))
        recon["stem_file"] = str(path)
        recon["stem_size"] = list(size)
        written.append(str(path))
    stage("reconstruction")

    pushback = _pushback(model, all_csc, captured, layers, mean, std, out, notes)
    if pushback:
        written.append(pushback["file"])

    # convergence: objective after k = 1..max_steps steps vs a converged solve
    conv: Dict[str, Any] = {"steps": list(range(1, config.max_steps + 1)), "layers": {}}
    for name, (inp, _) in captured.items():
        layer = layers[name]
        sample = inp[: min(16, inp.shape[0])]
        with torch.no_grad():
            _, trace = layer.solve(sample, steps=config.max_steps, trace=True)
            best, _ = layer.solve(sample, steps=config.converged_steps)
            optimum = lasso_terms(sample, best, layer.geometry, layer.atoms, layer.lam, layer.mu).objective
        objective = trace.objective.mean(1)
        gap = ((trace.objective - optimum) / optimum.abs().clamp_min(1e-12)).mean(1)
        conv["layers"][name] = {"objective": objective.tolist(), "relative_gap": gap.tolist(),
                                "optimum": float(optimum.mean()), "model_steps": layer.steps,
                                "gap_at_model_steps": float(gap[min(layer.steps, config.max_steps) - 1])}
    path = out / "convergence.png"
    lines_figure({n: (conv["steps"], [max(g, 1e-12) for g in v["relative_gap"]]) for n, v in conv["layers"].items()},
                  "FISTA steps K", "relative objective gap to the converged code", path, logy=True,
                  marks={n: v["model_steps"] for n, v in conv["layers"].items()})
    written.append(str(path))
    stage("convergence")
    return InspectResult(config.model, card, atoms, codes, sweep, recon, pushback, conv, written, notes)


def _denormalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


def _chain(model: nn.Module, csc: Dict[str, CSCConvNd]) -> Optional[List[Tuple[str, CSCConvNd, nn.Module]]]:
    """(name, CSC layer, BatchNorm after it) from the input on, when the model is a pure CSC+BN
    stack (SDNet-All without shortcuts); None otherwise."""
    from ...models import CifarResNet

    if not isinstance(model, CifarResNet) or any(getattr(b, "use_shortcut", True) for b in model.modules()
                                                    if hasattr(b, "use_shortcut")):
        return None
    chain = [("conv1", model.conv1, model.bn1)]
    for stage in range(model.num_stages):
        for i, block in enumerate(getattr(model, f"layer{stage + 1}")):
            prefix = f"layer{stage + 1}.{i}"
            chain += [(f"{prefix}.conv1", block.conv1, block.bn1), (f"{prefix}.conv2", block.conv2, block.bn2)]
    if not all(isinstance(m, CSCConvNd) for _, m, _ in chain):
        return None
    return chain


@torch.no_grad()
def _pushback(model, all_csc, captured, layers, mean, std, out: Path, notes: List[str]) -> Optional[Dict[str, Any]]:
    chain = _chain(model, all_csc)
    if chain is None:
        notes.append("layer-by-layer push-back needs an all-CSC model without shortcuts "
                     "(csc train --csc all --no-shortcut): skipped")
        return None
    names = [n for n, _, _ in chain]
    missing = [n for n in names if n not in captured]
    if missing:
        notes.append("push-back needs every layer of the chain: inspect without --layer to get it")
        return None
    image = captured[names[0]][0][:4]
    rows = [_denormalize(image, mean, std)]
    errors = {}
    for depth, name in enumerate(names):
        signal = captured[name][1][:4]  # the hidden code at this depth
        for back in range(depth, -1, -1):
            _, layer, _ = chain[back]
            x_in = captured[chain[back][0]][0]
            signal = layer.decode(signal, x_in.shape[2:])
            if back > 0:  # undo the previous layer's BatchNorm (running statistics)
                bn = chain[back - 1][2]
                scale = (bn.running_var + bn.eps).sqrt() / bn.weight
                signal = (signal - bn.bias.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.running_mean.view(1, -1, 1, 1)
        errors[name] = float(((signal - image).square().flatten(1).sum(1) / image.square().flatten(1).sum(1)).mean())
        rows.append(_denormalize(signal, mean, std))
    path = out / "pushback.png"
    size = _save_grid(torch.cat(rows), path, nrow=image.shape[0], scale=max(1, 64 // image.shape[-1]))
    return {"file": str(path), "size": list(size), "layers": names, "relative_error": errors}
