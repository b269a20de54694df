"""Seed-level inference: the trained network is the unit of replication.

Why seeds, not examples
-----------------------
A comparison "variant vs reference" asks whether a *training method* changes a metric. What varies
when the method is re-applied is the trained network (initial weights, batch order); the test
examples are the same in every seed. So each seed contributes one number, the per-seed difference
``d_s`` of the metric, and the seeds are the replicates:

* **estimate**: ``mean(d)``;
* **interval**: Student t with ``n_seeds - 1`` degrees of freedom, ``mean ± t_{1-α/2} · sd/√n``;
* **headline test**: the paired t-test on the same ``d`` (:func:`paired_t`). Interval and test are
  the same computation (``|mean| / (sd/√n)`` against the same quantile), so *p < α exactly when the
  interval excludes 0*: they answer one question and cannot disagree.

The t procedure assumes the per-seed differences are roughly normal around the method's effect. A
per-seed difference is an average over hundreds of examples plus a network-level effect, which makes
that a reasonable approximation; the simulations in ``tests/test_inference.py`` check coverage and
false-positive rate against a known truth. As a distribution-free secondary check we report the
exact **sign-flip permutation** p-value over seeds (:func:`signflip_p`): under the null "the
method has no effect", each per-seed difference is as likely positive as negative, and all ``2^n``
sign patterns are enumerated. Its smallest attainable value is ``2/2^n`` (0.25 with 3 seeds, 0.0625
with 5, < 0.05 only from 6 seeds on), which is itself worth reporting: with few seeds no test without
a distributional assumption can reach 5%.

Heterogeneity (:func:`heterogeneity`): do the seeds disagree beyond each seed's own sampling noise?
Cochran's Q with inverse-variance weights (the within-seed variance of ``d_s`` from the examples),
its χ²(n−1) p-value and Higgins' I² = max(0, (Q − df)/Q), the share of the spread of ``d`` that is
between-network rather than sampling noise. A large I² is a finding (the method's effect depends on
the network), and it is why a per-example test pooled over seeds is not the method's test.

A mixed-effects model (seed and example effects) was the alternative; with 3–10 seeds it adds
assumptions (a variance-component estimate from a handful of levels) without changing the seed-level
answer for a balanced design, so the simpler paired t is the headline.

Everything here is vectorised over rows (``axis=-1`` holds the seeds) so that thousands of
simulated comparisons run in one call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import optimize
from scipy import stats as _st

__all__ = [
    "Heterogeneity",
    "PairedT",
    "RateInterval",
    "difference_variance",
    "heterogeneity",
    "mcnemar_pooled_p",
    "min_detectable_difference",
    "paired_t",
    "power",
    "rate_interval",
    "seeds_needed",
    "signflip_p",
]

_NAN = float("nan")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.05; got {alpha!r}")


# -- the headline: paired t over seeds -----------------------------------------------------------


class PairedT(NamedTuple):
    """Seed-level estimate, t interval and the matching paired t-test (NaN where undefined)."""

    estimate: float
    low: float
    high: float
    p: float
    sd: float  # between-seed SD of the per-seed differences
    n: int  # seeds with a finite difference


def paired_t(d: Sequence[float] | np.ndarray, *, confidence: float = 0.95) -> PairedT:
    """Mean of the per-seed differences ``d`` with its Student-t interval and paired t-test p-value.

    Non-finite values (a seed whose denominator was empty) are dropped. With one seed the bounds
    and p are NaN (no spread to estimate). With zero spread the interval has zero width and p is 0
    (a constant non-zero difference) or 1 (all differences 0) — the limit of the t-test, consistent
    with the interval; callers flag such rows (see ``status`` in ``paired_comparisons``).

    By construction ``p < 1 - confidence`` exactly when the interval excludes 0.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    v = np.asarray(d, dtype=float).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return PairedT(_NAN, _NAN, _NAN, _NAN, _NAN, 0)
    m = float(v.mean())
    if n == 1:
        return PairedT(m, _NAN, _NAN, _NAN, _NAN, 1)
    sd = float(v.std(ddof=1))
    se = sd / math.sqrt(n)
    q = float(_st.t.ppf(0.5 + confidence / 2, n - 1))
    if se == 0.0:
        return PairedT(m, m, m, 1.0 if m == 0.0 else 0.0, sd, n)
    p = float(2.0 * _st.t.sf(abs(m) / se, n - 1))
    return PairedT(m, m - q * se, m + q * se, p, sd, n)


