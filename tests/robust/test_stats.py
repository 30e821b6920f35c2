"""Resolution-aware comparisons of attack results (csc_cli/robust/stats.py), against closed forms."""

import pytest
import torch

from csc_cli.robust.stats import at_most, compare_attacks, sign_test, tolerance


def _survivors(n, broken):
    mask = torch.ones(n, dtype=torch.bool)
    mask[list(broken)] = False
    return mask


def test_a_one_example_difference_on_48_passes_and_many_warn():
    """The issue's case: on n = 48 one example is 2.1 points, below what the sample resolves."""
    base = _survivors(48, range(10))  # the base attack breaks 10 of 48
    one_more = _survivors(48, range(11))  # the doubled attack breaks exactly one more
    r = compare_attacks("doubling", base, one_more, "base", "doubled")
    assert r["verdict"] == "PASS" and (r["changed"], r["n"], r["allowed"]) == (1, 48, 1)
    assert "breaks 1 of 48" in r["detail"] and "1 example = 2.1 points" in r["detail"]
    many = _survivors(48, range(20))  # 10 more, none the other way: p = 2^-10
    r = compare_attacks("doubling", base, many, "base", "doubled")
    assert r["verdict"] == "WARN" and r["changed"] == 10 and "p=0.00098" in r["detail"]


def test_compare_attacks_counts_the_warning_direction_only():
    """The reverse direction (the reference breaks what the challenger did not) is noise, never a warning;
    the challenger's excess must also beat the sign test against it."""
    base = _survivors(48, range(10))
    assert compare_attacks("", base, _survivors(48, range(2)), "a", "b")["verdict"] == "PASS"  # 8 the other way
    # 6 gained against 6 lost: the excess is chance (p = 0.61)
    swapped = _survivors(48, list(range(4)) + list(range(10, 16)))
    r = compare_attacks("", base, swapped, "a", "b")
    assert r["changed"] == 6 and r["verdict"] == "PASS"
    # 4 gained, none lost: above one example but p = 1/16 -- not significant at 0.05
    assert compare_attacks("", base, _survivors(48, range(14)), "a", "b")["verdict"] == "PASS"
    assert compare_attacks("", base, _survivors(48, range(15)), "a", "b")["verdict"] == "WARN"  # p = 1/32
    # at n = 2000, 0.5% is 10 examples: 8 more broken is significant but below the resolution floor
    big = _survivors(2000, range(100))
    assert compare_attacks("", big, _survivors(2000, range(108)), "a", "b")["verdict"] == "PASS"
    assert compare_attacks("", big, _survivors(2000, range(111)), "a", "b")["verdict"] == "WARN"
    with pytest.raises(ValueError, match="same examples"):
        compare_attacks("", base, _survivors(40, []), "a", "b")


def test_sign_test_and_tolerance_exact_values():
    """Against closed forms: P(X >= k), X ~ Binomial(m, 1/2)."""
    assert sign_test(0, 0) == 1.0 and sign_test(0, 5) == 1.0
    assert sign_test(5, 0) == 1 / 32 and sign_test(3, 1) == 5 / 16 and sign_test(1, 1) == 3 / 4
    assert (tolerance(48), tolerance(199), tolerance(200), tolerance(2000), tolerance(64, 0.05)) == (1, 1, 1, 10, 3)


def test_at_most_states_the_count_and_the_allowance():
    r = at_most("near zero", 3, 64, 0.05, "PGD survivors")
    assert r["verdict"] == "PASS" and (r["changed"], r["n"], r["allowed"]) == (3, 64, 3) and "3 of 64" in r["detail"]
    assert at_most("near zero", 4, 64, 0.05, "PGD survivors")["verdict"] == "WARN"
