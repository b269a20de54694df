"""The transfer outcomes as a results folder stores them: one row per adversarial example, a column per target.

The long outcomes table (:data:`~.transfer.OUTCOME_COLUMNS`, one row per example *and target model*) repeats
an example's keys, label and source success once per target. A results folder stores it wide instead: one
row per (seed, source, attack, eps, example), with ``clean_correct:<target>`` and ``adv_correct:<target>``
columns (``1``/``0``, blank where that target was not evaluated). Each fact is written once, so a three-model
run's table is about three times smaller and a five-model run's about four and a half (measured on the
regularisers run: 1.79 MB long, 0.40 MB wide, both gzip level 9) — small enough for the committed run folder
to keep it in git, which the paired comparisons and the worst case need to re-render.

:func:`read_outcomes` reads either layout (older results folders hold the long table) and returns the
long table in :func:`canonical` order, which is also the order :class:`~.results.Results` keeps in memory, so
a report rendered by the run and one rendered from its folder read the same rows in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from advbench.evaluation.transfer import OUTCOME_COLUMNS
from advbench.io import read_run_table

__all__ = ["VALUE_COLUMNS", "canonical", "narrow", "read_outcomes", "widen"]

#: The per-target columns of the long table; every other column is a property of the adversarial example.
VALUE_COLUMNS: tuple[str, ...] = ("clean_correct", "adv_correct")
_SEP = ":"
#: Row order of :func:`canonical`: the cell's keys, then the example.
_ORDER: tuple[str, ...] = ("seed", "target_seed", "source", "attack", "eps", "target", "example")


def canonical(outcomes: pd.DataFrame) -> pd.DataFrame:
    """``outcomes`` (long) in one fixed row order (:data:`_ORDER`, stable) and column order
    (:data:`~.transfer.OUTCOME_COLUMNS`, ``norm``, ``target_seed``, then any others as given), with a fresh
    index."""
    if outcomes.empty:
        return outcomes.reset_index(drop=True)
    cols = [c for c in (*OUTCOME_COLUMNS, "norm", "target_seed") if c in outcomes.columns]
    cols += [c for c in outcomes.columns if c not in cols]
    by = [c for c in _ORDER if c in outcomes.columns]
    return outcomes[cols].sort_values(by, kind="stable").reset_index(drop=True)


def widen(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The long ``outcomes`` table as one row per adversarial example and a column per (value, target).

    Raises ``ValueError`` naming the first repeated row if an example appears twice for one target.
    """
    if outcomes.empty:
        return outcomes
    missing = [c for c in ("target", *VALUE_COLUMNS) if c not in outcomes.columns]
    if missing:
        raise ValueError(f"the outcomes table lacks columns {missing}; got {list(outcomes.columns)}")
    index = [c for c in outcomes.columns if c != "target" and c not in VALUE_COLUMNS]
    dup = outcomes.duplicated([*index, "target"])
    if dup.any():
        first = outcomes.loc[dup, [*index, "target"]].iloc[0].to_dict()
        raise ValueError(f"the outcomes table repeats an example for one target, e.g. {first}")
    values = outcomes[list(VALUE_COLUMNS)].astype("int8")
    frame = pd.concat([outcomes[[*index, "target"]], values], axis=1).set_index([*index, "target"])
    wide = cast(pd.DataFrame, frame.unstack("target"))  # a frame: the index keeps other levels
    wide.columns = [f"{col[0]}{_SEP}{col[1]}" for col in wide.columns]
    return wide.astype("Int8").reset_index()


def narrow(wide: pd.DataFrame) -> pd.DataFrame:
    """The long table of a :func:`widen` table, in :func:`canonical` order (booleans as ``bool``).

    Raises ``ValueError`` if a (value, target) column has no partner or a row has one of an example's two
    values for a target without the other (a damaged table).
    """
    if wide.empty:
        return wide
    index = [c for c in wide.columns if _SEP not in c]
    targets = list(dict.fromkeys(c.split(_SEP, 1)[1] for c in wide.columns if _SEP in c))
    blocks = []
    for target in targets:
        names = {f"{value}{_SEP}{target}": value for value in VALUE_COLUMNS}
        absent = [n for n in names if n not in wide.columns]
        if absent:
            raise ValueError(f"the wide outcomes table lacks columns {absent}; got {list(wide.columns)}")
        values = wide[list(names)].rename(columns=names)
        present = values.notna()
        if (present.any(axis=1) & ~present.all(axis=1)).any():
            row = int(np.flatnonzero(present.any(axis=1) & ~present.all(axis=1))[0])
            raise ValueError(f"the wide outcomes table has one of {list(names)} without the other in row {row}")
        keep = present.all(axis=1).to_numpy()
        block = wide.loc[keep, index].assign(target=target)
        for value in VALUE_COLUMNS:
            block[value] = values.loc[keep, value].astype(int).astype(bool)
        blocks.append(block)
    return canonical(pd.concat(blocks, ignore_index=True))


def read_outcomes(path: str | Path) -> pd.DataFrame:
    """The long outcomes table saved at ``path`` in either layout, in :func:`canonical` order."""
    table = read_run_table(path, low_memory=False)
    if table.empty or "target" in table.columns:  # the long layout, as folders saved it before the wide one
        return canonical(table)
    return narrow(table)
