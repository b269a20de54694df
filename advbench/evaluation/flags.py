"""Evaluation-quality checks: signs of gradient masking or a broken attack, on every metric and attack.

After Carlini et al. 2019, Tramèr et al. 2020 and AutoAttack's own checks. Every check returns one
:class:`Check` per comparison it made, passed or flagged, so a report lists what was checked with the
numbers compared, not only "no flag raised". A check annotates numbers; it never removes one.

Inputs
    * ``metrics``: the tidy table of :func:`advbench.evaluation.transfer.transfer_metrics` (columns
      ``source, target, attack, eps, seed, metric, value``); its ``adv_accuracy`` rows are the
      classifier's accuracy under attack (denominator: all n examples).
    * ``dknn``: the DkNN metrics table (columns ``model, seed, kind, metric, value, source, attack,
      eps``); its ``dknn_accuracy`` rows of ``kind == "adversarial"`` are the DkNN's accuracy under attack.
    * ``properties``: attack label -> :attr:`advbench.attacks.base.Attack.properties`. Labels not in it
      are looked up as registered attack names (:func:`registry_properties`); an attack with no declared
      properties takes part only in the checks that need none (eps monotonicity, transfer).

Attack strength is compared through accuracy (lower = stronger). A check is ``"flagged"`` when its
``gap`` (how far the numbers go the wrong way, in accuracy units) exceeds ``threshold``; severity is
``"error"`` above ``error_above``, else ``"warning"``.

=================================  =================================================================
check                              compares (same model, seed, eps unless said)
=================================  =================================================================
adaptive_weaker_than_non_adaptive  DkNN accuracy under each ``adaptive-dknn`` attack vs each other
                                   attack (white-box); gap = acc(adaptive) - acc(other)
adaptive_above_worst_case          DkNN accuracy under each ``adaptive-dknn`` attack vs the per-example
                                   worst case over every white-box attack; gap = acc(adaptive) - robust
iterative_weaker_than_single_step  each ``iterative`` gradient-based attack (not adaptive) vs each
                                   ``single-step`` one, classifier and DkNN; gap = acc(iter) - acc(single)
success_not_increasing             the same attack at consecutive eps; gap = acc(larger) - acc(smaller)
transfer_stronger_than_white_box   S -> T vs T -> T (same attack); gap = acc(T->T) - acc(S->T)
score_based_stronger               each gradient-free (``score-based``/``decision-based``) attack vs
                                   the strongest gradient-based one; gap = acc(best grad) - acc(score)
above_chance_at_full_range         white-box accuracy at eps >= 1 vs chance; gap = acc - chance
zero_gradients                     fraction of examples with an all-zero input gradient vs 0
nonfinite_gradients                fraction of examples with a NaN/inf input gradient vs 0
=================================  =================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = [
    "CHECK_COLUMNS",
    "FLAG_COLUMNS",
    "Check",
    "above_chance_at_full_range",
    "accuracy_table",
    "adaptive_above_worst_case",
    "adaptive_weaker_than_non_adaptive",
    "annotate",
    "evaluation_flags",
    "flags_frame",
    "gradient_flags",
    "iterative_weaker_than_single_step",
    "raised",
    "registry_properties",
    "score_based_stronger",
    "success_not_increasing",
    "transfer_stronger_than_white_box",
]

log = logging.getLogger(__name__)

#: Columns of :func:`flags_frame` (one row per check run).
CHECK_COLUMNS: tuple[str, ...] = (
    "check",
    "quantity",
    "model",
    "source",
    "attack",
    "reference",
    "eps",
    "seed",
    "value",
    "reference_value",
    "gap",
    "threshold",
    "outcome",
    "severity",
    "detail",
)
FLAG_COLUMNS = CHECK_COLUMNS  # the name the runner's gradient_flags.csv uses


@dataclass(frozen=True)
class Check:
    """One comparison made by a check.

    ``model`` is the model the check is about (the target); ``source`` the model the attack was
    crafted on (None for model-level checks such as gradients); ``attack`` the attack checked and
    ``reference`` what it was compared with (another attack, an eps, chance). ``value`` and
    ``reference_value`` are the numbers compared, ``gap`` how far they go the wrong way, ``threshold``
    the tolerance; ``outcome`` is ``"passed"`` or ``"flagged"`` and ``severity`` ``""``, ``"warning"`` or
    ``"error"``.
    """

    check: str
    quantity: str
    model: str
    source: str | None
    attack: str | None
    reference: str | None
    eps: float | None
    seed: int | None
    value: float
    reference_value: float
    gap: float
    threshold: float
    outcome: str
    severity: str
    detail: str


def _check(
    check: str,
    *,
    quantity: Any,
    model: Any,
    source: Any,
    attack: Any,
    reference: Any,
    eps: Any,
    seed: Any,
    value: Any,
    reference_value: Any,
    gap: Any,
    threshold: float,
    error_above: float,
    detail: str,
) -> Check:
    """One check's row; the keys and numbers may come straight from pandas (they are converted here)."""
    gap = float(gap)
    flagged = bool(np.isfinite(gap) and gap > threshold)
    return Check(
        check,
        str(quantity),
        str(model),
        None if source is None else str(source),
        None if attack is None else str(attack),
        None if reference is None else str(reference),
        None if eps is None else float(eps),
        None if seed is None else int(seed),
        float(value),
        float(reference_value),
        gap,
        float(threshold),
        "flagged" if flagged else "passed",
        ("error" if gap > error_above else "warning") if flagged else "",
        detail,
    )


