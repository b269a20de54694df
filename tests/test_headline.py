"""advbench.analysis.headline and advbench.reports.headline: what `advbench run` and `advbench show` print last."""

from __future__ import annotations

import pandas as pd

from advbench.analysis.headline import headline
from advbench.reports.headline import render_headline
from advbench.suite.cells.convergence import CONVERGENCE_COLUMNS


def _check(model: str, drop: float | None) -> dict:
    converged = None if drop is None else drop <= 0.005
    return {"seed": 0, "model": model, "attack": "dknn-adaptive", "eps": 0.1, "n": 200, "factor": 2, "params": "",
            "dknn_accuracy": 0.5, "dknn_accuracy_longer": None if drop is None else 0.5 - drop, "drop": drop,
            "tolerance": 0.005, "converged": converged, "seconds": 1.0}  # fmt: skip


def test_an_attack_on_the_dknn_that_has_not_converged_is_in_the_headline(empty_results):
    results = empty_results()
    results.convergence = pd.DataFrame(
        [_check("a", 0.0), _check("b", 0.02), _check("c", 0.031), _check("d", None)], columns=list(CONVERGENCE_COLUMNS)
    )
    h = headline(results, claims=False)
    assert (h.convergence_checks, h.not_converged, h.largest_drop) == (3, 2, 0.031)
    text = render_headline(h)
    assert "Attack on the DkNN not converged in 2 of 3 checks" in text and "up to 3.1 points" in text


def test_no_line_when_every_check_passed_or_none_ran(empty_results):
    results = empty_results()
    assert "not converged" not in render_headline(headline(results, claims=False))
    results.convergence = pd.DataFrame([_check("a", 0.004)], columns=list(CONVERGENCE_COLUMNS))
    h = headline(results, claims=False)
    assert (h.convergence_checks, h.not_converged) == (1, 0) and "not converged" not in render_headline(h)
