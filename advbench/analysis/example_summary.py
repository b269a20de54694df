"""Per-seed summaries of the DkNN's per-example table, saved with a run so its report renders without it.

The per-example table (``dknn_examples.csv.gz``: one row per model, seed, input set and example)
of a powered run is tens of megabytes, too large to keep in git next to the report. Everything the
report and the claims read from it is summarised here (per model and seed where a statistic needs the
seeds, pooled over seeds for the figures):

* ``neighbour_agreement``: the mean share of the k neighbours carrying the predicted label, per
  (model, seed, kind), the statistic of claim e;
* ``dknn_worst_case``: the DkNN's robust accuracy under the ensemble of white-box attacks
  (:func:`~advbench.analysis.worstcase.worst_case` of :func:`~advbench.analysis.worstcase.dknn_long`);
* ``dknn_bins``: the counts behind the report's figures (reliability diagrams and credibility
  histograms), per model, kind (for the histograms, the finer :func:`input_groups`) and bin.

:meth:`advbench.analysis.results.Results.save` writes them next to the tables;
:meth:`~advbench.analysis.results.Results.load` reads them back, and the report and claims use them
whether or not the per-example table is present, so a run folder re-renders the same without it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from advbench.analysis.worstcase import WORST_CASE_COLUMNS, dknn_long, worst_case

__all__ = [
    "BIN_COLUMNS",
    "FIGURE_BINS",
    "SUMMARY_FILES",
    "dknn_bins",
    "dknn_worst_case",
    "input_groups",
    "neighbour_agreement",
    "read_summary",
    "summarise_examples",
]

#: Summary name -> file name in a results folder.
SUMMARY_FILES = {
    "neighbour_agreement": "neighbour_agreement.csv",
    "dknn_worst_case": "dknn_worst_case.csv",
    "dknn_bins": "dknn_bins.csv",
}

#: The report's figures: name -> (input kinds, score column, correctness column or None, equal-width bins on [0, 1]).
FIGURE_BINS: dict[str, tuple[tuple[str, ...] | None, str, str | None, int]] = {
    "reliability_msp_clean": (("clean",), "msp", "softmax_correct", 15),
    "reliability_clean": (("clean",), "credibility", "correct", 10),
    "credibility_histogram": (None, "credibility", None, 20),  # None: every input group (input_groups)
}

#: The figures whose ``kind`` column holds :func:`input_groups` rather than the bare input kind.
GROUPED_FIGURES = frozenset({"credibility_histogram"})

BIN_COLUMNS = ["figure", "model", "kind", "bin", "low", "high", "n", "n_correct"]
_AGREEMENT_COLUMNS = ["model", "seed", "kind", "agree"]


def _as_bool(values: pd.Series) -> np.ndarray:
    """Booleans from a column read back from CSV (``True``/``False``, ``1``/``0`` or strings of them)."""
    return values.astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy()


def neighbour_agreement(examples: pd.DataFrame, dknn: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (model, seed, kind): the mean share of the k neighbours (over layers) carrying the predicted label.

    Adversarial inputs count only when white-box (crafted on the scored model). ``dknn`` supplies the
    ``source`` of each input set for tables recorded before the per-example rows carried it. Columns
    ``model, seed, kind, agree``; empty when the table lacks the per-layer counts (``nbr_pred/<layer>``, ``k``).
    """
    nbr = [c for c in examples.columns if c.startswith("nbr_pred/")]
    if examples.empty or not nbr or "k" not in examples.columns:
        return pd.DataFrame(columns=_AGREEMENT_COLUMNS)
    ex = examples
    if "source" not in ex.columns and dknn is not None and not dknn.empty and "source" in dknn.columns:
        src = dknn.drop_duplicates(["model", "seed", "input_set"])[["model", "seed", "input_set", "source"]]
        ex = ex.merge(src, on=["model", "seed", "input_set"], how="left")
    if "source" in ex.columns:
        ex = ex[(ex["kind"] != "adversarial") | (ex["source"] == ex["model"])]
    agree = ex[nbr].to_numpy(float).mean(axis=1) / ex["k"].to_numpy(float)
    table = ex[["model", "seed", "kind"]].assign(agree=agree).groupby(["model", "seed", "kind"])["agree"].mean()
    return table.reset_index()[_AGREEMENT_COLUMNS]


def dknn_worst_case(examples: pd.DataFrame) -> pd.DataFrame:
    """The DkNN rows of the worst-case table (``quantity == "dknn"``); empty without adversarial rows with ids."""
    if examples.empty or not {"kind", "example"} <= set(examples.columns):
        return pd.DataFrame(columns=list(WORST_CASE_COLUMNS))
    if not (examples["kind"] == "adversarial").any():
        return pd.DataFrame(columns=list(WORST_CASE_COLUMNS))
    return worst_case(dknn_long(examples))


