"""Seed-level paired comparisons: hand-computed rows, saturation, cross-seed cells, the committed run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_stats import _two_seed_suite

from advbench.analysis.stats import PAIRED_COMPARISON_COLUMNS, paired_comparisons, rate_intervals
from advbench.evaluation.transfer import transfer_metrics

RUN = Path(__file__).resolve().parents[1] / "reports" / "transfer" / "run" / "results"


def test_white_box_row_hand_computed():
    o = _two_seed_suite()
    res = paired_comparisons(transfer_metrics(o), "baseline", ["entangled"], outcomes=o)
    assert list(res.columns) == list(PAIRED_COMPARISON_COLUMNS)
    row = res[(res.role == "white_box") & (res.metric == "adv_accuracy")].iloc[0]
    # per-seed differences 0.3 (seed 0) and 0.4 (seed 1)
    assert json.loads(row.per_seed_diff) == pytest.approx([0.3, 0.4]) and json.loads(row.seeds) == [0, 1]
    assert row.estimate == pytest.approx(0.35) and row.n_seeds == 2 and row.status == "ok"
    assert row.ci_high - row.estimate == pytest.approx(12.706204736174703 * 0.05)
    assert row.p_t == pytest.approx(stats.ttest_1samp([0.3, 0.4], 0.0).pvalue)
    assert row.p_signflip == pytest.approx(0.5)  # 2 of 4 sign patterns reach |mean| 0.35
    # conditional McNemar: discordant (b, c) pooled over seeds = (1, 8)
    assert row.conditional_p_mcnemar == pytest.approx(2 * (1 + 9) / 512) and row.n_paired == 20
    assert row.mdd_80 > 0 and row.seeds_for_2pt is not pd.NA and row.seeds_for_2pt >= 2
    # without outcomes: same seed-level numbers, no conditional test
    bare = paired_comparisons(transfer_metrics(o), "baseline", ["entangled"])
    b = bare[(bare.role == "white_box") & (bare.metric == "adv_accuracy")].iloc[0]
    assert (b.estimate, b.ci_low, b.p_t) == pytest.approx((row.estimate, row.ci_low, row.p_t))
    assert math.isnan(b.conditional_p_mcnemar)


def _metrics(values: dict[tuple[str, str, int], tuple[int, int]], **extra) -> pd.DataFrame:
    rows = [
        {
            "source": s,
            "target": t,
            "attack": "pgd",
            "eps": 0.1,
            "seed": seed,
            "white_box": s == t,
            "metric": "adv_accuracy",
            "value": k / n,
            "numerator": k,
            "denominator": n,
            "n": n,
            "denominator_desc": "all n test examples",
            **extra,
        }
        for (s, t, seed), (k, n) in values.items()
    ]
    return pd.DataFrame(rows)


def test_saturated_rows_have_no_interval():
    m = _metrics({(a, a, s): (0, 100) for a in ("baseline", "entangled") for s in range(3)})
    row = paired_comparisons(m, "baseline", ["entangled"]).iloc[0]
    assert row.saturated and row.status == "saturated"
    assert math.isnan(row.ci_low) and math.isnan(row.ci_high) and math.isnan(row.p_t)


def test_cross_seed_cells_are_left_to_the_independent_control():
    same = _metrics(
        {(a, a, s): (40 + s + (a == "entangled") * (3 + s), 100) for a in ("baseline", "entangled") for s in range(3)}
    )
    same["target_seed"] = same["seed"]
    cross = same.copy()
    cross["target_seed"] = (cross["seed"] + 1) % 3
    cross["numerator"] = 99
    full = paired_comparisons(pd.concat([same, cross]), "baseline", ["entangled"])
    assert json.loads(full.iloc[0].per_seed_diff) == pytest.approx([0.03, 0.04, 0.05])


def test_rate_intervals_respect_unit_interval():
    m = _metrics({("baseline", "baseline", s): (k, 500) for s, k in enumerate([0, 1, 0])})
    r = rate_intervals(m, ["source", "target", "metric"]).iloc[0]
    assert 0 < r.ci_low < r.estimate < r.ci_high < 1 and not r.saturated


@pytest.mark.skipif(not RUN.is_dir(), reason="committed transfer run not present")
def test_committed_run_interval_and_test_never_disagree():
    from advbench.analysis.results import Results

    res = Results.load(RUN)
    t = paired_comparisons(res.metrics, "baseline", ["entangled", "disentangled"], outcomes=res.outcomes)
    ok = t[np.isfinite(t.ci_low)]
    contains = (ok.ci_low <= 0) & (ok.ci_high >= 0)
    assert ((ok.p_t < 0.05) == contains).sum() == 0
    assert len(t) == 288 and int(contains.sum()) == 37 and int(t.saturated.sum()) == 24
    # the 3-seed run's example (entangled as source, dknn-adaptive: CI contained 0, McNemar p ~ 1e-214) is
    # decided at 8 seeds: both tests now agree that it transfers less
    row = t[
        (t.variant == "entangled")
        & (t.role == "source")
        & (t.attack == "dknn-adaptive")
        & (t.metric == "transfer_rate")
        & (t.eps == 0.05)
    ].iloc[0]
    assert row.ci_high < 0 and row.p_t < 0.05 and row.conditional_p_mcnemar < 1e-100
    assert (t.p_signflip.dropna() >= 2 / 2**8).all()  # 8 seeds: the sign-flip floor


def test_examples_only_one_side_has_are_left_out_of_both_paired_tables():
    from advbench.analysis.stats import paired_differences

    o = _two_seed_suite()
    # the variant's white-box cell of seed 0 also has examples 100 and 101, which no reference cell has
    cell = o[(o.seed == 0) & (o.source == "entangled") & (o.target == "entangled")]
    extra = pd.concat([cell.head(2).assign(example=[100, 101], adv_correct=False)], ignore_index=True)
    more = pd.concat([o, extra], ignore_index=True)
    # they count in that cell's own metric (so per_seed_diff moves) but never in the paired counts
    pd.testing.assert_frame_equal(
        paired_differences(more, reference="baseline", variants=["entangled"]),
        paired_differences(o, reference="baseline", variants=["entangled"]),
    )
    a = paired_comparisons(transfer_metrics(more), "baseline", ["entangled"], outcomes=more)
    b = paired_comparisons(transfer_metrics(o), "baseline", ["entangled"], outcomes=o)
    pd.testing.assert_frame_equal(a[["n_paired", "conditional_p_mcnemar"]], b[["n_paired", "conditional_p_mcnemar"]])