def flags_frame(checks: Iterable[Check]) -> pd.DataFrame:
    """Checks as a DataFrame with columns :data:`CHECK_COLUMNS`."""
    df = pd.DataFrame([asdict(c) for c in checks], columns=list(CHECK_COLUMNS))
    return df.astype({c: "float64" for c in ("eps", "value", "reference_value", "gap", "threshold")})


def raised(frame: pd.DataFrame) -> pd.DataFrame:
    """Only the flagged rows of a :func:`flags_frame`."""
    return frame[frame["outcome"] == "flagged"].reset_index(drop=True)


def registry_properties(labels: Iterable[str]) -> dict[str, frozenset[str]]:
    """``label -> properties`` of the labels that are registered attack names (others are left out)."""
    from advbench.attacks import ATTACKS

    out = {}
    for label in labels:
        try:
            cls = ATTACKS.get(label)
        except Exception as exc:  # not a registered name (a suite label, a removed plugin)
            log.debug("no registered attack %r (%s); its properties are unknown", label, exc)
            continue
        out[label] = frozenset(getattr(cls, "properties", frozenset()))
    return out


def accuracy_table(metrics: pd.DataFrame | None = None, dknn: pd.DataFrame | None = None) -> pd.DataFrame:
    """Accuracy under attack in one long form: ``quantity, source, target, attack, eps, seed, value, norm``.

    ``quantity`` is ``"classifier"`` (``adv_accuracy`` of the transfer metrics) or ``"dknn"``
    (``dknn_accuracy`` of the adversarial sets of the DkNN metrics).
    """
    cols = ["quantity", "source", "target", "attack", "eps", "seed", "value", "norm"]
    frames = []
    norms: dict[str, str] = {}  # attack label -> threat-model norm, from the classifier table
    if metrics is not None and len(metrics):
        need = {"source", "target", "attack", "eps", "seed", "metric", "value"}
        missing = sorted(need - set(metrics.columns))
        if missing:
            raise ValueError(f"metrics lacks columns {missing}; pass the output of transfer_metrics()")
        acc = metrics[metrics["metric"] == "adv_accuracy"]
        acc = acc if "norm" in acc.columns else acc.assign(norm="linf")  # a table without the column is all L-inf
        norms = dict(zip(acc["attack"].astype(str), acc["norm"].astype(str), strict=True))
        frames.append(acc.assign(quantity="classifier")[cols])
    if dknn is not None and len(dknn):
        need = {"model", "seed", "metric", "value", "source", "attack", "eps"}
        missing = sorted(need - set(dknn.columns))
        if missing:
            raise ValueError(f"dknn lacks columns {missing}; pass the DkNN metrics table (dknn.csv)")
        d = dknn[(dknn["metric"] == "dknn_accuracy") & dknn["attack"].notna()]
        if "kind" in d.columns:
            d = d[d["kind"] == "adversarial"]
        norm = d["norm"] if "norm" in d.columns else d["attack"].map(lambda a: norms.get(str(a), "linf"))
        frames.append(d.assign(quantity="dknn", target=d["model"], norm=norm)[cols])
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    return out.astype({"eps": "float64", "seed": "int64", "value": "float64"})