def signflip_p(d: Sequence[float] | np.ndarray, *, max_exact: int = 20) -> float:
    """Exact two-sided sign-flip permutation p-value of ``mean(d) = 0`` over seeds.

    All ``2^n`` sign patterns are enumerated (scipy's ``permutation_test`` with one sample and
    ``permutation_type="samples"``); the p-value is the share of patterns whose ``|mean|`` is at least
    the observed one, the observed pattern included, so it is never below ``2/2^n``. More than
    ``max_exact`` seeds is refused rather than silently approximated. NaNs are dropped; fewer than 2
    seeds give NaN; all differences 0 give 1.
    """
    v = np.asarray(d, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return _NAN
    if v.size > max_exact:
        raise ValueError(
            f"an exact sign-flip test over {v.size} seeds enumerates 2^{v.size} patterns; "
            f"at most {max_exact} seeds are supported (raise max_exact if you mean it)"
        )
    if not np.any(v):
        return 1.0
    res = _st.permutation_test(
        (v,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="two-sided",
        vectorized=True,
    )
    return float(min(1.0, res.pvalue))


# -- heterogeneity -------------------------------------------------------------------------------


class Heterogeneity(NamedTuple):
    """Cochran's Q over seeds, its χ²(n−1) p-value and Higgins' I² (NaN where undefined)."""

    q: float
    df: int
    p: float
    i2: float
    sd_within: float  # root mean within-seed variance of the per-seed differences


def heterogeneity(d: Sequence[float] | np.ndarray, var: Sequence[float] | np.ndarray) -> Heterogeneity:
    """Do the per-seed differences ``d`` disagree beyond their within-seed sampling variances ``var``?

    ``Q = Σ w_s (d_s − d̄_w)²`` with ``w_s = 1/var_s`` and ``d̄_w`` the inverse-variance weighted mean;
    under homogeneity (one common difference, each seed off by its sampling noise only)
    ``Q ~ χ²(n − 1)``. ``I² = max(0, (Q − (n−1))/Q)`` is the share of the observed spread not explained
    by sampling noise. A seed whose ``var`` is not positive (a saturated cell) makes ``Q`` undefined:
    the caller floors it (``paired_comparisons`` uses the variance of half an example, the same
    continuity correction as the logit intervals). Fewer than two usable seeds give NaN.
    """
    d_ = np.asarray(d, dtype=float).ravel()
    v_ = np.asarray(var, dtype=float).ravel()
    if d_.shape != v_.shape:
        raise ValueError(f"d has {d_.size} values and var {v_.size}; expected one variance per seed")
    ok = np.isfinite(d_) & np.isfinite(v_) & (v_ > 0)
    d_, v_ = d_[ok], v_[ok]
    n = int(d_.size)
    if n < 2:
        return Heterogeneity(_NAN, max(n - 1, 0), _NAN, _NAN, float(np.sqrt(v_.mean())) if n else _NAN)
    w = 1.0 / v_
    mw = float((w * d_).sum() / w.sum())
    q = float((w * (d_ - mw) ** 2).sum())
    df = n - 1
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return Heterogeneity(q, df, float(_st.chi2.sf(q, df)), i2, float(np.sqrt(v_.mean())))


def difference_variance(
    hit_a: np.ndarray, pop_a: np.ndarray, hit_b: np.ndarray, pop_b: np.ndarray, *, floor: bool = True
) -> float:
    """Sampling variance over examples of ``rate_a − rate_b`` for one seed, pairing respected.

    ``rate = Σ hit / Σ pop`` on each side, with the four 0/1 arrays aligned by example. The variance is
    the linearisation (delta-method) estimate ``Σ ψ_i² · n/(n−1)`` with per-example influence
    ``ψ_i = (hit_a,i − r_a pop_a,i)/N_a − (hit_b,i − r_b pop_b,i)/N_b``; it accounts for the correlation
    of the two sides on shared examples and for populations that differ (e.g. the clean-correct
    examples of two targets). For one population and no pairing it is ``r(1−r)/N`` (binomial).
    With ``floor`` the result is at least the variance of half an example on each side,
    ``0.25/N_a² + 0.25/N_b²``, so a saturated seed keeps a finite weight in :func:`heterogeneity`.
    """
    ha, pa, hb, pb = (np.asarray(x, dtype=float) for x in (hit_a, pop_a, hit_b, pop_b))
    n = ha.size
    na, nb = pa.sum(), pb.sum()
    if n < 2 or na == 0 or nb == 0:
        return _NAN
    psi = (ha - ha.sum() / na * pa) / na - (hb - hb.sum() / nb * pb) / nb
    v = float((psi**2).sum() * n / (n - 1))
    return max(v, 0.25 / na**2 + 0.25 / nb**2) if floor else v


def binomial_difference_variance(
    num_a: float, den_a: float, num_b: float, den_b: float, *, floor: bool = True
) -> float:
    """``r_a(1−r_a)/N_a + r_b(1−r_b)/N_b``: the variance of a rate difference when the per-example
    outcomes are not available (counts only). It ignores the pairing of shared examples, which for the
    usual positive correlation overstates the within-seed variance, so Q is conservative (it
    under-reports heterogeneity). Floored like :func:`difference_variance`."""
    if den_a <= 0 or den_b <= 0:
        return _NAN
    ra, rb = num_a / den_a, num_b / den_b
    v = ra * (1 - ra) / den_a + rb * (1 - rb) / den_b
    return max(v, 0.25 / den_a**2 + 0.25 / den_b**2) if floor else v


# -- the per-example test, kept only as a conditional column -------------------------------------


def mcnemar_pooled_p(discordant_reference: int | np.ndarray, discordant_variant: int | np.ndarray) -> np.ndarray:
    """Two-sided exact McNemar p-value of discordant pairs pooled over seeds (vectorised).

    **Conditional on these trained networks**: it tests whether *these particular* networks differ on
    these examples, treating every discordant example of every seed as an independent coin. It is not
    a test of the training method. On the null simulations of ``tests/test_inference.py`` (1,000
    simulated model pairs, 1,000 shared examples, a network-level effect of mean 0 and between-seed SD
    1.3 points, within-seed sampling SD about 0.85 points, as in the committed transfer run) its
    false-positive rate at α = 0.05 was 0.26 with 3 seeds and 0.26 with 5 (0.41 with a between-seed
    SD of 2 points), against 0.061 and 0.056 for the seed-level paired t. It is valid only when the
    networks do not vary (between-seed SD 0: 0.047). Report it as ``conditional_p_mcnemar``, never
    as the headline.
    """
    b = np.asarray(discordant_reference, dtype=np.int64)
    c = np.asarray(discordant_variant, dtype=np.int64)
    if np.any(b < 0) or np.any(c < 0):
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    total = b + c
    # exact binomial(total, 1/2) two-sided p: the distribution is symmetric, so 2·P(X <= min(b, c))
    p = np.minimum(1.0, 2.0 * _st.binom.cdf(np.minimum(b, c), total, 0.5))
    return np.where(total == 0, 1.0, p)


# -- rates on the logit scale --------------------------------------------------------------------


class RateInterval(NamedTuple):
    """A rate across seeds: the mean of the per-seed rates and a logit-scale interval."""

    estimate: float
    low: float
    high: float
    saturated: bool
    status: str  # "ok", "saturated", "one seed", "no data"
    n: int


def rate_interval(
    numerators: Sequence[float] | np.ndarray,
    denominators: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
) -> RateInterval:
    """Mean rate across seeds with an interval that stays inside (0, 1) without clipping.

    Each seed's rate gets the logit of its continuity-corrected value ``(x + 0.5)/(N + 1)`` (finite
    at 0% and 100%); the Student-t interval of those logits (``n − 1`` df) is mapped back with the
    logistic function, so its bounds are strictly inside (0, 1). With an interval, the estimate is its
    centre (the back-transformed mean logit), so it always lies inside it; without one (saturated, one
    seed) it is the plain mean of the per-seed rates ``x/N``. A cell at 0% or 100% in every seed is
    **saturated**: its interval is NaN (there is no spread to show, and a zero-width interval would
    claim a precision the run does not have). Seeds with an empty denominator are dropped; one seed gives NaN bounds.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    x = np.asarray(numerators, dtype=float).ravel()
    n = np.asarray(denominators, dtype=float).ravel()
    if x.shape != n.shape:
        raise ValueError(f"{x.size} numerators and {n.size} denominators; expected one of each per seed")
    ok = np.isfinite(x) & np.isfinite(n) & (n > 0)
    x, n = x[ok], n[ok]
    if np.any(x < 0) or np.any(x > n):
        raise ValueError(f"numerators {x.tolist()} must lie in [0, denominator] ({n.tolist()})")
    k = int(x.size)
    if k == 0:
        return RateInterval(_NAN, _NAN, _NAN, False, "no data", 0)
    est = float((x / n).mean())
    if bool(np.all((x == 0) | (x == n))):
        return RateInterval(est, _NAN, _NAN, True, "saturated", k)
    if k == 1:
        return RateInterval(est, _NAN, _NAN, False, "one seed", 1)
    logits = _st.logistic.ppf((x + 0.5) / (n + 1.0))
    m = float(logits.mean())
    half = float(_st.t.ppf(0.5 + confidence / 2, k - 1)) * float(logits.std(ddof=1)) / math.sqrt(k)
    # the estimate shown with an interval is the interval's own centre, the back-transformed mean logit:
    # the plain mean can fall outside a narrow interval (the continuity correction and the logit's
    # curvature move the centre), which reads as a contradiction; the two differ by well under a
    # point away from 0% and 100%
    centre = float(_st.logistic.cdf(m))
    return RateInterval(centre, float(_st.logistic.cdf(m - half)), float(_st.logistic.cdf(m + half)), False, "ok", k)


# -- power ---------------------------------------------------------------------------------------


def power(delta: float, sd: float, n: int | np.ndarray, *, alpha: float = 0.05) -> float | np.ndarray:
    """Power of the two-sided paired t-test over ``n`` seeds to detect a true mean difference ``delta``
    when per-seed differences have SD ``sd``: exact, from the noncentral t with ``n − 1`` df and
    noncentrality ``delta·√n/sd``. ``n`` may be an array (vectorised)."""
    _check_alpha(alpha)
    if not sd > 0:
        raise ValueError(f"sd must be > 0 (the between-seed SD of the differences), got {sd!r}")
    n_ = np.asarray(n, dtype=float)
    if np.any(n_ < 2):
        raise ValueError(f"a t-test needs at least 2 seeds, got n={n!r}")
    df = n_ - 1
    ncp = abs(delta) * np.sqrt(n_) / sd
    tc = _st.t.ppf(1 - alpha / 2, df)
    # P(T > tc) + P(T < -tc); the lower tail is written as sf(tc; -ncp) by symmetry because scipy's
    # nct.cdf returns NaN far in the lower tail for some (df, ncp) (scipy 1.17, e.g. df=2, ncp=8)
    out = _st.nct.sf(tc, df, ncp) + _st.nct.sf(tc, df, -ncp)
    return float(out) if np.ndim(out) == 0 else out


def min_detectable_difference(sd: float, n: int, *, target_power: float = 0.8, alpha: float = 0.05) -> float:
    """Smallest true difference the two-sided paired t-test over ``n`` seeds detects with probability
    ``target_power`` at level ``alpha``, given the between-seed SD ``sd`` (exact noncentral t; the
    textbook approximation is ``(t_{1−α/2,n−1} + t_{power,n−1})·sd/√n``). NaN when ``sd`` or ``n``
    cannot give one (sd not finite or <= 0, n < 2)."""
    _check_alpha(alpha)
    if not (math.isfinite(sd) and sd > 0) or n < 2:
        return _NAN
    approx = (_st.t.ppf(1 - alpha / 2, n - 1) + _st.t.ppf(target_power, n - 1)) * sd / math.sqrt(n)
    hi = 2 * approx
    while power(hi, sd, n, alpha=alpha) < target_power:
        hi *= 2
    return float(optimize.brentq(lambda x: power(x, sd, n, alpha=alpha) - target_power, 0.0, hi, xtol=1e-12 * sd))


def seeds_needed(
    sd: float, delta: float, *, target_power: float = 0.8, alpha: float = 0.05, max_n: int = 100_000
) -> int | None:
    """Smallest number of seeds whose two-sided paired t-test detects a true difference ``delta`` with
    probability at least ``target_power`` (exact noncentral t). ``None`` when ``sd`` is not a positive
    number, ``delta`` is 0, or more than ``max_n`` seeds would be needed."""
    _check_alpha(alpha)
    if not (math.isfinite(sd) and sd > 0) or not (math.isfinite(delta) and delta != 0):
        return None
    # power increases with n: double to bracket, then bisect on integers
    lo, hi = 1, 2
    while power(delta, sd, hi, alpha=alpha) < target_power:
        lo, hi = hi, hi * 2
        if hi > max_n:
            return (
                None
                if power(delta, sd, max_n, alpha=alpha) < target_power
                else _bisect(delta, sd, lo, max_n, target_power, alpha)
            )
    return _bisect(delta, sd, lo, hi, target_power, alpha)


def _bisect(delta: float, sd: float, lo: int, hi: int, target: float, alpha: float) -> int:
    """Smallest n in (lo, hi] with power >= target, given power(hi) >= target (lo may be 1)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power(delta, sd, mid, alpha=alpha) >= target:
            hi = mid
        else:
            lo = mid
    return hi
