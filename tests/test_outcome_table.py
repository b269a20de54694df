"""The outcomes tables as a results folder stores them: wide on disk, long and in one order in memory."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advbench.analysis.outcome_table import canonical, narrow, read_outcomes, widen
from advbench.analysis.results import Results
from advbench.evaluation.transfer import OUTCOME_COLUMNS


def _long(seed: int, *, models: tuple[str, ...] = ("a", "b", "c"), n: int = 6, cross: bool = False) -> pd.DataFrame:
    """Outcomes of every model's FGSM and PGD sets on every model, random booleans, in the long layout."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in (0, 1):
        for source in models:
            for attack in ("fgsm", "pgd"):
                success = rng.random(n) < 0.5
                for target in models:
                    for i in range(n):
                        rows.append({"seed": s, "source": source, "attack": attack, "eps": 0.05, "target": target,
                                     "example": 3 * i, "y": i % 10, "clean_correct": bool(rng.random() < 0.9),
                                     "adv_correct": bool(rng.random() < 0.4), "source_success": bool(success[i]),
                                     "norm": "linf", "target_seed": 1 - s if cross else s})  # fmt: skip
    return pd.DataFrame(rows)


def test_round_trip_is_exact_and_the_wide_table_has_one_row_per_adversarial_example() -> None:
    long = canonical(_long(0))
    wide = widen(long)
    assert len(wide) == len(long) // 3
    assert {"adv_correct:a", "clean_correct:c"} <= set(wide.columns) and "target" not in wide.columns
    pd.testing.assert_frame_equal(narrow(wide), long)


def test_canonical_order_does_not_depend_on_the_order_cells_arrived_in() -> None:
    long = _long(1, cross=True)
    shuffled = long.sample(frac=1.0, random_state=7)[list(reversed(long.columns))]
    pd.testing.assert_frame_equal(canonical(shuffled), canonical(long))
    assert list(canonical(shuffled).columns[: len(OUTCOME_COLUMNS)]) == list(OUTCOME_COLUMNS)


def test_a_target_not_evaluated_for_some_sets_round_trips_without_invented_rows() -> None:
    long = _long(2)
    long = canonical(long[~((long["source"] == "a") & (long["target"] == "c"))])
    wide = widen(long)
    assert wide["adv_correct:c"].isna().sum() == 2 * 2 * 6  # two seeds x two attacks x six examples from a
    pd.testing.assert_frame_equal(narrow(wide), long)


def test_a_repeated_example_is_refused_by_name() -> None:
    long = _long(3)
    with pytest.raises(ValueError, match="repeats an example"):
        widen(pd.concat([long, long.iloc[[5]]], ignore_index=True))


def test_a_damaged_wide_table_is_refused() -> None:
    wide = widen(_long(4))
    wide.loc[3, "adv_correct:b"] = pd.NA
    with pytest.raises(ValueError, match="without the other in row 3"):
        narrow(wide)
    with pytest.raises(ValueError, match="lacks columns"):
        narrow(widen(_long(4)).drop(columns=["clean_correct:a"]))


def test_read_outcomes_reads_both_layouts_the_same(tmp_path) -> None:
    long = _long(5, cross=True)
    long.to_csv(tmp_path / "long.csv.gz", index=False)  # as folders saved it before the wide layout
    widen(long).to_csv(tmp_path / "wide.csv.gz", index=False)
    pd.testing.assert_frame_equal(read_outcomes(tmp_path / "long.csv.gz"), canonical(long))
    pd.testing.assert_frame_equal(read_outcomes(tmp_path / "wide.csv.gz"), canonical(long))


def _results(outcomes: pd.DataFrame, cross: pd.DataFrame) -> Results:
    empty = pd.DataFrame()
    return Results.from_parts(
        suite={"name": "t", "models": [{"name": m} for m in "abc"], "report": {}, "claims": []},
        outcomes=outcomes, cross_outcomes=cross, training=empty, clean=empty, dknn=empty,
        dknn_examples=empty, gradient_flags=empty,
    )  # fmt: skip


def test_saved_results_store_the_outcomes_wide_and_load_them_back_as_they_were(tmp_path) -> None:
    res = _results(_long(6).sample(frac=1.0, random_state=1), _long(7, cross=True))
    res.save(tmp_path)
    with gzip.open(tmp_path / "outcomes.csv.gz", "rt") as f:
        header = f.readline().strip().split(",")
    assert "target" not in header and "adv_correct:b" in header
    back = Results.load(tmp_path)
    pd.testing.assert_frame_equal(back.outcomes, res.outcomes)
    pd.testing.assert_frame_equal(back.cross_outcomes, res.cross_outcomes)
    pd.testing.assert_frame_equal(back.metrics, res.metrics)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=12),
    st.sets(st.sampled_from(["m1", "m2", "m3"]), min_size=1),
)
def test_round_trip_property(values: list[tuple[bool, bool, bool]], targets: set[str]) -> None:
    rows = [{"seed": 0, "source": "m1", "attack": "bim", "eps": 0.1, "target": t, "example": i, "y": i % 3,
             "clean_correct": c, "adv_correct": a, "source_success": s, "norm": "linf"}
            for t in sorted(targets) for i, (c, a, s) in enumerate(values)]  # fmt: skip
    long = canonical(pd.DataFrame(rows))
    pd.testing.assert_frame_equal(narrow(widen(long)), long)


def test_the_dknn_table_is_saved_gzipped_and_a_folder_saved_before_still_loads(tmp_path) -> None:
    res = _results(_long(8), _long(9, cross=True))
    res.dknn = pd.DataFrame({"model": ["a", "b"], "seed": [0, 0], "kind": ["clean"] * 2,
                             "metric": ["dknn_accuracy"] * 2, "value": [0.9, 0.1 + 0.2]})  # fmt: skip
    res.save(tmp_path / "new")
    assert (tmp_path / "new" / "dknn.csv.gz").is_file() and not (tmp_path / "new" / "dknn.csv").exists()
    with gzip.open(tmp_path / "new" / "dknn.csv.gz", "rt") as f:
        assert f.readline().strip() == "model,seed,kind,metric,value"
    pd.testing.assert_frame_equal(Results.load(tmp_path / "new").dknn, res.dknn)  # floats round-trip exactly
    # a folder saved before the table was compressed keeps its plain dknn.csv
    res.save(tmp_path / "old")
    (tmp_path / "old" / "dknn.csv").write_bytes(gzip.decompress((tmp_path / "old" / "dknn.csv.gz").read_bytes()))
    (tmp_path / "old" / "dknn.csv.gz").unlink()
    (tmp_path / "old" / "SHA256SUMS").unlink()  # and before results folders carried checksums
    pd.testing.assert_frame_equal(Results.load(tmp_path / "old").dknn, res.dknn)
