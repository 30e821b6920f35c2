"""The eval job: accuracy, corruption robustness, and test-time lambda (as trained / oracle / auto).

``run_eval(EvalConfig(...), progress) -> EvalResult``. Clean accuracy (top-1, top-5, loss,
per-class); a corruption x severity table generated on the fly (or read from CIFAR-10-C /
ImageNet-C folders) with mean corruption error and, against a baseline model, mCE and relative mCE;
a lambda sweep on the first CSC layer with the best lambda per corruption level ("oracle": chosen on
the test data, and labelled so); the label-free rule ``lambda = a * r(x) + b`` fitted on corrupted
*training* images (``calibrate``) and applied per input (``auto``). With ``csv`` / ``plots`` set,
the result is also written as CSV rows (:func:`write_csv`) and PNG figures (:mod:`csc_cli.plots`).
"""

from __future__ import annotations

import csv as csvlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...checkpoint import load, save
from ...data.corruptions import SUBSTITUTES, corrupt, parse_corruptions, preset_for
from ...data.source import open_for_model
from ...surgery import card_of
from ...robust.lam import LambdaPolicy, first_csc_layer
from ...robust.rules import (CalibrationLevel, LambdaRule, calibrate, check_rule_name, fit_share, layer_input,
                            layer_inputs, noise_sigma, reconstruction_error, rule_from_dict)
from ..common import accuracy, accuracy_over_lambdas, evaluation_data, predict, resolve_device
from ..events import ProgressFn, Step, ignore
STREAMED_SAMPLE = 1000  # images held in memory for corruptions / sweeps of an image-file dataset
AUTHORS_GRID = [round(0.1 * i, 2) for i in range(1, 15)]  # the SDNet authors' lambda sweep, 0.1 .. 1.4


@dataclass
class EvalConfig:
    model: str
    dataset: Optional[str] = None  # default: the dataset the model was trained on
    data_dir: Optional[str] = None
    batch_size: int = 256
    max_images: Optional[int] = None  # a seeded subset of the test split
    device: str = "auto"
    amp: str = "none"
    corruptions: List[str] = field(default_factory=list)
    severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    corruption_dir: Optional[str] = None
    baseline: Optional[str] = None
    lam: Optional[str] = None  # None (as trained), "auto", a number (first CSC layer) or "layer=value,..."
    lambda_scale: Optional[float] = None
    lambda_layers: str = "first"  # which layers --lambda-scale scales: first or all
    lambda_sweep: Optional[List[float]] = None
    calibrate_lambda: bool = False
    calibration_images: int = 512
    calibration_corruptions: List[str] = field(default_factory=lambda: ["gaussian_noise"])
    rule: str = "best"  # the rule --calibrate-lambda stores: best (chosen on held-out training images) or a name
    out: Optional[str] = None  # model file for the calibrated rule (default: <model>.calibrated.safetensors)
    in_place: bool = False  # write the calibrated rule into the model file itself (only when asked)
    csv: Optional[str] = None  # write every accuracy as CSV rows here
    plots: Optional[str] = None  # write PNG figures into this folder
    seed: int = 0


@dataclass
class EvalResult:
    model: str
    dataset: str
    images: int
    clean: Dict[str, Any]
    lam: Dict[str, Any]
    corruptions: Optional[Dict[str, Any]] = None
    sweep: Optional[Dict[str, Any]] = None
    calibration: Optional[Dict[str, Any]] = None
    baseline: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)  # the CSV and figures written

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- basics
def scores(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict[str, Any]:
    """Top-1, top-5, mean cross-entropy and per-class accuracy."""
    n = labels.numel()
    top1 = (logits.argmax(1) == labels).float()
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == labels.view(-1, 1)).any(1).float()
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        per_class.append(float(top1[mask].mean()) if mask.any() else None)
    return {"top1": float(top1.mean()) if n else 0.0, "top5": float(top5.mean()) if n else 0.0,
            "loss": float(F.cross_entropy(logits, labels)) if n else 0.0, "per_class": per_class, "n": n}


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device, config: "EvalConfig") -> float:
    return accuracy(model, (images, labels), device, batch_size=config.batch_size, amp=config.amp).acc


