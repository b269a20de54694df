"""Perturbation sizes of minimum-norm attacks (Carlini–Wagner L2, DeepFool): per attack cell and per seed.

A minimum-norm attack searches for the smallest perturbation that fools the model; its own
perturbation norm per example (``raw_norm``, NaN where it did not fool the model) is kept with the
adversarial set. Its median over the fooled examples is the attack's usual summary (Carlini & Wagner 2017).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["ATTACK_NORM_COLUMNS", "attack_norm_record", "minimum_norm_summary"]

#: one row per (seed, source, attack, eps): the distribution of the attack's own perturbation norms
ATTACK_NORM_COLUMNS = (
    "seed",
    "source",
    "attack",
    "eps",
    "norm",
    "n",
    "n_fooled",
    "n_within_eps",
    "median_raw_norm",
    "q25_raw_norm",
    "q75_raw_norm",
)


def attack_norm_record(
    *, seed: int, source: str, attack: str, eps: float, norm: str, raw_norm: np.ndarray
) -> pd.DataFrame:
    """One row of :data:`ATTACK_NORM_COLUMNS` from an attack cell's per-example ``raw_norm``.

    ``n``: attacked examples; ``n_fooled``: those with a finite ``raw_norm`` (the attack fooled the
    model), the denominator of the median and quartiles (NaN when none was fooled); ``n_within_eps``:
    fooled examples with a perturbation of at most ``eps`` (those that count at this radius).
    """
    raw = np.asarray(raw_norm, dtype=np.float64).reshape(-1)
    fooled = raw[np.isfinite(raw)]
    q25, med, q75 = np.quantile(fooled, [0.25, 0.5, 0.75]) if fooled.size else (np.nan, np.nan, np.nan)
    row = {
        "seed": int(seed),
        "source": source,
        "attack": attack,
        "eps": float(eps),
        "norm": norm,
        "n": int(raw.size),
        "n_fooled": int(fooled.size),
        "n_within_eps": int((fooled <= eps).sum()),
        "median_raw_norm": float(med),
        "q25_raw_norm": float(q25),
        "q75_raw_norm": float(q75),
    }
    return pd.DataFrame([row], columns=list(ATTACK_NORM_COLUMNS))


def minimum_norm_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (source, attack, norm, eps): the seed mean, min and max of the median perturbation norm.

    Also ``n`` (attacked examples per seed, the largest), ``n_fooled`` and ``n_within_eps`` summed over
    seeds, and ``n_seeds``. Seeds whose attack fooled nothing (median NaN) do not enter the mean.
    Empty when ``table`` is.
    """
    cols = ["source", "attack", "norm", "eps", "median", "median_min", "median_max", "n", "n_fooled"]
    cols += ["n_within_eps", "n_seeds"]
    if table.empty:
        return pd.DataFrame(columns=cols)
    g = table.groupby(["source", "attack", "norm", "eps"], sort=False)
    out = g.agg(
        median=("median_raw_norm", "mean"),
        median_min=("median_raw_norm", "min"),
        median_max=("median_raw_norm", "max"),
        n=("n", "max"),
        n_fooled=("n_fooled", "sum"),
        n_within_eps=("n_within_eps", "sum"),
        n_seeds=("seed", "nunique"),
    ).reset_index()
    return out[cols]
