"""Evaluation-quality checks: each one triggered by a situation built to raise it, and passed otherwise."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import advbench.attacks.builtin  # noqa: F401  (registers the built-ins)
from advbench.analysis.stats import summarize
from advbench.attacks import ThreatModel, create_attack, generate
from advbench.attacks.dknn_adaptive import DkNNAdaptive, DkNNKnowledge
from advbench.evaluation.dknn import DkNN
from advbench.evaluation.flags import (
    CHECK_COLUMNS,
    Check,
    above_chance_at_full_range,
    accuracy_table,
    annotate,
    evaluation_flags,
    flags_frame,
    gradient_flags,
    iterative_weaker_than_single_step,
    raised,
    score_based_stronger,
    success_not_increasing,
    transfer_stronger_than_white_box,
)
from advbench.evaluation.transfer import OUTCOME_COLUMNS, outcomes_for, transfer_metrics

SINGLE = frozenset({"single-step", "gradient-based"})
ITER = frozenset({"iterative", "gradient-based"})
PROPS = {"fgsm": SINGLE, "pgd": ITER, "pgd-10": ITER, "bim": ITER, "pgd-0": ITER, "bim-5": ITER}


def _flagged(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.outcome == "flagged"]


N = 20


def _cells(acc: dict) -> pd.DataFrame:
    """Outcomes with the given adversarial accuracy per (source, target, attack, eps); clean all correct."""
    frames = []
    for (s, t, a, e), v in acc.items():
        k = round(v * N)
        frames.append(
            pd.DataFrame(
                {
                    "seed": 0,
                    "source": s,
                    "attack": a,
                    "eps": e,
                    "target": t,
                    "example": np.arange(N),
                    "y": 0,
                    "clean_correct": True,
                    "adv_correct": np.arange(N) < k,
                    "source_success": True,
                }
            )
        )
    return transfer_metrics(pd.concat(frames, ignore_index=True)[list(OUTCOME_COLUMNS)])


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), x)
    return (x + eps * g.sign()).clamp(0, 1).detach()


def bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int, random_start: bool):
    """BIM/PGD by hand; ``steps=0`` with a random start is the broken "PGD with zero steps"."""
    g = torch.Generator().manual_seed(0)
    x_adv = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1) if random_start else x.clone()
    for _ in range(steps):
        x_adv = fgsm(model, x_adv, y, eps / 4)
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


class Masked(nn.Module):
    """Predicts like the base model but through argmax: the loss is flat in x, every input gradient 0."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x):
        z = self.base(x)
        return 50.0 * nn.functional.one_hot(z.argmax(1), z.shape[1]).float() + 0.0 * z


class SqrtInput(nn.Module):
    """Feeds sqrt(x): the derivative is infinite at the many 0-valued digit pixels."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x.sqrt())


class Quantised(nn.Module):
    """Hard quantisation of the input, round(4x)/4, with no straight-through estimator: gradients are 0."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.num_classes = getattr(base, "num_classes", 10)

    def forward(self, x):
        return self.base(torch.round(x * 4) / 4)


# -- iterative attack weaker than a single-step one (by metadata) ---------------------------------------
def test_iterative_weaker_than_single_step_synthetic():
    m = accuracy_table(
        _cells(
            {
                ("a", "a", "fgsm", 0.1): 0.3,
                ("a", "a", "pgd-10", 0.1): 0.6,
                ("a", "a", "bim", 0.1): 0.1,
                ("b", "a", "pgd-10", 0.1): 0.9,
            }
        )
    )  # a transfer cell is not compared
    checks = iterative_weaker_than_single_step(m, PROPS)
    assert sorted((c.attack, c.outcome) for c in checks) == [("bim", "passed"), ("pgd-10", "flagged")]
    f = _flagged(checks)[0]
    assert (f.check, f.model, f.source, f.reference, f.eps, f.seed) == (
        "iterative_weaker_than_single_step",
        "a",
        "a",
        "fgsm",
        0.1,
        0,
    )
    assert f.gap == pytest.approx(0.3) and f.value == pytest.approx(0.6) and f.severity == "error"
    assert _flagged(iterative_weaker_than_single_step(m, PROPS, tolerance=0.35)) == []
    # by metadata, not by name: an attack named "pgd-10" declared single-step is not compared as iterative
    assert iterative_weaker_than_single_step(m, {"fgsm": SINGLE, "pgd-10": SINGLE, "bim": ITER})[0].attack == "bim"


