"""Label-free rules that choose a CSC layer's lambda per input, and how they are fitted.

SDNet's robustness claim is a test-time trade-off: on a noisy input, a larger lambda in the first CSC
layer gives a stabler code. A deployable rule must choose lambda from the input alone. Four rules,
each fitted on corrupted *training* images (never test labels), each a :class:`LambdaRule`:

``residual``
    ``lambda = a * r(x) + b``, ``r(x) = ||x - A z||^2 / numel`` the layer's reconstruction error at its
    trained lambda. r(x) mixes noise with image content the dictionary does not represent.
``sigma``
    ``lambda = a * sigma(x) + b``, ``sigma(x)`` the noise level estimated from the input itself
    (:func:`noise_sigma`: the median absolute deviation of the finest diagonal Haar wavelet band,
    Donoho & Johnstone 1994). Sparse-recovery theory sets the threshold proportional to the noise
    level (lambda ~ sigma sqrt(2 log p)); the offset ``b`` is the clean-image lambda.
``sigma_table``
    lambda a non-decreasing piecewise-linear function of sigma(x) through the calibration levels
    (pool-adjacent-violators on ``(sigma, best lambda)``, constant beyond the ends): the same
    statistic without assuming the best lambda is affine in the noise level.
``discrepancy``
    Morozov's discrepancy principle: per input, the lambda whose residual matches the expected
    energy, ``r(x; lambda) = q + tau * sigma(x)^2`` (bisection over [lo, hi], the residual grows with
    lambda), ``q`` the dictionary's own residual on clean images and ``tau`` the share of the noise
    energy the code should leave out -- both fitted on the calibration levels.

Every rule is clamped to ``[lo, hi]`` (the calibration grid's range), is stored in the model card
(``to_dict`` / :func:`rule_from_dict`) with the corruptions it was fitted on, and applies through
:meth:`LambdaRule.applied` (a forward pre-hook passing a per-sample lambda to the layer).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Type

import torch
import torch.nn as nn
from torch import Tensor

from ..choices import LAMBDA_RULES as RULES
from ..layers import CSCConvNd

MAD_TO_SIGMA = 0.6744897501960817  # the median of |N(0, 1)|


# ----------------------------------------------------------------------------- statistics
def noise_sigma(x: Tensor) -> Tensor:
    """Robust noise level of each sample of ``x`` (N, C, *spatial): ``median |d| / 0.6745`` over the
    finest all-high-pass Haar band ``d`` (a difference of neighbours along every spatial axis, scaled
    to be orthonormal) of every channel. For i.i.d. Gaussian noise of std ``s`` the band's
    coefficients are ``N(0, s^2)`` whatever the spatial rank; image content is sparse in that band, so
    the median ignores it (Donoho & Johnstone 1994). Differentiable almost everywhere."""
    if x.dim() < 3:
        raise ValueError(f"noise_sigma needs (N, C, *spatial) inputs, got shape {tuple(x.shape)}")
    d = x
    for axis in range(2, x.dim()):
        n = d.shape[axis] // 2 * 2
        if n < 2:
            raise ValueError(f"noise_sigma needs at least 2 values along every spatial axis, got {tuple(x.shape)}")
        d = (d.narrow(axis, 0, n).unflatten(axis, (n // 2, 2)).diff(dim=axis + 1).squeeze(axis + 1)) / math.sqrt(2)
    return d.abs().flatten(1).median(1).values / MAD_TO_SIGMA


def residual_energy(layer: CSCConvNd, x: Tensor, lam=None) -> Tensor:
    """``||x - A z||^2 / numel`` per sample, ``z`` the layer's code of ``x`` at ``lam`` (default: its
    own lambda; a number or a per-sample tensor); differentiable in ``x``."""
    z, _ = layer.solve(x, lam=lam)
    residual = x - layer.decode(z, x.shape[2:])
    return residual.square().flatten(1).mean(1)


@torch.no_grad()
def reconstruction_error(layer: CSCConvNd, x: Tensor, lam=None) -> Tensor:
    """:func:`residual_energy` without a graph."""
    return residual_energy(layer, x, lam)


class _Stop(Exception):
    pass


@torch.no_grad()
def layer_input(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """What ``layer`` receives when ``model`` sees ``x`` (the forward stops there)."""
    captured = {}

    def hook(mod, args):
        captured["x"] = args[0]
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "x" not in captured:
        raise RuntimeError("the model's forward never reached the lambda rule's layer")
    return captured["x"]


def layer_inputs(model: nn.Module, layer: nn.Module, x: Tensor, device, batch_size: int) -> Iterator[Tensor]:
    """:func:`layer_input` batch by batch."""
    for start in range(0, x.shape[0], batch_size):
        yield layer_input(model, layer, x[start : start + batch_size].to(device))


# ----------------------------------------------------------------------------- rules
@dataclass
class LambdaRule:
    """A label-free per-input lambda for the CSC layer ``layer``, clamped to ``[lo, hi]``.

    ``fitted_on`` names the corruptions of the training images it was fitted on, ``points`` the
    calibration levels (statistics and best lambda) -- what an honest report needs to say which
    corruptions are unseen."""

    kind: ClassVar[str] = ""
    has_gradient: ClassVar[bool] = True  # whether lambda(x) can be differentiated (an attacker's "through-rule")
    layer: str
    reference_lam: float  # the layer's trained lambda
    lo: float = 0.0
    hi: float = 10.0
    fitted_on: List[str] = field(default_factory=list)
    points: Optional[List[Dict[str, float]]] = None
    shared_with: List[str] = field(default_factory=list)  # CSC layers that take the same lambda(x) (an encoder)

    # -- what a rule computes
    def lam_for(self, layer: CSCConvNd, x: Tensor, differentiable: bool = False) -> Tensor:
        """The per-sample lambda (N,) for the layer input ``x``. ``differentiable``: let gradients
        flow through the statistic (for an attacker); otherwise lambda(x) is a constant."""
        with contextlib.nullcontext() if differentiable else torch.no_grad():
            return self._lam(layer, x).clamp(self.lo, self.hi)

    def _lam(self, layer: CSCConvNd, x: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @contextlib.contextmanager
    def applied(self, model: nn.Module, differentiable: bool = False) -> Iterator[None]:
        """Inside the block ``model``'s layer ``self.layer`` picks its lambda per input from its own
        input; the layers of ``shared_with`` (run after it, on the same batch) take the same one."""
        modules = dict(model.named_modules())
        for name in [self.layer] + list(self.shared_with):
            if not isinstance(modules.get(name), CSCConvNd):
                raise ValueError(f"the lambda rule is for {name!r}, which is not a CSC layer of this model")
        chosen: Dict[str, Tensor] = {}

        def first(mod, args, kwargs):
            chosen["lam"] = self.lam_for(mod, args[0], differentiable)
            return args, {**kwargs, "lam": chosen["lam"]}

        def follow(mod, args, kwargs):
            lam = chosen.get("lam")
            if lam is None or lam.shape[0] != args[0].shape[0]:
                raise RuntimeError(f"the lambda rule's layers ran out of order: {self.layer} must see the batch first")
            return args, {**kwargs, "lam": lam}

        handles = [modules[self.layer].register_forward_pre_hook(first, with_kwargs=True)]
        handles += [modules[n].register_forward_pre_hook(follow, with_kwargs=True) for n in self.shared_with]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- storage
    def to_dict(self) -> Dict[str, Any]:
        return {"rule": self.kind, **asdict(self)}

    def _check(self) -> None:
        numbers = [v for v in asdict(self).values() if isinstance(v, float)]
        numbers += [v for key in ("knots", "lams") for v in getattr(self, key, [])]
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"the stored {self.kind} lambda rule has non-finite coefficients")
        if not 0 <= self.lo <= self.hi:
            raise ValueError(f"the stored lambda rule has a bad range [{self.lo}, {self.hi}]")


@dataclass
class _AffineRule(LambdaRule):
    """``lambda = a * statistic(x) + b``."""

    statistic_name: ClassVar[str] = ""
    a: float = 0.0
    b: float = 0.0

    def _statistic(self, layer: CSCConvNd, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _lam(self, layer, x):
        return self.a * self._statistic(layer, x) + self.b

    def describe(self) -> str:
        return f"lambda = {self.a:.3g} * {self.statistic_name} + {self.b:.3g}"


@dataclass
class ResidualRule(_AffineRule):
    """``lambda = a * r(x) + b``, r(x) the layer's reconstruction error at ``reference_lam``."""

    kind: ClassVar[str] = "residual"
    statistic_name: ClassVar[str] = "r(x)"

    def _statistic(self, layer, x):
        return residual_energy(layer, x, self.reference_lam)


