"""The attack job: adversarial robust accuracy that survives scrutiny.

Every attack runs under every gradient mode that could unmask a CSC model (the unrolled steps, the
implicit gradient of the converged code, a smoothed threshold, more solver steps in the attacker's
copy, and BPDA / through-rule for a per-input lambda rule); adversarial examples are always judged on
the defended model as it runs. The headline is the per-example worst case over all of them, with a
95% Wilson interval, and sanity checks (PASS / WARN) say how far to trust it.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from .._version import __version__
from ..checkpoint import load, read_card
from ..choices import ATTACK_PRESETS
from ..surgery import card_of
from ..layers import csc_layers
from ..robust.attacks import (
    ATTACKS, AUTOATTACK_PARAMETERS, GRADIENT_MODES, NORMS, RULE_MODES, DefendedModel, attacker_copy, canonical_norm,
    check_eps, fgsm, input_gradient, library_attack, pgd, torchattacks_version, zero_gradient_mask,
)
from ..robust.stats import at_most, check, compare_attacks, tolerance, wilson_interval
from ..robust.lam import LambdaPolicy, first_csc_layer
from .common import evaluation_data, over_lambdas, predict, resolve_device
from .events import AttackCost, ProgressFn, Step, ignore
WHITE_BOX = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "autoattack")
SANITY_N = 256  # examples the extra sanity attacks run on (eps sweep, doubling, base model, gradients)


@dataclass
class AttackConfig:
    model: str
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    eps: float = 8 / 255
    norm: str = "Linf"
    n: int = 100
    batch_size: int = 100
    attacks: List[str] = field(default_factory=lambda: ["fgsm", "pgd", "apgd-ce", "apgd-dlr", "square"])
    steps: int = 20
    alpha: Optional[float] = None
    restarts: int = 1
    modes: Optional[List[str]] = None  # default: every mode that applies
    lam: Optional[str] = None  # None (as trained), "auto", a number (first CSC layer) or "layer=value,..."
    lambda_scale: Optional[float] = None
    lambda_layers: str = "first"  # which layers --lambda-scale scales: first or all
    lambda_sweep: Optional[List[float]] = None
    square_queries: int = 5000
    sanity: bool = True
    baseline: Optional[str] = None
    save_examples: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    preset: Optional[str] = None  # recorded: the named defaults (choices.ATTACK_PRESETS) this run used

    def __post_init__(self) -> None:
        self.norm = canonical_norm(self.norm)  # 'linf', 'l2', ... as well as 'Linf', 'L2'

    @classmethod
    def with_preset(cls, preset: Optional[str], explicit: Dict[str, Any], **values: Any) -> "AttackConfig":
        """``values``, with the fields a preset sets taken from it unless in ``explicit`` (the flags
        the user gave)."""
        if preset is not None and preset not in ATTACK_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(ATTACK_PRESETS)}")
        merged = dict(values)
        for key, value in (ATTACK_PRESETS.get(preset) or {}).items():
            if key not in explicit:
                merged[key] = value
        return cls(**merged, preset=preset)

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"--norm must be Linf or L2, got {self.norm!r}")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack {unknown[0]!r}; valid: {', '.join(ATTACKS)}")
        check_eps(self.eps, self.norm)
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"--steps and --restarts must be >= 1, got {self.steps} and {self.restarts}")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError("--n and --batch-size must be >= 1")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"--alpha must be > 0, got {self.alpha}")
        valid_modes = GRADIENT_MODES + RULE_MODES
        bad = [m for m in self.modes or [] if m not in valid_modes]
        if bad:
            raise ValueError(f"unknown gradient mode {bad[0]!r}; valid: {', '.join(valid_modes)}")
        if self.modes is not None and not self.modes:
            raise ValueError("--modes is empty: name at least one gradient mode")
        if not self.attacks:
            raise ValueError(f"--attacks is empty; valid: {', '.join(ATTACKS)}")
        LambdaPolicy.parse(self.lam, self.lambda_scale, self.lambda_layers)
        if self.square_queries < 1:
            raise ValueError(f"--square-queries must be >= 1, got {self.square_queries}")


@dataclass
class AttackResult:
    model: str
    dataset: str
    n: int
    threat: Dict[str, Any]
    clean: Dict[str, Any]
    results: List[Dict[str, Any]]
    robust: Dict[str, Any]
    sanity: List[Dict[str, Any]]
    banner: Optional[str]
    sweep: Optional[List[Dict[str, Any]]]
    examples: Optional[str]
    versions: Dict[str, str]
    config: Dict[str, Any]
    cost: Optional[Dict[str, Any]] = None  # the estimate announced before the run (AttackCost)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)




def _summary(correct: torch.Tensor) -> Dict[str, Any]:
    k, n = int(correct.sum()), int(correct.numel())
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / max(n, 1), "correct": k, "n": n, "ci95": [lo, hi]}


def _predict(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return predict(model, x, x.device, batch).argmax(1).to(x.device)


class _Runner:
    """Runs attacks batch by batch and judges them on the defended model."""

    def __init__(self, config: AttackConfig, defended: DefendedModel, x, y, n_classes: int):
        self.config, self.defended, self.x, self.y, self.n_classes = config, defended, x, y, n_classes
        self.alpha = config.alpha if config.alpha is not None else 2.5 * config.eps / config.steps
        self.bound_violations = 0
        self.range_violations = 0

    def run(self, attack: str, attacker: nn.Module, eps: Optional[float] = None, steps: Optional[int] = None,
            restarts: Optional[int] = None, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        cfg = self.config
        eps = cfg.eps if eps is None else eps
        steps = steps or cfg.steps
        restarts = restarts or cfg.restarts
        x = self.x if x is None else x
        y = self.y[: x.shape[0]]
        outs = []
        gen = torch.Generator().manual_seed(cfg.seed + 11)
        for i in range(0, x.shape[0], cfg.batch_size):
            xb, yb = x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]
            if attack == "fgsm":
                adv = fgsm(attacker, xb, yb, eps, cfg.norm)
            elif attack == "pgd":
                alpha = self.alpha * eps / cfg.eps if cfg.eps > 0 else 0.0
                adv = pgd(attacker, xb, yb, eps, alpha=alpha, steps=steps, norm=cfg.norm, restarts=restarts,
                          generator=gen, judge=self.defended)
            elif eps == 0:
                adv = xb.clone()
            else:
                adv = library_attack(attack, attacker, eps, cfg.norm, self.n_classes, cfg.seed, cfg.square_queries)(xb, yb)
            outs.append(adv.detach())
        adv = torch.cat(outs)
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(1) if cfg.norm == "Linf" else delta.norm(dim=1)
        self.bound_violations += int((size > eps + 1e-5).sum())
        self.range_violations += int(((adv < 0) | (adv > 1)).flatten(1).any(1).sum())
        return adv

    def robust(self, adv: torch.Tensor) -> torch.Tensor:
        return _predict(self.defended, adv, self.config.batch_size) == self.y[: adv.shape[0]]


def _modes_for(config: AttackConfig, has_csc: bool, rule) -> List[str]:
    if config.modes:
        return list(config.modes)
    if not has_csc:
        return ["unrolled"]
    modes = ["unrolled", "implicit", "smooth", "more-steps"]
    if rule is not None:  # through-rule only where lambda(x) has a gradient (not a bisection's)
        modes = [m for m in RULE_MODES if m == "bpda" or rule.has_gradient] + modes[1:]
    return modes


def _banner(model: nn.Module, modes: List[str], has_rule: bool) -> Optional[str]:
    layers = list(csc_layers(model).values())
    if not layers:
        return None
    steps = sorted({m.steps for m in layers})
    text = (f"This model runs an optimisation loop at inference: {len(layers)} CSC layer(s) with K = "
            f"{'/'.join(map(str, steps))} FISTA steps{' and a per-input lambda rule' if has_rule else ''}. "
            f"Gradient masking is countered by attacking through: {', '.join(modes)}; "
            "adversarial examples are always judged on the defended model, and the robust accuracy reported "
            "is the per-example worst case over every attack and mode.")
    return text


def run_attack(config: AttackConfig, progress: Optional[ProgressFn] = None) -> AttackResult:
    emit = progress or ignore
    config.validate()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if read_card(config.model).task == "autoencoder":
        raise ValueError(f"{config.model} is an autoencoder: csc attack attacks classifiers (evaluate an "
                         "autoencoder with csc eval, whose nearest-subspace accuracy needs no attack)")
    model = load(config.model, map_location=device).to(device).eval()
    if card_of(model).data.mean is None:
        raise ValueError(f"{config.model} has no normalisation metadata: attacks need raw [0, 1] images and a model "
                         "that normalises them (save it with csc train, or csc_cli.save(..., normalization=...); "
                         "mean 0 and std 1 for a model that takes [0, 1] images as they are)")
    sample = evaluation_data(card_of(model), config.dataset, config.data_dir, config.n, config.seed)
    test = sample.split
    x, y = sample.take()  # only the attacked examples are read (a folder split is never loaded whole)
    x, y = x.to(device), y.to(device)
    diameter = math.sqrt(x[0].numel())
    if config.norm == "L2" and config.eps > diameter:
        raise ValueError(f"--eps {config.eps:g} exceeds the l_2 diameter of the image space ({diameter:.1f} for "
                         f"{tuple(x.shape[1:])} images)")
    has_csc = bool(csc_layers(model))
    policy = LambdaPolicy.parse(config.lam, config.lambda_scale, config.lambda_layers)
    lam_values, rule = policy.resolve(model)
    defended = DefendedModel(model, lam_values, rule)
    modes = _modes_for(config, has_csc, rule)
    runner = _Runner(config, defended, x, y, test.num_classes)
    cost = estimate_cost(config, defended, modes, x, y, test.num_classes)
    emit(cost)

    clean_correct = runner.robust(x)
    clean = _summary(clean_correct)
    emit(Step("clean", 1, 1))
    worst = clean_correct.clone()
    results: List[Dict[str, Any]] = []
    adversarial: Dict[str, torch.Tensor] = {}
    survived: Dict[tuple, torch.Tensor] = {}  # (attack, mode) -> per-example robust mask
    attackers = {mode: attacker_copy(defended, mode) for mode in modes}
    jobs = [(a, m) for a in config.attacks for m in (modes if a in WHITE_BOX else ["black-box"])]
    for i, (attack, mode) in enumerate(jobs):
        attacker = attackers.get(mode, defended)
        adv = runner.run(attack, attacker)
        robust = runner.robust(adv) & clean_correct
        worst &= robust
        survived[(attack, mode)] = robust
        adversarial[f"{attack}/{mode}"] = adv
        results.append({"attack": attack, "mode": mode, **_summary(robust)})
        emit(Step("attack", i + 1, len(jobs), f"{attack} {mode}"))
    robust_summary = _summary(worst)
    robust_summary["label"] = "per-example worst case over every attack and gradient mode"

    sanity = _sanity_checks(config, runner, defended, attackers, survived, x, y, model, emit) \
        if config.sanity else []
    sweep = _lambda_sweep(config, model, x, y, test.num_classes, modes, emit) if config.lambda_sweep else None
    examples = _save_examples(config, x, adversarial, worst) if config.save_examples else None
    threat = {"norm": config.norm, "eps": config.eps, "eps_in_pixels": "raw [0, 1] images; the model normalises",
              "steps": config.steps, "alpha": runner.alpha, "restarts": config.restarts,
              "autoattack_parameters": AUTOATTACK_PARAMETERS, "square_queries": config.square_queries,
              "lambda": policy.describe(lam_values, rule)}
    versions = {"csc": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        versions["torchattacks"] = torchattacks_version()
    except ImportError:
        versions["torchattacks"] = "not installed"
    return AttackResult(model=config.model, dataset=test.name, n=int(x.shape[0]), threat=threat, clean=clean,
                        results=results, robust=robust_summary, sanity=sanity,
                        banner=_banner(model, modes, rule is not None), sweep=sweep, examples=examples,
                        versions=versions, config=asdict(config), cost=asdict(cost))


def _passes(config: AttackConfig, attack: str, n_classes: int) -> "tuple[int, int]":
    """Gradient and forward passes per example of one run of ``attack`` (an upper bound: Square and
    the ensemble stop early on examples already broken)."""
    targets = max(1, min(9, n_classes - 1))
    pgd_steps = config.steps * config.restarts
    return {"fgsm": (1, 1), "pgd": (pgd_steps, pgd_steps + 1), "apgd-ce": (100, 101), "apgd-dlr": (100, 101),
            "square": (0, config.square_queries + 1),
            "autoattack": (100 + 2 * 100 * targets, 100 + 2 * 100 * targets + config.square_queries)}[attack]


def estimate_cost(config: AttackConfig, defended: DefendedModel, modes: List[str], x: torch.Tensor,
                  y: torch.Tensor, n_classes: int) -> AttackCost:
    """Count the model passes the run will make (attacks x gradient modes on ``n`` examples, the
    sanity checks' extra PGD runs on up to SANITY_N, the lambda sweep) and time one forward and one
    gradient pass on a batch here, to say up front how long it will take."""
    n, n_sub = x.shape[0], min(SANITY_N, x.shape[0])
    steps = [m.steps for m in csc_layers(defended.model).values()]
    more = max(4 * max(steps), 10) / max(steps) if steps else 1.0  # the more-steps mode's extra solver work
    grads = fwds = 0.0
    for attack in config.attacks:
        g, f = _passes(config, attack, n_classes)
        for mode in (modes if attack in WHITE_BOX else ["black-box"]):
            factor = more if mode == "more-steps" else 1.0
            grads, fwds = grads + g * n * factor, fwds + f * n
    pgd_g, pgd_f = _passes(config, "pgd", n_classes)
    if config.sanity:  # 5 eps, doubled steps and restarts (4x), the base model, the gradient check
        grads += (5 + 4 + 1) * pgd_g * n_sub + n_sub
        fwds += (5 + 4 + 1) * pgd_f * n_sub + 3 * 32
    if config.lambda_sweep:
        sweep_modes = [m for m in modes if m not in RULE_MODES] or ["unrolled"]
        grads += len(config.lambda_sweep) * pgd_g * n * len(sweep_modes)
        fwds += len(config.lambda_sweep) * (pgd_f * len(sweep_modes) + 1) * n
    xb, yb = x[: min(config.batch_size, n)], y[: min(config.batch_size, n)]
    started = time.perf_counter()
    with torch.no_grad():
        defended(xb)
    forward_s = (time.perf_counter() - started) / xb.shape[0]
    started = time.perf_counter()
    input_gradient(defended, xb, yb)
    gradient_s = (time.perf_counter() - started) / xb.shape[0]
    return AttackCost(gradient_passes=int(grads), forward_passes=int(fwds), seconds=grads * gradient_s + fwds * forward_s,
                      device=str(x.device), preset=config.preset)


# ----------------------------------------------------------------------------- sanity checks
# Every check counts examples out of n and states how many it lets pass (robust/stats.py): a
# difference of one example on a small sample is below what the sample can resolve, and which
# borderline example flips depends on the machine's floating-point path.
def _worst(survived: Dict[tuple, torch.Tensor], attacks) -> Optional[torch.Tensor]:
    """Per-example robustness under every (attack, mode) run of ``attacks``; None if none ran."""
    masks = [m for (atk, _), m in survived.items() if atk in attacks]
    if not masks:
        return None
    out = masks[0].clone()
    for m in masks[1:]:
        out &= m
    return out


def _sanity_checks(config, runner, defended, attackers, survived, x, y, model, emit) -> List[Dict[str, Any]]:
    checks = []
    sub = x[: min(32, x.shape[0])]
    with torch.no_grad():
        a, b = defended(sub), defended(sub)
        alone = torch.cat([defended(sub[i : i + 1]) for i in range(min(4, sub.shape[0]))])
    same = torch.equal(a, b)
    batch_ok = torch.allclose(alone, a[: alone.shape[0]], rtol=1e-4, atol=1e-5)
    checks.append(check("deterministic, batch-independent logits", same and batch_ok,
                        f"repeat identical: {same}; alone vs in batch max diff "
                        f"{float((alone - a[: alone.shape[0]]).abs().max()):.2e}"))
    iterative = _worst(survived, ("pgd", "apgd-ce", "apgd-dlr", "autoattack"))
    single = _worst(survived, ("fgsm",))
    name = "iterative beats single-step"
    checks.append(compare_attacks(name, iterative, single, "the iterative attacks", "FGSM")
                  if iterative is not None and single is not None else check(name, None, "needs fgsm and an iterative attack"))
    unrolled = attackers.get("unrolled") or attackers.get("bpda") or defended
    n_sub = min(SANITY_N, x.shape[0])
    large = 0.5 if config.norm == "Linf" else 50 * max(config.eps, 0.1)
    eps_grid = [config.eps * f for f in (0.25, 0.5, 1.0, 2.0)] + [large]
    at_eps = [runner.robust(runner.run("pgd", unrolled, eps=eps, x=x[:n_sub])) for eps in eps_grid]
    steps = [compare_attacks("", bigger, smaller, f"eps {e2:.4g}", f"eps {e1:.4g}")
             for (e1, smaller), (e2, bigger) in zip(zip(eps_grid, at_eps), zip(eps_grid[1:], at_eps[1:]))]
    rising = [s for s in steps if s["verdict"] == "WARN"]
    left, allowed = int(at_eps[-1].sum()), tolerance(n_sub, 0.02)
    worst_step = max(steps, key=lambda s: s["changed"])
    checks.append(check("accuracy falls with eps and reaches ~0", not rising and left <= allowed,
                        "PGD survivors at eps " + ", ".join(f"{e:.4g}: {int(m.sum())}" for e, m in zip(eps_grid, at_eps))
                        + f" of {n_sub}; largest rise: {worst_step['changed']} example(s) robust at a larger eps but "
                        f"broken at a smaller one ({len(rising)} significant rise(s)); {left} left at eps {large:.4g} "
                        f"(allowed {allowed})", changed=left, n=n_sub, allowed=allowed))
    emit(Step("sanity", 3, 8))
    base = runner.robust(runner.run("pgd", unrolled, x=x[:n_sub]))
    doubled = runner.robust(runner.run("pgd", unrolled, steps=2 * config.steps, restarts=2 * config.restarts, x=x[:n_sub]))
    checks.append(compare_attacks("doubling steps and restarts breaks no more examples", base, doubled,
                                  f"PGD {config.steps} x {config.restarts}",
                                  f"PGD {2 * config.steps} x {2 * config.restarts}"))
    square = _worst(survived, ("square",))
    white = _worst(survived, WHITE_BOX)
    name = "black-box does not beat white-box"
    checks.append(compare_attacks(name, white, square, "the white-box attacks", "Square")
                  if square is not None and white is not None else check(name, None, "needs square"))
    checks.append(check("perturbations within eps, inputs in [0, 1]",
                        runner.bound_violations == 0 and runner.range_violations == 0,
                        f"{runner.bound_violations} over eps, {runner.range_violations} outside [0, 1]",
                        changed=runner.bound_violations + runner.range_violations, allowed=0))
    checks.append(_base_check(config, model, defended, runner, x[:n_sub], y[:n_sub]))
    zero = int(zero_gradient_mask(unrolled, x[:n_sub], y[:n_sub]).sum())
    checks.append(at_most("gradients are not zero", zero, n_sub, 0.01,
                          "examples with an exactly zero input gradient of the logit margin"))
    emit(Step("sanity", 8, 8))
    return checks


def _base_check(config, model, defended, runner, x, y) -> Dict[str, Any]:
    """The undefended base model should fall to near 0 at this eps, or the attack is too weak."""
    if config.baseline:
        base_model = load(config.baseline, map_location=x.device).eval()
        base = DefendedModel(base_model)
        label = f"baseline {config.baseline}"
    elif defended.lam_values or defended.rule is not None:
        base = DefendedModel(model)
        label = "the same model at its trained lambda"
    else:
        return check("undefended base model falls to near 0", None, "give --baseline (or a test-time lambda defence)")
    sub = _Runner(config, base, x, y, runner.n_classes)
    left = int(sub.robust(sub.run("pgd", base)).sum())
    return at_most("undefended base model falls to near 0", left, x.shape[0], 0.05, f"PGD survivors of {label}")


# ----------------------------------------------------------------------------- sweep and pictures
def _lambda_sweep(config, model, x, y, n_classes, modes, emit) -> List[Dict[str, Any]]:
    """Robust accuracy (PGD, worst case over the gradient modes) vs the first layer's lambda."""
    if not csc_layers(model):
        raise ValueError("this model has no CSC layer: --lambda-sweep does not apply")
    first = first_csc_layer(model)
    done = [0]

    def measure(lam: float) -> Dict[str, Any]:
        defended = DefendedModel(model)  # the layer's lambda is set to ``lam`` for the whole measurement
        runner = _Runner(config, defended, x, y, n_classes)
        clean = runner.robust(x)
        worst = clean.clone()
        for mode in [m for m in modes if m not in RULE_MODES] or ["unrolled"]:
            worst &= runner.robust(runner.run("pgd", attacker_copy(defended, mode)))
        done[0] += 1
        emit(Step("sweep", done[0], len(config.lambda_sweep), f"lambda {lam:g}"))
        return {"lambda": lam, "clean": _summary(clean), "robust": _summary(worst)}

    return over_lambdas(model, first, config.lambda_sweep, measure)


def _save_examples(config, x, adversarial, worst) -> str:
    from torchvision.utils import save_image

    best_key = max(adversarial, key=lambda k: float((adversarial[k] - x).abs().sum()))
    for key in adversarial:  # prefer an attack that actually fooled the model on the first images
        if key.startswith(("pgd", "apgd")):
            best_key = key
            break
    adv = adversarial[best_key][:8]
    clean = x[:8]
    delta = adv - clean
    scale = delta.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    grid = torch.cat([clean, adv, 0.5 + 0.5 * delta / scale]).clamp(0, 1)
    if grid.shape[1] == 1:
        grid = grid.expand(-1, 3, -1, -1)
    grid = torch.nn.functional.interpolate(grid, scale_factor=max(1, 64 // x.shape[-1]), mode="nearest")
    path = Path(config.save_examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid.cpu(), path, nrow=clean.shape[0], padding=2, pad_value=1.0)
    return str(path)
