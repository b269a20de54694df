"""Calibration and detection metrics against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from advbench.evaluation.calibration import (
    calibration_records,
    detection_scores,
    expected_calibration_error,
    reliability_bins,
    reliability_records,
)

CONF = [0.1, 0.4, 0.45, 0.9, 0.95, 1.0]
CORRECT = [False, True, False, True, True, True]


def test_ece_by_hand() -> None:
    # bins (0, .5] and (.5, 1]: |1/3 - 0.95/3| * 3/6 + |1 - 0.95| * 3/6
    low = abs(1 / 3 - (0.1 + 0.4 + 0.45) / 3)
    high = abs(1.0 - (0.9 + 0.95 + 1.0) / 3)
    assert expected_calibration_error(CONF, CORRECT, n_bins=2) == pytest.approx(0.5 * low + 0.5 * high, abs=1e-12)
    assert expected_calibration_error(CONF, CORRECT, n_bins=1) == pytest.approx(abs(4 / 6 - sum(CONF) / 6))


def test_ece_is_zero_when_calibrated_and_large_when_overconfident() -> None:
    conf = np.array([0.25] * 4 + [0.75] * 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    assert expected_calibration_error(conf, correct, n_bins=4) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(5), np.zeros(5, dtype=bool)) == 1.0
    assert math.isnan(expected_calibration_error([], []))


def test_bins_are_right_closed() -> None:
    bins = reliability_bins([0.0, 0.1, 0.2, 0.5, 0.5000001, 1.0], [1, 1, 1, 1, 1, 1], n_bins=10)
    assert list(bins.columns) == ["bin", "lower", "upper", "count", "mean_confidence", "accuracy"]
    # 0 and 0.1 -> bin 0 (first bin holds 0; 0.1 is its right edge); 0.2 -> bin 1; 0.5 -> bin 4;
    # just above 0.5 -> bin 5; 1.0 -> bin 9
    assert bins["count"].tolist() == [2, 1, 0, 0, 1, 1, 0, 0, 0, 1]
    assert bins["count"].sum() == 6
    assert bins.loc[2, "accuracy"] != bins.loc[2, "accuracy"]  # NaN in an empty bin
    assert bins.loc[0, "mean_confidence"] == pytest.approx(0.05)
    assert bins["lower"].iloc[0] == 0.0 and bins["upper"].iloc[-1] == 1.0


def test_reliability_bins_by_hand() -> None:
    bins = reliability_bins(CONF, CORRECT, n_bins=2)
    assert bins["count"].tolist() == [3, 3]
    assert bins["accuracy"].tolist() == pytest.approx([1 / 3, 1.0])
    assert bins["mean_confidence"].tolist() == pytest.approx([0.95 / 3, 0.95])


def test_detection_by_hand() -> None:
    clean, adv = [0.9, 0.8, 0.3], [0.1, 0.35, 0.7]
    d = detection_scores(clean, adv)
    # pairs (clean > adv): 0.9 beats 3, 0.8 beats 3, 0.3 beats 1 -> 7 of 9
    assert d["auroc"] == pytest.approx(7 / 9)
    # ranked by credibility: P P N N P N -> precision at the positives 1, 1, 3/5
    assert d["aupr"] == pytest.approx((1 + 1 + 3 / 5) / 3)
    # adversarial positive, ranked by -credibility: P N P P N N -> 1, 2/3, 3/4
    assert d["aupr_out"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_detection_ties_and_direction() -> None:
    assert detection_scores([0.5, 0.5], [0.5])["auroc"] == 0.5
    assert detection_scores([0.9, 0.8], [0.1, 0.2])["auroc"] == 1.0
    assert detection_scores([0.1], [0.9])["auroc"] == 0.0  # credibility higher on the attack: worst
    assert all(math.isnan(v) for v in detection_scores([], [0.2]).values())


def test_calibration_records_has_no_ece_of_credibility() -> None:
    pred = np.array([0, 1, 2, 2])
    cred = np.array([0.9, 0.6, 0.2, 0.1])
    labels = np.array([0, 1, 1, 2])
    rows = calibration_records(
        model="entangled",
        seed=3,
        input_set="pgd",
        prediction=pred,
        credibility=cred,
        labels=labels,
        clean_credibility=[0.95, 0.7, 0.8],
        extra={"eps": 0.1},
    )
    df = pd.DataFrame(rows)
    assert set(df.columns) == {"model", "seed", "input_set", "metric", "value", "n", "n_clean", "eps"}
    values = dict(zip(df["metric"], df["value"], strict=True))
    assert values["dknn_accuracy"] == 0.75
    assert values["mean_credibility"] == pytest.approx(0.45)
    assert values["credibility_auroc_all_examples"] == pytest.approx(detection_scores([0.95, 0.7, 0.8], cred)["auroc"])
    assert set(values) == {
        "dknn_accuracy",
        "mean_credibility",
        "credibility_auroc_all_examples",
        "credibility_auroc_all_examples_se",
    }
    assert not any("ece" in m for m in values)
    assert (df["n"] == 4).all() and (df["seed"] == 3).all() and (df["eps"] == 0.1).all()
    assert df["value"].map(type).eq(float).all()
    ood = calibration_records(
        model="baseline", seed=0, input_set="ood", prediction=[1, 2], credibility=[0.5, 0.1], labels=None
    )
    assert {r["metric"] for r in ood} == {"mean_credibility"}


def test_reliability_records() -> None:
    df = reliability_records(model="m", seed=1, input_set="clean", scores=CONF, correct=CORRECT, n_bins=2)
    assert list(df.columns[:4]) == ["model", "seed", "input_set", "score"] and len(df) == 2
    assert (df["score"] == "msp").all()
    cred = reliability_records(
        model="m", seed=1, input_set="clean", scores=CONF, correct=CORRECT, score="credibility", n_bins=2
    )
    assert (cred["score"] == "credibility").all() and cred["count"].tolist() == [3, 3]


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        expected_calibration_error([1.5], [True])
    with pytest.raises(ValueError, match="equal length"):
        expected_calibration_error([0.5, 0.2], [True])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins([0.5], [True], n_bins=0)
    with pytest.raises(ValueError, match="booleans"):
        expected_calibration_error([0.5], [2])
    with pytest.raises(ValueError, match="finite"):
        detection_scores([float("nan")], [0.1])