@dataclass
class SigmaRule(_AffineRule):
    """``lambda = a * sigma(x) + b``, sigma(x) :func:`noise_sigma` of the layer input."""

    kind: ClassVar[str] = "sigma"
    statistic_name: ClassVar[str] = "sigma(x)"

    def _statistic(self, layer, x):
        return noise_sigma(x)


@dataclass
class TableRule(LambdaRule):
    """lambda a non-decreasing piecewise-linear function of sigma(x) through ``(knots, lams)``."""

    kind: ClassVar[str] = "sigma_table"
    knots: List[float] = field(default_factory=list)
    lams: List[float] = field(default_factory=list)

    def _lam(self, layer, x):
        return interpolate(noise_sigma(x), self.knots, self.lams)

    def describe(self) -> str:
        pairs = ", ".join(f"{s:.3g}->{v:.3g}" for s, v in zip(self.knots, self.lams))
        return f"lambda = table(sigma(x)): {pairs}"

    def _check(self) -> None:
        super()._check()
        if not self.knots or len(self.knots) != len(self.lams):
            raise ValueError("the stored sigma_table lambda rule needs as many lambdas as knots (at least one)")
        if any(b < a for a, b in zip(self.knots, self.knots[1:])):
            raise ValueError("the stored sigma_table lambda rule's knots are not sorted")


