"""Transfer outcomes and per-cell metrics: hand-computed tables and an independent white-box check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from advbench.evaluation.transfer import (
    ADV_ACCURACY,
    METRIC_COLUMNS,
    OUTCOME_COLUMNS,
    TRANSFER_RATE,
    TRANSFER_RATE_GIVEN_SOURCE_SUCCESS,
    check_outcomes,
    outcomes_for,
    predict,
    transfer_metrics,
)
from advbench.models import Classifier


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM written out by hand: x' = clip(x + eps * sign(grad_x CE))."""
    x = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, x)
    return (x + eps * g.sign()).clamp(0, 1).detach()


@pytest.fixture(scope="module")
def centroid_model(digits_splits):
    """A second, independent model with no training: nearest class centroid as a linear layer,
    logits_c = x . mu_c - |mu_c|^2 / 2."""
    x, y = digits_splits.train.x.flatten(1), digits_splits.train.y
    mu = torch.stack([x[y == c].mean(0) for c in range(10)])
    fc = nn.Linear(x.shape[1], 10)
    with torch.no_grad():
        fc.weight.copy_(mu)
        fc.bias.copy_(-0.5 * (mu**2).sum(1))
    return Classifier(
        [("flat", nn.Flatten()), ("logits", fc)], hidden=[], num_classes=10, input_shape=digits_splits.input_shape
    ).eval()


def _cell(cc, ac, ss, *, source="a", target="b", attack="fgsm", eps=0.1, seed=0) -> pd.DataFrame:
    n = len(cc)
    return pd.DataFrame(
        {
            "seed": seed,
            "source": source,
            "attack": attack,
            "eps": eps,
            "target": target,
            "example": np.arange(n),
            "y": np.zeros(n, dtype=int),
            "clean_correct": np.array(cc, bool),
            "adv_correct": np.array(ac, bool),
            "source_success": np.array(ss, bool),
        }
    )[list(OUTCOME_COLUMNS)]


def test_transfer_metrics_hand_computed():
    # example:         0  1  2  3  4
    cc = [1, 1, 1, 0, 1]  # target correct when clean
    ac = [1, 0, 0, 0, 1]  # target correct on the adversarial example
    ss = [0, 1, 0, 1, 1]  # the attack fooled the source
    out = transfer_metrics(pd.concat([_cell(cc, ac, ss), _cell([0, 0], [0, 0], [1, 1], target="a")]))
    assert list(out.columns) == list(METRIC_COLUMNS)
    got = out.set_index(["target", "metric"])
    # adv accuracy: examples 0 and 4 of all 5
    assert got.loc[("b", "adv_accuracy"), ["numerator", "denominator", "n"]].tolist() == [2, 5, 5]
    # transfer rate: clean-correct are 0, 1, 2, 4; fooled among them: 1, 2
    assert got.loc[("b", "transfer_rate"), ["numerator", "denominator"]].tolist() == [2, 4]
    assert got.loc[("b", "transfer_rate"), "value"] == 0.5
    # given source success: clean-correct and source fooled are 1, 4; fooled among them: 1
    assert got.loc[("b", "transfer_rate_given_source_success"), ["numerator", "denominator"]].tolist() == [1, 2]
    assert not got.loc[("b", "adv_accuracy"), "white_box"]
    # the white-box cell "a" -> "a" has no clean-correct example: a NaN rate with denominator 0, never dropped
    assert got.loc[("a", "adv_accuracy"), "white_box"]
    assert got.loc[("a", "transfer_rate"), "denominator"] == 0
    assert math.isnan(got.loc[("a", "transfer_rate"), "value"])
    assert out["value"].dtype == np.float64 and out["numerator"].dtype == np.int64
    assert set(out["denominator_desc"]) == {
        m.denominator_desc for m in (ADV_ACCURACY, TRANSFER_RATE, TRANSFER_RATE_GIVEN_SOURCE_SUCCESS)
    }


