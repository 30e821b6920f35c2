"""Adversarial attacks on raw [0, 1] images, and the model wrappers they run against.

FGSM and PGD (random start, restarts, best iterate kept) are written here because no library keeps
PGD's best iterate across restarts; APGD-CE, APGD-DLR, APGD-T, FAB-T and Square come from
torchattacks, with AutoAttack's standard parameters set explicitly (torchattacks' own AutoAttack
uses 10 steps where the official ensemble uses 100).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..choices import ATTACKS, GRADIENT_MODES, NORMS, RULE_MODES  # noqa: F401 (re-export)
from ..layers import CSCConvNd
from .lam import LambdaRule, lambda_override, reconstruction_error  # noqa: F401 (re-export)
from .stats import wilson_interval  # noqa: F401 (re-export)


def parse_eps(text: str, norm: str = "Linf") -> float:
    """'8/255', '0.03' -> a float; one clear error otherwise. An l_inf budget above 1 exceeds the whole
    [0, 1] pixel range; an l_2 budget may (the image's diameter is checked once its size is known)."""
    text = str(text).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            if float(den) == 0:
                raise ValueError(f"--eps {text}: division by zero")
            value = float(num) / float(den)
        else:
            value = float(text)
    except ValueError as exc:
        if "division by zero" in str(exc):
            raise
        raise ValueError(f"--eps must be a number or a fraction like 8/255, got {text!r}") from None
    return check_eps(value, norm, text)


def check_eps(value: float, norm: str, text: Optional[str] = None) -> float:
    """The budget's range: finite and >= 0; at most 1 for l_inf (the whole [0, 1] pixel range). An
    l_2 budget may exceed 1 (its bound, the image's diameter, needs the image size)."""
    text = str(value) if text is None else text
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--eps must be >= 0, got {text}")
    if value > 1 and canonical_norm(norm) == "Linf":
        raise ValueError(f"--eps {text} is larger than the whole [0, 1] pixel range (l_inf)")
    return value


def canonical_norm(name: str) -> str:
    """'linf', 'Linf', 'inf' -> 'Linf'; 'l2', 'L2' -> 'L2'; anything else unchanged (and refused later)."""
    key = str(name).strip().lower()
    return {"linf": "Linf", "inf": "Linf", "l_inf": "Linf", "l2": "L2", "l_2": "L2"}.get(key, str(name))


# ----------------------------------------------------------------------------- models
class DefendedModel(nn.Module):
    """A loaded model (which takes raw [0, 1] images: its normalisation is part of it) as deployed:
    BatchNorm on running statistics and its test-time lambda (fixed values, or a per-input rule)
    applied on every forward."""

    def __init__(self, model: nn.Module, lam_values: Optional[Dict[str, float]] = None,
                 rule: Optional[LambdaRule] = None, rule_gradient: bool = False):
        super().__init__()
        self.model = model
        self.lam_values = dict(lam_values or {})
        self.rule = rule
        self.rule_gradient = rule_gradient
        self.eval()

    def train(self, mode: bool = True) -> "DefendedModel":
        # Attack libraries switch their model to train() and back; a defended model is evaluated
        # as it is deployed -- BatchNorm on running statistics, step sizes read, never refreshed.
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        with lambda_override(self.model, self.lam_values), self._rule():
            return self.model(x)

    def _rule(self):
        if self.rule is None:
            return contextlib.nullcontext()
        # BPDA by default: lambda(x) is a constant for the gradient; through-rule differentiates r(x)
        return self.rule.applied(self.model, differentiable=self.rule_gradient)




def attacker_copy(defended: DefendedModel, mode: str) -> DefendedModel:
    """The network the attacker differentiates for gradient ``mode``:

    * ``unrolled`` -- the model exactly as it runs (autograd through its K steps);
    * ``implicit`` -- the model's own K-step forward, differentiated with the implicit-function
      gradient of the Lasso's solution on the code's support (exact at convergence; damped, since
      a K-step code is not converged);
    * ``smooth`` -- the same K steps, the threshold's backward replaced by a softplus;
    * ``more-steps`` -- 4x the solver steps (at least 10), unrolled;
    * ``bpda`` / ``through-rule`` -- for a per-input lambda rule: lambda(x) held constant in the
      backward pass (BPDA), or differentiated through r(x).
    """
    if mode in ("unrolled", "bpda"):
        return defended
    if mode == "through-rule":
        twin = copy.copy(defended)
        twin.rule_gradient = True
        return twin
    twin = copy.deepcopy(defended)
    for layer in twin.model.modules():
        if isinstance(layer, CSCConvNd):
            if mode == "implicit":
                layer.backward = "implicit"
                layer.cg_iters = 50
                layer.cg_tol = 1e-4
                # a K-step code is not converged: its support can exceed the input's dimension,
                # making A_S^T A_S singular; damp it at 5% of ||A||^2
                layer.implicit_damping = 0.05 * float(layer.lipschitz) if layer.trained_size else 1.0
            elif mode == "smooth":
                layer.surrogate = 1.0
            elif mode == "more-steps":
                layer.steps = max(4 * layer.steps, 10)
            else:
                raise ValueError(f"unknown gradient mode {mode!r}")
    return twin


# ----------------------------------------------------------------------------- hand-written attacks
def _project(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / flat).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))


