"""Claims: the decision rule, built-ins on synthetic and committed results, registration and entry points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from advbench.analysis.claims import (
    CLAIM_COLUMNS,
    CLAIMS,
    COMPONENT_COLUMNS,
    ClaimResult,
    NotApplicableError,
    baseline_model,
    claim_components,
    claims_table,
    decide,
    decide_components,
    disjoint_pairs,
    evaluate_claims,
    holm,
    model_roles,
    ood_auroc_gain,
    register_claim,
    regularised_model,
)
from advbench.analysis.example_summary import summarise_examples
from advbench.registry import Registry

RUN = Path(__file__).resolve().parents[1] / "reports" / "transfer" / "run" / "results"
BUILTINS = [
    "a-entangled-snnl-higher",
    "b-baseline-snnl-decreases-with-depth",
    "c-entangled-clean-accuracy",
    "d-entangled-dknn-detects-adversarial",
    "d-strongest-entangled-dknn-detects-the-strongest-attack",
    "e-fewer-neighbours-agree-off-distribution",
    "f-less-transfer-to-entangled-than-independent-baseline",
    "g-ood-lower-credibility",
    "h-cdd-ood-auroc-higher",
    "i-cdd-less-transfer-into",
    "j-supcon-ood-auroc-higher",
]


def _suite(*alphas: tuple[str, float]) -> dict[str, Any]:
    return {"models": [{"name": n, "recipe": {"snnl": {"alpha": a, "layers": None}}} for n, a in alphas]}


@dataclass
class _Results:
    suite: dict[str, Any] = field(default_factory=lambda: _suite(("vanilla", 0.0), ("tangled", -0.1)))
    training: pd.DataFrame = field(default_factory=pd.DataFrame)
    clean: pd.DataFrame = field(default_factory=pd.DataFrame)
    dknn: pd.DataFrame = field(default_factory=pd.DataFrame)
    dknn_examples: pd.DataFrame = field(default_factory=pd.DataFrame)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

    def example_summary(self, name: str) -> pd.DataFrame:
        return summarise_examples(self.dknn_examples, self.dknn)[name]


def test_decide_rule():
    assert decide([0.1, 0.2, 0.15], "greater")[1] == "supported"
    assert decide([0.1, 0.2, 0.15], "less")[1] == "contradicted"
    assert decide([-0.1, -0.2, -0.15], "less")[1] == "supported"
    _t, verdict, needed, reason = decide([0.1, -0.05, 0.2], "greater", smallest_effect=0.02)
    assert verdict == "inconclusive" and needed is not None and needed > 3 and "smallest effect" in reason
    assert decide([0.1], "greater")[1] == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        decide([1.0, 2.0], "up")  # type: ignore[arg-type]


def test_model_roles_from_alpha_not_names():
    assert model_roles(_suite(("a", 0.1), ("b", 0.0), ("c", -0.05))) == ("b", "c")
    with pytest.raises(NotApplicableError, match="alpha < 0"):
        model_roles(_suite(("a", 0.0), ("b", 0.1)))


def _training(per_seed_gap: list[float]) -> pd.DataFrame:
    rows = []
    for s, gap in enumerate(per_seed_gap):
        for model, shift in (("vanilla", 0.0), ("tangled", gap)):
            for epoch in (1, 2):
                # the last epoch counts; epoch 1 has the opposite ordering to catch a wrong pick
                sgn = 1 if epoch == 2 else -1
                rows.append({"model": model, "seed": s, "epoch": epoch,
                             "entanglement/l1": 0.6 + sgn * shift, "entanglement/l2": 0.4 + sgn * shift,
                             "entanglement_T/l1": 5.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_snnl_claims_on_synthetic_training():
    res = _Results(training=_training([0.05, 0.07, 0.06]))
    a = CLAIMS.get("a-entangled-snnl-higher").evaluate(res)
    assert a.verdict == "supported" and a.per_seed == pytest.approx((0.05, 0.07, 0.06)) and a.seeds == (0, 1, 2)
    b = CLAIMS.get("b-baseline-snnl-decreases-with-depth").evaluate(res)
    assert b.verdict == "supported" and b.per_seed == pytest.approx((-0.2, -0.2, -0.2))
    mixed = CLAIMS.get("a-entangled-snnl-higher").evaluate(_Results(training=_training([0.05, -0.07, 0.01])))
    assert mixed.verdict == "inconclusive"


def test_clean_accuracy_claim():
    clean = pd.DataFrame(
        [
            {"model": m, "seed": s, "test_accuracy": acc, "n": 1000}
            for s in range(3)
            for m, acc in (("vanilla", 0.90), ("tangled", 0.88 - 0.001 * s))
        ]
    )
    r = CLAIMS.get("c-entangled-clean-accuracy").evaluate(_Results(clean=clean))
    assert r.verdict == "contradicted" and r.estimate == pytest.approx(-0.021)


def test_not_applicable_says_why():
    out = {r.name: r for r in evaluate_claims(_Results())}
    assert set(BUILTINS) <= set(out)
    for name in BUILTINS:
        assert out[name].verdict == "not applicable" and out[name].reason.startswith("not applicable: ")
    assert "target_seed" in out["f-less-transfer-to-entangled-than-independent-baseline"].reason
    assert "nbr_pred" in out["e-fewer-neighbours-agree-off-distribution"].reason


def test_independent_transfer_claim_reads_cross_seed_cells():
    rows = []
    for s in range(6):
        t = (s + 1) % 6
        for target, rate in (("vanilla", 0.40), ("tangled", 0.35 + 0.005 * s)):
            rows.append({"source": "vanilla", "target": target, "attack": "pgd", "eps": 0.1, "seed": s,
                         "target_seed": t, "metric": "transfer_rate", "value": rate})  # fmt: skip
        # shared-path cells (same seed) must be ignored: huge opposite effect
        rows.append({"source": "vanilla", "target": "tangled", "attack": "pgd", "eps": 0.1, "seed": s,
                     "target_seed": s, "metric": "transfer_rate", "value": 0.9})  # fmt: skip
    r = CLAIMS.get("f-less-transfer-to-entangled-than-independent-baseline").evaluate(
        _Results(metrics=pd.DataFrame(rows))
    )
    # the ring's pairs 0→1, 1→2, ... share models; the units are the pairs that share none: 0→1, 2→3, 4→5
    assert r.seeds == (0, 2, 4) and r.per_seed == pytest.approx((-0.05, -0.04, -0.03))
    assert r.verdict == "supported" and "3 pairs that share no model (0→1, 2→3, 4→5) of the 6" in r.reason
    assert "all 6 pairs, not independent" in r.reason


def test_disjoint_pairs_share_no_seed():
    assert disjoint_pairs([(s, (s + 1) % 8) for s in range(8)]) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert disjoint_pairs([(s, (s + 1) % 3) for s in range(3)]) == [(0, 1)]  # an odd ring leaves a seed out
    every = [(s, t) for s in range(4) for t in range(4)]  # cross_seed: all
    assert disjoint_pairs(every) == [(0, 1), (2, 3)]


def test_neighbour_claim_with_new_columns():
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        for model, extra in (("vanilla", 0), ("tangled", 10)):
            for kind, agree in (("clean", 70), ("adversarial", 40 - extra), ("ood", 30 - extra)):
                for _ in range(20):
                    rows.append({"model": model, "seed": s, "input_set": kind, "kind": kind, "k": 75,
                                 "nbr_pred/l1": agree + rng.integers(-2, 3), "nbr_pred/l2": agree})  # fmt: skip
    r = CLAIMS.get("e-fewer-neighbours-agree-off-distribution").evaluate(_Results(dknn_examples=pd.DataFrame(rows)))
    assert r.verdict == "supported" and r.estimate == pytest.approx(10 / 75, abs=0.02)


def test_plugin_claim_by_decorator_and_entry_point(monkeypatch):
    import importlib.metadata

    reg: Registry = Registry("claim", group="test.claims")

    @register_claim("always-up", statement="s", metric="m", direction="greater", registry=reg)
    def _up(results):
        return pd.Series([1.0, 1.2, 0.9], index=[0, 1, 2])

    class _Dist:
        name = "demo-claims"

    class _EP:
        name, value, dist = "from-plugin", "demo:claim", _Dist()

        def load(self):
            from advbench.analysis.claims import Claim

            return Claim("from-plugin", "plugin statement", "plugin metric", "less", lambda r: pd.Series([1.0, 2.0]))

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [_EP()] if group == "test.claims" else [])
    table = claims_table(_Results(), registry=reg)
    assert list(table.columns) == list(CLAIM_COLUMNS)
    verdicts = dict(zip(table["name"], table["verdict"], strict=True))
    assert verdicts == {"always-up": "supported", "from-plugin": "inconclusive"}
    assert reg.entry("from-plugin").source == "demo-claims"


@pytest.mark.skipif(not RUN.is_dir(), reason="committed transfer run not present")
def test_committed_run_verdicts():
    from advbench.analysis.results import Results

    out: dict[str, ClaimResult] = {r.name: r for r in evaluate_claims(Results.load(RUN), BUILTINS)}
    verdicts = {n: r.verdict for n, r in out.items()}
    assert verdicts == {
        "a-entangled-snnl-higher": "supported",
        "b-baseline-snnl-decreases-with-depth": "supported",
        "c-entangled-clean-accuracy": "contradicted",
        "d-entangled-dknn-detects-adversarial": "contradicted",
        "d-strongest-entangled-dknn-detects-the-strongest-attack": "contradicted",
        "e-fewer-neighbours-agree-off-distribution": "contradicted",
        "f-less-transfer-to-entangled-than-independent-baseline": "supported",
        "g-ood-lower-credibility": "contradicted",
        "h-cdd-ood-auroc-higher": "not applicable",  # no regularised models in that suite
        "i-cdd-less-transfer-into": "not applicable",
        "j-supcon-ood-auroc-higher": "not applicable",
    }
    for r in out.values():
        if r.verdict != "not applicable":
            # (f)'s units are the 4 source/target pairs of the ring that share no model
            assert len(r.per_seed) == (4 if r.name.startswith("f-") else 8)
            assert (r.p_adjusted < 0.05) == (r.verdict in ("supported", "contradicted"))


def test_detection_claim_reads_successful_attack_auroc():
    """(d) reads dknn_set_records' credibility_auroc (fooling inputs only), not the all-examples AUROC."""
    rows = []
    for s in range(3):
        for model, auc, auc_all in (("vanilla", 0.80, 0.95), ("tangled", 0.85 + 0.01 * s, 0.60)):
            for eps in (0.1, 0.2):
                base = {"model": model, "seed": s, "input_set": f"pgd@{eps:g} from {model}", "kind": "adversarial",
                        "source": model, "attack": "pgd", "eps": eps, "n": 100, "n_clean": 300}  # fmt: skip
                rows.append({**base, "metric": "credibility_auroc", "value": auc})
                rows.append({**base, "metric": "credibility_auroc_all_examples", "value": auc_all})
                rows.append({**base, "metric": "mean_credibility", "value": 0.2})
    r = CLAIMS.get("d-entangled-dknn-detects-adversarial").evaluate(_Results(dknn=pd.DataFrame(rows)))
    assert "credibility_auroc" in r.metric and "successful" in r.metric
    assert r.per_seed == pytest.approx((0.05, 0.06, 0.07))