# ----------------------------------------------------------------------------- corrupted data
def _load_c_folder(root: Path, name: str, severity: int, n_clean: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One corruption and severity from a CIFAR-10-C/100-C folder (``<name>.npy`` holding the 5
    severities stacked, ``labels.npy``) or an ImageNet-C folder (``<name>/<severity>/<class>/``)."""
    npy = root / f"{name}.npy"
    if npy.exists():
        labels_file = root / "labels.npy"
        if not labels_file.exists():
            raise FileNotFoundError(f"{root} has {npy.name} but no labels.npy")
        data = np.load(npy, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_file, allow_pickle=False)
        if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8 or data.shape[0] % 5:
            raise ValueError(f"{npy} must be a (5*N, H, W, 3) uint8 array, got {data.shape} {data.dtype}")
        per = data.shape[0] // 5
        if labels.shape[0] not in (per, data.shape[0]):
            raise ValueError(f"{labels_file} has {labels.shape[0]} labels for {per} images per severity")
        sl = slice((severity - 1) * per, (severity - 1) * per + (n_clean or per))
        x = torch.from_numpy(np.array(data[sl])).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(np.array(labels[sl] if labels.shape[0] == data.shape[0] else labels[: x.shape[0]]))
        return x, y.long()
    folder = root / name / str(severity)
    if folder.is_dir():
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        ds = ImageFolder(str(folder), transform=T.ToTensor())
        idx = range(min(len(ds), n_clean or len(ds)))
        xs, ys = zip(*(ds[i] for i in idx))
        return torch.stack(xs), torch.tensor(ys)
    raise FileNotFoundError(f"{root} has neither {name}.npy (CIFAR-10-C layout) nor {name}/{severity}/ "
                            f"(ImageNet-C layout)")


# ----------------------------------------------------------------------------- calibration
def calibrated_path(config: EvalConfig) -> Path:
    """Where --calibrate-lambda writes: --out, else the model itself only with --in-place, else a new
    file beside it -- a command named eval never rewrites the user's trained model unasked."""
    if config.out and config.in_place:
        raise ValueError("give either --out or --in-place, not both")
    if config.out:
        return Path(config.out)
    model = Path(config.model)
    return model if config.in_place else model.with_name(f"{model.stem}.calibrated.safetensors")


def calibrate_lambda(model: nn.Module, config: EvalConfig, dataset: str, device,
                     grid: List[float], emit: ProgressFn) -> Tuple[LambdaRule, Dict[str, Any]]:
    """Fit every label-free rule (:mod:`csc_cli.robust.rules`) on corrupted *training* images: a
    seeded sample of ``config.calibration_images`` of the training split (:func:`calibrate_on_images`).
    Returns the rule chosen by ``config.rule`` and a report holding every fitted rule."""
    train = open_for_model(card_of(model), "train", dataset, config.data_dir)
    gen = torch.Generator().manual_seed(config.seed + 1)
    idx = torch.randperm(len(train), generator=gen)[: config.calibration_images]
    x, y = train.take(idx)
    return calibrate_on_images(model, x, y, config, device, grid, emit)


def calibrate_on_images(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig, device,
                        grid: List[float], emit: ProgressFn = ignore) -> Tuple[LambdaRule, Dict[str, Any]]:
    """Fit every label-free rule on the images ``x`` (labels ``y``): for each level (clean and each
    calibration corruption at severities 1-5), the lambda of the grid with the best accuracy and the
    statistics of the first CSC layer's inputs. Returns the rule chosen by ``config.rule`` --
    ``best``: the one with the highest mean accuracy over the levels on a held-out half of the
    images -- and a report holding every fitted rule (under ``fitted``)."""
    layer_name = first_csc_layer(model)
    layer = dict(model.named_modules())[layer_name]
    reference = float(layer.lam)
    check_rule_name(config.rule)
    half = fit_share(x.shape[0], config.rule)
    levels = []
    for name, severity in [("clean", 0)] + [(c, s) for c in config.calibration_corruptions for s in range(1, 6)]:
        xc = x if severity == 0 else corrupt(x, name, severity, seed=config.seed + 7)
        levels.append(CalibrationLevel(name, severity, (xc[:half], y[:half]), (xc[half:], y[half:])))
    rules, rows, selection, chosen = calibrate(
        model, layer_name, grid, levels,
        grid_scores=lambda part: accuracy_over_lambdas(model, layer_name, grid, *part, device, config.batch_size,
                                                       config.amp),
        score=lambda part: _accuracy(model, *part, device, config),
        layer_batches=lambda part: layer_inputs(model, layer, part[0], device, config.batch_size),
        rule=config.rule, progress=lambda i, n, what: emit(Step("calibrate", i, n, what)))
    report = {"layer": layer_name, "reference_lam": reference, "grid": grid, "levels": rows,
              "images": int(half), "held_out_images": int(x.shape[0] - half),
              "corruptions": list(config.calibration_corruptions), "rule": chosen,
              "rules": {n: {**r.to_dict(), "formula": r.describe()} for n, r in rules.items()},
              "selection": selection}
    return rules[chosen], {**report, "fitted": rules}


def _calibrate_and_save(model: nn.Module, config: EvalConfig, dataset: str, device, grid: List[float], target: Path,
                        emit: ProgressFn) -> Dict[str, Any]:
    """Calibrate, store the chosen rule in ``model``'s card and save it to ``target``: the report,
    with every fitted rule under ``fitted`` and the file under ``written_to``."""
    rule, calibration = calibrate_lambda(model, config, dataset, device, grid, emit)
    card_of(model).lambda_rule = rule.to_dict()
    save(model, target)
    calibration["written_to"] = str(target)
    return calibration


def calibrate_model_file(config: EvalConfig, device, progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
    """``--calibrate-lambda`` alone: the model file ``config.model`` calibrated and written where
    :func:`calibrated_path` says (``csc train --calibrate-lambda`` uses it on its model file, with
    ``in_place``). Returns the calibration report (the fitted rules as plain dicts)."""
    target = calibrated_path(config)
    model = load(config.model, map_location=device).to(device).eval()
    grid = config.lambda_sweep or AUTHORS_GRID
    report = _calibrate_and_save(model, config, config.dataset or card_of(model).data.dataset, device, grid, target,
                                 progress or ignore)
    report.pop("fitted")
    return report


# ----------------------------------------------------------------------------- the job
def run_eval(config: EvalConfig, progress: Optional[ProgressFn] = None) -> EvalResult:
    emit = progress or ignore
    if config.max_images is not None and config.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {config.max_images}")
    for s in config.severities:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5:
            raise ValueError(f"severity must be an integer from 1 to 5, got {s!r}")
    corruptions = parse_corruptions(config.corruptions)
    target = calibrated_path(config) if config.calibrate_lambda else None  # refuses --out with --in-place early
    policy = LambdaPolicy.parse(config.lam, config.lambda_scale, config.lambda_layers)
    device = resolve_device(config.device)
    model = load(config.model, map_location=device).to(device).eval()
    card = card_of(model)
    dataset = config.dataset or card.data.dataset
    sample = evaluation_data(card, dataset, config.data_dir, config.max_images, config.seed)
    test, subset = sample.split, sample.indices
    labels = sample.labels()
    notes: List[str] = []
    needs_images = bool(corruptions or config.lambda_sweep)
    images: Optional[torch.Tensor] = None
    if needs_images:
        if test.streamed and (subset is None or subset.numel() > STREAMED_SAMPLE):
            subset = test.sample(STREAMED_SAMPLE, config.seed)
            labels = test.labels(subset)
            notes.append(f"{test.name} is read from image files: corruptions and sweeps use a seeded sample of "
                         f"{STREAMED_SAMPLE} images (give --max-images for another size)")
        images, labels = test.take(subset) if subset is not None else test.take(torch.arange(len(test)))
    num_classes = test.num_classes
    grid = config.lambda_sweep
    if config.calibrate_lambda and not grid:
        grid = AUTHORS_GRID

    calibration = None
    fitted: Dict[str, LambdaRule] = {}
    if config.calibrate_lambda:
        calibration = _calibrate_and_save(model, config, dataset, device, grid, target, emit)
        fitted = calibration.pop("fitted")
    elif card.lambda_rule and not policy.auto:
        stored = rule_from_dict(card.lambda_rule)
        fitted = {stored.kind: stored}

    baseline_model = load(config.baseline, map_location=device).to(device).eval() if config.baseline else None

    with policy.applied(model) as lam_info:
        source = images if images is not None else test.batches(config.batch_size, subset)
        clean_logits = predict(model, source, device, config.batch_size, config.amp)
        clean = scores(clean_logits, labels, num_classes)
        clean["class_names"] = test.class_names
        emit(Step("clean", 1, 1))

        table = None
        if corruptions:
            table = _corruption_table(model, corruptions, config, images, labels, device, emit)
            subs = sorted(set(corruptions) & set(SUBSTITUTES))
            if subs and not config.corruption_dir:
                notes += [f"{n}: {SUBSTITUTES[n]}" for n in subs]

    baseline = None
    if baseline_model is not None and table is not None:
        b_clean = accuracy(baseline_model, (images, labels), device, batch_size=config.batch_size).acc
        b_table = _corruption_table(baseline_model, corruptions, config, images, labels, device, ignore)
        baseline = _mce(table, b_table, clean["top1"], b_clean)
        baseline["model"] = config.baseline

    if table is not None and fitted:
        table["auto"] = {}
        stored_kind = rule_from_dict(card.lambda_rule).kind if card.lambda_rule else None
        for name, rule in fitted.items():
            with rule.applied(model):
                auto = _corruption_table(model, corruptions, config, images, labels, device, ignore)
                auto_clean = _accuracy(model, images, labels, device, config)
            table["auto"][name] = {"clean": auto_clean, "accuracy": auto["accuracy"], "mean": auto["mean"],
                                   "stored": name == stored_kind, "formula": rule.describe(),
                                   "label": f"auto ({name}): {rule.describe()}, fitted on corrupted training images"}
    sweep = None
    if grid and (config.lambda_sweep or corruptions):
        sweep = _sweep(model, grid, corruptions, config, images, labels, device, emit)
        if table is not None:
            table["oracle"] = sweep["oracle"]
    if table is not None:
        table["protocol"] = protocol(table, clean["top1"], _fitted_on(fitted, lam_info))
    result = EvalResult(model=config.model, dataset=test.name, images=int(labels.numel()), clean=clean, lam=lam_info,
                        corruptions=table, sweep=sweep, calibration=calibration, baseline=baseline, notes=notes)
    if config.csv:
        result.files.append(str(write_csv(result.to_dict(), Path(config.csv))))
    if config.plots:
        from ...plots import eval_figures

        result.files += eval_figures(result.to_dict(), Path(config.plots))
    return result


def write_csv(result: Dict[str, Any], path: Path) -> Path:
    """Every accuracy of an eval result (``EvalResult.to_dict()``) as rows ``kind, corruption,
    severity, mode, lambda, accuracy``: clean, per class, per corruption level and lambda mode, and
    each point of a lambda sweep."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csvlib.writer(fh)
        w.writerow(["kind", "corruption", "severity", "mode", "lambda", "accuracy"])
        clean = result["clean"]
        w.writerow(["clean", "", "", result["lam"]["mode"], "", clean["top1"]])
        for i, acc in enumerate(clean["per_class"]):
            w.writerow(["class", clean["class_names"][i], "", result["lam"]["mode"], "", acc])
        table = result.get("corruptions") or {}
        modes = [(result["lam"]["mode"], table.get("accuracy", {}))]
        modes += [("oracle", table["oracle"]["accuracy"])] if "oracle" in table else []
        modes += [(f"auto:{k}", v["accuracy"]) for k, v in table.get("auto", {}).items()]
        for k, v in table.get("auto", {}).items():
            w.writerow(["clean", "", "", f"auto:{k}", "", v["clean"]])
        for mode, acc in modes:
            for name, per in acc.items():
                for s, a in per.items():
                    lam = table["oracle"]["lam"][name][s] if mode == "oracle" else ""
                    w.writerow(["corruption", name, s, mode, lam, a])
        sweep = result.get("sweep") or {}
        for name, per in sweep.get("accuracy", {}).items():
            for s, accs in per.items():
                for lam, a in zip(sweep["grid"], accs):
                    w.writerow(["sweep", name, s, "fixed", lam, a])
    return path


def _fitted_on(fitted: Dict[str, LambdaRule], lam_info: Dict[str, Any]) -> List[str]:
    """The corruptions the rule(s) in play were fitted on (empty when no rule is in play)."""
    rules = list(fitted.values())
    if lam_info.get("rule"):
        rules.append(rule_from_dict(lam_info["rule"]))
    return sorted({c for r in rules for c in r.fitted_on})


def protocol(table: Dict[str, Any], clean_acc: float, fitted_on: List[str]) -> Dict[str, Any]:
    """The honest summary: for each lambda mode, clean accuracy, the mean over the corruption
    families a rule was fitted on, and over those it never saw, kept apart. The oracle is chosen on
    the test labels and is labelled so."""
    names = list(table["accuracy"])
    fitted = [n for n in names if n in fitted_on]
    unseen = [n for n in names if n not in fitted_on]

    def entry(means: Dict[str, float], clean: Optional[float], label: str) -> Dict[str, Any]:
        return {"label": label, "clean": clean,
                "fitted": float(np.mean([means[n] for n in fitted])) if fitted else None,
                "unseen": float(np.mean([means[n] for n in unseen])) if unseen else None,
                "per_corruption": {n: means[n] for n in names}}

    modes = {"base": entry(table["mean"], clean_acc, "as evaluated (--lambda)")}
    if "oracle" in table:
        modes["oracle"] = entry(table["oracle"]["mean"], None, "oracle: lambda per level chosen on the TEST labels")
    for name, auto in table.get("auto", {}).items():
        modes[f"auto:{name}"] = entry(auto["mean"], auto["clean"], auto["label"])
    return {"fitted_on": fitted_on, "fitted": fitted, "unseen": unseen, "modes": modes}


def _corrupted(name: str, severity: int, config: EvalConfig, images, labels):
    if config.corruption_dir:
        return _load_c_folder(Path(config.corruption_dir), name, severity, config.max_images)
    return corrupt(images, name, severity, seed=config.seed), labels


def _corruption_table(model, corruptions, config, images, labels, device, emit) -> Dict[str, Any]:
    acc: Dict[str, Dict[str, float]] = {}
    total = len(corruptions) * len(config.severities)
    done = 0
    for name in corruptions:
        acc[name] = {}
        for severity in config.severities:
            x, y = _corrupted(name, severity, config, images, labels)
            acc[name][str(severity)] = _accuracy(model, x, y, device, config)
            done += 1
            emit(Step("corruption", done, total, f"{name} s{severity}"))
    means = {n: float(np.mean(list(v.values()))) for n, v in acc.items()}
    return {"accuracy": acc, "mean": means, "mean_accuracy": float(np.mean(list(means.values()))),
            "mean_corruption_error": 1 - float(np.mean(list(means.values()))),
            "preset": "files" if config.corruption_dir else preset_for(max(images.shape[-2:])),
            "severities": list(config.severities)}


def _mce(table, base, clean_acc, base_clean) -> Dict[str, Any]:
    """Hendrycks & Dietterich: CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}; relative CE_c =
    sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean); means over corruptions."""
    ce, rel = {}, {}
    for name, per in table["accuracy"].items():
        err = [1 - a for a in per.values()]
        berr = [1 - a for a in base["accuracy"][name].values()]
        ce[name] = sum(err) / max(sum(berr), 1e-12)
        denom = sum(b - (1 - base_clean) for b in berr)
        rel[name] = sum(e - (1 - clean_acc) for e in err) / denom if abs(denom) > 1e-12 else float("nan")
    return {"ce": ce, "mce": float(np.mean(list(ce.values()))), "relative_ce": rel,
            "relative_mce": float(np.nanmean(list(rel.values()))), "baseline_clean": base_clean,
            "baseline_mean_accuracy": base["mean_accuracy"], "baseline_accuracy": base["accuracy"],
            "baseline_mean": base["mean"]}


def _sweep(model, grid, corruptions, config, images, labels, device, emit) -> Dict[str, Any]:
    """Accuracy for each lambda of the grid (first CSC layer) on clean data and every corruption
    level; the best lambda per level is the 'oracle' (chosen on the test data)."""
    layer_name = first_csc_layer(model)
    levels = [("clean", 0)] + [(c, s) for c in corruptions for s in config.severities]
    curves: Dict[str, Dict[str, List[float]]] = {}
    r_levels: Dict[str, Dict[str, float]] = {}
    sigma_levels: Dict[str, Dict[str, float]] = {}
    layer = dict(model.named_modules())[layer_name]
    trained = float(layer.lam)
    for i, (name, severity) in enumerate(levels):
        x, y = (images, labels) if severity == 0 else _corrupted(name, severity, config, images, labels)
        accs = accuracy_over_lambdas(model, layer_name, grid, x, y, device, config.batch_size, config.amp)
        curves.setdefault(name, {})[str(severity)] = accs
        xs = x[: min(256, x.shape[0])].to(device)
        inputs = layer_input(model, layer, xs)
        r_levels.setdefault(name, {})[str(severity)] = float(reconstruction_error(layer, inputs, trained).mean())
        sigma_levels.setdefault(name, {})[str(severity)] = float(noise_sigma(inputs).mean())
        emit(Step("sweep", i + 1, len(levels), f"{name} s{severity}" if severity else name))
    oracle_acc = {n: {s: max(v) for s, v in per.items()} for n, per in curves.items() if n != "clean"}
    oracle_lam = {n: {s: grid[int(np.argmax(v))] for s, v in per.items()} for n, per in curves.items()}
    means = {n: float(np.mean(list(v.values()))) for n, v in oracle_acc.items()}
    return {"layer": layer_name, "grid": grid, "trained_lam": trained, "accuracy": curves, "r": r_levels,
            "sigma": sigma_levels,
            "best_lam": oracle_lam,
            "oracle": {"accuracy": oracle_acc, "mean": means, "lam": oracle_lam,
                       "label": "oracle: lambda chosen per level on the test data"}}
