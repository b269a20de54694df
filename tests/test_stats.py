"""Intervals across seeds and over examples, summaries and paired differences, with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from advbench.analysis.stats import (
    PAIRED_COLUMNS,
    PAIRED_SEED_COLUMNS,
    SUMMARY_COLUMNS,
    bootstrap_ci,
    bootstrap_diff_ci,
    mcnemar_exact,
    mean_ci,
    paired_differences,
    summarize,
)
from advbench.evaluation.transfer import OUTCOME_COLUMNS, transfer_metrics


def _bernoulli(n: int, p: float) -> np.ndarray:
    """Exactly round(p * n) ones, spread evenly: a deterministic sample with rate p."""
    return (np.floor(np.arange(1, n + 1) * p) - np.floor(np.arange(n) * p)).astype(float)


# -- mean_ci -------------------------------------------------------------------------------------------
def test_mean_ci_hand_computed():
    est, lo, hi = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, se = 1/sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302652729911275 / math.sqrt(3)
    assert est == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    # 90%: t(0.95, 2) = 2.919986
    assert mean_ci([1.0, 2.0, 3.0], 0.9).high == pytest.approx(2 + 2.919985580355516 / math.sqrt(3))


def test_mean_ci_edge_cases():
    one = mean_ci([0.25])
    assert one.estimate == 0.25 and math.isnan(one.low) and math.isnan(one.high)
    assert all(math.isnan(v) for v in mean_ci([]))
    # NaN (an empty denominator in one seed) is dropped: [1, 3] -> t(0.975, 1) * sd / sqrt(2) = 12.7062
    assert mean_ci([1.0, float("nan"), 3.0]).high == pytest.approx(2 + 12.706204736174703)
    assert mean_ci([0.5, 0.5, 0.5]).width == 0.0
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)


def test_mean_ci_shrinks_with_more_seeds():
    rng = np.random.default_rng(0)
    widths = [mean_ci(rng.normal(0.5, 0.05, size=k)).width for k in (3, 10, 40)]
    assert widths[0] > widths[1] > widths[2]


# -- bootstrap -----------------------------------------------------------------------------------------
def test_bootstrap_ci_basic_properties():
    x = _bernoulli(1000, 0.3)
    ci = bootstrap_ci(x, n_boot=1000, seed=1)
    assert ci.estimate == pytest.approx(0.3)
    assert ci.low < 0.3 < ci.high
    # close to the normal approximation 2 * 1.96 * sqrt(p(1-p)/n) = 0.0568
    assert ci.width == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 1000), rel=0.15)
    assert bootstrap_ci(x, n_boot=1000, seed=1) == ci  # seeded
    assert bootstrap_ci(np.ones(50), n_boot=200).width == 0.0
    assert all(math.isnan(v) for v in bootstrap_ci(np.zeros(0)))


def test_bootstrap_ci_ratio_uses_the_population():
    pop = np.array([1, 1, 1, 1, 0, 0], float)
    hit = np.array([1, 0, 0, 0, 0, 0], float)  # hits among the population: 1 of 4
    ci = bootstrap_ci(hit, pop, n_boot=500)
    assert ci.estimate == 0.25 and 0 <= ci.low <= 0.25 <= ci.high <= 1
    assert math.isnan(bootstrap_ci(np.zeros(3), np.zeros(3), n_boot=50).estimate)  # empty population


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_bootstrap_ci_shrinks_as_n_grows(p):
    widths = [bootstrap_ci(_bernoulli(n, p), n_boot=800, seed=0).width for n in (50, 400, 3200)]
    assert widths[0] > widths[1] > widths[2] > 0
    # and roughly like 1/sqrt(n): each step multiplies n by 8, the width by about 1/2.83
    assert widths[0] / widths[2] == pytest.approx(8, rel=0.3)


def test_bootstrap_diff_ci_is_paired():
    a = _bernoulli(400, 0.5)
    ones = np.ones(400)
    same = bootstrap_diff_ci(a, ones, a, ones, n_boot=300)
    assert same.estimate == 0 and same.width == 0  # pairing removes all the shared noise
    b = a.copy()
    b[a == 0][:40] = 1
    b[np.flatnonzero(a == 0)[:40]] = 1  # b = a plus 40 more hits
    d = bootstrap_diff_ci(b, ones, a, ones, n_boot=1000)
    assert d.estimate == pytest.approx(0.1) and 0 < d.low < 0.1 < d.high
    unpaired = bootstrap_ci(b, n_boot=1000).width + bootstrap_ci(a, n_boot=1000).width
    assert d.width < unpaired / 2


# -- McNemar -------------------------------------------------------------------------------------------
def test_mcnemar_exact_hand_computed():
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(6, 0) == pytest.approx(0.03125)
    assert mcnemar_exact(1, 8) == pytest.approx(2 * (1 + 9) / 512)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# -- synthetic suites ----------------------------------------------------------------------------------
def _outcomes(spec: dict, clean: dict, *, seed: int, n: int, attack: str = "fgsm", eps: float = 0.1) -> pd.DataFrame:
    """Outcomes for one seed: spec[(source, target)] = adv_correct (default: clean_correct, attack fails);
    clean[target] = clean_correct (default all True). source_success = source wrong on its own adv set."""
    models = sorted({m for st in spec for m in st} | set(clean))
    cc = {m: np.asarray(clean.get(m, np.ones(n)), bool) for m in models}
    adv = {(s, t): np.asarray(spec.get((s, t), cc[t]), bool) for s in models for t in models}
    frames = []
    for s in models:
        for t in models:
            frames.append(
                pd.DataFrame(
                    {
                        "seed": seed,
                        "source": s,
                        "attack": attack,
                        "eps": eps,
                        "target": t,
                        "example": np.arange(n),
                        "y": 0,
                        "clean_correct": cc[t],
                        "adv_correct": adv[(s, t)],
                        "source_success": ~adv[(s, s)],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)[list(OUTCOME_COLUMNS)]


def _v(*bits: int) -> np.ndarray:
    return np.array(bits, bool)


def _two_seed_suite() -> pd.DataFrame:
    s0 = _outcomes(
        {
            ("baseline", "baseline"): _v(1, 1, 0, 0, 0, 0, 0, 0, 0, 0),  # 0.2
            ("entangled", "entangled"): _v(1, 1, 1, 1, 1, 0, 0, 0, 0, 0),  # 0.5
            ("baseline", "disentangled"): _v(0, 0, 0, 1, 1, 1, 1, 1, 1, 1),
            ("entangled", "disentangled"): _v(0, 1, 1, 1, 1, 1, 1, 1, 1, 0),
        },
        {"disentangled": _v(0, 1, 1, 1, 1, 1, 1, 1, 1, 1)},
        seed=0,
        n=10,
    )
    s1 = _outcomes(
        {
            ("baseline", "baseline"): _v(1, 0, 0, 0, 0, 0, 0, 0, 0, 0),  # 0.1
            ("entangled", "entangled"): _v(0, 1, 1, 1, 1, 1, 0, 0, 0, 0),  # 0.5
        },
        {"disentangled": np.ones(10)},
        seed=1,
        n=10,
    )
    return pd.concat([s0, s1], ignore_index=True)


def test_paired_white_box_hand_computed():
    res = paired_differences(_two_seed_suite(), reference="baseline", variants=["entangled"])
    assert list(res.columns) == list(PAIRED_COLUMNS)
    row = res[(res.comparison == "white_box") & (res.metric == "adv_accuracy")].iloc[0]
    assert (row.reference_source, row.reference_target, row.variant_source, row.variant_target) == (
        "baseline",
        "baseline",
        "entangled",
        "entangled",
    )
    # per-seed differences 0.3 and 0.4; t(0.975, 1) * sd / sqrt(2) with sd = 0.1/sqrt(2)
    assert row["diff"] == pytest.approx(0.35) and row.n_seeds == 2 and row.method == "t"
    assert row.ci_high - row["diff"] == pytest.approx(12.706204736174703 * 0.05)
    assert row.reference_value == pytest.approx(0.15) and row.variant_value == pytest.approx(0.5)
    # discordant pairs: seed 0 (b, c) = (0, 3), seed 1 (1, 5); pooled (1, 8)
    assert (row.discordant_reference, row.discordant_variant, row.n_paired) == (1, 8, 20)
    assert row.p_value == pytest.approx(2 * (1 + 9) / 512) and row.test == "mcnemar_exact_pooled"


def test_paired_from_to_cross_cells_and_denominators():
    res = paired_differences(_two_seed_suite(), variants=["entangled"], by_seed=True)
    assert list(res.columns) == list(PAIRED_SEED_COLUMNS)
    assert set(res.comparison) == {"white_box", "from", "to", "cross"}
    s0 = res[res.seed == 0].set_index(["comparison", "metric"])
    frm = s0.loc[("from", "transfer_rate")]
    assert (frm.other, frm.reference_source, frm.variant_source, frm.variant_target) == (
        "disentangled",
        "baseline",
        "entangled",
        "disentangled",
    )
    # disentangled is clean-correct on examples 1..9; fooled by baseline's: 1, 2; by entangled's: 9
    assert frm.reference_value == pytest.approx(2 / 9) and frm.variant_value == pytest.approx(1 / 9)
    assert frm["diff"] == pytest.approx(-1 / 9)
    assert (frm.n, frm.n_paired, frm.discordant_reference, frm.discordant_variant) == (10, 9, 2, 1)
    assert frm.p_value == pytest.approx(1.0) and frm.method == "bootstrap"
    to = s0.loc[("to", "adv_accuracy")]
    assert (to.other, to.reference_source, to.reference_target, to.variant_target) == (
        "disentangled",
        "disentangled",
        "baseline",
        "entangled",
    )
    cross = s0.loc[("cross", "adv_accuracy")]
    assert (cross.variant_source, cross.variant_target, cross.reference_source, cross.reference_target) == (
        "entangled",
        "baseline",
        "baseline",
        "entangled",
    )
    assert pd.isna(s0.loc[("white_box", "adv_accuracy"), "other"])


def test_paired_defaults_single_seed_bootstrap_and_errors():
    suite = _two_seed_suite()
    res = paired_differences(suite[suite.seed == 0], n_boot=300)
    assert set(res.variant) == {"entangled", "disentangled"}
    assert (res.n_seeds <= 1).all() and set(res.method) <= {"bootstrap", "none"}
    assert (res.method[res.n_seeds == 0] == "none").all() and res["diff"][res.n_seeds == 0].isna().all()
    wb = res[(res.variant == "entangled") & (res.comparison == "white_box") & (res.metric == "adv_accuracy")].iloc[0]
    assert wb["diff"] == pytest.approx(0.3) and wb.ci_low <= 0.3 <= wb.ci_high
    assert wb.p_value == pytest.approx(mcnemar_exact(0, 3))
    with pytest.raises(ValueError, match="reference model 'vanilla'"):
        paired_differences(suite, reference="vanilla")
    with pytest.raises(ValueError, match="not in the outcomes"):
        paired_differences(suite, variants=["entangle"])


def test_paired_difference_ci_shrinks_as_n_grows():
    widths = []
    for n in (40, 400, 4000):
        a, b = _bernoulli(n, 0.3), _bernoulli(n, 0.5)
        o = _outcomes({("baseline", "baseline"): a, ("entangled", "entangled"): b}, {}, seed=0, n=n)
        res = paired_differences(o, variants=["entangled"], n_boot=500)
        row = res[(res.comparison == "white_box") & (res.metric == "adv_accuracy")].iloc[0]
        assert row["diff"] == pytest.approx(0.2, abs=0.02)
        widths.append(row.ci_high - row.ci_low)
    assert widths[0] > widths[1] > widths[2] > 0


# -- summarize -----------------------------------------------------------------------------------------
def test_summarize_methods_and_counts():
    suite = _two_seed_suite()
    metrics = transfer_metrics(suite)
    summ = summarize(metrics, suite, n_boot=300)
    assert list(summ.columns) == list(SUMMARY_COLUMNS)
    row = summ.set_index(["source", "target", "metric"]).loc[("entangled", "entangled", "adv_accuracy")]
    assert row["mean"] == 0.5 and row.ci_low == row.ci_high == 0.5 and row.method == "t" and row.n_seeds == 2
    assert (row.numerator, row.denominator, row.n) == (10, 20, 20) and row.white_box
    one = summarize(metrics[metrics.seed == 0], suite, n_boot=300)
    r1 = one.set_index(["source", "target", "metric"]).loc[("baseline", "baseline", "adv_accuracy")]
    assert r1.method == "bootstrap" and r1["mean"] == pytest.approx(0.2) and r1.ci_low < 0.2 < r1.ci_high
    bare = summarize(metrics[metrics.seed == 0])
    assert set(bare.method) == {"none"} and bare.ci_low.isna().all()


def test_summarize_interval_shrinks_as_n_grows_on_real_predictions(digits_model, digits_splits):
    """One seed, bootstrap over examples: the real digits model's clean-vs-noise outcomes, n = 50 vs 400."""
    import torch

    from advbench.evaluation.transfer import outcomes_for

    x, y = digits_splits.test.x, digits_splits.test.y
    g = torch.Generator().manual_seed(0)
    x_adv = (x + 0.3 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    widths = []
    for n in (50, 400):
        o = outcomes_for(
            seed=0,
            source="m",
            attack="noise",
            eps=0.3,
            x_adv=x_adv[:n],
            x_clean=x[:n],
            y=y[:n],
            targets={"m": digits_model},
        )
        s = summarize(transfer_metrics(o), o, n_boot=500).set_index("metric")
        assert (s.method == "bootstrap").all()
        widths.append(s.loc["adv_accuracy", "ci_high"] - s.loc["adv_accuracy", "ci_low"])
    assert widths[0] > widths[1] > 0