def input_groups(examples: pd.DataFrame) -> pd.Series:
    """Each example's input group, finer than its kind so that a histogram compares like with like.

    ``clean``; adversarial inputs by where they were crafted and whether they fooled the scored classifier
    (``adversarial, white-box, fooled``, ``adversarial, transferred, not fooled``, ...: an attack that failed
    leaves an input the DkNN rightly finds credible, and pooling it with the successes hides both); OOD inputs
    by their distance (``ood, near``, ``ood, far``). A table without ``source``, ``fooled`` or ``distance``
    keeps the coarser group it can tell.
    """
    kind = examples["kind"].astype(str)
    group = kind.copy()
    adv = kind == "adversarial"
    if adv.any() and "source" in examples.columns:
        white = examples["source"].astype(str) == examples["model"].astype(str)
        where = pd.Series(np.where(white, "adversarial, white-box", "adversarial, transferred"), index=examples.index)
        group = group.mask(adv, where.astype(str))
    if adv.any() and "fooled" in examples.columns:
        fooled = pd.Series(np.where(_as_bool(examples["fooled"]), ", fooled", ", not fooled"), index=examples.index)
        group = group.mask(adv, group.str.cat(fooled.astype(str)))
    ood = kind == "ood"
    if ood.any() and "distance" in examples.columns:
        distance = examples["distance"].astype(str)
        known = ood & examples["distance"].notna() & (distance != "")
        group = group.mask(known, distance.radd("ood, "))
    return group


def dknn_bins(examples: pd.DataFrame) -> pd.DataFrame:
    """The counts behind the report's DkNN figures (:data:`FIGURE_BINS`), one row per figure, model, kind and bin.

    Bins are equal-width on [0, 1], right-closed on the last bin (``numpy.histogram``'s convention);
    ``n_correct`` is NaN for a figure without a correctness column. Empty rows (``n == 0``) are kept,
    so a reader sees every bin. Columns :data:`BIN_COLUMNS`.
    """
    if examples.empty or "credibility" not in examples.columns:
        return pd.DataFrame(columns=BIN_COLUMNS)
    rows: list[pd.DataFrame] = []
    for figure, (kinds, score, correct_col, n_bins) in FIGURE_BINS.items():
        if score not in examples.columns or (correct_col is not None and correct_col not in examples.columns):
            continue
        sel = examples if kinds is None else examples[examples["kind"].isin(kinds)]
        if figure in GROUPED_FIGURES:
            sel = sel.assign(kind=input_groups(sel))
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        for (model, kind), g in sel.groupby(["model", "kind"], sort=True):
            values = g[score].to_numpy(dtype=float)
            # numpy.histogram's bins: [e_i, e_{i+1}), the last one closed; values outside [0, 1] are clipped in
            b = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)
            n = np.bincount(b, minlength=n_bins)
            n_correct = (
                np.bincount(b, weights=_as_bool(g[correct_col]).astype(float), minlength=n_bins)
                if correct_col is not None
                else np.full(n_bins, np.nan)
            )
            rows.append(
                pd.DataFrame(
                    {
                        "figure": figure,
                        "model": str(model),
                        "kind": str(kind),
                        "bin": np.arange(n_bins),
                        "low": edges[:-1],
                        "high": edges[1:],
                        "n": n,
                        "n_correct": n_correct,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)[BIN_COLUMNS] if rows else pd.DataFrame(columns=BIN_COLUMNS)


def summarise_examples(examples: pd.DataFrame, dknn: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every summary of :data:`SUMMARY_FILES` computed from the per-example table."""
    return {
        "neighbour_agreement": neighbour_agreement(examples, dknn),
        "dknn_worst_case": dknn_worst_case(examples),
        "dknn_bins": dknn_bins(examples),
    }


def read_summary(name: str, table: pd.DataFrame) -> pd.DataFrame:
    """A summary read back from CSV with its columns' types restored (blank strings come back as NaN)."""
    if table.empty:
        return table
    if name == "dknn_worst_case":
        text = ["quantity", "model", "attacks", "strongest_attack", "decisive_attacks"]
        return table.assign(**{c: table[c].fillna("").astype(str) for c in text if c in table.columns})
    if name in ("neighbour_agreement", "dknn_bins"):
        text = ["model", "kind"] + (["figure"] if name == "dknn_bins" else [])
        return table.assign(**{c: table[c].astype(str) for c in text})
    return table
