"""advbench.suite.cells.convergence: the convergence check of the attacks on the DkNN (planned, scaled, reported)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from advbench.attacks import ATTACKS
from advbench.config import Suite
from advbench.reports.markdown import _convergence_section
from advbench.suite.cells.convergence import CONVERGENCE_COLUMNS, longer_params
from advbench.suite.context import CellContext, RunOptions

ROOT = Path(__file__).resolve().parents[1]


def test_the_longer_attack_scales_steps_and_restarts_it_takes():
    adaptive = ATTACKS.get("dknn-adaptive")
    assert longer_params(adaptive, {"steps": 10, "kappa": 2.0}, 2) == {"steps": 20, "restarts": 4, "kappa": 2.0}
    assert longer_params(adaptive, {}, 3) == {"steps": 120, "restarts": 6}  # from the defaults (40, 2)
    assert longer_params(ATTACKS.get("pgd"), {"steps": 7}, 2)["steps"] == 14
    assert longer_params(ATTACKS.get("fgsm"), {}, 2) == {}  # nothing to lengthen


def _plan(**convergence):
    doc = yaml.safe_load((ROOT / "suites" / "quick.yaml").read_text())
    doc.setdefault("evaluations", {})["convergence"] = convergence
    ctx = CellContext.create(Suite.model_validate(doc), RunOptions(cache_dir="/tmp/unused", progress=False, threads=1))
    return ctx.plan, ctx.suite


def test_every_attack_on_the_dknn_is_checked_on_the_first_seed_only():
    plan, suite = _plan()
    cells = plan.by_kind("convergence")
    adaptive = [a for a in suite.attacks if a.name == "dknn-adaptive"]
    assert adaptive and len(cells) == len(suite.models) * sum(len(a.eps) for a in adaptive)
    assert {c.params["seed"] for c in cells} == {suite.seeds[0]}
    for c in cells:
        p = c.params
        attack = plan.find("attack", seed=p["seed"], model=p["model"], attack=p["attack"], eps=p["eps"])
        assert c.deps == [
            attack.key,
            plan.find("train", model=p["model"], seed=p["seed"]).key,
            plan.find("dknn-index", model=p["model"], seed=p["seed"]).key,
        ]
        assert c.spec["n"] == 200 and c.spec["check"] == {"n_examples": 200, "factor": 2, "tolerance": 0.005}


def test_the_check_is_keyed_by_its_settings_and_can_be_turned_off():
    base = {c.label: c.key for c in _plan()[0].by_kind("convergence")}
    more = {c.label: c.key for c in _plan(n_examples=100)[0].by_kind("convergence")}
    assert base.keys() == more.keys() and not set(base.values()) & set(more.values())
    assert _plan(enabled=False)[0].by_kind("convergence") == []


def _row(model: str, eps: float, acc: float, longer: float) -> dict:
    return {"seed": 0, "model": model, "attack": "dknn-adaptive", "eps": eps, "n": 200, "factor": 2,
            "params": "steps=20, restarts=4", "dknn_accuracy": acc, "dknn_accuracy_longer": longer,
            "drop": acc - longer, "tolerance": 0.005, "converged": acc - longer <= 0.005, "seconds": 1.0}  # fmt: skip


SUITE = {"models": [{"name": "baseline"}, {"name": "entangled"}], "attacks": [{"name": "dknn-adaptive", "eps": [0.1]}]}


def test_the_report_flags_an_attack_that_is_not_converged(empty_results):
    results = empty_results(**SUITE)
    results.convergence = pd.DataFrame(
        [_row("entangled", 0.1, 0.40, 0.40), _row("baseline", 0.1, 0.50, 0.47)], columns=list(CONVERGENCE_COLUMNS)
    )
    text = "\n".join(_convergence_section(results))
    assert "## Convergence of the attacks on the DkNN" in text and "**1 of 2 not converged**" in text
    lines = [line for line in text.splitlines() if line.startswith("| baseline") or line.startswith("| entangled")]
    assert lines[0].startswith("| baseline")  # the suite's model order
    assert "| 50.0 " in lines[0] and "| 47.0 " in lines[0] and "| +3.0 " in lines[0] and "not converged" in lines[0]
    assert lines[1].rstrip(" |").endswith("converged") and "not" not in lines[1]


def test_the_report_says_when_the_check_was_not_run(empty_results):
    text = "\n".join(_convergence_section(empty_results(**SUITE)))
    assert "Not measured in this run (dknn-adaptive)" in text and "over-estimate" in text
    assert _convergence_section(empty_results(attacks=[{"name": "pgd", "eps": [0.1]}])) == []


@pytest.mark.parametrize("column", ["dknn_accuracy", "drop", "converged"])
def test_the_table_columns_are_stable(column):
    assert column in CONVERGENCE_COLUMNS