def _white_box(acc: pd.DataFrame) -> pd.DataFrame:
    return acc[acc["source"] == acc["target"]]


def _props(properties: Mapping[str, frozenset[str]], label: str) -> frozenset[str]:
    return frozenset(properties.get(label, frozenset()))


def adaptive_weaker_than_non_adaptive(
    acc: pd.DataFrame,
    properties: Mapping[str, frozenset[str]],
    *,
    tolerance: float = 0.0,
    error_above: float = 0.05,
) -> list[Check]:
    """An attack adaptive to the DkNN must leave at most the DkNN accuracy of every other attack."""
    wb = _white_box(acc[acc["quantity"] == "dknn"])
    out = []
    for (model, seed, eps), g in wb.groupby(["target", "seed", "eps"], sort=True):
        vals = g.set_index("attack")["value"]
        adaptive = [a for a in vals.index if "adaptive-dknn" in _props(properties, a)]
        for a in adaptive:
            for b in vals.index:
                if b in adaptive:
                    continue
                gap = float(vals[a] - vals[b])
                out.append(
                    _check(
                        "adaptive_weaker_than_non_adaptive",
                        quantity="dknn",
                        model=model,
                        source=model,
                        attack=a,
                        reference=b,
                        eps=eps,
                        seed=seed,
                        value=vals[a],
                        reference_value=vals[b],
                        gap=gap,
                        threshold=tolerance,
                        error_above=error_above,
                        detail=f"DkNN accuracy under {a} {vals[a]:.4f} vs {vals[b]:.4f} under {b}: an attack "
                        f"adaptive to the DkNN must be at least as strong on it as any other",
                    )
                )
    return out


def adaptive_above_worst_case(
    acc: pd.DataFrame,
    worst_case: pd.DataFrame,
    properties: Mapping[str, frozenset[str]],
    *,
    tolerance: float = 0.01,
    error_above: float = 0.05,
) -> list[Check]:
    """An attack adaptive to the DkNN should leave at most the DkNN accuracy of the per-example worst case over
    every white-box attack (``worst_case``: :func:`~advbench.analysis.worstcase.worst_case`'s DkNN rows) plus
    ``tolerance``: where other attacks break examples it does not, it has not found the DkNN's worst case.

    The two count the same examples the same way: the DkNN scores the same first ``n`` attacked examples, and
    the adaptive attack keeps the clean input as a candidate, so an example it leaves correct was correct clean.
    """
    if worst_case.empty or "quantity" not in worst_case.columns:
        return []
    wc = worst_case[worst_case["quantity"] == "dknn"]
    robust_at = {
        (str(m), int(s), float(e)): float(r)
        for m, s, e, r in zip(wc["model"], wc["seed"], wc["eps"], wc["robust_accuracy"], strict=True)
    }
    wb = _white_box(acc[acc["quantity"] == "dknn"])
    out = []
    for model, seed, eps, attack, value in zip(
        wb["target"].astype(str), wb["seed"], wb["eps"], wb["attack"].astype(str), wb["value"], strict=True
    ):
        if "adaptive-dknn" not in _props(properties, attack):
            continue
        robust = robust_at.get((model, int(seed), float(eps)))
        if robust is None:
            continue
        out.append(
            _check(
                "adaptive_above_worst_case",
                quantity="dknn",
                model=model,
                source=model,
                attack=attack,
                reference="worst case over attacks",
                eps=eps,
                seed=seed,
                value=value,
                reference_value=robust,
                gap=float(value) - robust,
                threshold=tolerance,
                error_above=error_above,
                detail=f"DkNN accuracy under {attack} {float(value):.4f} vs {robust:.4f} under the per-example "
                f"worst case over every white-box attack: other attacks break examples it leaves correct",
            )
        )
    return out