def test_detection_claim_reports_each_models_strongest_attack_on_the_detector():
    """A sensitivity note, not the claim: per seed and eps each model against the attack with its lowest AUROC."""
    rows = []
    aucs = {("vanilla", "pgd"): 0.80, ("vanilla", "fgsm"): 0.90, ("tangled", "pgd"): 0.88, ("tangled", "fgsm"): 0.70}
    for s in range(3):
        for (model, attack), auc in aucs.items():
            rows.append({"model": model, "seed": s, "input_set": f"{attack}@0.1 from {model}", "kind": "adversarial",
                         "source": model, "attack": attack, "eps": 0.1, "n": 100, "n_clean": 300,
                         "metric": "credibility_auroc", "value": auc + 0.01 * s})  # fmt: skip
    r = CLAIMS.get("d-entangled-dknn-detects-adversarial").evaluate(_Results(dknn=pd.DataFrame(rows)))
    # the claim: the mean over attacks, (0.88 + 0.70) / 2 - (0.80 + 0.90) / 2 = -0.06 in every seed
    assert r.per_seed == pytest.approx((-0.06, -0.06, -0.06))
    # the strongest attack on each detector: fgsm on tangled (0.70), pgd on vanilla (0.80): -0.10
    assert "against each model's strongest attack on the detector: -0.1000 [-0.1000, -0.1000] over 3 seeds" in r.note


