"""The results of a run as tidy tables, saved with the run and read back by ``advbench report``.

The statistics a report shows (seed means with CIs, the transfer summary, paired differences) are
computed here, in the evaluation layer; :mod:`advbench.reports` only renders what these return.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from advbench.errors import AdvbenchError
from advbench.evaluation.stats import mean_ci, paired_differences, summarize
from advbench.evaluation.transfer import transfer_metrics

__all__ = ["Results", "seed_summary"]

_FILES = {
    "outcomes": "outcomes.csv.gz",
    "training": "training.csv",
    "clean": "clean.csv",
    "dknn": "dknn.csv",
    "dknn_examples": "dknn_examples.csv.gz",
    "gradient_flags": "gradient_flags.csv",
    "metrics": "transfer_metrics.csv",
    "failures": "failures.csv",
}


@dataclass
class Results:
    """Everything a report is rendered from.

    * ``outcomes``: one row per (seed, source, attack, eps, target, example) with booleans
      ``clean_correct``, ``adv_correct``, ``source_success``.
    * ``metrics``: the tidy transfer table derived from the outcomes (one row per source, target,
      attack, eps, seed and metric, with its numerator and denominator).
    * ``training``: per-epoch training history (loss terms, temperatures, probe entanglement) per model and seed.
    * ``clean``: clean test accuracy per model and seed.
    * ``dknn`` / ``dknn_examples``: DkNN calibration records and per-example credibility.
    * ``gradient_flags``: input-gradient checks per model and seed.
    * ``failures``: cells that failed (a faulty attack plugin, say) or were skipped because a cell
      they need failed: ``cell``, ``kind``, ``status``, ``error``. Empty when everything ran.
    """

    suite: dict[str, Any]
    outcomes: pd.DataFrame
    metrics: pd.DataFrame
    training: pd.DataFrame
    clean: pd.DataFrame
    dknn: pd.DataFrame
    dknn_examples: pd.DataFrame
    gradient_flags: pd.DataFrame
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: paired differences per (reference, variants), computed once (the bootstrap is not free)
    paired_memo: dict[tuple[str, tuple[str, ...]], pd.DataFrame] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: the worst-case table, computed once (the report renders it and writes its CSV)
    worst_memo: dict[str, pd.DataFrame] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_parts(cls, *, suite: dict[str, Any], outcomes: pd.DataFrame, **tables: pd.DataFrame) -> Results:
        """The results with the transfer metrics derived from ``outcomes``."""
        metrics = transfer_metrics(outcomes) if len(outcomes) else pd.DataFrame()
        return cls(suite=suite, outcomes=outcomes, metrics=metrics, **tables)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "suite.json").write_text(json.dumps(self.suite, indent=1))
        for f in fields(self):
            if f.name in _FILES:
                # fast, reproducible gzip (no timestamp in the header)
                compression = (
                    {"method": "gzip", "compresslevel": 1, "mtime": 0} if _FILES[f.name].endswith(".gz") else None
                )
                getattr(self, f.name).to_csv(folder / _FILES[f.name], index=False, compression=compression)

    @classmethod
    def load(cls, folder: str | Path) -> Results:
        folder = Path(folder)
        if not (folder / "suite.json").is_file():
            raise AdvbenchError(
                f"{folder}: no saved results (suite.json missing); the run did not finish. "
                f"Re-run `advbench run` on its suite to complete it"
            )
        tables = {}
        for name, file in _FILES.items():
            path = folder / file
            try:
                tables[name] = pd.read_csv(path) if path.is_file() and path.stat().st_size > 1 else pd.DataFrame()
            except pd.errors.EmptyDataError:
                tables[name] = pd.DataFrame()
        return cls(suite=json.loads((folder / "suite.json").read_text()), **tables)

    def paired_differences(self, reference: str, variants: list[str]) -> pd.DataFrame:
        """Paired differences of each variant against ``reference`` (:func:`~.stats.paired_differences`)."""
        key = (reference, tuple(variants))
        if key not in self.paired_memo:
            self.paired_memo[key] = paired_differences(self.outcomes, reference=reference, variants=variants)
        return self.paired_memo[key]

    def transfer_summary(self) -> pd.DataFrame:
        """Per (source, target, attack, eps, metric): the mean over seeds and its 95% CI."""
        return summarize(self.metrics, outcomes=self.outcomes)

    def worst_case(self) -> pd.DataFrame:
        """Robust accuracy under the ensemble of every white-box attack, per quantity, model, seed and eps.

        :func:`~advbench.evaluation.worstcase.worst_case` of the classifier's outcomes and the DkNN's
        per-example results (quantities ``"classifier"`` and ``"dknn"``); empty without either.
        """
        from advbench.evaluation.worstcase import WORST_CASE_COLUMNS, dknn_long, outcomes_long, worst_case

        if "worst" in self.worst_memo:
            return self.worst_memo["worst"]
        parts = []
        if len(self.outcomes):
            parts.append(outcomes_long(self.outcomes))
        ex = self.dknn_examples
        if len(ex) and "kind" in ex.columns and (ex["kind"] == "adversarial").any():
            parts.append(dknn_long(ex))
        table = (
            worst_case(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame(columns=list(WORST_CASE_COLUMNS))
        )
        self.worst_memo["worst"] = table
        return table

    def entanglement_summary(self) -> pd.DataFrame:
        """Per model and hidden layer: the probe entanglement after the last epoch, mean and 95% CI over seeds.

        Columns ``model``, ``layer``, ``mean``, ``ci_low``, ``ci_high``; empty without entanglement columns.
        """
        tr = self.training
        cols = [c for c in tr.columns if c.startswith("entanglement/")]
        if tr.empty or not cols:
            return pd.DataFrame(columns=["model", "layer", "mean", "ci_low", "ci_high"])
        last = tr.loc[tr.groupby(["model", "seed"])["epoch"].idxmax()]
        rows = []
        for model, g in last.groupby("model", sort=False):
            for c in cols:
                m, lo, hi = mean_ci(g[c].to_numpy(dtype=float))
                rows.append({"model": model, "layer": c.split("/", 1)[1], "mean": m, "ci_low": lo, "ci_high": hi})
        return pd.DataFrame(rows)


def seed_summary(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of ``by``: the mean of ``value`` over its rows (seeds), a 95% CI and the number of seeds."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(g[value].to_numpy(dtype=float))
        rows.append({**dict(zip(by, key, strict=True)), "mean": m, "ci_low": lo, "ci_high": hi, "n_seeds": len(g)})
    return pd.DataFrame(rows)