def iterative_weaker_than_single_step(
    acc: pd.DataFrame,
    properties: Mapping[str, frozenset[str]],
    *,
    tolerance: float = 0.0,
    error_above: float = 0.05,
) -> list[Check]:
    """An iterative gradient attack must be at least as strong as a single-step one, on every quantity."""
    wb = _white_box(acc)
    out = []
    for (quantity, model, seed, eps), g in wb.groupby(["quantity", "target", "seed", "eps"], sort=True):
        vals = g.set_index("attack")["value"]
        single = [a for a in vals.index if "single-step" in _props(properties, a)]
        # attacks adaptive to the DkNN optimise another objective; their own check compares them
        iterative = [
            a
            for a in vals.index
            if {"iterative", "gradient-based"} <= _props(properties, a)
            and not _props(properties, a) & {"single-step", "adaptive-dknn"}
        ]
        for a in iterative:
            for b in single:
                gap = float(vals[a] - vals[b])
                out.append(
                    _check(
                        "iterative_weaker_than_single_step",
                        quantity=quantity,
                        model=model,
                        source=model,
                        attack=a,
                        reference=b,
                        eps=eps,
                        seed=seed,
                        value=vals[a],
                        reference_value=vals[b],
                        gap=gap,
                        threshold=tolerance,
                        error_above=error_above,
                        detail=f"{quantity} accuracy under iterative {a} {vals[a]:.4f} vs {vals[b]:.4f} under "
                        f"single-step {b} (broken step size/iterations, or gradient masking)",
                    )
                )
    return out


def success_not_increasing(
    acc: pd.DataFrame, *, tolerance: float = 0.0, white_box_only: bool = True, error_above: float = 0.05
) -> list[Check]:
    """A larger eps must never leave a higher accuracy (same quantity, source, target, attack, seed)."""
    data = _white_box(acc) if white_box_only else acc
    out = []
    for (quantity, src, tgt, att, seed), g in data.groupby(
        ["quantity", "source", "target", "attack", "seed"], sort=True
    ):
        g = g.sort_values("eps")
        eps, val = g["eps"].to_numpy(float), g["value"].to_numpy(float)
        for i in range(1, len(g)):
            gap = float(val[i] - val[i - 1])
            out.append(
                _check(
                    "success_not_increasing",
                    quantity=quantity,
                    model=tgt,
                    source=src,
                    attack=att,
                    reference=f"eps={eps[i - 1]:g}",
                    eps=eps[i],
                    seed=seed,
                    value=val[i],
                    reference_value=val[i - 1],
                    gap=gap,
                    threshold=tolerance,
                    error_above=error_above,
                    detail=f"{quantity} accuracy {val[i]:.4f} at eps={eps[i]:g} vs {val[i - 1]:.4f} at "
                    f"eps={eps[i - 1]:g}: a larger budget must never make the attack weaker",
                )
            )
    return out


def transfer_stronger_than_white_box(
    acc: pd.DataFrame, *, tolerance: float = 0.0, error_above: float = 0.05
) -> list[Check]:
    """Examples transferred from another source must not fool a target more than the white-box attack."""
    wb = _white_box(acc).set_index(["quantity", "target", "attack", "eps", "seed"])["value"]
    out = []
    for r in acc[acc["source"] != acc["target"]].itertuples(index=False):
        ref = wb.get((r.quantity, r.target, r.attack, r.eps, r.seed))
        if ref is None:
            continue
        gap = float(ref - r.value)
        out.append(
            _check(
                "transfer_stronger_than_white_box",
                quantity=r.quantity,
                model=r.target,
                source=r.source,
                attack=r.attack,
                reference=f"{r.attack} white-box",
                eps=r.eps,
                seed=r.seed,
                value=r.value,
                reference_value=ref,
                gap=gap,
                threshold=tolerance,
                error_above=error_above,
                detail=f"{r.quantity} accuracy of {r.target} under {r.attack} from {r.source} {r.value:.4f} vs "
                f"{ref:.4f} white-box: a transferred attack beating the white-box one suggests gradient masking",
            )
        )
    return out


