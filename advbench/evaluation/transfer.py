"""Transfer matrices: per-example outcomes of every adversarial set on every model, and per-cell metrics.

The runner crafts one adversarial set per (seed, source, attack, eps) and calls :func:`outcomes_for`
with every model of that seed as a target (the source included: the white-box diagonal). The result
is the long **outcomes** table, one row per (seed, source, attack, eps, target, example):

=================  =======  ==========================================================================
column             dtype    meaning
=================  =======  ==========================================================================
seed               int64    the seed of the paired models (same seed = same init and data order)
source             str      the model the adversarial examples were crafted on (white-box)
attack             str      the attack's label
eps                float64  the L-inf radius in [0, 1] pixel units
target             str      the model evaluated
example            int64    index into the fixed test subset (the same subset for every cell of a seed)
y                  int64    the true label
clean_correct      bool     the target classifies the clean example correctly
adv_correct        bool     the target classifies the adversarial example correctly
source_success     bool     the source misclassifies the adversarial example (the white-box attack
                            succeeded; an example the source already got wrong when clean counts as a
                            success, the usual untargeted convention)
=================  =======  ==========================================================================

:func:`transfer_metrics` turns it into the tidy per-cell table. Each metric is a :class:`CellMetric`:
a *population* of examples (its denominator) and a *hit* among them (its numerator), both per example,
so the same definition serves the point estimate, the bootstrap over examples and McNemar's test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = [
    "ADV_ACCURACY",
    "CELL_KEYS",
    "METRIC_COLUMNS",
    "OUTCOME_COLUMNS",
    "TRANSFER_METRICS",
    "TRANSFER_RATE",
    "TRANSFER_RATE_GIVEN_SOURCE_SUCCESS",
    "CellMetric",
    "check_outcomes",
    "outcomes_for",
    "predict",
    "transfer_metrics",
]

#: Columns of the outcomes table, in order.
OUTCOME_COLUMNS: tuple[str, ...] = (
    "seed",
    "source",
    "attack",
    "eps",
    "target",
    "example",
    "y",
    "clean_correct",
    "adv_correct",
    "source_success",
)
#: :func:`outcomes_for` appends a ``norm`` column (``"linf"`` or ``"l2"``: the ball ``eps`` is the
#: radius of); it is optional, and a table without it (written before it existed) is L-inf.
#: One cell of the transfer matrix.
CELL_KEYS: tuple[str, ...] = ("source", "target", "attack", "eps", "seed")
#: Columns of :func:`transfer_metrics`' result, in order.
METRIC_COLUMNS: tuple[str, ...] = (
    *CELL_KEYS,
    "norm",
    "white_box",
    "metric",
    "value",
    "numerator",
    "denominator",
    "n",
    "denominator_desc",
)

Indicators = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CellMetric:
    """A per-cell rate defined example by example.

    ``indicators(clean_correct, adv_correct, source_success)`` returns two boolean arrays: which
    examples are in the denominator (the *population*) and which are *hits* (counted in the
    numerator when also in the population). The value of a cell is ``hits / population`` (NaN when
    the population is empty). ``higher_is`` says what a higher value means for the target.
    Calling the metric on one cell's outcomes returns its value.
    """

    name: str
    indicators: Indicators
    denominator_desc: str
    higher_is: str  # "robust" or "fooled"

    def masks(self, cell: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(population, numerator) boolean arrays for the rows of ``cell``; numerator implies population."""
        pop, hit = self.indicators(
            cell["clean_correct"].to_numpy(bool),
            cell["adv_correct"].to_numpy(bool),
            cell["source_success"].to_numpy(bool),
        )
        pop = np.asarray(pop, dtype=bool)
        return pop, pop & np.asarray(hit, dtype=bool)

    def counts(self, cell: pd.DataFrame) -> tuple[int, int]:
        """(numerator, denominator) for one cell's outcomes."""
        pop, num = self.masks(cell)
        return int(num.sum()), int(pop.sum())

    def __call__(self, outcomes: pd.DataFrame) -> float:
        """The value on one cell's outcomes (rows of a single source/target/attack/eps/seed)."""
        num, den = self.counts(outcomes)
        return num / den if den else float("nan")

    def __repr__(self) -> str:
        return f"CellMetric({self.name!r}, denominator={self.denominator_desc!r})"