def test_iterative_weaker_real_zero_step_pgd(digits_model, digits_splits):
    x, y = digits_splits.test.x[:200], digits_splits.test.y[:200]
    eps, t = 0.2, {"cnn": digits_model}
    sets = {
        "fgsm": fgsm(digits_model, x, y, eps),
        "pgd-0": bim(digits_model, x, y, eps, steps=0, random_start=True),  # broken: random noise only
        "bim-5": bim(digits_model, x, y, eps, steps=5, random_start=False),
    }
    out = pd.concat(
        [
            outcomes_for(seed=0, source="cnn", attack=a, eps=eps, x_adv=xa, x_clean=x, y=y, targets=t)
            for a, xa in sets.items()
        ]
    )
    checks = iterative_weaker_than_single_step(accuracy_table(transfer_metrics(out)), PROPS)
    assert [c.attack for c in _flagged(checks)] == ["pgd-0"] and len(checks) == 2


# -- success not increasing with eps -------------------------------------------------------------------
def test_success_not_increasing():
    bad = accuracy_table(
        _cells({("a", "a", "pgd", 0.1): 0.5, ("a", "a", "pgd", 0.2): 0.7, ("a", "a", "pgd", 0.3): 0.2})
    )
    checks = success_not_increasing(bad)
    assert [(c.eps, c.outcome) for c in checks] == [(0.2, "flagged"), (0.3, "passed")]
    assert checks[0].gap == pytest.approx(0.2) and checks[0].reference == "eps=0.1"
    good = accuracy_table(
        _cells(
            {
                ("a", "a", "pgd", 0.1): 0.5,
                ("a", "a", "pgd", 0.2): 0.5,
                ("a", "a", "pgd", 0.3): 0.0,
                ("b", "a", "pgd", 0.1): 0.2,
                ("b", "a", "pgd", 0.2): 0.6,
            }
        )
    )  # transfer: not checked by default
    assert _flagged(success_not_increasing(good)) == []
    assert len(_flagged(success_not_increasing(good, white_box_only=False))) == 1


# -- transfer stronger than white box ------------------------------------------------------------------
def test_transfer_stronger_than_white_box():
    m = accuracy_table(
        _cells(
            {
                ("t", "t", "pgd", 0.1): 0.4,
                ("s", "t", "pgd", 0.1): 0.2,
                ("u", "t", "pgd", 0.1): 0.6,
                ("s", "s", "pgd", 0.1): 0.0,
                ("t", "s", "pgd", 0.1): 0.5,
            }
        )
    )
    checks = transfer_stronger_than_white_box(m)
    assert len(checks) == 3
    assert [(c.model, c.source) for c in _flagged(checks)] == [("t", "s")]
    assert _flagged(checks)[0].gap == pytest.approx(0.2)
    assert _flagged(transfer_stronger_than_white_box(m, tolerance=0.25)) == []


# -- score-based stronger than gradient-based -----------------------------------------------------------
def test_score_based_stronger():
    m = accuracy_table(
        _cells({("a", "a", "pgd", 0.1): 0.5, ("a", "a", "fgsm", 0.1): 0.6, ("a", "a", "torchattacks.Square", 0.1): 0.2})
    )
    props = PROPS | {"torchattacks.Square": frozenset({"iterative", "score-based"})}
    (c,) = score_based_stronger(m, props)
    assert (c.attack, c.reference, c.outcome) == ("torchattacks.Square", "pgd", "flagged")
    assert c.gap == pytest.approx(0.3)
    # the registry knows Square is score-based: no mapping needed
    fl = evaluation_flags(transfer_metrics_of(m), num_classes=10)
    assert "score_based_stronger" in set(raised(fl)["check"])


def transfer_metrics_of(acc: pd.DataFrame) -> pd.DataFrame:
    return acc.assign(metric="adv_accuracy").drop(columns="quantity")


