"""The per-example worst case over attacks: hand-checked cases and a property test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advbench.analysis.worstcase import (
    WORST_CASE_COLUMNS,
    dknn_long,
    outcomes_long,
    worst_case,
    worst_case_examples,
)


def _outcomes(table: dict[tuple[str, str], list[bool]], clean: list[bool], *, eps: float = 0.1) -> pd.DataFrame:
    rows = []
    for (source, attack), adv in table.items():
        for i, (c, a) in enumerate(zip(clean, adv, strict=True)):
            rows.append(
                {
                    "seed": 0,
                    "source": source,
                    "attack": attack,
                    "eps": eps,
                    "target": "m",
                    "example": 10 + i,
                    "clean_correct": c,
                    "adv_correct": a,
                }
            )
    return pd.DataFrame(rows)


def test_hand_checked_ensemble() -> None:
    out = _outcomes(
        {
            ("m", "fgsm"): [True, True, False, True],
            ("m", "pgd"): [True, False, False, True],
            ("other", "pgd"): [False, True, True, True],
        },
        clean=[True, True, True, False],
    )
    wc = worst_case(outcomes_long(out))
    assert list(wc.columns) == list(WORST_CASE_COLUMNS)
    r = wc.iloc[0]
    # white-box only: example 0 survives both, 1 broken by pgd, 2 by both, 3 wrong when clean
    assert r["robust_accuracy"] == pytest.approx(0.25)
    assert r["strongest_attack"] == "pgd" and r["strongest_accuracy"] == pytest.approx(0.25)
    assert r["ensemble_gain"] == 0 and r["decisive_attacks"] == "pgd:1" and r["n_attacks"] == 2
    # with transfer, example 0 falls to the transferred pgd
    wt = worst_case(outcomes_long(out), include_transfer=True).iloc[0]
    assert wt["robust_accuracy"] == 0.0 and "pgd from other" in wt["attacks"]
    per = worst_case_examples(outcomes_long(out), include_transfer=True)
    assert per.loc[per["example"] == 10, "broken_by"].item() == "pgd from other"
    assert per.loc[per["example"] == 12, "broken_by"].item() == "fgsm;pgd"


def test_dknn_rows_parse_input_sets_and_pick_the_most_credible_wrong_answer() -> None:
    ex = pd.DataFrame(
        {
            "model": "m",
            "seed": 0,
            "input_set": ["clean", "clean", "pgd@0.1 from m", "pgd@0.1 from m", "dknn-adaptive@0.1 from m"] + ["ood"],
            "kind": ["clean", "clean", "adversarial", "adversarial", "adversarial", "ood"],
            "example": [1, 2, 1, 2, 1, 0],
            "correct": [True, True, False, True, False, False],
            "credibility": [0.9, 0.8, 0.3, 0.5, 0.7, 0.1],
        }
    )
    long = dknn_long(ex)
    assert set(long["attack"]) == {"pgd", "dknn-adaptive"} and set(long["eps"]) == {0.1}
    per = worst_case_examples(long).set_index("example")
    assert per.loc[1, "worst_attack"] == "dknn-adaptive" and per.loc[1, "credibility"] == 0.7
    assert per.loc[2, "robust"] and per.loc[2, "credibility"] == 0.5
    wc = worst_case(long).iloc[0]
    assert wc["quantity"] == "dknn" and wc["robust_accuracy"] == 0.5 and wc["mean_credibility"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="names no attack"):
        dknn_long(ex.assign(input_set=ex["input_set"].replace("pgd@0.1 from m", "weird")))


@st.composite
def _tables(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 12))
    attacks = draw(st.lists(st.sampled_from(["fgsm", "bim", "pgd", "aa", "dknn-adaptive"]), min_size=1, unique=True))
    sources = draw(st.lists(st.sampled_from(["m", "s1"]), min_size=1, unique=True))
    clean = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    table = {(s, a): draw(st.lists(st.booleans(), min_size=n, max_size=n)) for s in sources for a in attacks}
    return _outcomes(table, clean)


@settings(max_examples=150, deadline=None)
@given(_tables(), st.booleans(), st.booleans())
def test_worst_case_is_never_weaker_than_any_single_attack(out, include_transfer, include_clean) -> None:
    long = outcomes_long(out)
    wc = worst_case(long, include_transfer=include_transfer, include_clean=include_clean)
    rows = long if include_transfer else long[long["source"] == long["model"]]
    if rows.empty:
        assert wc.empty
        return
    r = wc.iloc[0]
    for (_, _), g in rows.groupby(["source", "attack"]):
        ok = g["correct"] & g["clean_correct"] if include_clean else g["correct"]
        assert r["robust_accuracy"] <= ok.mean() + 1e-12
    assert r["robust_accuracy"] <= r["strongest_accuracy"] and r["ensemble_gain"] >= 0
    # per example: robust exactly when every attack left it correct
    per = worst_case_examples(long, include_transfer=include_transfer, include_clean=include_clean)
    expect = rows.groupby("example")["correct"].all()
    if include_clean:
        expect &= rows.groupby("example")["clean_correct"].all()
    np.testing.assert_array_equal(per.set_index("example")["robust"].sort_index(), expect.sort_index())