def test_the_strongest_attack_claim_decides_on_each_models_most_evasive_attack():
    """d-strongest: per seed and eps each model against the white-box attack with its lowest AUROC; the note names
    which attacks were chosen; with a single attack there is no choice and the claim does not apply."""
    rows = []
    aucs = {("vanilla", "pgd"): 0.80, ("vanilla", "fgsm"): 0.90, ("tangled", "pgd"): 0.88, ("tangled", "fgsm"): 0.70}
    for s in range(3):
        for (model, attack), auc in aucs.items():
            for eps in (0.1, 0.2):
                rows.append({"model": model, "seed": s, "input_set": f"{attack}@{eps:g} from {model}",
                             "kind": "adversarial", "source": model, "attack": attack, "eps": eps, "n": 100,
                             "n_clean": 300, "metric": "credibility_auroc", "value": auc + 0.01 * s})  # fmt: skip
    claim = CLAIMS.get("d-strongest-entangled-dknn-detects-the-strongest-attack")
    r = claim.evaluate(_Results(dknn=pd.DataFrame(rows)))
    assert r.per_seed == pytest.approx((-0.10, -0.10, -0.10))  # fgsm on tangled (0.70) - pgd on vanilla (0.80)
    assert "vanilla's most evasive: pgd (6)" in r.note and "tangled's most evasive: fgsm (6)" in r.note
    one = pd.DataFrame([row for row in rows if row["attack"] == "pgd"])
    assert claim.evaluate(_Results(dknn=one)).verdict == "not applicable"