# -- above chance at eps = 1 ---------------------------------------------------------------------------
def test_above_chance_at_full_range_synthetic():
    m = accuracy_table(
        _cells(
            {
                ("a", "a", "pgd", 1.0): 0.5,
                ("b", "b", "pgd", 1.0): 0.1,
                ("a", "a", "pgd", 0.1): 0.9,
                ("a", "b", "pgd", 1.0): 0.9,
            }
        )
    )
    checks = above_chance_at_full_range(m, num_classes=10)
    assert [(c.model, c.outcome) for c in checks] == [("a", "flagged"), ("b", "passed")]
    assert checks[0].gap == pytest.approx(0.4) and checks[0].severity == "error"
    with pytest.raises(ValueError, match="num_classes"):
        above_chance_at_full_range(m, num_classes=1)


def test_masked_model_raises_chance_and_gradient_flags(digits_model, digits_splits):
    x, y = digits_splits.test.x[:200], digits_splits.test.y[:200]
    masked = Masked(digits_model).eval()
    out = pd.concat(
        [
            outcomes_for(
                seed=0, source=name, attack="fgsm", eps=1.0, x_adv=fgsm(m, x, y, 1.0), x_clean=x, y=y, targets={name: m}
            )
            for name, m in (("masked", masked), ("cnn", digits_model))
        ]
    )
    checks = above_chance_at_full_range(accuracy_table(transfer_metrics(out)), num_classes=10)
    assert [c.model for c in _flagged(checks)] == ["masked"]  # FGSM cannot move the masked model; the real one falls

    grad = gradient_flags(masked, x, y, name="masked")
    assert [(c.check, c.value, c.outcome, c.severity) for c in grad] == [
        ("zero_gradients", 1.0, "flagged", "error"),
        ("nonfinite_gradients", 0.0, "passed", ""),
    ]
    assert _flagged(gradient_flags(digits_model, x, y, name="cnn")) == []
    assert not digits_model.training and not masked.training


def test_quantised_input_raises_the_gradient_flags(digits_model, digits_splits):
    """round(4x)/4 without a straight-through estimator: zero gradients, and transfer beats white-box."""
    x, y = digits_splits.test.x[:200], digits_splits.test.y[:200]
    quant = Quantised(digits_model).eval()
    grad = raised(flags_frame(gradient_flags(quant, x, y, name="quantised", seed=0)))
    assert list(grad["check"]) == ["zero_gradients"] and grad["value"].item() == 1.0
    # white-box PGD is stuck on the quantised model; PGD crafted on the plain model transfers to it
    eps, targets = 0.2, {"quantised": quant, "cnn": digits_model}
    pgd = create_attack("pgd", steps=10)
    frames = []
    for source, model in (("quantised", quant), ("cnn", digits_model)):
        res = generate(model, pgd, x, y, ThreatModel(eps=eps), seed=0)
        frames.append(
            outcomes_for(seed=0, source=source, attack="pgd", eps=eps, x_adv=res.x_adv, x_clean=x, y=y, targets=targets)
        )
    fl = raised(evaluation_flags(transfer_metrics(pd.concat(frames)), num_classes=10, tolerance=0.02))
    hit = fl[fl["check"] == "transfer_stronger_than_white_box"]
    assert list(zip(hit["model"], hit["source"])) == [("quantised", "cnn")]


def test_nonfinite_gradients(digits_model, digits_splits):
    x, y = digits_splits.test.x[:50], digits_splits.test.y[:50]
    checks = _flagged(gradient_flags(SqrtInput(digits_model).eval(), x, y, name="sqrt", seed=2))
    assert [c.check for c in checks] == ["nonfinite_gradients"]
    assert checks[0].value == 1.0 and checks[0].seed == 2
    assert gradient_flags(digits_model, x[:0], y[:0], name="cnn") == []
    with pytest.raises(ValueError, match="same length"):
        gradient_flags(digits_model, x, y[:3], name="cnn")


def test_constant_model_has_zero_gradients():
    const = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        const[1].weight.zero_()
    checks = gradient_flags(
        const.eval(), torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long), name="c", threshold=0.5
    )
    assert [(c.check, c.value) for c in _flagged(checks)] == [("zero_gradients", 1.0)]


# -- the adaptive attack on the DkNN ----------------------------------------------------------------------
class WeakAdaptive(DkNNAdaptive):
    """A deliberately broken adaptive attack (a test plugin): built with one tiny step, one target, one start."""


