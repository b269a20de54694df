"""Conformal validity and efficiency, detection on successful attacks and the softmax ECE, against known truth."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from advbench.evaluation.calibration import (
    auroc_standard_error,
    conformal_validity,
    delong_se,
    detection_metrics,
    dknn_set_records,
    examples_for_auroc_se,
    expected_calibration_error,
    prediction_set_stats,
    tpr_at_fpr,
)
from advbench.evaluation.dknn import DkNN, conformal_p_values
from advbench.models import Classifier


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


# -- p-values and validity ------------------------------------------------------------------------
def test_p_values_of_exchangeable_scores_are_uniform() -> None:
    """5,000 independent (calibration set, test point) draws: the p-value is uniform on {0, 1/n, ..., 1}."""
    rng = np.random.default_rng(0)
    n_cal, draws = 400, 5000
    scores = rng.normal(size=(draws, n_cal + 1))  # one exchangeable sample per draw; the last is the test point
    p = np.array([conformal_p_values(np.sort(row[:-1]), row[-1:])[0] for row in scores])
    # discrete on a 1/n_cal grid: the KS distance to U(0, 1) from the grid alone is <= 1/n_cal = 0.0025
    ks = stats.kstest(p, "uniform")
    assert ks.pvalue > 0.01, ks
    # and a shifted test distribution is caught by the same test (the KS test has power here)
    shifted = np.array([conformal_p_values(np.sort(row[:-1]), row[-1:] + 0.3)[0] for row in scores])
    assert stats.kstest(shifted, "uniform").pvalue < 1e-6


def clustered(seed: int, n: int, centres: np.ndarray, spread: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per class, with overlap so that the DkNN is sometimes unsure."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(centres), size=n)
    x = centres[y] + rng.normal(scale=spread, size=(n, centres.shape[1]))
    return x.reshape(n, 1, 2, 4).astype(np.float32), y.astype(np.int64)


def linear_model() -> Classifier:
    torch.manual_seed(0)
    blocks = [("flat", nn.Flatten()), ("h", nn.Sequential(nn.Linear(8, 6), nn.Tanh())), ("logits", nn.Linear(6, 3))]
    return Classifier(blocks, hidden=["flat", "h"], num_classes=3, input_shape=(1, 2, 4)).eval()


def test_real_dknn_is_valid_on_exchangeable_data_and_flagged_for_a_shifted_calibration_set() -> None:
    centres = np.random.default_rng(99).normal(scale=1.5, size=(3, 8))
    x_tr, y_tr = clustered(1, 600, centres)
    x_cal, y_cal = clustered(2, 500, centres)
    x_te, y_te = clustered(3, 3000, centres)
    dknn = DkNN(linear_model(), k=15, batch_size=1000).fit(x_tr, y_tr).calibrate(x_cal, y_cal)
    p_true = dknn.predict(x_te).p_value_of(y_te)
    val = conformal_validity(p_true, n_calibration=len(y_cal))
    assert not val["violated"].any(), val
    assert (val["rate"] < val["eps"] + 0.03).all(), val
    # A shifted calibration set: tighter clusters than the test data, so its nonconformities are too
    # small, and so are the test p-values: validity fails, and is flagged.
    x_tight, y_tight = clustered(2, 500, centres, spread=0.8)
    shifted = DkNN(linear_model(), k=15, batch_size=1000).fit(x_tr, y_tr).calibrate(x_tight, y_tight)
    bad = conformal_validity(shifted.predict(x_te).p_value_of(y_te), n_calibration=500)
    assert bad["violated"].all(), bad
    assert (bad["rate"] > bad["eps"]).all()


def test_validity_flag_on_known_counts() -> None:
    ok = conformal_validity(np.r_[np.zeros(10), np.ones(90)], eps_levels=[0.1])  # 10 of 100 below 0.1
    assert ok["n_below"].item() == 10 and ok["rate"].item() == 0.1 and not ok["violated"].item()
    assert ok["pvalue"].item() == pytest.approx(stats.binom.sf(9, 100, 0.1))
    bad = conformal_validity(np.r_[np.zeros(25), np.ones(75)], eps_levels=[0.1])
    assert bad["violated"].item()
    # the beta-binomial null (shared calibration set) is wider than the binomial one
    assert conformal_validity(np.r_[np.zeros(16), np.ones(84)], eps_levels=[0.1])["violated"].item()
    wide = conformal_validity(np.r_[np.zeros(16), np.ones(84)], eps_levels=[0.1], n_calibration=40)
    assert not wide["violated"].item()
    assert wide["expected"].item() == pytest.approx(4 / 41)  # ceil(0.1 * 40) / (40 + 1)


def test_prediction_sets_by_hand() -> None:
    P = np.array([[0.5, 0.08, 0.02], [0.3, 0.25, 0.01], [0.04, 0.03, 0.01]])
    df = prediction_set_stats(P, labels=[0, 1, 2], eps_levels=[0.05, 0.1])
    # eps 0.05: sets {0,1}, {0,1}, {} ; eps 0.1: {0}, {0,1}, {}
    assert df["mean_set_size"].tolist() == pytest.approx([4 / 3, 1.0])
    assert df["singleton_rate"].tolist() == pytest.approx([0.0, 1 / 3])
    assert df["empty_rate"].tolist() == pytest.approx([1 / 3, 1 / 3])
    assert df["coverage"].tolist() == pytest.approx([2 / 3, 2 / 3])


# -- detection --------------------------------------------------------------------------------------
def test_detection_metrics_by_hand_and_against_sklearn() -> None:
    clean, adv = np.array([0.9, 0.8, 0.3]), np.array([0.1, 0.35, 0.7])
    d = detection_metrics(clean, adv)
    y = np.r_[np.ones(3), np.zeros(3)]
    assert d["auroc"] == pytest.approx(7 / 9) == roc_auc_score(y, np.r_[clean, adv])
    assert d["aupr_in"] == pytest.approx(average_precision_score(y, np.r_[clean, adv]))
    assert d["aupr_out"] == pytest.approx(average_precision_score(1 - y, -np.r_[clean, adv]))
    assert d["n_clean"] == 3 and d["n_out"] == 3
    # 20 clean scores 1..20, 10 attacks; 5% FPR allows one clean input (score 1) below the threshold
    c = np.arange(1.0, 21.0)
    a = np.array([0.1, 0.2, 0.3, 0.5, 1.0, 1.5, 2.5, 3, 30, 40])
    assert tpr_at_fpr(c, a, fpr=0.05) == pytest.approx(6 / 10)  # flags <= 1.5: 0.1 .. 1.5 and the clean 1
    assert tpr_at_fpr(c, a, fpr=0.0) == pytest.approx(4 / 10)  # nothing clean flagged: < 1


def test_delong_se_against_its_definition_and_hanley_mcneil() -> None:
    rng = np.random.default_rng(1)
    x, y = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)  # rounded: ties
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    se = math.sqrt(v10.var(ddof=1) / 40 + v01.var(ddof=1) / 30)
    assert delong_se(x, y) == pytest.approx(se, rel=1e-12)
    big_x, big_y = rng.normal(1, 1, 2000), rng.normal(0, 1, 2000)
    auc = detection_metrics(big_x, big_y)["auroc"]
    assert delong_se(big_x, big_y) == pytest.approx(auroc_standard_error(auc, 2000, 2000), rel=0.1)


def test_sample_size_for_a_target_se() -> None:
    assert auroc_standard_error(0.8, 500, 500) == pytest.approx(0.0140, abs=5e-5)  # the 500 -> 0.014
    n = examples_for_auroc_se(0.8, 0.01)
    assert auroc_standard_error(0.8, n, n) <= 0.01 < auroc_standard_error(0.8, n - 1, n - 1)
    assert examples_for_auroc_se(0.8, 0.01, out_fraction=0.5) > n > examples_for_auroc_se(0.95, 0.01)


def _frame(cred, msp, label, soft_pred, fooled=None) -> pd.DataFrame:
    n = len(cred)
    df = pd.DataFrame(
        {
            "example": np.arange(n),
            "label": label,
            "prediction": soft_pred,
            "correct": np.asarray(soft_pred) == np.asarray(label),
            "credibility": cred,
            "p_true": cred,
            "p_0": cred,
            "p_1": np.zeros(n),
            "msp": msp,
            "softmax_pred": soft_pred,
            "softmax_correct": np.asarray(soft_pred) == np.asarray(label),
        }
    )
    if fooled is not None:
        df["fooled"] = fooled
    return df


def test_detection_uses_only_successful_attacks() -> None:
    clean = _frame([0.9, 0.8, 0.3, 0.6], [0.99, 0.9, 0.6, 0.7], [0, 0, 0, 0], [0, 0, 0, 1])
    adv = _frame([0.1, 0.85, 0.7, 0.2, 0.95], [0.5, 0.95, 0.8, 0.55, 0.97], [0] * 5, [1, 0, 1, 1, 0], [1, 0, 1, 1, 0])
    adv["fooled"] = adv["fooled"].astype(bool)
    rows = dknn_set_records(adv, model="m", seed=0, input_set="pgd", kind="adversarial", clean_examples=clean)
    v = {r["metric"]: r for r in rows}
    fooled = adv[adv["fooled"]]
    y = np.r_[np.ones(4), np.zeros(len(fooled))]
    for score in ("credibility", "msp"):
        expected = roc_auc_score(y, np.r_[clean[score], fooled[score]])
        assert v[f"{score}_auroc"]["value"] == pytest.approx(expected)
        assert v[f"{score}_auroc"]["n"] == 3 and v[f"{score}_auroc"]["n_clean"] == 4
        every = roc_auc_score(np.r_[np.ones(4), np.zeros(5)], np.r_[clean[score], adv[score]])
        assert v[f"{score}_auroc_all_examples"]["value"] == pytest.approx(every)
        assert v[f"{score}_aupr_out"]["value"] == pytest.approx(
            average_precision_score(1 - y, -np.r_[clean[score], fooled[score]])
        )
    assert v["credibility_auroc"]["value"] != v["credibility_auroc_all_examples"]["value"]
    assert v["fooled_rate"]["value"] == pytest.approx(3 / 5)
    assert not any("ece" in m and "msp" not in m for m in v)


def test_mahalanobis_detection_beside_credibility_and_msp() -> None:
    clean = _frame([0.9, 0.8, 0.3, 0.6], [0.99, 0.9, 0.6, 0.7], [0, 0, 0, 0], [0, 0, 0, 1])
    adv = _frame([0.1, 0.85, 0.7, 0.2, 0.95], [0.5, 0.95, 0.8, 0.55, 0.97], [0] * 5, [1, 0, 1, 1, 0], [1, 0, 1, 1, 0])
    adv["fooled"] = adv["fooled"].astype(bool)
    without = dknn_set_records(adv, model="m", seed=0, input_set="pgd", kind="adversarial", clean_examples=clean)
    assert not any(r["metric"].startswith("mahalanobis") for r in without)
    clean["mahalanobis"] = [-1.0, -3.0, -2.5, -0.5]
    adv["mahalanobis"] = [-2.0, -0.1, -4.0, -9.0, -0.2]
    rows = dknn_set_records(adv, model="m", seed=0, input_set="pgd", kind="adversarial", clean_examples=clean)
    v = {r["metric"]: r for r in rows}
    fooled = adv[adv["fooled"]]  # scores -2, -4, -9: 10 of the 12 (clean, fooled) pairs rank the clean one higher
    assert v["mahalanobis_auroc"]["value"] == pytest.approx(10 / 12)
    assert v["mahalanobis_auroc"]["n"] == 3 and v["mahalanobis_auroc"]["n_clean"] == 4
    det = detection_metrics(clean["mahalanobis"], fooled["mahalanobis"])
    assert v["mahalanobis_auroc_se"]["value"] == pytest.approx(det["auroc_se"])
    assert v["mahalanobis_tpr_at_5fpr"]["value"] == pytest.approx(det["tpr_at_5fpr"])
    # the other detectors' rows are the same as without the column
    assert [r for r in rows if not r["metric"].startswith("mahalanobis")] == without


def test_softmax_ece_by_hand() -> None:
    # 15 equal-width bins, right-closed: 0.5 -> bin 7 (7/15, 8/15]; 0.52 -> bin 7; 0.95, 0.99, 1.0 -> bin 14
    msp = [0.5, 0.52, 0.95, 0.99, 1.0]
    correct = [True, False, True, True, False]
    low = 2 / 5 * abs(1 / 2 - (0.5 + 0.52) / 2)
    high = 3 / 5 * abs(2 / 3 - (0.95 + 0.99 + 1.0) / 3)
    assert expected_calibration_error(msp, correct) == pytest.approx(low + high, abs=1e-12)
    df = _frame([0.5] * 5, msp, [0, 0, 0, 0, 0], [0, 1, 0, 0, 1])
    rows = dknn_set_records(df, model="m", seed=0, input_set="clean", kind="clean", n_calibration=100)
    v = {r["metric"]: r["value"] for r in rows}
    assert v["msp_ece"] == pytest.approx(low + high, abs=1e-12)
    assert v["softmax_accuracy"] == pytest.approx(3 / 5)
    assert {"validity_pvalue@0.1", "validity_violated@0.1", "set_size@0.05", "singleton_rate@0.2"} <= set(v)
    assert "ece_credibility" not in v and "credibility_ece" not in v