ADV_ACCURACY = CellMetric(
    "adv_accuracy",
    lambda cc, ac, ss: (np.ones_like(ac, dtype=bool), ac),
    "all n test examples",
    "robust",
)
TRANSFER_RATE = CellMetric(
    "transfer_rate",
    lambda cc, ac, ss: (cc, ~ac),
    "examples the target classifies correctly when clean",
    "fooled",
)
TRANSFER_RATE_GIVEN_SOURCE_SUCCESS = CellMetric(
    "transfer_rate_given_source_success",
    lambda cc, ac, ss: (cc & ss, ~ac),
    "examples the target classifies correctly when clean and on which the attack fooled the source",
    "fooled",
)
#: The metrics :func:`transfer_metrics` computes by default, in row order.
TRANSFER_METRICS: tuple[CellMetric, ...] = (ADV_ACCURACY, TRANSFER_RATE, TRANSFER_RATE_GIVEN_SOURCE_SUCCESS)


def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500) -> np.ndarray:
    """Predicted labels (``int64`` numpy array of length ``len(x)``) of ``model`` on ``x``.

    Runs in eval mode without gradients, in batches; the model's previous train/eval mode is
    restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), x.device)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out.append(model(x[i : i + batch_size].to(device)).argmax(1).cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros(0, dtype=np.int64)
    return torch.cat(out).numpy().astype(np.int64)


def outcomes_for(
    *,
    seed: int,
    source: str,
    attack: str,
    eps: float,
    x_adv: torch.Tensor,
    x_clean: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    targets: Mapping[str, nn.Module],
    examples: Sequence[int] | np.ndarray | None = None,
    clean_predictions: Mapping[str, np.ndarray] | None = None,
    batch_size: int = 500,
    norm: str = "linf",
) -> pd.DataFrame:
    """Outcomes rows (columns :data:`OUTCOME_COLUMNS`) of one adversarial set on every target.

    ``norm`` names the threat model's ball (``"linf"`` or ``"l2"``) that ``eps`` is the radius of.

    ``x_adv`` was crafted on ``targets[source]`` from ``x_clean`` (labels ``y``); ``targets`` maps
    model labels to models and must contain ``source`` (its row block is the white-box diagonal and
    gives ``source_success``). ``examples`` are the examples' indices in the test subset (default
    ``0..n-1``). ``clean_predictions`` (label -> predicted labels on ``x_clean``) may be passed to
    reuse the clean predictions shared by every cell of a seed; missing ones are computed.
    Rows are ordered by target (in ``targets`` order) then example.
    """
    if source not in targets:
        raise KeyError(
            f"the source {source!r} must be one of the targets (it gives the white-box diagonal and "
            f"source_success); got targets {list(targets)}. Add the source model to `targets`."
        )
    if x_adv.shape != x_clean.shape:
        raise ValueError(
            f"x_adv and x_clean must have the same shape, got {tuple(x_adv.shape)} and {tuple(x_clean.shape)}"
        )
    y_np = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    y_np = y_np.astype(np.int64)
    n = len(x_clean)
    if y_np.shape != (n,):
        raise ValueError(f"expected {n} labels (one per example), got shape {y_np.shape}")
    ex = np.arange(n, dtype=np.int64) if examples is None else np.asarray(examples, dtype=np.int64)
    if ex.shape != (n,):
        raise ValueError(f"expected {n} example indices, got shape {ex.shape}")
    if len(np.unique(ex)) != n:
        raise ValueError("example indices must be unique within an adversarial set")

    clean_predictions = dict(clean_predictions or {})
    adv_pred = {name: predict(m, x_adv, batch_size=batch_size) for name, m in targets.items()}
    source_success = adv_pred[source] != y_np
    blocks = []
    for name, model in targets.items():
        clean = clean_predictions.get(name)
        if clean is None:
            clean = predict(model, x_clean, batch_size=batch_size)
        clean = np.asarray(clean)
        if clean.shape != (n,):
            raise ValueError(f"clean_predictions[{name!r}] has shape {clean.shape}, expected ({n},)")
        blocks.append(
            pd.DataFrame(
                {
                    "seed": np.full(n, int(seed), dtype=np.int64),
                    "source": source,
                    "attack": attack,
                    "eps": np.full(n, float(eps)),
                    "norm": norm,
                    "target": name,
                    "example": ex,
                    "y": y_np,
                    "clean_correct": clean == y_np,
                    "adv_correct": adv_pred[name] == y_np,
                    "source_success": source_success,
                }
            )
        )
    return pd.concat(blocks, ignore_index=True)[[*OUTCOME_COLUMNS, "norm"]]


def check_outcomes(outcomes: pd.DataFrame) -> None:
    """Raise ``ValueError`` if ``outcomes`` lacks a column of :data:`OUTCOME_COLUMNS` or repeats a row key."""
    missing = [c for c in OUTCOME_COLUMNS if c not in outcomes.columns]
    if missing:
        raise ValueError(
            f"the outcomes table lacks columns {missing}; expected {list(OUTCOME_COLUMNS)}, "
            f"got {list(outcomes.columns)}. Build it with advbench.evaluation.transfer.outcomes_for."
        )
    dup = outcomes.duplicated([*CELL_KEYS, "example"])
    if dup.any():
        first = outcomes.loc[dup, [*CELL_KEYS, "example"]].iloc[0].to_dict()
        raise ValueError(f"the outcomes table has {int(dup.sum())} duplicated (cell, example) rows, e.g. {first}")


def transfer_metrics(outcomes: pd.DataFrame, *, metrics: Sequence[CellMetric] = TRANSFER_METRICS) -> pd.DataFrame:
    """The tidy transfer table: one row per (source, target, attack, eps, seed, metric).

    Columns (:data:`METRIC_COLUMNS`): ``source, target, attack, eps, seed`` (the cell),
    ``white_box`` (bool, ``source == target``), ``metric`` (name), ``value`` (float64,
    ``numerator / denominator``, NaN when the denominator is 0), ``numerator`` and ``denominator``
    (int64 counts of examples), ``n`` (int64, examples in the cell) and ``denominator_desc`` (what
    the denominator counts). Default metrics:

    * ``adv_accuracy``: target correct on the adversarial example, over all n examples;
    * ``transfer_rate``: target fooled (wrong on the adversarial example) among the examples it
      classifies correctly when clean;
    * ``transfer_rate_given_source_success``: target fooled among the examples it classifies
      correctly when clean **and** on which the attack fooled the source.
    """
    check_outcomes(outcomes)
    rows = []
    for key, cell in outcomes.groupby(list(CELL_KEYS), sort=True):
        src, tgt, att, eps, seed = cast(tuple[str, str, str, float, int], key)
        norm = str(cell["norm"].iloc[0]) if "norm" in cell.columns else "linf"
        for m in metrics:
            num, den = m.counts(cell)
            rows.append(
                (
                    src,
                    tgt,
                    att,
                    float(eps),
                    int(seed),
                    norm,
                    src == tgt,
                    m.name,
                    num / den if den else float("nan"),
                    num,
                    den,
                    len(cell),
                    m.denominator_desc,
                )
            )
    out = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    return out.astype(
        {
            "eps": "float64",
            "seed": "int64",
            "white_box": "bool",
            "value": "float64",
            "numerator": "int64",
            "denominator": "int64",
            "n": "int64",
        }
    )