def score_based_stronger(
    acc: pd.DataFrame,
    properties: Mapping[str, frozenset[str]],
    *,
    tolerance: float = 0.0,
    error_above: float = 0.05,
) -> list[Check]:
    """A gradient-free attack must not beat the strongest gradient-based one (white-box, every quantity)."""
    wb = _white_box(acc)
    out = []
    for (quantity, model, seed, eps), g in wb.groupby(["quantity", "target", "seed", "eps"], sort=True):
        vals = g.set_index("attack")["value"]
        grad = vals[[("gradient-based" in _props(properties, a)) for a in vals.index]]
        free = [
            a
            for a in vals.index
            if _props(properties, a) & {"score-based", "decision-based"}
            and "gradient-based" not in _props(properties, a)
        ]
        if grad.empty:
            continue
        best = str(grad.idxmin())
        for a in free:
            gap = float(grad[best] - vals[a])
            out.append(
                _check(
                    "score_based_stronger",
                    quantity=quantity,
                    model=model,
                    source=model,
                    attack=a,
                    reference=best,
                    eps=eps,
                    seed=seed,
                    value=vals[a],
                    reference_value=grad[best],
                    gap=gap,
                    threshold=tolerance,
                    error_above=error_above,
                    detail=f"{quantity} accuracy under gradient-free {a} {vals[a]:.4f} vs {grad[best]:.4f} under "
                    f"the strongest gradient-based attack {best}: the gradients mislead (masking)",
                )
            )
    return out


def above_chance_at_full_range(
    acc: pd.DataFrame, *, num_classes: int, full_range: float = 1.0, tolerance: float = 0.05
) -> list[Check]:
    """At eps >= ``full_range`` any image is reachable: white-box accuracy must be at most chance + tolerance."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    chance = 1.0 / num_classes
    wb = _white_box(acc)
    out = []
    for r in wb[wb["eps"] >= full_range - 1e-9].itertuples(index=False):
        out.append(
            _check(
                "above_chance_at_full_range",
                quantity=r.quantity,
                model=r.target,
                source=r.source,
                attack=r.attack,
                reference="chance",
                eps=r.eps,
                seed=r.seed,
                value=r.value,
                reference_value=chance,
                gap=float(cast(float, r.value)) - chance,
                threshold=tolerance,
                error_above=-math.inf,  # always an error when raised
                detail=f"white-box {r.quantity} accuracy {r.value:.4f} at eps={r.eps:g} (the whole [0, 1] box) vs "
                f"chance {chance:.4f}: the attack is broken or gradients are masked",
            )
        )
    return out


def gradient_flags(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    name: str,
    seed: int | None = None,
    batch_size: int = 500,
    threshold: float = 0.0,
    error_above: float = 0.1,
) -> list[Check]:
    """Fractions of examples whose cross-entropy input gradient is all zero, or has a NaN/inf entry.

    Gradients are taken per example (the loss is summed over the batch, so no 1/batch scaling can
    underflow), in eval mode (restored afterwards). Each fraction is flagged above ``threshold``
    (default: any example, as AutoAttack does).
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) == 0:
        return []
    was_training = model.training
    model.eval()
    zero = nonfinite = 0
    try:
        device = next((p.device for p in model.parameters()), x.device)
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].detach().to(device).clone().requires_grad_(True)
            yb = y[i : i + batch_size].to(device)
            loss = nn.functional.cross_entropy(model(xb), yb, reduction="sum")
            if loss.requires_grad:
                (g,) = torch.autograd.grad(loss, xb, allow_unused=True)
            else:  # nothing differentiable between the input and the loss
                g = None
            if g is None:
                g = torch.zeros_like(xb)
            g = g.reshape(len(xb), -1)
            bad = ~torch.isfinite(g).all(1)
            nonfinite += int(bad.sum())
            zero += int(((g == 0).all(1) & ~bad).sum())
    finally:
        model.train(was_training)
    n = len(x)
    return [
        _check(
            check,
            quantity="classifier",
            model=name,
            source=None,
            attack=None,
            reference=None,
            eps=None,
            seed=seed,
            value=count / n,
            reference_value=0.0,
            gap=count / n,
            threshold=threshold,
            error_above=error_above,
            detail=f"{count} of {n} examples ({count / n:.1%}) have {what} input gradients of the "
            f"cross-entropy loss" + (f": gradient-based attacks cannot be trusted on {name}" if count else ""),
        )
        for check, count, what in (
            ("zero_gradients", zero, "exactly zero"),
            ("nonfinite_gradients", nonfinite, "NaN or infinite"),
        )
    ]