def _ascent(grad: Tensor, norm: str) -> Tensor:
    if norm == "Linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """Cross-entropy gradient with respect to the input, and the logits."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "Linf") -> Tensor:
    grad, _ = input_gradient(model, x, y)
    return (x + eps * _ascent(grad, norm)).clamp(0, 1).detach() if eps > 0 else x.clone()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, alpha: float, steps: int, norm: str = "Linf",
        restarts: int = 1, random_start: bool = True, generator: Optional[torch.Generator] = None,
        judge: Optional[nn.Module] = None) -> Tensor:
    """Projected gradient ascent on the cross-entropy. Over all restarts and iterates, keeps for each
    example an iterate that ``judge`` (default: ``model``) misclassifies if one was found, otherwise
    the iterate with the highest loss."""
    judge = judge or model
    if eps == 0:
        return x.clone()
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        if random_start:
            noise = torch.rand(x.shape, generator=generator).to(x) * 2 - 1
            delta = _project(noise * eps if norm == "Linf" else noise, eps, norm)
        else:
            delta = torch.zeros_like(x)
        adv = (x + delta).clamp(0, 1)
        for _ in range(steps):
            grad, _ = input_gradient(model, adv, y)
            adv = (x + _project(adv + alpha * _ascent(grad, norm) - x, eps, norm)).clamp(0, 1).detach()
            with torch.no_grad():
                logits = judge(adv)
                loss = F.cross_entropy(logits, y, reduction="none")
                wrong = logits.argmax(1) != y
            take = (wrong & ~fooled) | (~fooled & ~wrong & (loss > best_loss))
            best[take] = adv[take]
            best_loss = torch.where(take, loss, best_loss)
            fooled |= wrong
    return best


# ----------------------------------------------------------------------------- library attacks
def torchattacks_version() -> str:
    import torchattacks

    return torchattacks.__version__


def library_attack(name: str, model: nn.Module, eps: float, norm: str, n_classes: int, seed: int,
                   square_queries: int = 5000):
    """torchattacks objects with AutoAttack's official standard parameters, set explicitly."""
    try:
        import torchattacks as ta
    except ImportError:
        raise RuntimeError("APGD, Square and AutoAttack need torchattacks: pip install --no-deps torchattacks") from None
    if name == "apgd-ce":
        return ta.APGD(model, norm=norm, eps=eps, steps=100, n_restarts=1, seed=seed, loss="ce", rho=0.75)
    if name == "apgd-dlr":
        return ta.APGD(model, norm=norm, eps=eps, steps=100, n_restarts=1, seed=seed, loss="dlr", rho=0.75)
    if name == "square":
        return ta.Square(model, norm=norm, eps=eps, n_queries=square_queries, n_restarts=1, p_init=0.8,
                         loss="margin", resc_schedule=True, seed=seed)
    if name == "autoattack":  # the standard ensemble: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square
        return ta.MultiAttack([
            ta.APGD(model, norm=norm, eps=eps, steps=100, n_restarts=1, seed=seed, loss="ce", rho=0.75),
            ta.APGDT(model, norm=norm, eps=eps, steps=100, n_restarts=1, seed=seed, rho=0.75, n_classes=n_classes),
            ta.FAB(model, norm=norm, eps=eps, steps=100, n_restarts=1, seed=seed, multi_targeted=True,
                   n_classes=n_classes),
            ta.Square(model, norm=norm, eps=eps, n_queries=square_queries, n_restarts=1, p_init=0.8, seed=seed),
        ])
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")


AUTOATTACK_PARAMETERS = {
    "apgd-ce": {"steps": 100, "n_restarts": 1, "rho": 0.75},
    "apgd-t": {"steps": 100, "n_restarts": 1, "n_target_classes": "n_classes - 1", "rho": 0.75},
    "fab-t": {"steps": 100, "n_restarts": 1, "n_target_classes": "n_classes - 1"},
    "square": {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8},
}


def zero_gradient_mask(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Examples whose input gradient of the logit margin (best other logit minus the true one) is
    exactly zero: a piecewise-constant model (masking). The margin is used rather than the
    cross-entropy, whose gradient also vanishes when a confident softmax rounds to 1 in float32."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    (grad,) = torch.autograd.grad((other - true).sum(), x)
    return grad.flatten(1).abs().sum(1) == 0


def zero_gradient_fraction(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of examples whose input gradient is exactly zero (a sign of gradient masking)."""
    return float(zero_gradient_mask(model, x, y).float().mean())