def _dknn_rows(model, dk, know, x, y, attacks, eps) -> pd.DataFrame:
    rows = []
    for label, attack in attacks.items():
        if "adaptive-dknn" in attack.properties:
            attack.set_knowledge(know)
        res = generate(model, attack, x, y, ThreatModel(eps=eps), seed=0)
        rows.append(
            {
                "model": "cnn",
                "seed": 0,
                "input_set": f"{label}@{eps:g} from cnn",
                "kind": "adversarial",
                "metric": "dknn_accuracy",
                "value": dk.predict(res.x_adv).accuracy(y),
                "n": len(y),
                "source": "cnn",
                "attack": label,
                "eps": eps,
            }
        )
    return pd.DataFrame(rows)


def test_weakened_adaptive_attack_raises_the_adaptive_flag(digits_model, digits_splits):
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        s = digits_splits
        dk = DkNN(digits_model, k=25).fit(s.train.x, s.train.y).calibrate(s.calibration.x, s.calibration.y)
        know = DkNNKnowledge.from_dknn(dk, s.train.x, s.train.y)
        x, y = s.test.x[:150], s.test.y[:150]
        attacks = {
            "fgsm": create_attack("fgsm"),
            "pgd": create_attack("pgd", steps=10),
            "weak-adaptive": WeakAdaptive(steps=1, step_size=1e-4, n_targets=1, restarts=1),
            "dknn-adaptive": create_attack("dknn-adaptive", steps=10),
        }
        dknn = _dknn_rows(digits_model, dk, know, x, y, attacks, 0.2)
    finally:
        faiss.omp_set_num_threads(before)
    props = {label: type(a).properties for label, a in attacks.items()}
    checks = evaluation_flags(None, dknn=dknn, properties=props)
    adaptive = checks[checks["check"] == "adaptive_weaker_than_non_adaptive"]
    weak = adaptive[adaptive["attack"] == "weak-adaptive"].set_index("reference")
    assert weak.loc["pgd", "outcome"] == "flagged" and weak.loc["fgsm", "outcome"] == "flagged"
    assert weak.loc["pgd", "value"] > weak.loc["pgd", "reference_value"]
    # the real attack passes against both non-adaptive attacks (adaptive attacks are not compared to each other)
    strong = adaptive[adaptive["attack"] == "dknn-adaptive"]
    assert sorted(strong["reference"]) == ["fgsm", "pgd"] and (strong["outcome"] == "passed").all()


# -- tables --------------------------------------------------------------------------------------------
def test_evaluation_flags_lists_every_check_and_annotate_keeps_every_number():
    m = _cells(
        {
            ("a", "a", "fgsm", 0.1): 0.3,
            ("a", "a", "pgd", 0.1): 0.6,
            ("a", "a", "pgd", 1.0): 0.5,
            ("b", "a", "pgd", 0.1): 0.1,
            ("b", "b", "pgd", 0.1): 0.0,
            ("b", "b", "pgd", 1.0): 0.0,
        }
    )
    fl = evaluation_flags(m, num_classes=10)
    assert list(fl.columns) == list(CHECK_COLUMNS)
    assert set(fl["outcome"]) == {"passed", "flagged"}
    assert sorted(raised(fl)["check"]) == [
        "above_chance_at_full_range",
        "iterative_weaker_than_single_step",
        "transfer_stronger_than_white_box",
    ]
    assert fl["eps"].dtype == np.float64 and fl["gap"].dtype == np.float64
    assert set(fl["check"]) >= {"success_not_increasing"}  # ran and passed: listed too
    flat = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        flat[1].weight.zero_()
    grad = gradient_flags(flat, torch.rand(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), name="b")
    fl = pd.concat([fl, flags_frame(grad)], ignore_index=True)
    ann = annotate(m, fl)
    assert len(ann) == len(m) and ann.drop(columns="flags").equals(m)  # nothing dropped or changed
    by = ann[ann.metric == "adv_accuracy"].set_index(["source", "target", "attack", "eps"])["flags"]
    assert by[("a", "a", "pgd", 0.1)] == "iterative_weaker_than_single_step"
    assert by[("a", "a", "pgd", 1.0)] == "above_chance_at_full_range"
    assert by[("a", "a", "fgsm", 0.1)] == ""
    assert by[("b", "a", "pgd", 0.1)] == "transfer_stronger_than_white_box"
    assert by[("b", "b", "pgd", 1.0)] == "zero_gradients"  # a model-level flag annotates every cell it targets
    summ = annotate(summarize(m), fl)  # a summary across seeds (no seed column) collects every seed's flags
    assert (
        summ.set_index(["source", "target", "attack", "eps", "metric"]).loc[
            ("b", "a", "pgd", 0.1, "transfer_rate"), "flags"
        ]
        == "transfer_stronger_than_white_box"
    )
    assert (annotate(m, fl.iloc[:0])["flags"] == "").all()
    clean = _cells({("a", "a", "fgsm", 0.1): 0.3, ("a", "a", "pgd", 0.1): 0.1, ("a", "a", "pgd", 1.0): 0.0})
    out = evaluation_flags(clean, num_classes=10)
    assert len(out) and raised(out).empty