@dataclass
class DiscrepancyRule(LambdaRule):
    """Per input, the lambda in [lo, hi] whose residual ``r(x; lambda)`` is ``q + tau * sigma(x)^2``
    (bisection, ``iterations`` halvings: resolution ``(hi - lo) / 2^iterations``). lambda(x) is a
    constant for autograd even when ``differentiable`` (a bisection has no useful gradient)."""

    kind: ClassVar[str] = "discrepancy"
    has_gradient: ClassVar[bool] = False
    q: float = 0.0
    tau: float = 1.0
    iterations: int = 8

    def lam_for(self, layer, x, differentiable=False):
        with torch.no_grad():
            return self._lam(layer, x)

    def _lam(self, layer, x):
        target = self.q + self.tau * noise_sigma(x).square()
        lo = torch.full_like(target, self.lo)
        hi = torch.full_like(target, self.hi)
        for _ in range(self.iterations):
            mid = (lo + hi) / 2
            above = residual_energy(layer, x, mid) > target  # too much left out: a smaller lambda
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return (lo + hi) / 2

    def describe(self) -> str:
        return f"lambda: r(x; lambda) = {self.q:.3g} + {self.tau:.3g} * sigma(x)^2 (bisection)"


RULE_TYPES: Dict[str, Type[LambdaRule]] = {c.kind: c for c in (ResidualRule, SigmaRule, TableRule, DiscrepancyRule)}


def rule_from_dict(data: Any) -> LambdaRule:
    """A stored rule (``LambdaRule.to_dict()``; a dict without ``rule`` is the residual rule of
    format 1), validated: malformed or non-finite entries raise one-line ``ValueError``s."""
    if not isinstance(data, dict):
        raise ValueError("the stored lambda rule is not an object")
    kind = data.get("rule", "residual")
    cls = RULE_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"the stored lambda rule {kind!r} is not one of {', '.join(RULES)}")
    names = {f for f in cls.__dataclass_fields__}
    try:
        kwargs = {k: v for k, v in data.items() if k in names}
        rule = cls(**kwargs)
        for f, spec in cls.__dataclass_fields__.items():
            value = getattr(rule, f)
            if spec.type in ("float", float):
                setattr(rule, f, float(value))
            elif spec.type in ("int", int):
                setattr(rule, f, int(value))
        rule.layer = str(rule.layer)
        if isinstance(rule, TableRule):
            rule.knots, rule.lams = [float(v) for v in rule.knots], [float(v) for v in rule.lams]
        rule.fitted_on = [str(v) for v in rule.fitted_on]
        rule.shared_with = [str(v) for v in rule.shared_with]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the stored lambda rule is malformed ({exc})") from None
    rule._check()
    return rule