def _reg_suite() -> dict[str, Any]:
    def reg(name: str) -> dict[str, Any]:
        return {"name": name, "recipe": {"snnl": {"alpha": 0.0}, "regularisers": [{"name": name, "weight": 0.1}]}}

    return {
        "models": [
            reg("cdd") | {"name": "dd"},  # named differently from its regulariser: roles come from the recipe
            {"name": "plain", "recipe": {"snnl": {"alpha": 0.0}}},
            {"name": "tangled", "recipe": {"snnl": {"alpha": -0.05}}},
            reg("supcon"),
        ]
    }


def test_roles_skip_regularised_models():
    suite = _reg_suite()
    assert model_roles(suite) == ("plain", "tangled")
    assert baseline_model(suite) == "plain" and regularised_model(suite, "cdd") == "dd"
    with pytest.raises(NotApplicableError, match="center"):
        regularised_model(suite, "center")


def test_ood_auroc_claim_holds_for_every_detector():
    rows = []
    for s in range(3):
        for shift in ("digits", "rotation"):
            for model, cred, maha in (("plain", 0.80, 0.70), ("dd", 0.85 + 0.01 * s, 0.72), ("supcon", 0.9, 0.6)):
                for det, v in (("credibility", cred), ("mahalanobis", maha)):
                    rows.append({"model": model, "seed": s, "input_set": shift, "kind": "ood",
                                 "metric": f"{det}_auroc", "value": v})  # fmt: skip
        # an adversarial row must be ignored
        rows.append({"model": "dd", "seed": s, "input_set": "pgd", "kind": "adversarial",
                     "metric": "credibility_auroc", "value": 0.0})  # fmt: skip
    res = _Results(suite=_reg_suite(), dknn=pd.DataFrame(rows))
    h = CLAIMS.get("h-cdd-ood-auroc-higher").evaluate(res)
    assert h.verdict == "supported"  # mahalanobis gains 0.02 in every seed, credibility 0.05-0.07
    assert [c.name.split()[0] for c in h.components] == ["credibility", "mahalanobis"]
    assert [c.per_seed for c in h.components] == [pytest.approx((0.05, 0.06, 0.07)), pytest.approx((0.02,) * 3)]
    # the row shows the weakest support: credibility's (its spread gives it the larger p)
    assert h.decided_by.startswith("credibility") and h.per_seed == pytest.approx((0.05, 0.06, 0.07))
    j = CLAIMS.get("j-supcon-ood-auroc-higher").evaluate(res)  # credibility +0.1, mahalanobis -0.1
    assert j.verdict == "contradicted" and j.per_seed == pytest.approx((-0.1, -0.1, -0.1))
    assert j.decided_by.startswith("mahalanobis")
    assert ood_auroc_gain(res, "supcon", detectors=("credibility",)).per_seed.tolist() == pytest.approx([0.1] * 3)


def test_transfer_into_claim_uses_third_party_sources_only():
    rows = []
    for s in range(4):
        for source in ("tangled", "supcon", "plain", "dd"):
            for target, rate in (("plain", 0.5), ("dd", 0.4 + 0.01 * s)):
                if source == target:
                    continue
                # transfer between the two compared models themselves must not count: 0.99 would dominate
                value = 0.99 if source in ("plain", "dd") else rate
                rows.append({"source": source, "target": target, "attack": "pgd", "eps": 0.1, "seed": s,
                             "metric": "transfer_rate", "value": value})  # fmt: skip
    r = CLAIMS.get("i-cdd-less-transfer-into").evaluate(_Results(suite=_reg_suite(), metrics=pd.DataFrame(rows)))
    assert r.verdict == "supported" and r.per_seed == pytest.approx((-0.1, -0.09, -0.08, -0.07))
    assert "supcon, tangled" in r.reason


