"""Model comparison: per-seed quantities, logit-scale intervals of the means, paired differences."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from advbench.analysis.comparison import COMPARISON_COLUMNS, matched_transfer_differences, model_comparison
from advbench.analysis.inference import paired_t


@dataclass
class _Fake:
    clean: pd.DataFrame
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    dknn: pd.DataFrame = field(default_factory=pd.DataFrame)
    worst: pd.DataFrame = field(default_factory=pd.DataFrame)

    def shared_metrics(self) -> pd.DataFrame:
        return self.metrics

    def worst_case(self) -> pd.DataFrame:
        return self.worst


ACC = {"base": [0.90, 0.91, 0.92], "reg": [0.88, 0.90, 0.905]}


def _clean() -> pd.DataFrame:
    return pd.DataFrame(
        [{"model": m, "seed": s, "test_accuracy": a, "n": 1000} for m, accs in ACC.items() for s, a in enumerate(accs)]
    )


def _row(t: pd.DataFrame, quantity: str, model: str) -> pd.Series:
    sel = t[(t["quantity"] == quantity) & (t["model"] == model)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_clean_accuracy_difference_is_the_paired_t_over_seeds():
    t = model_comparison(_Fake(_clean()), "base")
    assert list(t.columns) == list(COMPARISON_COLUMNS)
    reg = _row(t, "clean accuracy", "reg")
    ref = paired_t(np.subtract(ACC["reg"], ACC["base"]))
    assert (reg["diff"], reg["diff_low"], reg["diff_high"], reg["p"]) == pytest.approx(tuple(ref[:4]))
    base = _row(t, "clean accuracy", "base")
    assert np.isnan(base["diff"]) and 0 < base["ci_low"] < base["mean"] < base["ci_high"] < 1
    assert base["mean"] == pytest.approx(np.mean(ACC["base"]), abs=2e-3)  # the logit-scale centre


def _transfer_rows(pairs: tuple[tuple[str, str, float], ...]) -> pd.DataFrame:
    rows = []
    for s in range(3):
        for src, tgt, rate in pairs:
            rows.append({"source": src, "target": tgt, "seed": s, "metric": "transfer_rate", "value": rate + 0.01 * s,
                         "denominator": 800, "attack": "pgd", "eps": 0.1})  # fmt: skip
        # white box: ignored
        rows.append({"source": "reg", "target": "reg", "seed": s, "metric": "transfer_rate", "value": 1.0,
                     "denominator": 800, "attack": "pgd", "eps": 0.1})  # fmt: skip
    return pd.DataFrame(rows)


PAIRS = (
    ("base", "reg", 0.3),
    ("reg", "base", 0.6),
    ("third", "reg", 0.5),
    ("third", "base", 0.7),
    ("reg", "third", 0.4),
    ("base", "third", 0.45),
)


def test_transfer_into_and_out_of_read_other_models_only():
    t = model_comparison(_Fake(_clean(), metrics=_transfer_rows(PAIRS)), "base")
    into, out = _row(t, "transfer into", "reg"), _row(t, "transfer out of", "reg")
    # the means read every other model ...
    assert into["mean"] == pytest.approx((0.3 + 0.5) / 2 + 0.01, abs=2e-3)
    assert out["mean"] == pytest.approx((0.6 + 0.4) / 2 + 0.01, abs=2e-3)
    # ... the differences only the partners both sides share: into reg and into base from `third`, out of reg and
    # out of base to `third` (the pair's transfer to each other compares different partners, and is left out)
    assert into["diff"] == pytest.approx(0.5 - 0.7)
    assert out["diff"] == pytest.approx(0.4 - 0.45)
    assert into["diff_low"] == into["diff_high"]  # the same difference in every seed


def test_a_transfer_difference_needs_a_third_model():
    """With two models there is no like-with-like transfer difference; the means are still shown."""
    t = model_comparison(_Fake(_clean(), metrics=_transfer_rows(PAIRS[:2])), "base")
    into = _row(t, "transfer into", "reg")
    assert into["mean"] == pytest.approx(0.31, abs=2e-3) and np.isnan(into["diff"]) and np.isnan(into["p"])
    assert matched_transfer_differences(_transfer_rows(PAIRS[:2]), "reg", "base", "target").empty


def test_detection_rows_per_score_and_saturation():
    rows = []
    for s in range(3):
        for m, auc in (("base", 0.8), ("reg", 0.85)):
            for score in ("credibility", "mahalanobis"):
                rows.append({"model": m, "seed": s, "kind": "ood", "input_set": "digits", "metric": f"{score}_auroc",
                             "value": auc + 0.01 * s, "n": 1000})  # fmt: skip
            rows.append(
                {
                    "model": m,
                    "seed": s,
                    "kind": "adversarial",
                    "source": "other",
                    "metric": "msp_auroc",
                    "value": 0.1,
                    "n": 10,
                }
            )  # transferred set: not white box
    worst = pd.DataFrame(
        [
            {"quantity": "classifier", "model": m, "seed": s, "eps": 0.2, "robust_accuracy": 0.0, "n": 500}
            for m in ACC
            for s in range(3)
        ]
    )
    t = model_comparison(_Fake(_clean(), dknn=pd.DataFrame(rows), worst=worst), "base", order=["reg", "base"])
    assert set(t["quantity"]) == {
        "clean accuracy",
        "robust accuracy @ 0.2 (worst case)",
        "OOD detection AUROC (credibility)",
        "OOD detection AUROC (mahalanobis)",
    }
    assert list(t[t["quantity"] == "clean accuracy"]["model"]) == ["reg", "base"]
    maha = _row(t, "OOD detection AUROC (mahalanobis)", "reg")
    assert maha["diff"] == pytest.approx(0.05) and maha["ci_high"] < 1
    sat = _row(t, "robust accuracy @ 0.2 (worst case)", "reg")
    assert sat["status"] == "saturated" and np.isnan(sat["ci_low"]) and sat["mean"] == 0