def evaluation_flags(
    metrics: pd.DataFrame | None = None,
    *,
    dknn: pd.DataFrame | None = None,
    properties: Mapping[str, frozenset[str]] | None = None,
    num_classes: int = 10,
    tolerance: float = 0.0,
    chance_tolerance: float = 0.05,
    error_above: float = 0.05,
    worst_case: pd.DataFrame | None = None,
    worst_case_tolerance: float = 0.01,
) -> pd.DataFrame:
    """Every table check on the classifier and DkNN metrics: one row per comparison (:data:`CHECK_COLUMNS`).

    ``properties`` maps attack labels to their properties; labels missing from it are looked up as
    registered attack names. ``worst_case`` (the per-example worst case over attacks, with its DkNN rows)
    adds :func:`adaptive_above_worst_case` at ``worst_case_tolerance`` for the L-inf attacks. Gradient checks
    need the models: run :func:`gradient_flags` per model and concatenate (the runner writes them to
    ``gradient_flags.csv``).
    """
    acc = accuracy_table(metrics, dknn)
    props = dict(registry_properties(sorted(set(acc["attack"])))) | dict(properties or {})
    tol, err = tolerance, error_above
    checks: list[Check] = []
    # attacks are compared only within one threat model: an L2 radius and an L-inf radius are not the same eps
    for norm, part in acc.groupby("norm", sort=True):
        part = part.drop(columns="norm")
        checks += [
            *adaptive_weaker_than_non_adaptive(part, props, tolerance=tol, error_above=err),
            *iterative_weaker_than_single_step(part, props, tolerance=tol, error_above=err),
            *success_not_increasing(part, tolerance=tol, error_above=err),
            *transfer_stronger_than_white_box(part, tolerance=tol, error_above=err),
            *score_based_stronger(part, props, tolerance=tol, error_above=err),
        ]
        if norm == "linf":  # eps 1 is the whole [0, 1] box only for L-inf
            checks += above_chance_at_full_range(part, num_classes=num_classes, tolerance=chance_tolerance)
            if worst_case is not None:  # the adaptive attack is L-inf; the worst case pools the suite's attacks
                checks += adaptive_above_worst_case(
                    part, worst_case, props, tolerance=worst_case_tolerance, error_above=err
                )
    return flags_frame(checks)


def annotate(table: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` with a ``flags`` column naming the *flagged* checks on each row.

    A check applies to a row when ``check.model == row.target`` and each of the check's ``source``,
    ``attack``, ``eps`` and ``seed`` that is set equals the row's (rows without a ``seed`` column,
    e.g. a summary across seeds, collect every seed's). ``flags`` is the sorted, ``";"``-joined check
    names, ``""`` when none. No row is dropped or changed.
    """
    out = table.copy()
    fl = raised(checks).to_dict("records") if len(checks) else []
    names: list[str] = []
    for row in out.to_dict("records"):
        hit = set()
        for f in fl:
            if f["model"] != row.get("target"):
                continue
            if f["source"] is not None and not pd.isna(f["source"]) and f["source"] != row.get("source"):
                continue
            if f["attack"] is not None and not pd.isna(f["attack"]) and f["attack"] != row.get("attack"):
                continue
            if not pd.isna(f["eps"]) and "eps" in row and not np.isclose(f["eps"], row["eps"]):
                continue
            if not pd.isna(f["seed"]) and "seed" in row and int(f["seed"]) != int(row["seed"]):
                continue
            hit.add(f["check"])
        names.append(";".join(sorted(hit)))
    out["flags"] = names
    return out
