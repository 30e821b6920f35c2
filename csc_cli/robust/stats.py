"""Statistics for attack results on n examples: intervals, and comparisons with a stated resolution.

An accuracy on n examples moves in steps of 1/n, and two attacks with random starts disagree on a
few borderline examples by chance. A sanity check that compares two attacks therefore counts
examples, never percentage points, and decides only on a difference the sample can show:

- it counts the examples the *challenger* breaks that the *reference* did not (the direction that
  would reveal a problem) and the reverse (the same attack noise, seen from the other side);
- it warns only when that count exceeds the tolerance, ``max(1, 0.5% of n)`` examples, **and** a
  one-sided exact sign (McNemar) test on the discordant examples says the excess is not chance
  (p < 0.05). One example on 48 (2.1 points) can never warn on its own.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

from torch import Tensor

ALPHA = 0.05  # significance of the one-sided sign test
SHARE = 0.005  # a comparison may differ by 0.5% of n (and at least one example) without a warning


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2); 1.0 with no
    discordant pair."""
    m = wins + losses
    if m == 0:
        return 1.0
    return sum(math.comb(m, k) for k in range(wins, m + 1)) / 2.0 ** m


def tolerance(n: int, share: float = SHARE) -> int:
    """Examples a check lets pass: the larger of one example and ``share`` of n (rounded down)."""
    return max(1, int(math.floor(share * n)))


def check(name: str, ok: Optional[bool], detail: str, changed: Optional[int] = None, n: Optional[int] = None,
          allowed: Optional[int] = None) -> Dict[str, Any]:
    """One row of the sanity table. ``changed`` examples of ``n`` are what the verdict rests on,
    ``allowed`` how many it lets pass."""
    return {"check": name, "verdict": "N/A" if ok is None else ("PASS" if ok else "WARN"), "detail": detail,
            "changed": changed, "n": n, "allowed": allowed}


def compare_attacks(name: str, reference: Tensor, challenger: Tensor, ref_label: str, challenger_label: str,
                    share: float = SHARE, alpha: float = ALPHA) -> Dict[str, Any]:
    """Did ``challenger`` break examples that ``reference`` should already have broken?

    ``reference`` and ``challenger`` are boolean masks over the same n examples, True where the
    example survived that attack. WARN when the challenger breaks more than ``tolerance(n)`` examples
    the reference did not, and a one-sided sign test against the reverse count gives p < alpha.
    """
    if reference.shape != challenger.shape:
        raise ValueError(f"compare_attacks needs masks over the same examples, got {tuple(reference.shape)} "
                         f"and {tuple(challenger.shape)}")
    n = int(reference.numel())
    gained = int((reference & ~challenger).sum())  # the challenger breaks, the reference did not
    lost = int((~reference & challenger).sum())  # the reverse: the reference's own advantage or noise
    allowed = tolerance(n, share)
    p = sign_test(gained, lost)
    ok = not (gained > allowed and p < alpha)
    detail = (f"{challenger_label} breaks {gained} of {n} that {ref_label} did not (reverse: {lost}); "
              f"sign test p={p:.2g}; WARN needs > {allowed} and p < {alpha:g} "
              f"(1 example = {100 / max(n, 1):.1f} points)")
    return check(name, ok, detail, changed=gained, n=n, allowed=allowed)


def at_most(name: str, count: int, n: int, share: float, detail: str) -> Dict[str, Any]:
    """PASS while ``count`` of n examples stays within ``tolerance(n, share)``."""
    allowed = tolerance(n, share)
    return check(name, count <= allowed, f"{detail}; {count} of {n} (allowed {allowed})", changed=count, n=n,
                 allowed=allowed)
