"""The results of a run as tidy tables, saved with the run and read back by ``advbench report``.

The statistics a report shows (seed means with CIs, the transfer summary, paired differences) are
computed here, in the evaluation layer; :mod:`advbench.reports` only renders what these return.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from advbench.analysis.claims import claim_components, claims_table
from advbench.analysis.example_summary import SUMMARY_FILES, read_summary, summarise_examples
from advbench.analysis.outcome_table import canonical, read_outcomes, widen
from advbench.analysis.stats import (
    PAIRED_COMPARISON_COLUMNS,
    mean_ci,
    paired_comparisons,
    paired_differences,
    rate_intervals,
    summarize,
)
from advbench.errors import AdvbenchError
from advbench.evaluation.min_norm import minimum_norm_summary
from advbench.evaluation.transfer import transfer_metrics
from advbench.io import atomic_write_csv, atomic_write_text, read_run_table

__all__ = ["Results", "all_transfer_metrics", "seed_summary"]

_FILES = {
    "outcomes": "outcomes.csv.gz",
    "training": "training.csv",
    "clean": "clean.csv",
    "dknn": "dknn.csv.gz",
    "dknn_examples": "dknn_examples.csv.gz",
    "gradient_flags": "gradient_flags.csv",
    "metrics": "transfer_metrics.csv",
    "failures": "failures.csv",
    "cross_outcomes": "cross_outcomes.csv.gz",
    "attack_norms": "attack_norms.csv",
    "convergence": "attack_convergence.csv",
}
#: The long outcomes tables, saved one row per adversarial example (:mod:`~.outcome_table`)
_OUTCOME_TABLES = ("outcomes", "cross_outcomes")
#: The names a table was saved under by earlier versions, still read when the current name is absent
_LEGACY_FILES = {"dknn": "dknn.csv"}
#: The checksums of a results folder's files, written last by :meth:`Results.save`, checked by :meth:`Results.load`.
CHECKSUMS = "SHA256SUMS"
#: Files a saved folder may lack although its checksums list them: the per-example DkNN table (tens of MB,
#: left out of committed folders; its per-seed summaries stand in for it).
_MAY_BE_DROPPED = frozenset({"dknn_examples.csv.gz"})
#: Tables derived from the others when saved (for readers of the folder); :meth:`Results.load` recomputes them.
_DERIVED = {"paired": "paired_comparisons.csv", "claims": "claims.csv", "claim_components": "claim_components.csv"}


@dataclass
class Results:
    """Everything a report is rendered from.

    * ``outcomes``: one row per (seed, source, attack, eps, target, example) with booleans
      ``clean_correct``, ``adv_correct``, ``source_success``, in :func:`~.outcome_table.canonical` order; a
      results folder stores it one row per adversarial example with a column per target
      (:mod:`~.outcome_table`), and :meth:`load` reads it back long.
    * ``metrics``: the tidy transfer table derived from the outcomes (one row per source, target,
      attack, eps, seed and metric, with its numerator and denominator).
    * ``training``: per-epoch training history (loss terms, temperatures, probe entanglement) per model and seed.
    * ``clean``: clean test accuracy per model and seed.
    * ``dknn`` / ``dknn_examples``: DkNN calibration records and per-example credibility.
    * ``gradient_flags``: input-gradient checks per model and seed.
    * ``cross_outcomes``: the outcomes of the cross-seed transfer cells (the independent-training
      control): adversarial sets of seed ``seed`` on the models of ``target_seed`` ≠ ``seed``. The
      ``metrics`` table holds both designs, told apart by its ``target_seed`` column (== ``seed``
      for the paired, shared-path cells).
    * ``attack_norms``: minimum-norm attacks only (Carlini–Wagner, DeepFool): one row per
      (seed, source, attack, eps) with the median and quartiles of the attack's own perturbation
      norms over the examples it fooled (:func:`~.min_norm.attack_norm_record`). Empty without them.
    * ``saved_summaries``: what the report reads from ``dknn_examples``, summarised per seed
      (:mod:`~.example_summary`), as loaded from a run folder; :meth:`example_summary` prefers the
      per-example table when it is there.
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
    cross_outcomes: pd.DataFrame = field(default_factory=pd.DataFrame)
    attack_norms: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the convergence check of the attacks on the DkNN (:mod:`advbench.suite.cells.convergence`): one row per
    #: (model, attack, eps) of the first seed; empty without such attacks or in runs made before the check
    convergence: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the per-seed summaries of ``dknn_examples`` as saved with the run (:mod:`~.example_summary`): read when
    #: the per-example table itself is absent (a run folder kept in git without it)
    saved_summaries: dict[str, pd.DataFrame] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: paired differences per (reference, variants), computed once (the bootstrap is not free)
    paired_memo: dict[tuple[str, tuple[str, ...]], pd.DataFrame] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: derived tables computed once ("worst", "claims"): the results folder, the report and the headline read them
    memo: dict[str, pd.DataFrame] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_parts(cls, *, suite: dict[str, Any], outcomes: pd.DataFrame, **tables: pd.DataFrame) -> Results:
        """The results with the transfer metrics derived from ``outcomes`` (and ``cross_outcomes``), both kept in
        :func:`~.outcome_table.canonical` order (the order a saved folder reads back in)."""
        outcomes = canonical(outcomes)
        if "cross_outcomes" in tables:
            tables["cross_outcomes"] = canonical(tables["cross_outcomes"])
        return cls(
            suite=suite,
            outcomes=outcomes,
            metrics=all_transfer_metrics(outcomes, tables.get("cross_outcomes")),
            **tables,
        )

    def save(self, folder: str | Path) -> None:
        """Write every table, then ``suite.json`` (its presence marks complete results), each atomically.

        A full or read-only disk raises :class:`~advbench.io.DiskFullError` or
        :class:`~advbench.io.FileWriteError` naming the file and leaves no partial file behind.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for f in fields(self):
            if f.name in _FILES:
                table = getattr(self, f.name)
                if f.name in _OUTCOME_TABLES:
                    table = widen(table)
                # the committed tables at gzip level 9 (a third smaller for 0.2 s more); the per-example
                # DkNN table, ten times larger and never committed, at level 1
                level = 1 if f.name == "dknn_examples" else 9
                atomic_write_csv(table, folder / _FILES[f.name], what="a results table", compresslevel=level)
        atomic_write_text(folder / "suite.json", json.dumps(self.suite, indent=1), what="the results' suite")
        self._write_derived(folder)  # the checksums of every file are written once, last
        for name, file in SUMMARY_FILES.items():
            atomic_write_csv(self.example_summary(name), folder / file, what="a summary of the per-example table")
        write_checksums(
            folder, {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}
        )

    def save_derived(self, folder: str | Path) -> None:
        """Write the tables derived from the saved ones (paired comparisons, claims and their components) as the
        analysis code computes them now; ``advbench report`` refreshes them so the folder and its report agree.
        Their checksums are updated; a folder saved before checksums gets them now, for the files it holds."""
        folder = Path(folder)
        self._write_derived(folder)
        old = read_checksums(folder)
        if old is None:  # saved before checksums: they record the folder as it is now
            old = {p.name: _sha256(p) for p in folder.iterdir() if p.is_file() and not p.is_symlink()}
        write_checksums(folder, old | {f: _sha256(folder / f) for f in _DERIVED.values()})

    def _write_derived(self, folder: Path) -> None:
        derived = {
            "paired": self.paired(),
            "claims": self.claims(),
            "claim_components": claim_components(self.claims()),
        }
        for name, table in derived.items():
            atomic_write_csv(table, folder / _DERIVED[name], what="a derived results table")

    @classmethod
    def load(cls, folder: str | Path, *, per_example: bool = True) -> Results:
        """The results saved in ``folder``. ``per_example=False`` leaves ``dknn_examples`` empty (the largest
        table): everything read from it then comes from the per-seed summaries saved next to it."""
        folder = Path(folder)
        if not (folder / "suite.json").is_file():
            raise AdvbenchError(
                f"{folder}: no saved results (suite.json missing); the run did not finish. "
                f"Re-run `advbench run` on its suite to complete it"
            )
        verify_checksums(folder)
        tables = {}
        for name, file in _FILES.items():
            path = folder / file
            if not path.is_file() and name in _LEGACY_FILES:
                path = folder / _LEGACY_FILES[name]
            if name == "dknn_examples" and not per_example:
                tables[name] = pd.DataFrame()
                continue
            try:
                # low_memory=False: read each column whole, so a column with blanks gets one dtype
                if not path.is_file() or path.stat().st_size <= 1:
                    tables[name] = pd.DataFrame()
                elif name in _OUTCOME_TABLES:
                    tables[name] = read_outcomes(path)
                else:
                    tables[name] = read_run_table(path, low_memory=False)
            except pd.errors.EmptyDataError:
                tables[name] = pd.DataFrame()
            except Exception as exc:  # truncated gzip (zlib.error), binary junk, bad encodings: all damage
                raise AdvbenchError(
                    f"{path}: the saved results are damaged "
                    f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                    f"re-run `advbench run` on the suite to write them again (cached cells are not recomputed)"
                ) from exc
        try:
            suite = json.loads((folder / "suite.json").read_text())
        except (OSError, ValueError) as exc:
            raise AdvbenchError(
                f"{folder / 'suite.json'}: the saved results are damaged ({exc}); re-run `advbench run` on the suite"
            ) from exc
        if not isinstance(suite, dict) or not isinstance(suite.get("report"), dict) or "name" not in suite:
            raise AdvbenchError(f"{folder / 'suite.json'}: expected the suite of a run, got something else; re-run it")
        summaries = {}
        for name, file in SUMMARY_FILES.items():
            if (folder / file).is_file():
                try:
                    summaries[name] = read_summary(name, read_run_table(folder / file))
                except pd.errors.EmptyDataError:
                    summaries[name] = pd.DataFrame()
                except Exception as exc:
                    raise AdvbenchError(
                        f"{folder / file}: the saved summary is damaged ({type(exc).__name__}: {exc}); "
                        f"re-run `advbench run` on the suite to write it again (cached cells are not recomputed)"
                    ) from exc
        out = cls(suite=suite, **tables)
        out.saved_summaries = summaries
        if len(out.metrics) and "target_seed" not in out.metrics.columns:  # a run saved before cross-seed cells
            out.metrics = out.metrics.assign(target_seed=out.metrics["seed"])
        return out

    def minimum_norm_summary(self) -> pd.DataFrame:
        """Median perturbation norm of each minimum-norm attack per (source, attack, norm, eps): seed mean and
        range (:func:`~.min_norm.minimum_norm_summary`); empty when no such attack ran."""
        return minimum_norm_summary(self.attack_norms)

    def paired_differences(self, reference: str, variants: list[str]) -> pd.DataFrame:
        """Paired differences of each variant against ``reference`` (:func:`~.stats.paired_differences`), for the
        models the outcomes hold (a model whose every cell failed has none): empty without the reference."""
        present = set(self.outcomes["source"]) | set(self.outcomes["target"]) if len(self.outcomes) else set()
        variants = [v for v in variants if v in present]
        key = (reference, tuple(variants))
        if key not in self.paired_memo:
            self.paired_memo[key] = (
                paired_differences(self.outcomes, reference=reference, variants=variants)
                if reference in present and variants
                else pd.DataFrame()
            )
        return self.paired_memo[key]

    def shared_metrics(self) -> pd.DataFrame:
        """The transfer metrics of the paired design: source and target trained from the same seed."""
        m = self.metrics
        if m.empty or "target_seed" not in m.columns:
            return m
        return m[m["target_seed"] == m["seed"]].reset_index(drop=True)

    def independent_metrics(self) -> pd.DataFrame:
        """The transfer metrics of the cross-seed cells (target trained from another seed); empty without them."""
        m = self.metrics
        if m.empty or "target_seed" not in m.columns:
            return m.iloc[0:0]
        return m[m["target_seed"] != m["seed"]].reset_index(drop=True)

    def transfer_summary(self) -> pd.DataFrame:
        """Per (source, target, attack, eps, metric) of the same-seed cells: the mean over seeds and its 95% CI."""
        return summarize(self.shared_metrics(), outcomes=self.outcomes)

    def transfer_rate_intervals(self, *, independent: bool = False) -> pd.DataFrame:
        """Per (source, target, attack, eps, metric): the mean rate over seeds with a logit-scale 95% interval
        (:func:`~.stats.rate_intervals`; saturated cells flagged, never clipped). ``independent``: the
        cross-seed cells (one replicate per source seed and target seed) instead of the same-seed ones."""
        m = self.independent_metrics() if independent else self.shared_metrics()
        if m.empty:
            return pd.DataFrame()
        return rate_intervals(m, ["source", "target", "attack", "eps", "metric"])

    def reference_model(self) -> str:
        """The reference of the paired comparisons: ``baseline`` if present, else the first model."""
        order = [m["name"] for m in self.suite["models"]]
        return "baseline" if "baseline" in order else order[0]

    def paired(self) -> pd.DataFrame:
        """Seed-level paired comparisons of every model against :meth:`reference_model`
        (:func:`~.stats.paired_comparisons`, the per-example McNemar kept as a conditional column)."""
        key = ("__seed_level__", ())
        if key not in self.paired_memo:
            order = [m["name"] for m in self.suite["models"]]
            ref = self.reference_model() if order else ""
            variants = [m for m in order if m != ref]
            m = self.shared_metrics()
            if m.empty or not variants or ref not in set(m["source"]) | set(m["target"]):
                self.paired_memo[key] = pd.DataFrame(columns=list(PAIRED_COMPARISON_COLUMNS))
            else:
                present = set(m["source"]) | set(m["target"])
                self.paired_memo[key] = paired_comparisons(
                    m, ref, [v for v in variants if v in present], outcomes=self.outcomes
                )
        return self.paired_memo[key]

    def claims(self) -> pd.DataFrame:
        """The verdicts of the suite's claims (``claims:``; all registered when absent), columns
        :data:`~.claims.CLAIM_COLUMNS`."""
        if "claims" not in self.memo:
            self.memo["claims"] = claims_table(self, self.suite.get("claims"))
        return self.memo["claims"]

    def model_comparison(self) -> pd.DataFrame:
        """Every model against :meth:`reference_model` on clean and robust accuracy, transfer into and out of
        it, and adversarial and OOD detection (:func:`~.comparison.model_comparison`)."""
        from advbench.analysis.comparison import model_comparison

        if "comparison" not in self.memo:
            order = [m["name"] for m in self.suite["models"]]
            self.memo["comparison"] = model_comparison(self, self.reference_model(), order)
        return self.memo["comparison"]

    def example_summary(self, name: str) -> pd.DataFrame:
        """One summary of the per-example DkNN table (:data:`~.example_summary.SUMMARY_FILES`): computed from
        ``dknn_examples`` when present, else the one saved with the run, else empty."""
        key = f"summary/{name}"
        if key not in self.memo:
            if len(self.dknn_examples):
                self.memo.update(
                    {f"summary/{n}": t for n, t in summarise_examples(self.dknn_examples, self.dknn).items()}
                )
            else:
                self.memo[key] = self.saved_summaries.get(name, pd.DataFrame())
        return self.memo[key]

    def worst_case(self) -> pd.DataFrame:
        """Robust accuracy under the ensemble of every white-box attack, per quantity, model, seed and eps.

        :func:`~advbench.analysis.worstcase.worst_case` of the classifier's outcomes and the DkNN's
        per-example results (quantities ``"classifier"`` and ``"dknn"``); empty without either.
        """
        from advbench.analysis.worstcase import WORST_CASE_COLUMNS, outcomes_long, worst_case

        if "worst" in self.memo:
            return self.memo["worst"]
        # worst_case groups per quantity, so the classifier's rows and the DkNN's (saved per seed with the run,
        # or computed from its per-example table) are computed apart and stacked in its order
        parts = [worst_case(outcomes_long(self.outcomes))] if len(self.outcomes) else []
        dknn = self.example_summary("dknn_worst_case")
        if len(dknn):
            parts.append(dknn)
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(WORST_CASE_COLUMNS))
        self.memo["worst"] = table
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

    def regulariser_summary(self) -> pd.DataFrame:
        """Per model and regulariser column of the training history (``center/fc1``, ...): its last-epoch value.

        A regulariser column is ``{name}/{term}`` or ``{name}/{metric}`` as the trainer logs the recipe's
        ``regularisers`` (:func:`~advbench.training.trainer.train_model`): every ``a/b`` column whose
        prefix is not one the trainer writes for the SNNL block or the probe. Only models with a value
        get a row. Columns ``model``, ``term``, ``mean``, ``ci_low``, ``ci_high`` (95% over seeds),
        ``n_seeds``; empty when no model logged one.
        """
        tr = self.training
        empty = pd.DataFrame(columns=["model", "term", "mean", "ci_low", "ci_high", "n_seeds"])
        cols = [c for c in tr.columns if "/" in str(c) and str(c).split("/", 1)[0] not in _TRAINER_PREFIXES]
        if tr.empty or not cols:
            return empty
        last = tr.loc[tr.groupby(["model", "seed"])["epoch"].idxmax()]
        rows = []
        for model, g in last.groupby("model", sort=False):
            for c in cols:
                v = g[c].to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                if v.size:
                    m, lo, hi = mean_ci(v)
                    rows.append(
                        {"model": model, "term": c, "mean": m, "ci_low": lo, "ci_high": hi, "n_seeds": int(v.size)}
                    )
        return pd.DataFrame(rows) if rows else empty


#: Prefixes of the history columns the trainer writes itself (SNNL block, probe), not a regulariser's terms.
_TRAINER_PREFIXES = frozenset({"snnl", "temperature", "floor", "entanglement", "entanglement_T"})


def all_transfer_metrics(outcomes: pd.DataFrame, cross_outcomes: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`~.transfer.transfer_metrics` of the same-seed outcomes and of the cross-seed outcomes, with a
    ``target_seed`` column (== ``seed`` for the same-seed cells)."""
    frames = []
    if len(outcomes):
        frames.append(transfer_metrics(outcomes).assign(target_seed=lambda d: d["seed"]))
    if cross_outcomes is not None and len(cross_outcomes):
        for ts, g in cross_outcomes.groupby("target_seed", sort=True):
            frames.append(transfer_metrics(g.drop(columns="target_seed")).assign(target_seed=int(cast(int, ts))))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).astype({"target_seed": "int64"})