def test_metrics_are_callable_on_a_cell():
    cell = _cell([1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [0, 1, 0, 1, 1])
    assert ADV_ACCURACY(cell) == pytest.approx(0.4)
    assert TRANSFER_RATE_GIVEN_SOURCE_SUCCESS(cell) == pytest.approx(0.5)


def test_check_outcomes_rejects_missing_columns_and_duplicates():
    cell = _cell([1, 1], [1, 0], [0, 1])
    with pytest.raises(ValueError, match="lacks columns"):
        check_outcomes(cell.drop(columns="source_success"))
    with pytest.raises(ValueError, match="duplicated"):
        check_outcomes(pd.concat([cell, cell]))


def test_predict_batches_and_restores_mode(digits_model, digits_splits):
    x = digits_splits.test.x[:37]
    with torch.no_grad():
        ref = digits_model(x).argmax(1).numpy()
    digits_model.train()
    try:
        got = predict(digits_model, x, batch_size=8)
        assert digits_model.training
    finally:
        digits_model.eval()
    assert got.dtype == np.int64 and np.array_equal(got, ref)
    assert predict(digits_model, x[:0]).shape == (0,)


def test_white_box_diagonal_equals_independent_computation(digits_model, centroid_model, digits_splits):
    x, y = digits_splits.test.x, digits_splits.test.y
    eps = 0.15
    x_adv = fgsm(digits_model, x, y, eps)
    targets = {"cnn": digits_model, "centroid": centroid_model}
    out = outcomes_for(seed=3, source="cnn", attack="fgsm", eps=eps, x_adv=x_adv, x_clean=x, y=y, targets=targets)
    assert list(out.columns) == [*OUTCOME_COLUMNS, "norm"] and len(out) == 2 * len(y)
    assert set(out["norm"]) == {"linf"}
    table = transfer_metrics(out).set_index(["target", "metric"])

    # independent computation straight from the models' logits
    with torch.no_grad():
        clean = {k: (m(x).argmax(1) == y).numpy() for k, m in targets.items()}
        adv = {k: (m(x_adv).argmax(1) == y).numpy() for k, m in targets.items()}
    fooled_src = ~adv["cnn"]
    n = len(y)
    assert table.loc[("cnn", "adv_accuracy"), "value"] == adv["cnn"].sum() / n
    assert table.loc[("cnn", "adv_accuracy"), "white_box"]
    for t in targets:
        assert table.loc[(t, "adv_accuracy"), ["numerator", "denominator", "n"]].tolist() == [adv[t].sum(), n, n]
        assert table.loc[(t, "transfer_rate"), ["numerator", "denominator"]].tolist() == [
            (clean[t] & ~adv[t]).sum(),
            clean[t].sum(),
        ]
        assert table.loc[(t, "transfer_rate_given_source_success"), ["numerator", "denominator"]].tolist() == [
            (clean[t] & fooled_src & ~adv[t]).sum(),
            (clean[t] & fooled_src).sum(),
        ]
    # a real attack: the white-box attack works and transfers partly
    assert table.loc[("cnn", "transfer_rate"), "value"] > 0.3
    assert 0 < table.loc[("centroid", "transfer_rate"), "value"] < 1


def test_outcomes_for_examples_and_reused_clean_predictions(digits_model, digits_splits):
    x, y = digits_splits.test.x[:20], digits_splits.test.y[:20]
    ex = np.arange(100, 120)
    fake_clean = {"cnn": y.numpy().copy()}  # claims every clean example is correct
    fake_clean["cnn"][0] = (fake_clean["cnn"][0] + 1) % 10
    out = outcomes_for(
        seed=0,
        source="cnn",
        attack="a",
        eps=0.0,
        x_adv=x,
        x_clean=x,
        y=y,
        targets={"cnn": digits_model},
        examples=ex,
        clean_predictions=fake_clean,
    )
    assert out["example"].tolist() == ex.tolist()
    assert out["clean_correct"].sum() == 19 and not out["clean_correct"].iloc[0]


def test_outcomes_for_errors(digits_model, digits_splits):
    x, y, t = digits_splits.test.x[:4], digits_splits.test.y[:4], {"cnn": digits_model}
    with pytest.raises(KeyError, match="must be one of the targets"):
        outcomes_for(seed=0, source="other", attack="a", eps=0.1, x_adv=x, x_clean=x, y=y, targets=t)
    with pytest.raises(ValueError, match="same shape"):
        outcomes_for(seed=0, source="cnn", attack="a", eps=0.1, x_adv=x[:3], x_clean=x, y=y, targets=t)
    with pytest.raises(ValueError, match="unique"):
        outcomes_for(
            seed=0,
            source="cnn",
            attack="a",
            eps=0.1,
            x_adv=x,
            x_clean=x,
            y=y,
            targets={"cnn": digits_model},
            examples=[0, 0, 1, 2],
        )


def test_a_transfer_cell_reuses_the_clean_predictions_of_the_process(monkeypatch):
    """advbench.suite.cells.transfer.clean_predictions: computed once per (model, seed, examples) and the same labels
    `outcomes_for` would compute itself, so reusing them changes no bit of the outcomes."""
    from advbench.suite.cells import transfer as cell
    from advbench.suite.context import ArtefactStore

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(40, 1, 4, 4)
    store, calls = ArtefactStore(), []
    real = cell.predict
    monkeypatch.setattr(cell, "predict", lambda m, xs: calls.append(1) or real(m, xs))
    first = cell.clean_predictions(store, ("m", 0, "digest"), model, x)
    again = cell.clean_predictions(store, ("m", 0, "digest"), model, x)
    assert again is first and len(calls) == 1
    assert np.array_equal(first, predict(model, x))
    cell.clean_predictions(store, ("m", 1, "digest"), model, x)  # another seed's model: its own entry
    assert len(calls) == 2