# ----------------------------------------------------------------------------- fitting
def interpolate(s: Tensor, knots: Sequence[float], values: Sequence[float]) -> Tensor:
    """Piecewise-linear through ``(knots, values)`` (sorted knots), constant beyond the ends."""
    k = torch.tensor(list(knots), dtype=s.dtype, device=s.device)
    v = torch.tensor(list(values), dtype=s.dtype, device=s.device)
    if k.numel() == 1:
        return v.expand_as(s).clone()
    s = s.clamp(k[0], k[-1])
    i = torch.searchsorted(k, s.detach().contiguous(), right=True).clamp(1, k.numel() - 1)
    k0, k1, v0, v1 = k[i - 1], k[i], v[i - 1], v[i]
    w = torch.where(k1 > k0, (s - k0) / (k1 - k0).clamp_min(1e-30), torch.zeros_like(s))
    return v0 + w * (v1 - v0)


def isotonic(values: Sequence[float], weights: Optional[Sequence[float]] = None) -> List[float]:
    """The non-decreasing least-squares fit to ``values`` (pool adjacent violators)."""
    blocks: List[List[float]] = []  # [mean, weight, count]
    for v, w in zip(values, weights or [1.0] * len(values)):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [m for m, _, n in blocks for _ in range(n)]


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple:
    """Least-squares ``y = a x + b``; a constant when the xs do not vary."""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    if len(xs) < 2 or float(x.max() - x.min()) <= 1e-12 * max(1.0, float(x.abs().max())):
        return 0.0, float(y.mean())
    design = torch.stack([x, torch.ones_like(x)], 1)
    a, b = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1).tolist()
    return float(a), float(b)


@dataclass
class Level:
    """One calibration level: a corruption at a severity (0: clean) of the training images, the best
    lambda of the grid for it, and the mean statistics of its layer inputs."""

    corruption: str
    severity: int
    best_lam: float
    r: float  # mean residual at the reference lambda
    sigma: float  # mean noise_sigma
    sigma2: float  # mean noise_sigma^2
    r_best: float  # mean residual at best_lam


@torch.no_grad()
def measure_level(layer: CSCConvNd, inputs: Iterable[Tensor], corruption: str, severity: int, best_lam: float,
                  reference_lam: float) -> Level:
    """The statistics of one calibration level from batches of the layer's inputs for its images."""
    r, s, rb = [], [], []
    for x in inputs:
        s.append(noise_sigma(x).double())
        r.append(reconstruction_error(layer, x, reference_lam).double())
        rb.append(reconstruction_error(layer, x, float(best_lam)).double())
    s_all = torch.cat(s)
    return Level(corruption, severity, float(best_lam), r=float(torch.cat(r).mean()), sigma=float(s_all.mean()),
                 sigma2=float(s_all.square().mean()), r_best=float(torch.cat(rb).mean()))


