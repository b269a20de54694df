"""Evaluation-quality flags: each one triggered by a situation built to raise it, and silent otherwise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from advbench.evaluation.flags import (
    FLAG_COLUMNS,
    Flag,
    above_chance_at_full_range,
    annotate,
    evaluation_flags,
    flags_frame,
    gradient_flags,
    iterative_weaker_than_fgsm,
    success_not_increasing,
    transfer_stronger_than_white_box,
)
from advbench.evaluation.stats import summarize
from advbench.evaluation.transfer import OUTCOME_COLUMNS, outcomes_for, transfer_metrics

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


# -- iterative attack weaker than FGSM -----------------------------------------------------------------
def test_iterative_weaker_than_fgsm_synthetic():
    m = _cells(
        {
            ("a", "a", "fgsm", 0.1): 0.3,
            ("a", "a", "pgd-10", 0.1): 0.6,
            ("a", "a", "bim", 0.1): 0.1,
            ("b", "a", "pgd-10", 0.1): 0.9,
        }
    )  # a transfer cell is not compared
    flags = iterative_weaker_than_fgsm(m)
    assert len(flags) == 1
    f = flags[0]
    assert (f.flag, f.model, f.source, f.attack, f.eps, f.seed) == (
        "iterative_weaker_than_fgsm",
        "a",
        "a",
        "pgd-10",
        0.1,
        0,
    )
    assert f.value == pytest.approx(0.3) and f.severity == "error"
    assert iterative_weaker_than_fgsm(m, tolerance=0.35) == []


def test_iterative_weaker_than_fgsm_real_zero_step_pgd(digits_model, digits_splits):
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
    flags = iterative_weaker_than_fgsm(transfer_metrics(out))
    assert [f.attack for f in flags] == ["pgd-0"]


# -- success not increasing with eps -------------------------------------------------------------------
def test_success_not_increasing():
    bad = _cells({("a", "a", "pgd", 0.1): 0.5, ("a", "a", "pgd", 0.2): 0.7, ("a", "a", "pgd", 0.3): 0.2})
    flags = success_not_increasing(bad)
    assert [(f.flag, f.eps) for f in flags] == [("success_not_increasing", 0.2)]
    assert flags[0].value == pytest.approx(0.2)
    good = _cells(
        {
            ("a", "a", "pgd", 0.1): 0.5,
            ("a", "a", "pgd", 0.2): 0.5,
            ("a", "a", "pgd", 0.3): 0.0,
            ("b", "a", "pgd", 0.1): 0.2,
            ("b", "a", "pgd", 0.2): 0.6,
        }
    )  # transfer: not checked by default
    assert success_not_increasing(good) == []
    assert len(success_not_increasing(good, white_box_only=False)) == 1


# -- transfer stronger than white box ------------------------------------------------------------------
def test_transfer_stronger_than_white_box():
    m = _cells(
        {
            ("t", "t", "pgd", 0.1): 0.4,
            ("s", "t", "pgd", 0.1): 0.2,
            ("u", "t", "pgd", 0.1): 0.6,
            ("s", "s", "pgd", 0.1): 0.0,
            ("t", "s", "pgd", 0.1): 0.5,
        }
    )
    flags = transfer_stronger_than_white_box(m)
    assert [(f.model, f.source) for f in flags] == [("t", "s")]
    assert flags[0].value == pytest.approx(0.2)
    assert transfer_stronger_than_white_box(m, tolerance=0.25) == []


# -- above chance at eps = 1 ---------------------------------------------------------------------------
def test_above_chance_at_full_range_synthetic():
    m = _cells(
        {
            ("a", "a", "pgd", 1.0): 0.5,
            ("b", "b", "pgd", 1.0): 0.1,
            ("a", "a", "pgd", 0.1): 0.9,
            ("a", "b", "pgd", 1.0): 0.9,
        }
    )
    flags = above_chance_at_full_range(m, num_classes=10)
    assert [(f.model, f.eps) for f in flags] == [("a", 1.0)]
    assert flags[0].value == pytest.approx(0.4) and flags[0].severity == "error"
    with pytest.raises(ValueError, match="num_classes"):
        above_chance_at_full_range(m, num_classes=1)


def test_above_chance_and_zero_gradients_on_a_masked_model(digits_model, digits_splits):
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
    flags = above_chance_at_full_range(transfer_metrics(out), num_classes=10)
    assert [f.model for f in flags] == ["masked"]  # FGSM cannot move the masked model; the real one falls

    grad = gradient_flags(masked, x, y, name="masked")
    assert [(f.flag, f.value, f.severity) for f in grad] == [("zero_gradients", 1.0, "error")]
    assert gradient_flags(digits_model, x, y, name="cnn") == []
    assert not digits_model.training and not masked.training


def test_nonfinite_gradients(digits_model, digits_splits):
    x, y = digits_splits.test.x[:50], digits_splits.test.y[:50]
    flags = gradient_flags(SqrtInput(digits_model).eval(), x, y, name="sqrt", seed=2)
    assert [f.flag for f in flags] == ["nonfinite_gradients"]
    assert flags[0].value == 1.0 and flags[0].seed == 2
    assert gradient_flags(digits_model, x[:0], y[:0], name="cnn") == []
    with pytest.raises(ValueError, match="same length"):
        gradient_flags(digits_model, x, y[:3], name="cnn")


def test_constant_model_has_zero_gradients():
    const = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        const[1].weight.zero_()
    flags = gradient_flags(
        const.eval(), torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long), name="c", threshold=0.5
    )
    assert [(f.flag, f.value) for f in flags] == [("zero_gradients", 1.0)]


# -- tables --------------------------------------------------------------------------------------------
def test_evaluation_flags_and_annotate_keep_every_number():
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
    assert list(fl.columns) == list(FLAG_COLUMNS)
    assert sorted(fl.flag) == [
        "above_chance_at_full_range",
        "iterative_weaker_than_fgsm",
        "transfer_stronger_than_white_box",
    ]
    assert fl["eps"].dtype == np.float64 and fl["value"].dtype == np.float64
    fl = pd.concat(
        [fl, flags_frame([Flag("zero_gradients", "b", None, None, None, None, "error", 1.0, "x")])], ignore_index=True
    )
    ann = annotate(m, fl)
    assert len(ann) == len(m) and ann.drop(columns="flags").equals(m)  # nothing dropped or changed
    by = ann[ann.metric == "adv_accuracy"].set_index(["source", "target", "attack", "eps"])["flags"]
    assert by[("a", "a", "pgd", 0.1)] == "iterative_weaker_than_fgsm"
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
    assert evaluation_flags(clean, num_classes=10).empty
