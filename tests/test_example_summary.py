"""The per-seed summaries of the DkNN's per-example table, and a run folder read back without that table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from advbench.analysis.example_summary import (
    BIN_COLUMNS,
    dknn_bins,
    dknn_worst_case,
    input_groups,
    neighbour_agreement,
    read_summary,
    summarise_examples,
)
from advbench.analysis.results import Results


def _examples(seed: int = 0, n: int = 40) -> pd.DataFrame:
    """Per-example DkNN rows of two models, two seeds: clean, white-box and transferred PGD, OOD."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in ("baseline", "entangled"):
        for s in (0, 1):
            for kind, input_set, source, distance in (
                ("clean", "clean", None, None),
                ("adversarial", f"pgd@0.1 from {model}", model, None),
                ("adversarial", "pgd@0.1 from other", "other", None),
                ("ood", "digits", None, "far"),
                ("ood", "blur:3", None, "near"),
            ):
                for ex in range(n):
                    rows.append(
                        {
                            "model": model,
                            "seed": s,
                            "input_set": input_set,
                            "kind": kind,
                            "example": ex,
                            "correct": bool(rng.random() < 0.7),
                            "credibility": float(rng.choice([0.0, 1.0, rng.random()])),
                            "msp": float(rng.random()),
                            "softmax_correct": bool(rng.random() < 0.8),
                            "k": 10,
                            "nbr_pred/fc1": int(rng.integers(0, 11)),
                            "nbr_pred/logits": int(rng.integers(0, 11)),
                            "source": source,
                            "attack": "pgd" if source else None,
                            "eps": 0.1 if source else None,
                            "fooled": bool(rng.random() < 0.5) if source else None,
                            "distance": distance,
                        }
                    )
    return pd.DataFrame(rows)


def test_histogram_bins_match_numpy():
    ex = _examples()
    bins = dknn_bins(ex)
    assert list(bins.columns) == BIN_COLUMNS
    hist = bins[bins["figure"] == "credibility_histogram"]
    for (model, kind), g in ex.assign(kind=input_groups(ex)).groupby(["model", "kind"]):
        counts, _ = np.histogram(g["credibility"], bins=np.linspace(0, 1, 21))
        got = hist[(hist["model"] == model) & (hist["kind"] == kind)].sort_values("bin")["n"].to_numpy()
        np.testing.assert_array_equal(got, counts)  # 1.0 falls in the last bin, as numpy's does
    rel = bins[bins["figure"] == "reliability_clean"]
    assert set(rel["kind"]) == {"clean"} and len(rel) == 2 * 10
    clean = ex[ex["kind"] == "clean"]
    assert rel["n"].sum() == len(clean) and rel["n_correct"].sum() == clean["correct"].sum()
    msp = bins[bins["figure"] == "reliability_msp_clean"]
    assert len(msp) == 2 * 15 and msp["n_correct"].sum() == clean["softmax_correct"].sum()


def test_histograms_compare_like_with_like():
    """Adversarial inputs by origin and outcome, OOD inputs by distance; every example in exactly one group."""
    ex = _examples()
    groups = input_groups(ex)
    assert set(groups) == {
        "clean",
        "adversarial, white-box, fooled",
        "adversarial, white-box, not fooled",
        "adversarial, transferred, fooled",
        "adversarial, transferred, not fooled",
        "ood, near",
        "ood, far",
    }
    white = (ex["kind"] == "adversarial") & (ex["source"] == ex["model"])
    assert (groups[white & ex["fooled"].eq(True)] == "adversarial, white-box, fooled").all()
    assert (groups[(ex["kind"] == "ood") & (ex["distance"] == "near")] == "ood, near").all()
    hist = dknn_bins(ex)
    hist = hist[hist["figure"] == "credibility_histogram"]
    assert hist["n"].sum() == len(ex)  # the denominators: every example counted once
    # a table from before the per-example rows recorded origin, outcome or distance keeps the bare kinds
    old = ex.drop(columns=["source", "fooled", "distance"])
    assert set(input_groups(old)) == {"clean", "adversarial", "ood"}


def test_credibility_figure_draws_grouped_and_older_bins(tmp_path):
    from advbench.reports.plots import credibility_histograms

    ex = _examples()
    for name, table in (("grouped", ex), ("older", ex.drop(columns=["source", "fooled", "distance"]))):
        bins = dknn_bins(table)
        path = credibility_histograms(
            bins[bins["figure"] == "credibility_histogram"], tmp_path / f"{name}.png", title=name
        )
        assert path.stat().st_size > 0


def test_neighbour_agreement_counts_white_box_adversarial_only():
    ex = _examples()
    got = neighbour_agreement(ex).set_index(["model", "seed", "kind"])["agree"]
    g = ex[(ex["model"] == "entangled") & (ex["seed"] == 1) & (ex["source"] == "entangled")]
    want = ((g["nbr_pred/fc1"] + g["nbr_pred/logits"]) / 2 / 10).mean()
    assert got[("entangled", 1, "adversarial")] == pytest.approx(want)
    assert neighbour_agreement(ex.drop(columns=["k"])).empty  # no counts: nothing, not an error


def test_worst_case_summary_is_the_dknn_rows():
    ex = _examples()
    worst = dknn_worst_case(ex)
    assert set(worst["quantity"]) == {"dknn"} and len(worst) == 4  # 2 models x 2 seeds x 1 eps
    assert (worst["attacks"] == "pgd").all()  # the transferred set is not in the white-box ensemble
    assert dknn_worst_case(ex[ex["kind"] != "adversarial"]).empty


def test_summaries_survive_csv(tmp_path):
    ex = _examples()
    for name, table in summarise_examples(ex).items():
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        back = read_summary(name, pd.read_csv(tmp_path / f"{name}.csv"))
        pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_results_without_the_per_example_table_read_the_saved_summaries(tmp_path):
    suite = {"name": "s", "report": {}, "models": [{"name": "baseline"}, {"name": "entangled"}], "claims": []}
    ex = _examples()
    full = Results(
        suite=suite,
        outcomes=pd.DataFrame(),
        metrics=pd.DataFrame(),
        training=pd.DataFrame(),
        clean=pd.DataFrame(),
        dknn=pd.DataFrame(),
        dknn_examples=ex,
        gradient_flags=pd.DataFrame(),
    )
    full.save(tmp_path)
    (tmp_path / "dknn_examples.csv.gz").unlink()
    slim = Results.load(tmp_path)
    assert slim.dknn_examples.empty
    pd.testing.assert_frame_equal(slim.worst_case(), full.worst_case(), check_dtype=False)
    for name in ("neighbour_agreement", "dknn_bins"):
        pd.testing.assert_frame_equal(slim.example_summary(name), full.example_summary(name), check_dtype=False)