def fit_rules(layer: str, reference_lam: float, levels: Sequence[Level], lo: float, hi: float,
              rules: Sequence[str] = RULES, shared_with: Sequence[str] = ()) -> Dict[str, LambdaRule]:
    """Every rule in ``rules`` fitted on the calibration ``levels`` (at least two); ``shared_with``:
    the layers that take the same per-input lambda."""
    if len(levels) < 2:
        raise ValueError("fitting a lambda rule needs at least two calibration levels")
    unknown = [r for r in rules if r not in RULE_TYPES]
    if unknown:
        raise ValueError(f"unknown lambda rule {unknown[0]!r}: choose from {', '.join(RULES)}")
    fitted_on = sorted({lv.corruption for lv in levels if lv.severity > 0})
    common = dict(layer=layer, reference_lam=float(reference_lam), lo=float(lo), hi=float(hi), fitted_on=fitted_on,
                  points=[asdict(lv) for lv in levels], shared_with=list(shared_with))
    best = [lv.best_lam for lv in levels]
    out: Dict[str, LambdaRule] = {}
    for name in rules:
        if name == "residual":
            a, b = _line([lv.r for lv in levels], best)
            out[name] = ResidualRule(**common, a=a, b=b)
        elif name == "sigma":
            a, b = _line([lv.sigma for lv in levels], best)
            out[name] = SigmaRule(**common, a=a, b=b)
        elif name == "sigma_table":
            order = sorted(range(len(levels)), key=lambda i: levels[i].sigma)
            knots = [levels[i].sigma for i in order]
            lams = isotonic([best[i] for i in order])
            out[name] = TableRule(**common, knots=knots, lams=lams)
        elif name == "discrepancy":
            tau, q = _line([lv.sigma2 for lv in levels], [lv.r_best for lv in levels])
            out[name] = DiscrepancyRule(**common, q=q, tau=tau)
    return out


@dataclass
class CalibrationLevel:
    """One level to calibrate on: a corruption at a severity (0: clean), the part of the training
    images the rules are fitted on and the held-out part the stored rule is chosen on (may be empty)."""

    corruption: str
    severity: int
    fit: Any
    held_out: Any = None


def calibrate(model: nn.Module, layer: str, grid: Sequence[float], levels: Sequence[CalibrationLevel], *,
              grid_scores: Callable[[Any], List[float]], score: Callable[[Any], float],
              layer_batches: Callable[[Any], Iterable[Tensor]], rule: str = "best", shared_with: Sequence[str] = (),
              progress: Optional[Callable[[int, int, str], None]] = None):
    """Fit every rule for ``model``'s CSC layer ``layer`` (higher scores are better):

    for each level, ``grid_scores(level.fit)`` scores each lambda of ``grid`` and the best one is the
    level's target; ``layer_batches(level.fit)`` yields the layer's inputs for the statistics. With
    ``rule='best'``, each fitted rule is applied and scored on every level's ``held_out`` part with
    ``score`` and the best is chosen (ties: the first in :data:`RULES`); otherwise ``rule`` names it.
    Returns ``(rules, rows, selection, chosen)``: the fitted rules by name, one row per level (its
    :class:`Level` and the grid's scores), the held-out mean score per rule (or None), the chosen name."""
    check_rule_name(rule)
    module = dict(model.named_modules())[layer]
    reference = float(module.lam)
    measured, rows = [], []
    for i, lv in enumerate(levels):
        scores = [float(v) for v in grid_scores(lv.fit)]
        pick = grid[max(range(len(grid)), key=lambda j: scores[j])]  # ties: the smallest lambda
        level = measure_level(module, layer_batches(lv.fit), lv.corruption, lv.severity, pick, reference)
        measured.append(level)
        rows.append({**asdict(level), "scores": scores})
        if progress:
            progress(i + 1, len(levels), f"{lv.corruption} s{lv.severity}" if lv.severity else lv.corruption)
    rules = fit_rules(layer, reference, measured, lo=min(grid), hi=max(grid), shared_with=shared_with)
    if rule != "best":
        return rules, rows, None, rule
    selection = {}
    for name, fitted in rules.items():
        with fitted.applied(model):
            selection[name] = float(sum(score(lv.held_out) for lv in levels) / len(levels))
    return rules, rows, selection, max(rules, key=lambda n: selection[n])


def fit_share(images: int, rule: str) -> int:
    """How many of ``images`` calibration images the rules are fitted on: half for ``rule='best'``
    (the other half chooses the rule), all of them for a named rule."""
    if rule != "best":
        return images
    if images < 4:
        raise ValueError("--rule best holds out half of the calibration images: give --calibration-images >= 4")
    return images // 2


def check_rule_name(rule: str) -> str:
    """``rule`` if it is ``best`` or one of :data:`RULES`; a one-line ``ValueError`` otherwise."""
    if rule != "best" and rule not in RULES:
        raise ValueError(f"--rule must be best or one of {', '.join(RULES)}, got {rule!r}")
    return rule
