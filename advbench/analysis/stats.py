"""Statistics for transfer matrices: intervals across seeds, bootstrap over examples, paired comparisons.

The headline paired table is :func:`paired_comparisons` (seed-level inference, see
:mod:`advbench.analysis.inference`); :func:`paired_differences` is the older per-example table whose
McNemar test is conditional on the trained networks, kept for callers that read it.

Conventions
-----------
* Every interval is two-sided at ``confidence`` (default 0.95) and is returned with the estimate it
  surrounds as an :class:`Interval` ``(estimate, low, high)``.
* Across seeds (independent pairs of models) the interval is Student's t on the per-seed values.
* With a single seed the uncertainty left is the sampling of test examples: a percentile bootstrap
  that resamples the n examples of the cell with replacement. For a ratio metric the denominator is
  recomputed in each replicate (the examples in it are random too); replicates whose denominator is
  empty are dropped.
* Bootstraps are seeded and reproducible; the same ``seed`` is used for every cell.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import pandas as pd
from scipy import stats as _st

from advbench.analysis import inference as _inf
from advbench.evaluation.transfer import CELL_KEYS, TRANSFER_METRICS, CellMetric, check_outcomes

__all__ = [
    "PAIRED_COLUMNS",
    "PAIRED_COMPARISON_COLUMNS",
    "PAIRED_SEED_COLUMNS",
    "RATE_INTERVAL_COLUMNS",
    "SUMMARY_COLUMNS",
    "Interval",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "mcnemar_exact",
    "mean_ci",
    "paired_comparisons",
    "paired_differences",
    "rate_intervals",
    "summarize",
]

#: Columns of :func:`summarize`' result.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "source",
    "target",
    "attack",
    "eps",
    "white_box",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "confidence",
    "n_seeds",
    "method",
    "numerator",
    "denominator",
    "n",
    "denominator_desc",
)
_PAIR_KEYS: tuple[str, ...] = (
    "comparison",
    "reference",
    "variant",
    "other",
    "reference_source",
    "reference_target",
    "variant_source",
    "variant_target",
    "attack",
    "eps",
    "metric",
)
#: Columns of :func:`paired_differences`' result (aggregated across seeds).
PAIRED_COLUMNS: tuple[str, ...] = (
    *_PAIR_KEYS,
    "diff",
    "ci_low",
    "ci_high",
    "confidence",
    "n_seeds",
    "method",
    "reference_value",
    "variant_value",
    "n_paired",
    "discordant_reference",
    "discordant_variant",
    "p_value",
    "test",
)
#: Columns of :func:`paired_differences`' result with ``by_seed=True``.
PAIRED_SEED_COLUMNS: tuple[str, ...] = (
    *_PAIR_KEYS,
    "seed",
    "diff",
    "ci_low",
    "ci_high",
    "confidence",
    "method",
    "reference_value",
    "variant_value",
    "n",
    "n_paired",
    "discordant_reference",
    "discordant_variant",
    "p_value",
    "test",
)

_NAN = float("nan")


class Interval(NamedTuple):
    """An estimate with its confidence interval; bounds are NaN when they cannot be computed."""

    estimate: float
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of ``values`` (one per seed) with a Student-t interval.

    Non-finite values (a seed whose denominator was empty) are dropped. One value gives NaN bounds
    (there is no spread to estimate); none gives a NaN estimate too. Identical values give a
    zero-width interval.
    """
    _check_confidence(confidence)
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(_NAN, _NAN, _NAN)
    m = float(v.mean())
    if v.size == 1:
        return Interval(m, _NAN, _NAN)
    half = float(_st.t.ppf(0.5 + confidence / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Interval(m, m - half, m + half)


def _as_vector(a: np.ndarray | Sequence[float], name: str, n: int | None = None) -> np.ndarray:
    v = np.asarray(a, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one value per example (1-D), got shape {v.shape}")
    if n is not None and v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} values, expected {n} (one per example)")
    return v


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _rate(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else _NAN


@functools.lru_cache(maxsize=4)
def _resample_counts(n: int, n_boot: int, seed: int, chunk: int = 256) -> np.ndarray:
    """(n_boot, n) float32 matrix: how often each example is drawn in each bootstrap resample.

    Resamples depend only on (n, n_boot, seed), so every cell of a table shares them (and the cache);
    sums over a resample are then one matrix product. Counts are exact in float32 (n < 2**24).
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n), dtype=np.float32)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n)) + n * np.arange(k)[:, None]
        out[start : start + k] = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n)
    out.setflags(write=False)
    return out


#: Above this many entries the resample-count matrix is built per call in chunks instead of cached.
_MAX_CACHED = 20_000_000


def _bootstrap_sums(columns: list[np.ndarray], *, n_boot: int, seed: int) -> list[np.ndarray]:
    """For each column, its sum over each of ``n_boot`` resamples of the examples (shared resamples)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = columns[0].shape[0]
    # float32 products are exact for 0/1 indicators (sums < 2**24); other values get float32 rounding
    stacked = np.stack(columns, axis=1).astype(np.float32)  # (n, k)
    if n * n_boot <= _MAX_CACHED:
        sums = _resample_counts(n, n_boot, seed) @ stacked
    else:  # same resamples as the cached path, built chunk by chunk to bound memory
        rng = np.random.default_rng(seed)
        parts = []
        for start in range(0, n_boot, 256):
            k = min(256, n_boot - start)
            idx = rng.integers(0, n, size=(k, n)) + n * np.arange(k)[:, None]
            parts.append(np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float32) @ stacked)
        sums = np.concatenate(parts)
    sums = sums.astype(np.float64)
    return [sums[:, j] for j in range(stacked.shape[1])]


def _percentile(replicates: np.ndarray, estimate: float, confidence: float) -> Interval:
    r = replicates[np.isfinite(replicates)]
    if r.size == 0 or not math.isfinite(estimate):
        return Interval(estimate, _NAN, _NAN)
    lo, hi = np.percentile(r, [100 * (0.5 - confidence / 2), 100 * (0.5 + confidence / 2)])
    return Interval(estimate, float(lo), float(hi))


def bootstrap_ci(
    numerator: np.ndarray | Sequence[float],
    denominator: np.ndarray | Sequence[float] | None = None,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap over examples of ``sum(numerator) / sum(denominator)``.

    ``numerator`` and ``denominator`` hold one value per example, usually 0/1 indicators: for a
    rate, ``denominator`` marks the examples in the population and ``numerator`` the hits among
    them (a hit outside the population is the caller's bug). Without ``denominator`` the statistic
    is the mean of ``numerator``. The estimate is the statistic on the data as observed.
    """
    _check_confidence(confidence)
    num = _as_vector(numerator, "numerator")
    den = np.ones_like(num) if denominator is None else _as_vector(denominator, "denominator", num.shape[0])
    if num.shape[0] == 0:
        return Interval(_NAN, _NAN, _NAN)
    estimate = _rate(num.sum(), den.sum())
    s_num, s_den = _bootstrap_sums([num, den], n_boot=n_boot, seed=seed)
    return _percentile(_ratio(s_num, s_den), estimate, confidence)


def bootstrap_diff_ci(
    numerator_a: np.ndarray | Sequence[float],
    denominator_a: np.ndarray | Sequence[float],
    numerator_b: np.ndarray | Sequence[float],
    denominator_b: np.ndarray | Sequence[float],
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """Paired percentile bootstrap of ``ratio_a - ratio_b`` over examples.

    The four arrays are aligned by example (row i of each is the same test example); each replicate
    resamples examples once and recomputes both ratios on the same resample, which keeps the
    pairing (and its variance reduction).
    """
    _check_confidence(confidence)
    na = _as_vector(numerator_a, "numerator_a")
    n = na.shape[0]
    da = _as_vector(denominator_a, "denominator_a", n)
    nb = _as_vector(numerator_b, "numerator_b", n)
    db = _as_vector(denominator_b, "denominator_b", n)
    if n == 0:
        return Interval(_NAN, _NAN, _NAN)
    estimate = _rate(na.sum(), da.sum()) - _rate(nb.sum(), db.sum())
    s = _bootstrap_sums([na, da, nb, db], n_boot=n_boot, seed=seed)
    return _percentile(_ratio(s[0], s[1]) - _ratio(s[2], s[3]), estimate, confidence)


def mcnemar_exact(discordant_reference: int, discordant_variant: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of ``discordant_variant`` out of all discordant
    pairs against 1/2. No discordant pair gives 1.0."""
    b, c = int(discordant_reference), int(discordant_variant)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    if b + c == 0:
        return 1.0
    return float(_st.binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)


def _metric_lookup(metrics: Sequence[CellMetric]) -> dict[str, CellMetric]:
    return {m.name: m for m in metrics}


def summarize(
    metrics_df: pd.DataFrame,
    outcomes: pd.DataFrame | None = None,
    *,
    metrics: Sequence[CellMetric] = TRANSFER_METRICS,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Aggregate :func:`~advbench.evaluation.transfer.transfer_metrics` across seeds.

    One row per (source, target, attack, eps, metric) with columns :data:`SUMMARY_COLUMNS`:
    ``mean`` (mean of the per-seed values, NaN seeds dropped), ``ci_low``/``ci_high``,
    ``confidence``, ``n_seeds`` (seeds with a finite value), ``method``, ``numerator``/
    ``denominator``/``n`` (counts summed over seeds) and ``denominator_desc``.

    ``method`` says where the interval comes from: ``"t"`` (Student t across >= 2 seeds),
    ``"bootstrap"`` (one seed: percentile bootstrap over that seed's examples, which needs
    ``outcomes``) or ``"none"`` (no seed with a finite value, or one seed and no ``outcomes``;
    bounds are NaN).
    """
    _check_confidence(confidence)
    need = {*CELL_KEYS, "white_box", "metric", "value", "numerator", "denominator", "n", "denominator_desc"}
    missing = sorted(need - set(metrics_df.columns))
    if missing:
        raise ValueError(f"metrics_df lacks columns {missing}; pass the output of transfer_metrics()")
    known = _metric_lookup(metrics)
    cells: dict[tuple, pd.DataFrame] = {}
    if outcomes is not None:
        check_outcomes(outcomes)
        cells = {k: g for k, g in outcomes.groupby(list(CELL_KEYS), sort=False)}

    keys = ["source", "target", "attack", "eps", "metric"]
    rows = []
    for key, g in metrics_df.groupby(keys, sort=True):
        src, tgt, att, eps, name = cast(tuple[str, str, str, float, str], key)
        finite = g[np.isfinite(g["value"].to_numpy(float))]
        n_seeds = len(finite)
        method = "none"
        if n_seeds >= 2:
            est = mean_ci(finite["value"].to_numpy(float), confidence)
            method = "t"
        elif n_seeds == 1:
            est = Interval(float(finite["value"].iloc[0]), _NAN, _NAN)
            cell = cells.get((src, tgt, att, eps, int(finite["seed"].iloc[0])))
            if cell is not None and name in known:
                pop, num = known[name].masks(cell)
                est = bootstrap_ci(num, pop, confidence=confidence, n_boot=n_boot, seed=seed)
                method = "bootstrap"
        else:
            est = Interval(_NAN, _NAN, _NAN)
        rows.append(
            (
                src,
                tgt,
                att,
                float(eps),
                bool(g["white_box"].iloc[0]),
                name,
                est.estimate,
                est.low,
                est.high,
                confidence,
                n_seeds,
                method,
                int(g["numerator"].sum()),
                int(g["denominator"].sum()),
                int(g["n"].sum()),
                str(g["denominator_desc"].iloc[0]),
            )
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).astype(
        {
            "eps": "float64",
            "white_box": "bool",
            "mean": "float64",
            "ci_low": "float64",
            "ci_high": "float64",
            "confidence": "float64",
            "n_seeds": "int64",
            "numerator": "int64",
            "denominator": "int64",
            "n": "int64",
        }
    )


def _comparisons(reference: str, variant: str, models: Sequence[str]) -> list[tuple[str, str | None, tuple, tuple]]:
    """(comparison, other, reference cell (source, target), variant cell (source, target))."""
    third = [m for m in models if m not in (reference, variant)]
    out: list[tuple[str, str | None, tuple, tuple]] = [("white_box", None, (reference, reference), (variant, variant))]
    out += [("from", t, (reference, t), (variant, t)) for t in third]
    out += [("to", s, (s, reference), (s, variant)) for s in third]
    out.append(("cross", None, (reference, variant), (variant, reference)))
    return out


def paired_differences(
    outcomes: pd.DataFrame,
    *,
    reference: str = "baseline",
    variants: Sequence[str] | None = None,
    metrics: Sequence[CellMetric] = TRANSFER_METRICS,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    by_seed: bool = False,
) -> pd.DataFrame:
    """Paired differences ``variant - reference`` of every metric, for models trained from the same seed.

    Superseded by :func:`paired_comparisons` (seed-level test whose interval and p-value agree). The
    ``p_value`` here is a per-example McNemar test **conditional on these trained networks**: it does
    not test the training method and must not be shown as a headline (on the null simulations of
    ``tests/test_inference.py`` its false-positive rate is about 0.26, see
    :func:`advbench.analysis.inference.mcnemar_pooled_p`). Kept for callers that read its columns.

    Within one seed, a *variant* V (e.g. ``"entangled"``) and the *reference* R (``"baseline"``)
    share initial weights and data order; the other models of that seed are the *third* models M.
    Four comparisons set a cell of V against the matching cell of R, always on the same test
    examples (paired by ``example``):

    ``white_box``  (V -> V) - (R -> R): white-box robustness of the variant vs the reference.
    ``from``       (V -> M) - (R -> M) for each third model M (column ``other``): how much better or
                   worse examples crafted on the variant transfer to a model independent of the pair,
                   e.g. "entangled as source transfers X pp less to disentangled". The target, hence
                   the clean-correct population of ``transfer_rate``, is the same on both sides.
    ``to``         (M -> V) - (M -> R) for each third model M: vulnerability of the variant vs the
                   reference to examples crafted on an independent model (same adversarial inputs
                   on both sides).
    ``cross``      (V -> R) - (R -> V): transfer within the pair, from the variant to the reference
                   minus from the reference to the variant. It mixes a source and a target effect;
                   read it next to ``from`` and ``to``.

    A value of a side is that cell's metric on the examples common to both cells (all of them when
    the runner used one subset per seed), so ``diff`` is the difference of the reported metrics.

    **Interval** (``method``): with >= 2 seeds, Student t across the per-seed differences (``"t"``);
    with one seed, a paired percentile bootstrap over examples (``"bootstrap"``); ``"none"`` otherwise.

    **Test**: exact McNemar on per-example outcomes. For a metric with population P (its denominator)
    and hit H (its numerator), the paired examples are those in P on *both* sides (``n_paired``);
    ``discordant_reference`` counts examples that are a hit only for the reference,
    ``discordant_variant`` only for the variant; the p-value is a two-sided binomial test of
    ``discordant_variant`` out of all discordant pairs against 1/2 (:func:`mcnemar_exact`).
    Across seeds the discordant counts are **pooled** (summed) and tested once (``test`` =
    ``"mcnemar_exact_pooled"``): under the null of no difference in every seed each discordant pair
    is a fair coin, independently across independently trained seeds, so the pooled count is
    Binomial(total, 1/2). Pooling is preferred over Fisher's combination of per-seed two-sided
    p-values, which would count opposite-signed effects in different seeds as evidence; it is
    sensitive to an effect of consistent direction, which is the claim under test. Seeds
    contribute in proportion to their discordant pairs. With ``by_seed=True`` the result has one row
    per seed (columns :data:`PAIRED_SEED_COLUMNS`, the per-seed McNemar test, bootstrap intervals);
    otherwise one row per comparison aggregated across seeds (columns :data:`PAIRED_COLUMNS`).

    ``other`` is None for ``white_box`` and ``cross``. ``variants`` defaults to every model of the
    outcomes other than the reference; a (seed, variant) without the reference in that seed, or a
    cell missing on either side, is skipped.
    """
    _check_confidence(confidence)
    check_outcomes(outcomes)
    models = sorted(set(outcomes["source"]) | set(outcomes["target"]))
    if reference not in models:
        raise ValueError(f"the reference model {reference!r} is not in the outcomes; models present: {models}")
    if variants is None:
        variants = [m for m in models if m != reference]
    unknown = [v for v in variants if v not in models]
    if unknown:
        raise ValueError(f"variants {unknown} are not in the outcomes; models present: {models}")
    if reference in variants:
        raise ValueError(f"the reference {reference!r} cannot also be a variant")

    # Keys are (seed, source, target, attack, eps) as pandas scalars (int, str, str, str, float).
    cells: dict[tuple[Any, ...], pd.DataFrame] = {
        k: g.sort_values("example") for k, g in outcomes.groupby(["seed", "source", "target", "attack", "eps"])
    }
    settings = sorted({(k[3], k[4]) for k in cells})
    per_seed: list[dict] = []
    for s in sorted(outcomes["seed"].unique()):
        seed_models = sorted({k[1] for k in cells if k[0] == s} | {k[2] for k in cells if k[0] == s})
        if reference not in seed_models:
            continue
        for v in variants:
            if v not in seed_models:
                continue
            for comparison, other, (rs, rt), (vs, vt) in _comparisons(reference, v, seed_models):
                for attack, eps in settings:
                    rc, vc = cells.get((s, rs, rt, attack, eps)), cells.get((s, vs, vt, attack, eps))
                    if rc is None or vc is None:
                        continue
                    rc2, vc2 = _on_common_examples(rc, vc)
                    for m in metrics:
                        r_pop, r_num = m.masks(rc2)
                        v_pop, v_num = m.masks(vc2)
                        both = r_pop & v_pop
                        b = int((both & r_num & ~v_num).sum())
                        c = int((both & v_num & ~r_num).sum())
                        r_val = _rate(r_num.sum(), r_pop.sum())
                        v_val = _rate(v_num.sum(), v_pop.sum())
                        per_seed.append(
                            {
                                "comparison": comparison,
                                "reference": reference,
                                "variant": v,
                                "other": other,
                                "reference_source": rs,
                                "reference_target": rt,
                                "variant_source": vs,
                                "variant_target": vt,
                                "attack": attack,
                                "eps": float(eps),
                                "metric": m.name,
                                "seed": int(s),
                                "diff": v_val - r_val,
                                "reference_value": r_val,
                                "variant_value": v_val,
                                "n": len(rc2),
                                "n_paired": int(both.sum()),
                                "discordant_reference": b,
                                "discordant_variant": c,
                                "_arrays": (v_num, v_pop, r_num, r_pop),
                            }
                        )

    def boot(rec: dict) -> Interval:
        v_num, v_pop, r_num, r_pop = rec["_arrays"]
        return bootstrap_diff_ci(v_num, v_pop, r_num, r_pop, confidence=confidence, n_boot=n_boot, seed=seed)

    if by_seed:
        rows = []
        for rec in per_seed:
            ci = boot(rec)
            rows.append(
                {
                    **{k: v for k, v in rec.items() if k != "_arrays"},
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "confidence": confidence,
                    "method": "bootstrap" if math.isfinite(ci.low) else "none",
                    "p_value": mcnemar_exact(rec["discordant_reference"], rec["discordant_variant"]),
                    "test": "mcnemar_exact",
                }
            )
        return _typed(pd.DataFrame(rows, columns=list(PAIRED_SEED_COLUMNS)))

    groups: dict[tuple, list[dict]] = {}
    for rec in per_seed:
        groups.setdefault(tuple(rec[k] for k in _PAIR_KEYS), []).append(rec)
    rows = []
    for key, recs in groups.items():
        finite = [r for r in recs if math.isfinite(r["diff"])]
        if len(finite) >= 2:
            ci, method = mean_ci([r["diff"] for r in finite], confidence), "t"
        elif len(finite) == 1:
            ci = boot(finite[0])
            method = "bootstrap" if math.isfinite(ci.low) else "none"
        else:
            ci, method = Interval(_NAN, _NAN, _NAN), "none"
        b = sum(r["discordant_reference"] for r in recs)
        c = sum(r["discordant_variant"] for r in recs)
        rows.append(
            {
                **dict(zip(_PAIR_KEYS, key, strict=True)),
                "diff": ci.estimate,
                "ci_low": ci.low,
                "ci_high": ci.high,
                "confidence": confidence,
                "n_seeds": len(finite),
                "method": method,
                "reference_value": float(np.nanmean([r["reference_value"] for r in recs]))
                if any(math.isfinite(r["reference_value"]) for r in recs)
                else _NAN,
                "variant_value": float(np.nanmean([r["variant_value"] for r in recs]))
                if any(math.isfinite(r["variant_value"]) for r in recs)
                else _NAN,
                "n_paired": sum(r["n_paired"] for r in recs),
                "discordant_reference": b,
                "discordant_variant": c,
                "p_value": mcnemar_exact(b, c),
                "test": "mcnemar_exact_pooled",
            }
        )
    out = pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))
    if len(out):
        out = out.sort_values(
            ["comparison", "variant", "attack", "eps", "metric", "other"], na_position="first", kind="stable"
        ).reset_index(drop=True)
    return _typed(out)


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    types = {
        "eps": "float64",
        "diff": "float64",
        "ci_low": "float64",
        "ci_high": "float64",
        "confidence": "float64",
        "reference_value": "float64",
        "variant_value": "float64",
        "p_value": "float64",
        "n_paired": "int64",
        "discordant_reference": "int64",
        "discordant_variant": "int64",
        "n_seeds": "int64",
        "seed": "int64",
        "n": "int64",
    }
    return df.astype({k: v for k, v in types.items() if k in df.columns})


# -- seed-level tables ---------------------------------------------------------------------------

#: Columns of :func:`rate_intervals`' result (after the grouping keys).
RATE_INTERVAL_COLUMNS: tuple[str, ...] = (
    "estimate",
    "ci_low",
    "ci_high",
    "confidence",
    "saturated",
    "status",
    "n_seeds",
)


def rate_intervals(
    table: pd.DataFrame,
    keys: Sequence[str],
    *,
    numerator: str = "numerator",
    denominator: str = "denominator",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean rate across seeds per group of ``keys``, with a logit-scale interval that respects [0, 1].

    ``table`` has one row per seed and group with integer counts in ``numerator``/``denominator``
    (``transfer_metrics``' table as is; for ``clean.csv`` pass ``test_accuracy · n`` as the numerator
    and ``n`` as the denominator). Columns: ``keys`` then :data:`RATE_INTERVAL_COLUMNS`; see
    :func:`advbench.analysis.inference.rate_interval` for the interval and the ``saturated`` flag
    (0% or 100% in every seed: NaN interval, status ``"saturated"``).
    """
    missing = sorted({*keys, numerator, denominator} - set(table.columns))
    if missing:
        raise ValueError(f"the table lacks columns {missing}; it has {sorted(table.columns)}")
    rows = []
    for key, g in table.groupby(list(keys), sort=True, dropna=False):
        r = _inf.rate_interval(g[numerator].to_numpy(float), g[denominator].to_numpy(float), confidence=confidence)
        rows.append(
            (
                *(key if isinstance(key, tuple) else (key,)),
                r.estimate,
                r.low,
                r.high,
                confidence,
                r.saturated,
                r.status,
                r.n,
            )
        )
    return pd.DataFrame(rows, columns=[*keys, *RATE_INTERVAL_COLUMNS]).astype(
        {"estimate": "float64", "ci_low": "float64", "ci_high": "float64", "saturated": "bool", "n_seeds": "int64"}
    )


_COMPARISON_KEYS: tuple[str, ...] = (
    "variant",
    "reference",
    "role",
    "other",
    "reference_source",
    "reference_target",
    "variant_source",
    "variant_target",
    "attack",
    "eps",
    "metric",
)
#: Columns of :func:`paired_comparisons`' result.
PAIRED_COMPARISON_COLUMNS: tuple[str, ...] = (
    *_COMPARISON_KEYS,
    "design",
    "seeds",
    "per_seed_diff",
    "reference_value",
    "variant_value",
    "estimate",
    "ci_low",
    "ci_high",
    "confidence",
    "p_t",
    "p_signflip",
    "n_seeds",
    "sd_between",
    "sd_within",
    "heterogeneity_q",
    "heterogeneity_i2",
    "heterogeneity_p",
    "heterogeneous",
    "saturated",
    "status",
    "mdd_80",
    "power_2pt",
    "seeds_for_2pt",
    "conditional_p_mcnemar",
    "n_paired",
    "denominator_desc",
)
_ROLES = {"white_box": "white_box", "from": "source", "to": "target", "cross": "cross"}


def paired_comparisons(
    metrics: pd.DataFrame,
    reference: str,
    variants: Sequence[str] | None = None,
    *,
    outcomes: pd.DataFrame | None = None,
    confidence: float = 0.95,
    delta: float = 0.02,
    target_power: float = 0.8,
    metric_defs: Sequence[CellMetric] = TRANSFER_METRICS,
) -> pd.DataFrame:
    """Seed-level paired comparisons ``variant − reference`` of every transfer metric.

    ``metrics`` is ``transfer_metrics``' tidy table (one row per source, target, attack, eps, seed,
    metric with ``value``, ``numerator``, ``denominator``, ``denominator_desc``). When it has a
    ``target_seed`` column, only the shared-path cells (``target_seed == seed``: models of one seed
    share initial weights and batch order) are compared here; cross-seed cells are the independent
    control read by claim (f). One row per (variant, ``role``, ``other``, attack, eps, metric), the
    roles being those of :func:`paired_differences`: ``white_box`` (V→V − R→R), ``source``
    (V→M − R→M for a third model M in ``other``), ``target`` (M→V − M→R) and ``cross`` (V→R − R→V).

    Per seed s the difference ``d_s`` of the two cells' metric is one replicate (the trained network
    is the unit; see :mod:`advbench.analysis.inference`):

    * ``estimate``, ``ci_low``, ``ci_high``: mean of ``d`` and its Student-t interval (``n_seeds − 1``
      df); ``p_t``: the paired t-test on the same ``d``, so ``p_t < 1 − confidence`` exactly when the
      interval excludes 0; ``p_signflip``: the exact sign-flip permutation p over seeds (at least
      ``2/2^n``);
    * ``sd_between``: SD of ``d``; ``sd_within``: root mean within-seed sampling variance of ``d``
      (linearised over examples with ``outcomes``, binomial from the counts without);
      ``heterogeneity_q``/``_i2``/``_p``: Cochran's Q, I² and its χ² p (``heterogeneous`` when p < 0.05);
    * ``saturated``: both cells at 0% or 100% in every seed; such a row has NaN interval and tests
      (status ``"saturated"``) rather than a zero-width interval; ``status`` is otherwise ``"ok"``,
      ``"one seed"`` or ``"no between-seed variation"`` (every ``d_s`` equal: a degenerate t);
    * ``mdd_80``: smallest difference the run detects with ``target_power`` (exact noncentral t from
      ``sd_between`` and ``n_seeds``); ``power_2pt`` and ``seeds_for_2pt``: power for, and seeds
      needed to detect, a difference of ``delta`` (default 2 points);
    * ``conditional_p_mcnemar``: exact McNemar on discordant examples pooled over seeds, **conditional
      on these trained networks** (not a test of the method; NaN without ``outcomes``), and
      ``n_paired`` its examples;
    * ``seeds`` and ``per_seed_diff``: JSON lists, so a reader sees the replicates.
    """
    need = {"source", "target", "attack", "eps", "seed", "metric", "value", "numerator", "denominator"}
    missing = sorted(need - set(metrics.columns))
    if missing:
        raise ValueError(f"metrics lacks columns {missing}; pass transfer_metrics()' table (Results.metrics)")
    m = metrics
    if "target_seed" in m.columns:
        m = m[m["target_seed"].isna() | (m["target_seed"] == m["seed"])]
    models = sorted(set(m["source"]) | set(m["target"]))
    if reference not in models:
        raise ValueError(f"the reference model {reference!r} is not in the metrics; models present: {models}")
    variants = [v for v in models if v != reference] if variants is None else list(variants)
    unknown = [v for v in variants if v not in models]
    if unknown or reference in variants:
        raise ValueError(
            f"variants must be models of the metrics other than the reference {reference!r}; "
            f"got {list(variants)}, models present: {models}"
        )
    defs = {d.name: d for d in metric_defs}
    cells: dict[tuple, pd.DataFrame] = {}
    if outcomes is not None and len(outcomes):
        check_outcomes(outcomes)
        cells = {
            k: g.sort_values("example") for k, g in outcomes.groupby(["seed", "source", "target", "attack", "eps"])
        }
    idx: dict[tuple[int, str, str, str, float, str], Any] = {
        (int(r.seed), str(r.source), str(r.target), str(r.attack), float(r.eps), str(r.metric)): r  # type: ignore[arg-type]
        for r in m.itertuples(index=False)
    }
    desc = (
        m.drop_duplicates("metric").set_index("metric")["denominator_desc"].to_dict()
        if "denominator_desc" in m.columns
        else {}
    )
    settings = sorted({(k[3], k[4]) for k in idx})
    names = sorted({k[5] for k in idx})
    seeds = sorted({k[0] for k in idx})
    groups: dict[tuple, list[dict]] = {}
    for s in seeds:
        here = {k[1] for k in idx if k[0] == s} | {k[2] for k in idx if k[0] == s}
        if reference not in here:
            continue
        for v in variants:
            if v not in here:
                continue
            for comparison, other, (rs, rt), (vs, vt) in _comparisons(reference, v, sorted(here)):
                for attack, eps in settings:
                    for name in names:
                        rr, vr = idx.get((s, rs, rt, attack, eps, name)), idx.get((s, vs, vt, attack, eps, name))
                        if rr is None or vr is None:
                            continue
                        rec = _seed_record(
                            rr,
                            vr,
                            cells.get((s, rs, rt, attack, eps)),
                            cells.get((s, vs, vt, attack, eps)),
                            defs.get(name),
                        )
                        key = (v, reference, _ROLES[comparison], other, rs, rt, vs, vt, attack, eps, name)
                        groups.setdefault(key, []).append({"seed": s, **rec})
    rows = [
        _aggregate(key, recs, confidence, delta, target_power, desc.get(key[-1], "")) for key, recs in groups.items()
    ]
    out = pd.DataFrame(rows, columns=list(PAIRED_COMPARISON_COLUMNS))
    if len(out):
        out = out.sort_values(
            ["variant", "role", "other", "attack", "eps", "metric"], na_position="first", kind="stable"
        ).reset_index(drop=True)
    return out.astype(
        {
            "eps": "float64",
            "estimate": "float64",
            "ci_low": "float64",
            "ci_high": "float64",
            "p_t": "float64",
            "p_signflip": "float64",
            "n_seeds": "int64",
            "heterogeneous": "bool",
            "saturated": "bool",
            "seeds_for_2pt": "Int64",
            "n_paired": "Int64",
        }
    )


def _on_common_examples(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two cells' rows (each sorted by ``example``) restricted to the examples both have."""
    a_ex, b_ex = a["example"].to_numpy(), b["example"].to_numpy()
    if np.array_equal(a_ex, b_ex):  # one subset per seed, the usual case: nothing to drop, no copies
        return a, b
    common = np.intersect1d(a_ex, b_ex)
    return a[a["example"].isin(common)], b[b["example"].isin(common)]


def _seed_record(
    rr: Any, vr: Any, rcell: pd.DataFrame | None, vcell: pd.DataFrame | None, metric: CellMetric | None
) -> dict:
    """One seed's difference, its within-seed variance and McNemar's discordant counts."""
    r_val, v_val = float(rr.value), float(vr.value)
    rec = {
        "diff": v_val - r_val,
        "reference_value": r_val,
        "variant_value": v_val,
        "saturated": all(x.numerator in (0, x.denominator) for x in (rr, vr)),
        "b": None,
        "c": None,
        "n_paired": None,
    }
    if rcell is not None and vcell is not None and metric is not None:
        rcell, vcell = _on_common_examples(rcell, vcell)
        r_pop, r_num = metric.masks(rcell)
        v_pop, v_num = metric.masks(vcell)
        both = r_pop & v_pop
        rec["var"] = _inf.difference_variance(v_num, v_pop, r_num, r_pop)
        rec["b"], rec["c"] = int((both & r_num & ~v_num).sum()), int((both & v_num & ~r_num).sum())
        rec["n_paired"] = int(both.sum())
    else:
        rec["var"] = _inf.binomial_difference_variance(vr.numerator, vr.denominator, rr.numerator, rr.denominator)
    return rec


def _aggregate(key: tuple, recs: list[dict], confidence: float, delta: float, target_power: float, desc: str) -> dict:
    recs = sorted(recs, key=lambda r: r["seed"])
    d = np.array([r["diff"] for r in recs], dtype=float)
    t = _inf.paired_t(d, confidence=confidence)
    het = _inf.heterogeneity(d, [r["var"] for r in recs])
    saturated = all(r["saturated"] for r in recs)
    finite = d[np.isfinite(d)]
    if saturated:
        status = "saturated"
    elif t.n < 2:
        status = "one seed" if t.n == 1 else "no data"
    elif t.sd == 0:
        status = "no between-seed variation"
    else:
        status = "ok"
    est, lo, hi, p = t.estimate, t.low, t.high, t.p
    p_flip = _inf.signflip_p(finite) if finite.size <= 20 else _NAN
    if saturated:
        lo = hi = p = p_flip = _NAN
    sd_ok = t.n >= 2 and t.sd > 0
    has_counts = all(r["b"] is not None for r in recs)
    b = sum(r["b"] for r in recs) if has_counts else 0
    c = sum(r["c"] for r in recs) if has_counts else 0
    return {
        **dict(zip(_COMPARISON_KEYS, key, strict=True)),
        "design": "shared_path",
        "seeds": json.dumps([r["seed"] for r in recs]),
        "per_seed_diff": json.dumps([None if not math.isfinite(x) else round(float(x), 6) for x in d]),
        "reference_value": _nanmean([r["reference_value"] for r in recs]),
        "variant_value": _nanmean([r["variant_value"] for r in recs]),
        "estimate": est,
        "ci_low": lo,
        "ci_high": hi,
        "confidence": confidence,
        "p_t": p,
        "p_signflip": p_flip,
        "n_seeds": t.n,
        "sd_between": t.sd,
        "sd_within": het.sd_within,
        "heterogeneity_q": het.q,
        "heterogeneity_i2": het.i2,
        "heterogeneity_p": het.p,
        "heterogeneous": bool(het.p < 0.05) if math.isfinite(het.p) else False,
        "saturated": saturated,
        "status": status,
        "mdd_80": _inf.min_detectable_difference(t.sd, t.n, target_power=target_power) if sd_ok else _NAN,
        "power_2pt": float(_inf.power(delta, t.sd, t.n)) if sd_ok else _NAN,
        "seeds_for_2pt": _inf.seeds_needed(t.sd, delta, target_power=target_power) if sd_ok else None,
        "conditional_p_mcnemar": float(_inf.mcnemar_pooled_p(b, c)) if has_counts else _NAN,
        "n_paired": sum(r["n_paired"] for r in recs) if has_counts else None,
        "denominator_desc": desc,
    }


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else _NAN