def test_empty_claims_list_means_none():
    assert evaluate_claims(_Results(), []) == []
    assert len(evaluate_claims(_Results())) == len(CLAIMS.list())


def test_a_plugin_regulariser_claims_the_same_of_itself():
    from advbench.analysis.claims import register_ood_auroc_claim, register_transfer_into_claim

    reg: Registry = Registry("claim", group="test.claims")
    suite = _reg_suite()
    suite["models"][3]["recipe"]["regularisers"][0]["name"] = "mine"
    ood = register_ood_auroc_claim("mine-ood", "mine", "My regulariser", registry=reg)
    into = register_transfer_into_claim("mine-into", "mine", "My regulariser", registry=reg)
    assert reg.list() == ["mine-into", "mine-ood"] and "My regulariser improves" in ood.statement
    r = into.evaluate(_Results(suite=suite))
    assert r.verdict == "not applicable" and "transfer_metrics.csv" in r.reason


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("raise", "error: its statistic RuntimeError: plugin bug"),
        ("exit", "error: its statistic called sys.exit(0)"),
        ("garbage", "returned str; expected a pandas Series"),
        ("strings", "error: its statistic ValueError"),
    ],
)
def test_a_broken_claim_is_an_error_verdict_and_the_others_go_on(body, words):
    """A claim's statistic is a plugin's code: raising, sys.exit or garbage make its verdict 'error', never the
    run's end (sys.exit(0) used to end the run with exit 0 and no report)."""
    import sys

    reg: Registry = Registry("claim", group=None)

    @register_claim("bad", statement="s", metric="m", direction="greater", registry=reg)
    def bad(results):
        if body == "raise":
            raise RuntimeError("plugin bug")
        if body == "exit":
            sys.exit(0)
        if body == "strings":
            return pd.Series(["a", "b"], index=[0, 1])
        return "garbage"

    @register_claim("good", statement="s", metric="m", direction="greater", registry=reg)
    def good(results):
        return pd.Series([0.1, 0.2, 0.15], index=[0, 1, 2])

    table = claims_table(_Results(), registry=reg).set_index("name")
    assert table.loc["bad", "verdict"] == "error" and words in table.loc["bad", "reason"]
    assert table.loc["good", "verdict"] in {"supported", "inconclusive"}


# -- composite claims and the family of a suite's claims (issue 35) ------------------------------------


def _null_components(rng: np.random.Generator, m: int, n_seeds: int = 8) -> dict[str, pd.Series]:
    return {f"c{j}": pd.Series(rng.normal(size=n_seeds), index=range(n_seeds)) for j in range(m)}


@pytest.mark.parametrize("m", [1, 2, 3])
def test_a_composite_rule_keeps_false_verdicts_at_five_percent_under_the_null(m):
    """Components with no effect (8 seeds): any verdict but inconclusive is false; at most 5% of them.

    The per-seed minimum of the components, decided as one series, says 'contradicted' far more often
    (the minimum of null components is biased below 0): the rule this replaced.
    """
    rng = np.random.default_rng(35 + m)
    n_sim = 3000
    false_rule = false_min = 0
    for _ in range(n_sim):
        comps = _null_components(rng, m)
        false_rule += decide_components(comps, "greater").p < 0.05
        false_min += decide(pd.concat(comps, axis=1).min(axis=1).to_numpy(), "greater")[1] != "inconclusive"
    se = np.sqrt(0.05 * 0.95 / n_sim)
    assert false_rule / n_sim <= 0.05 + 3 * se
    if m > 1:
        assert false_min / n_sim > 0.3  # 37% with two components, 79% with three (issue 35's simulation)


def test_correlated_null_components_keep_the_level_too():
    """(e) and (g) test both models' drops and their contrast, which share data: any dependence is allowed."""
    rng = np.random.default_rng(7)
    n_sim, wrong = 3000, 0
    for _ in range(n_sim):
        base, ent = rng.normal(size=8), rng.normal(size=8)
        comps = {"base": pd.Series(base), "ent": pd.Series(ent), "ent-base": pd.Series(ent - base)}
        wrong += decide_components(comps, "greater").p < 0.05
    assert wrong / n_sim <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / n_sim)


