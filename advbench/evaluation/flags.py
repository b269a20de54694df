"""Evaluation-quality flags: signs of gradient masking or a broken attack, after AutoAttack's and ART's checks.

A flag annotates numbers; it never removes one. Each check returns :class:`Flag` records;
:func:`flags_frame` turns them into a DataFrame (columns :data:`FLAG_COLUMNS`) and :func:`annotate`
adds a ``flags`` column to a metrics or summary table without dropping or changing any row.

Table checks read the tidy table of :func:`advbench.evaluation.transfer.transfer_metrics` and use
``adv_accuracy`` (denominator: all n examples, so every cell of a seed is on the same footing);
attack success below means ``1 - adv_accuracy``. Tolerances are absolute, in accuracy units.

========================  ==========================================================================
flag                      raised when
========================  ==========================================================================
iterative_weaker_than_fgsm  white-box: an iterative attack (label starting with ``bim``/``pgd``) leaves
                          a higher accuracy than FGSM at the same (model, eps, seed)
success_not_increasing    white-box: accuracy at a larger eps exceeds the accuracy at a smaller eps
                          (same model, attack, seed); equal accuracy (e.g. both 0) is not flagged
transfer_stronger_than_white_box  accuracy of a target on examples transferred from another source is
                          lower than under the white-box attack on the target itself (same attack,
                          eps, seed)
above_chance_at_full_range  white-box accuracy at eps >= 1 (the whole [0, 1] box is reachable) above
                          chance = 1 / num_classes + tolerance
zero_gradients            a fraction of examples whose input gradient of the CE loss is exactly zero
nonfinite_gradients       a fraction of examples whose input gradient has a NaN or infinite entry
========================  ==========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = [
    "FLAG_COLUMNS",
    "Flag",
    "above_chance_at_full_range",
    "annotate",
    "evaluation_flags",
    "flags_frame",
    "gradient_flags",
    "iterative_weaker_than_fgsm",
    "success_not_increasing",
    "transfer_stronger_than_white_box",
]

#: Columns of :func:`flags_frame`.
FLAG_COLUMNS: tuple[str, ...] = ("flag", "model", "source", "attack", "eps", "seed", "severity", "value", "detail")


@dataclass(frozen=True)
class Flag:
    """One raised flag.

    ``model`` is the model the flag is about (the target of the annotated cell); ``source`` is the
    source of the annotated cell (equal to ``model`` for white-box flags, None when the flag is about
    the model alone, e.g. its gradients). ``attack``/``eps``/``seed`` are None when they do not apply.
    ``value`` is the number that raised the flag (an accuracy gap, a fraction of examples); ``severity``
    is ``"warning"`` or ``"error"``.
    """

    flag: str
    model: str
    source: str | None
    attack: str | None
    eps: float | None
    seed: int | None
    severity: str
    value: float
    detail: str


def flags_frame(flags: Iterable[Flag]) -> pd.DataFrame:
    """Flags as a DataFrame with columns :data:`FLAG_COLUMNS` (``eps``/``value`` float64; missing = NaN/None)."""
    df = pd.DataFrame([asdict(f) for f in flags], columns=list(FLAG_COLUMNS))
    return df.astype({"eps": "float64", "value": "float64"})


def _accuracy(metrics_df: pd.DataFrame, *, white_box: bool | None) -> pd.DataFrame:
    need = {"source", "target", "attack", "eps", "seed", "metric", "value"}
    missing = sorted(need - set(metrics_df.columns))
    if missing:
        raise ValueError(f"metrics_df lacks columns {missing}; pass the output of transfer_metrics()")
    acc = metrics_df[metrics_df["metric"] == "adv_accuracy"]
    if white_box is not None:
        acc = acc[(acc["source"] == acc["target"]) == white_box]
    return acc


def _linf_only(acc: pd.DataFrame) -> pd.DataFrame:
    """The L-inf rows (tables without a ``norm`` column are all L-inf): for checks that only hold there."""
    return acc[acc["norm"] == "linf"] if "norm" in acc.columns else acc


class _Cell(NamedTuple):
    """One accuracy row of the tidy table, with its columns as Python types."""

    source: str
    target: str
    attack: str
    eps: float
    seed: int
    value: float


def _cells(acc: pd.DataFrame) -> Iterator[_Cell]:
    """The rows of an :func:`_accuracy` table as typed :class:`_Cell` records."""
    cols = ["source", "target", "attack", "eps", "seed", "value"]
    for source, target, attack, eps, seed, value in acc[cols].itertuples(index=False, name=None):
        yield _Cell(str(source), str(target), str(attack), float(eps), int(seed), float(value))


def _reference(table: pd.Series, key: tuple[object, ...]) -> float | None:
    """``table[key]`` as a float, or None when the key is absent."""
    ref = table.get(key)
    return None if ref is None else float(ref)


def _severity(gap: float, error_above: float) -> str:
    return "error" if gap > error_above else "warning"


def _matches(label: str, prefixes: Sequence[str]) -> bool:
    low = label.lower()
    return any(low.startswith(p.lower()) for p in prefixes)


def iterative_weaker_than_fgsm(
    metrics_df: pd.DataFrame,
    *,
    fgsm: str = "fgsm",
    iterative: Sequence[str] = ("bim", "pgd"),
    tolerance: float = 0.0,
    error_above: float = 0.05,
) -> list[Flag]:
    """Flag white-box cells where an iterative attack leaves more accuracy than FGSM at the same eps.

    Attacks are matched by label: ``fgsm`` exactly, iterative ones by prefix (``"pgd-40"`` counts as
    PGD). Raised when ``acc(iterative) > acc(fgsm) + tolerance``; ``value`` is the gap.
    """
    acc = _linf_only(_accuracy(metrics_df, white_box=True))  # FGSM is an L-inf attack: compare at L-inf radii
    base = acc[acc["attack"] == fgsm].set_index(["target", "eps", "seed"])["value"]
    out = []
    for r in _cells(acc[acc["attack"].map(lambda a: a != fgsm and _matches(a, iterative))]):
        ref = _reference(base, (r.target, r.eps, r.seed))
        if ref is None or not (math.isfinite(r.value) and math.isfinite(ref)):
            continue
        gap = r.value - ref
        if gap > tolerance:
            out.append(
                Flag(
                    "iterative_weaker_than_fgsm",
                    r.target,
                    r.target,
                    r.attack,
                    r.eps,
                    r.seed,
                    _severity(gap, error_above),
                    gap,
                    f"white-box accuracy under {r.attack} is {r.value:.4f}, above {ref:.4f} under "
                    f"{fgsm} at eps={r.eps:g}: the iterative attack is weaker than its first step "
                    f"(broken step size/iterations, or gradient masking)",
                )
            )
    return out


def success_not_increasing(
    metrics_df: pd.DataFrame,
    *,
    tolerance: float = 0.0,
    white_box_only: bool = True,
    error_above: float = 0.05,
) -> list[Flag]:
    """Flag cells where attack success drops as eps grows (same source, target, attack, seed).

    Compares each eps with the previous (smaller) one: raised when
    ``acc(larger eps) > acc(smaller eps) + tolerance``; ``value`` is the gap. White-box cells only by
    default (transfer success is not guaranteed to be monotone).
    """
    acc = _accuracy(metrics_df, white_box=True if white_box_only else None)
    out = []
    for _, g in acc.groupby(["source", "target", "attack", "seed"], sort=True):
        g = g.sort_values("eps")
        first = next(_cells(g))
        eps, val = g["eps"].to_numpy(float), g["value"].to_numpy(float)
        for i in range(1, len(g)):
            gap = val[i] - val[i - 1]
            if np.isfinite(gap) and gap > tolerance:
                out.append(
                    Flag(
                        "success_not_increasing",
                        first.target,
                        first.source,
                        first.attack,
                        float(eps[i]),
                        first.seed,
                        _severity(float(gap), error_above),
                        float(gap),
                        f"accuracy {val[i]:.4f} at eps={eps[i]:g} is above {val[i - 1]:.4f} at "
                        f"eps={eps[i - 1]:g}: a larger budget should never make the attack weaker",
                    )
                )
    return out


def transfer_stronger_than_white_box(
    metrics_df: pd.DataFrame,
    *,
    tolerance: float = 0.0,
    error_above: float = 0.05,
) -> list[Flag]:
    """Flag targets that a transferred attack fools more than the white-box attack on themselves.

    For every cell S -> T with S != T: raised when ``acc(S -> T) < acc(T -> T) - tolerance`` for the
    same attack, eps and seed; ``value`` is the gap ``acc(T -> T) - acc(S -> T)``. A black-box attack
    beating the white-box one is AutoAttack's classic sign of gradient masking on T.
    """
    acc = _accuracy(metrics_df, white_box=None)
    wb = acc[acc["source"] == acc["target"]].set_index(["target", "attack", "eps", "seed"])["value"]
    out = []
    for r in _cells(acc[acc["source"] != acc["target"]]):
        ref = _reference(wb, (r.target, r.attack, r.eps, r.seed))
        if ref is None or not (math.isfinite(r.value) and math.isfinite(ref)):
            continue
        gap = ref - r.value
        if gap > tolerance:
            out.append(
                Flag(
                    "transfer_stronger_than_white_box",
                    r.target,
                    r.source,
                    r.attack,
                    r.eps,
                    r.seed,
                    _severity(gap, error_above),
                    gap,
                    f"{r.attack} at eps={r.eps:g} crafted on {r.source} leaves {r.target} at accuracy "
                    f"{r.value:.4f}, below {ref:.4f} under the white-box attack on {r.target}: "
                    f"the white-box attack underperforms (gradient masking?)",
                )
            )
    return out


def above_chance_at_full_range(
    metrics_df: pd.DataFrame,
    *,
    num_classes: int,
    full_range: float = 1.0,
    tolerance: float = 0.05,
) -> list[Flag]:
    """Flag white-box cells at eps >= ``full_range`` whose accuracy exceeds ``1/num_classes + tolerance``.

    At eps = 1 any image in the box is reachable, so a working attack drives accuracy to (about) 0;
    accuracy above chance means the attack cannot follow the model. Always an ``"error"``;
    ``value`` is the accuracy minus chance.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    chance = 1.0 / num_classes
    acc = _linf_only(_accuracy(metrics_df, white_box=True))  # an L2 radius of 1 is not the full range
    acc = acc[acc["eps"] >= full_range - 1e-9]
    out = []
    for r in _cells(acc):
        if math.isfinite(r.value) and r.value > chance + tolerance:
            out.append(
                Flag(
                    "above_chance_at_full_range",
                    r.target,
                    r.source,
                    r.attack,
                    r.eps,
                    r.seed,
                    "error",
                    r.value - chance,
                    f"white-box accuracy {r.value:.4f} at eps={r.eps:g} (the full [0, 1] range) is above "
                    f"chance {chance:.4f} + {tolerance:g}: the attack is broken or gradients are masked",
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
) -> list[Flag]:
    """Flag a model whose cross-entropy input gradients are exactly zero or non-finite on some examples.

    Gradients are taken per example (the loss is summed over the batch, so no 1/batch scaling can
    underflow), in eval mode. ``zero_gradients`` counts examples whose whole gradient is 0;
    ``nonfinite_gradients`` those with a NaN or infinite entry. Each is raised when its fraction
    exceeds ``threshold`` (default: any example, as AutoAttack does); ``value`` is the fraction and
    severity is ``"error"`` above ``error_above``. The model's train/eval mode is restored.
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
            (g,) = torch.autograd.grad(loss, xb, allow_unused=True)
            if g is None:  # the output does not depend on the input at all
                g = torch.zeros_like(xb)
            g = g.reshape(len(xb), -1)
            bad = ~torch.isfinite(g).all(1)
            nonfinite += int(bad.sum())
            zero += int(((g == 0).all(1) & ~bad).sum())
    finally:
        model.train(was_training)
    n = len(x)
    out = []
    for flag, count, what in (
        ("zero_gradients", zero, "exactly zero"),
        ("nonfinite_gradients", nonfinite, "NaN or infinite"),
    ):
        frac = count / n
        if frac > threshold:
            out.append(
                Flag(
                    flag,
                    name,
                    None,
                    None,
                    None,
                    seed,
                    _severity(frac, error_above),
                    frac,
                    f"{count} of {n} examples ({frac:.1%}) have {what} input gradients of the "
                    f"cross-entropy loss: gradient-based attacks cannot be trusted on {name}",
                )
            )
    return out


def evaluation_flags(
    metrics_df: pd.DataFrame,
    *,
    num_classes: int,
    fgsm: str = "fgsm",
    iterative: Sequence[str] = ("bim", "pgd"),
    tolerance: float = 0.0,
    chance_tolerance: float = 0.05,
) -> pd.DataFrame:
    """Every table check on one transfer table, as a DataFrame (columns :data:`FLAG_COLUMNS`).

    Gradient flags need the models: run :func:`gradient_flags` per model and concatenate
    (``flags_frame(table_flags + gradient_flags(...))``).
    """
    flags = [
        *iterative_weaker_than_fgsm(metrics_df, fgsm=fgsm, iterative=iterative, tolerance=tolerance),
        *success_not_increasing(metrics_df, tolerance=tolerance),
        *transfer_stronger_than_white_box(metrics_df, tolerance=tolerance),
        *above_chance_at_full_range(metrics_df, num_classes=num_classes, tolerance=chance_tolerance),
    ]
    return flags_frame(flags)


def annotate(table: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` (metrics or summary rows) with a ``flags`` column naming the flags on each row.

    A flag applies to a row when ``flag.model == row.target`` and each of the flag's ``source``,
    ``attack``, ``eps`` and ``seed`` that is set equals the row's (rows without a ``seed`` column,
    e.g. a summary across seeds, collect the flags of every seed). ``flags`` is the sorted,
    ``";"``-joined flag names, ``""`` when none. No row is dropped or changed.
    """
    out = table.copy()
    names: list[str] = []
    rows = out.to_dict("records")
    fl = flags.to_dict("records")
    for row in rows:
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
            hit.add(f["flag"])
        names.append(";".join(sorted(hit)))
    out["flags"] = names
    return out