def test_committed_style_dknn_table_is_read():
    """The DkNN metrics table (dknn.csv columns) feeds the DkNN quantity of every check."""
    dknn = pd.DataFrame(
        {
            "model": "m",
            "seed": 0,
            "input_set": ["clean", "fgsm@0.1 from m", "dknn-adaptive@0.1 from m", "dknn-adaptive@0.1 from s"],
            "kind": ["clean", "adversarial", "adversarial", "adversarial"],
            "metric": "dknn_accuracy",
            "value": [0.9, 0.2, 0.4, 0.3],
            "n": 100,
            "source": [np.nan, "m", "m", "s"],
            "attack": [np.nan, "fgsm", "dknn-adaptive", "dknn-adaptive"],
            "eps": [np.nan, 0.1, 0.1, 0.1],
            "n_clean": np.nan,
        }
    )
    fl = raised(evaluation_flags(None, dknn=dknn))
    assert sorted(fl["check"]) == ["adaptive_weaker_than_non_adaptive", "transfer_stronger_than_white_box"]
    assert (fl["quantity"] == "dknn").all()


def _dknn_sets(adaptive: float) -> pd.DataFrame:
    """DkNN metrics of one model: FGSM leaves 0.5, the adaptive attack (under a suite label) ``adaptive``."""
    return pd.DataFrame(
        {
            "model": "m",
            "seed": 0,
            "input_set": ["clean", "fgsm@0.1 from m", "dknn-credible@0.1 from m"],
            "kind": ["clean", "adversarial", "adversarial"],
            "metric": "dknn_accuracy",
            "value": [0.9, 0.5, adaptive],
            "n": 100,
            "source": [np.nan, "m", "m"],
            "attack": [np.nan, "fgsm", "dknn-credible"],
            "eps": [np.nan, 0.1, 0.1],
        }
    )


@pytest.mark.parametrize(("adaptive", "robust", "flagged"), [(0.30, 0.25, True), (0.30, 0.295, False)])
def test_the_worst_case_over_attacks_checks_the_adaptive_attack(adaptive, robust, flagged):
    """Other attacks breaking what the adaptive attack leaves correct (more than 1 point) is flagged with both numbers;
    the adaptive attack is known by its properties under a suite label."""
    worst = pd.DataFrame(
        {"quantity": ["dknn", "classifier"], "model": "m", "seed": 0, "eps": 0.1, "robust_accuracy": [robust, 0.0]}
    )
    props = {"dknn-credible": frozenset({"adaptive-dknn", "iterative", "gradient-based"})}
    out = evaluation_flags(None, dknn=_dknn_sets(adaptive), properties=props, worst_case=worst)
    rows = out[out["check"] == "adaptive_above_worst_case"]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["attack"], row["value"], row["reference_value"]) == ("dknn-credible", adaptive, robust)
    assert row["gap"] == pytest.approx(adaptive - robust)
    assert (row["outcome"] == "flagged") is flagged
    # without the worst case the check does not run
    plain = evaluation_flags(None, dknn=_dknn_sets(adaptive), properties=props)
    assert "adaptive_above_worst_case" not in set(plain["check"])