def _composite(**parts: list[float]) -> Any:
    return lambda _r: _all_evidence({k: pd.Series(v) for k, v in parts.items()})


def _all_evidence(components: dict[str, pd.Series]) -> Any:
    from advbench.analysis.claims import Evidence

    return Evidence(pd.concat(components, axis=1).min(axis=1), components=components)


def test_a_composite_claim_is_supported_only_when_every_component_is():
    reg: Registry = Registry("claim", group="advbench.test-claims")
    up, flat, down = [0.1, 0.12, 0.11, 0.13], [0.05, -0.04, 0.02, -0.03], [-0.2, -0.22, -0.21, -0.19]
    for name, parts in (("all-up", {"x": up, "y": up}), ("one-flat", {"x": up, "y": flat}),
                        ("one-down", {"x": up, "y": down})):  # fmt: skip
        register_claim(name, statement=name, metric="m", direction="greater", registry=reg)(_composite(**parts))
    out = {r.name: r for r in evaluate_claims(_Results(), ["all-up", "one-flat", "one-down"], registry=reg)}
    assert out["all-up"].verdict == "supported" and "every component" in out["all-up"].reason
    assert out["one-flat"].verdict == "inconclusive" and out["one-flat"].decided_by == "y"
    assert out["one-down"].verdict == "contradicted" and out["one-down"].decided_by == "y"
    assert "component 'y'" in out["one-down"].reason and out["one-down"].estimate == pytest.approx(-0.205)
    assert [c.verdict for c in out["one-down"].components] == ["supported", "contradicted"]


def test_the_suites_claims_are_decided_as_one_family():
    """Holm across the claims: a claim significant alone is inconclusive when the family does not hold it."""
    reg: Registry = Registry("claim", group="advbench.test-claims")
    strong, weak = [0.30, 0.31, 0.29, 0.30, 0.32], [0.03, 0.05, -0.005, 0.04, 0.03]  # weak: p 0.035
    for name, v in (("strong", strong), ("weak", weak), ("other", [0.1, -0.1, 0.05, -0.05, 0.0])):
        register_claim(name, statement=name, metric="m", direction="greater", registry=reg)(
            lambda _r, v=v: pd.Series(v)
        )
    alone = {r.name: r for r in evaluate_claims(_Results(), ["weak"], registry=reg)}["weak"]
    assert alone.p < 0.05 and alone.verdict == "supported" and alone.p_adjusted == alone.p
    out = {r.name: r for r in evaluate_claims(_Results(), ["strong", "weak", "other"], registry=reg)}
    expected = holm([out[n].p for n in ("strong", "weak", "other")])
    assert [out[n].p_adjusted for n in ("strong", "weak", "other")] == pytest.approx(expected)
    assert out["strong"].verdict == "supported"
    assert out["weak"].p_adjusted >= 0.05 and out["weak"].verdict == "inconclusive"
    assert "not after the correction" in out["weak"].reason and "3 claims" in out["weak"].reason


def test_holm_matches_the_step_down_and_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.03, 0.06, 0.06 (monotone)
    assert holm(p)[[4, 0, 2, 1]] == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert np.isnan(holm(p)[3])
    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 9):
        q = rng.uniform(size=m) ** 3
        q[rng.integers(m)] = q[0]  # ties
        assert holm(q) == pytest.approx(multipletests(q, method="holm")[1], abs=1e-15)
    assert holm([]).shape == (0,)


def test_the_table_has_kinds_adjusted_p_and_one_row_per_component():
    table = claims_table(
        _Results(training=_training([0.05, 0.07, 0.06])),
        ["a-entangled-snnl-higher", "b-baseline-snnl-decreases-with-depth"],
    )
    assert table.set_index("name")["kind"].to_dict() == {
        "a-entangled-snnl-higher": "manipulation check",
        "b-baseline-snnl-decreases-with-depth": "description",
    }
    assert {"p_adjusted", "p_support", "p_contradict", "components", "decided_by"} <= set(table.columns)
    comps = claim_components(table)
    assert list(comps.columns) == list(COMPONENT_COLUMNS)
    per_claim = comps.groupby("claim").size().to_dict()
    assert per_claim == {"a-entangled-snnl-higher": 2, "b-baseline-snnl-decreases-with-depth": 1}
    assert CLAIMS.get("c-entangled-clean-accuracy").kind == "finding"
    with pytest.raises(ValueError, match="kind"):
        register_claim("x", statement="s", metric="m", direction="greater", kind="hunch")  # type: ignore[arg-type]