def seed_summary(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of ``by``: the mean of ``value`` over its rows (seeds), a 95% CI and the number of seeds."""
    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(g[value].to_numpy(dtype=float))
        rows.append({**dict(zip(by, key, strict=True)), "mean": m, "ci_low": lo, "ci_high": hi, "n_seeds": len(g)})
    return pd.DataFrame(rows)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: Path, sums: dict[str, str]) -> None:
    """Write ``SHA256SUMS`` (``sha256sum`` format: ``<hex>  <name>`` per line) into ``folder``."""
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
    atomic_write_text(folder / CHECKSUMS, text, what="the results' checksums")


def read_checksums(folder: Path) -> dict[str, str] | None:
    """The checksums of a results folder (name -> hex), None for a folder saved before them."""
    path = folder / CHECKSUMS
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError("not a regular file")
        sums = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64 or "/" in name or not name:
                raise ValueError(f"line {line[:80]!r} is not '<sha256>  <name>'")
            sums[name] = digest
        return sums
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdvbenchError(
            f"{path}: damaged ({exc}); the results folder cannot be checked, so it is not read. Re-run `advbench run` "
            f"on its suite to write the results again (cached cells are not recomputed)"
        ) from None


def verify_checksums(folder: Path) -> None:
    """Refuse a results folder whose files do not match its ``SHA256SUMS``: missing (but the per-example table,
    which committed folders drop), replaced by a link or a folder, truncated, emptied or changed. A folder saved
    before checksums is read as it is."""
    sums = read_checksums(folder)
    if sums is None:
        return
    for name, digest in sums.items():
        path = folder / name
        if not path.exists() and not path.is_symlink():
            if name in _MAY_BE_DROPPED:
                continue
            problem = "is missing"
        elif path.is_symlink():
            problem = "is a symbolic link (a run folder's files never are)"
        elif not path.is_file():
            problem = "is not a regular file"
        elif _sha256(path) != digest:
            problem = f"does not match its checksum in {CHECKSUMS} (it was changed, truncated or emptied)"
        else:
            continue
        raise AdvbenchError(
            f"{path}: {problem}; the results folder was damaged after advbench wrote it, so it is not read. Re-run "
            f"`advbench run` on its suite to write it again (cached cells are not recomputed), or restore the folder"
        )
