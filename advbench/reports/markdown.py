"""The Markdown report: a pure function of a run's :class:`Results` (and its manifest for provenance).

Every table says what its numbers are, their denominator and n. Numbers are the ones the run
measured; flags annotate numbers, they never hide them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from advbench.analysis.claims import claim_components, claims_scope, claims_tally
from advbench.analysis.results import Results
from advbench.analysis.stats import rate_intervals
from advbench.codeversion import report_code_version
from advbench.errors import AdvbenchError
from advbench.evaluation.flags import evaluation_flags
from advbench.io import atomic_write_csv, atomic_write_text, is_generated_file, write_generated_text

__all__ = ["render_report", "results_digest", "write_report", "write_run_report"]

#: Gap (as a fraction) above which a table-based evaluation-quality flag is raised.
FLAG_TOLERANCE = 0.01
#: How far (a fraction) the per-example worst case over attacks may sit below the adaptive DkNN attack's accuracy
#: before the attack is flagged as not having found the DkNN's worst case (issue 34: 1 point).
WORST_CASE_TOLERANCE = 0.01

log = logging.getLogger(__name__)


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _ci(mean: Any, lo: Any, hi: Any, *, pct: bool = True) -> str:
    """``mean [lo, hi]`` as computed (never clipped: rates get logit-scale intervals from the evaluation layer)."""
    mean, lo, hi = float(mean), float(lo), float(hi)
    f = _pct if pct else (lambda v: "n/a" if not np.isfinite(v) else f"{v:.3f}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f(mean)
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


def _rate(r: dict[str, Any]) -> str:
    """A row of :func:`~advbench.analysis.stats.rate_intervals` in percent: ``mean [lo, hi]``, or the
    mean marked ``saturated`` (0% or 100% in every seed) or ``1 seed`` instead of an interval."""
    est, lo, hi = float(r["estimate"]), float(r["ci_low"]), float(r["ci_high"])
    if bool(r["saturated"]):
        return f"{_pct(est)} (saturated)"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{_pct(est)} [{_pct(lo)}, {_pct(hi)}]"
    return f"{_pct(est)} ({r['status']})"


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]


def _table(df: pd.DataFrame, **kw: Any) -> str:
    data: Any = df
    return tabulate(data, headers="keys", tablefmt="github", showindex=False, **kw)


def _model_order(results: Results) -> list[str]:
    return [m["name"] for m in results.suite["models"]]


#: Characters that make Markdown or HTML out of plain text (links, images, emphasis, tables, tags, entities).
_MARKDOWN_SPECIAL = "\\`*_{}[]()<>#+!|&"


def escape_markdown(text: str) -> str:
    """``text`` (from a suite file: data, not markup) shown as itself in Markdown: every character that
    could start a link, an image, emphasis, a table cell or an HTML tag is escaped, and lines are joined."""
    plain = " ".join(text.split())
    escaped = "".join(f"\\{c}" if c in _MARKDOWN_SPECIAL else c for c in plain)
    # a line that starts like a list item, a heading rule or a numbered item would become one
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", "\\" + escaped if escaped[:1] in ("-", "=", "~") else escaped)


def render_report(
    results: Results, *, manifest: dict[str, Any], figures_dir: Path | None, link_prefix: str = ""
) -> str:
    """The report's Markdown text; writes figures into ``figures_dir`` when given."""
    s = results.suite
    out: list[str] = [f"# advbench report: {s['name']}", ""]
    if s.get("description"):
        out += [escape_markdown(str(s["description"])), ""]
    seeds = s["seeds"]
    out += [
        f"Dataset **{s['dataset']['name']}**; models {', '.join(f'`{m}`' for m in _model_order(results))}; "
        f"seeds {seeds}. The trained network is the unit of inference: intervals are 95% confidence intervals "
        f"across the {len(seeds)} seeds (each seed an independent set of models). Intervals of rates are "
        "Student-t intervals of per-seed logits mapped back to [0, 100] (never clipped); a cell at 0% or 100% in "
        "every seed is marked saturated instead of given a zero-width interval. Percentages are in points.",
        "",
    ]
    out += _claims_section(results)
    out += _failures_section(results)
    out += _clean_section(results)
    out += _entanglement_section(results, figures_dir, link_prefix)
    out += _regulariser_section(results)
    out += _comparison_section(results)
    out += _transfer_sections(results, figures_dir, link_prefix)
    out += _minimum_norm_section(results)
    out += _independent_transfer_section(results)
    out += _paired_section(results)
    out += _power_section(results)
    out += _dknn_section(results, figures_dir, link_prefix)
    out += _worst_case_section(results)
    out += _convergence_section(results)
    out += _flags_section(results)
    out += _provenance_section(manifest)
    return "\n".join(out) + "\n"


def check_report_path(path: str | Path, *, suite_id: str | None = None, replace: bool = False) -> Path:
    """Refuse a report path advbench may not write, before anything runs; the path when it may.

    ``path`` must end in ``.md``; it may not exist yet, or be a regular file advbench wrote (its first
    line is advbench's marker). A file advbench did not write, a symlink or a folder is refused, and
    so is a *file* where the report's figure folder (``path`` without ``.md``) goes. With ``suite_id``
    (:func:`suite_identity`), a report another suite wrote (its stamp says which) is refused unless
    ``replace`` (``--replace-report``).
    """
    path = Path(path)
    if path.suffix.lower() != ".md":
        raise AdvbenchError(f"report path {path}: expected a Markdown file ending in .md; pass --report NAME.md")
    if path.is_symlink() or (path.exists() and not is_generated_file(path)):
        what = "a symlink" if path.is_symlink() else "not a file advbench wrote (no advbench marker on line 1)"
        raise AdvbenchError(
            f"refusing to write the report to {path}: it is {what}, and advbench never replaces a file it did not "
            f"write. Nothing was run. To fix: pass another path with --report, or move {path.name} away yourself"
        )
    fig_dir = path.with_suffix("")
    if fig_dir.is_symlink() or (fig_dir.exists() and not fig_dir.is_dir()):
        raise AdvbenchError(
            f"the report {path} keeps its figures and tables in {fig_dir}, which is a file or a symlink; "
            f"move it or pass another report path (--report)"
        )
    owner = _run_folder_at_or_above(fig_dir)
    if owner is not None:
        raise AdvbenchError(
            f"refusing to write the report {path}: its figures and tables would go in {fig_dir}, which is (or lies "
            f"inside) the run folder {owner}, and a report never writes into a run's results. Nothing was run. "
            f"To fix: pass a report path outside every run folder, e.g. reports/<suite>.md"
        )
    made_by = _stamp_fields(fig_dir / STAMP_NAME).get("suite")
    if suite_id is not None and made_by is not None and made_by != suite_id and not replace:
        raise AdvbenchError(
            f"refusing to replace the report {path}: it was made from another suite ({made_by}), and this one is "
            f"{suite_id}. Nothing was run. To fix: pass another path with --report, or --replace-report if "
            f"replacing that report (and its figure folder {fig_dir}) is what you mean"
        )
    return path


#: The stamp a rendering leaves in the report's figure folder (see :func:`write_run_report`).
STAMP_NAME = "results.sha256"


def suite_identity(name: str, source: str | None) -> str:
    """Which suite a report belongs to: its name and the suite file it came from (relative to the project)."""
    return f"{name} from {source or 'an unknown file'}"


def _stamp_fields(stamp: Path) -> dict[str, str]:
    """The ``key value`` lines of a report stamp (the first line, the results digest, under ``results``)."""
    try:
        text = stamp.read_text(encoding="utf-8") if stamp.is_file() and not stamp.is_symlink() else ""
    except (OSError, UnicodeDecodeError):
        return {}
    return _parse_stamp(text)


def _parse_stamp(text: str) -> dict[str, str]:
    lines = text.splitlines()
    out = {"results": lines[0]} if lines else {}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def _run_folder_at_or_above(folder: Path) -> Path | None:
    """The run folder (one whose manifest.json names a suite) that ``folder`` is or lies inside, if any."""
    for candidate in (folder, *folder.resolve().parents):
        manifest = candidate / "manifest.json"
        try:
            data = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else None
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and "suite" in data:
            return candidate
    return None


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_csv(frame, path, what="a report table")


def write_report(results: Results, path: str | Path, *, manifest: dict[str, Any], plots: bool = True) -> Path:
    """Render the report to ``path`` with its figures in ``<path without .md>/`` and the tidy CSVs beside them.

    Every file is written atomically; the report itself only over a report advbench wrote
    (:func:`check_report_path`, :func:`advbench.io.write_generated_text`).
    """
    path = check_report_path(path)
    fig_dir = path.with_suffix("")
    fig_dir.mkdir(parents=True, exist_ok=True)
    text = render_report(
        results, manifest=manifest, figures_dir=fig_dir if plots else None, link_prefix=f"{fig_dir.name}/"
    )
    if len(results.metrics):
        _write_csv(results.metrics, fig_dir / "transfer_metrics.csv")
    if len(results.dknn):
        _write_csv(results.dknn, fig_dir / "dknn_metrics.csv.gz")
    worst = results.worst_case()
    if len(worst):
        _write_csv(worst, fig_dir / "worst_case.csv")
    checks = _checks(results)
    if len(checks):
        _write_csv(checks, fig_dir / "evaluation_checks.csv")
    if len(results.outcomes):
        order = [m["name"] for m in results.suite["models"]]
        ref = "baseline" if "baseline" in order else order[0]
        if len(order) > 1:
            _write_csv(
                results.paired_differences(ref, [m for m in order if m != ref]), fig_dir / "paired_differences.csv"
            )
            _write_csv(results.paired(), fig_dir / "paired_comparisons.csv")
    _write_csv(results.claims(), fig_dir / "claims.csv")
    _write_csv(claim_components(results.claims()), fig_dir / "claim_components.csv")
    comparison = results.model_comparison()
    if len(comparison):
        _write_csv(comparison, fig_dir / "model_comparison.csv")
    write_generated_text(path, text, what="the report")
    return path


# -- sections ----------------------------------------------------------------------------------


def _failures_section(results: Results) -> list[str]:
    f = results.failures
    if not len(f):
        return []
    failed = int((f["status"] == "failed").sum())
    skipped = len(f) - failed
    return [
        "## Failed cells",
        "",
        f"**{failed} cell{'s' if failed != 1 else ''} failed and {skipped} "
        f"{'were' if skipped != 1 else 'was'} skipped because they need a failed cell.** "
        "Every table below leaves them out (their denominators count only what ran). "
        "A re-run retries them; `--fail-fast` stops a run at the first failure instead.",
        "",
        _table(f[["cell", "kind", "status", "error"]]),
        "",
    ]


def _clean_section(results: Results) -> list[str]:
    if results.clean.empty:
        return []
    clean = results.clean.assign(correct=(results.clean["test_accuracy"] * results.clean["n"]).round())
    order = {m: i for i, m in enumerate(_model_order(results))}
    summ = sorted(
        _records(rate_intervals(clean, ["model"], numerator="correct", denominator="n")),
        key=lambda r: order.get(r["model"], len(order)),
    )
    val = None
    if "validation_accuracy" in clean.columns and clean["validation_accuracy"].notna().any():
        v = clean.dropna(subset=["validation_accuracy"])
        v = v.assign(vcorrect=(v["validation_accuracy"] * v["n_validation"]).round())
        val = {
            r["model"]: r
            for r in _records(rate_intervals(v, ["model"], numerator="vcorrect", denominator="n_validation"))
        }
    n = int(results.clean["n"].iloc[0])
    rows = []
    for r in summ:
        row: dict[str, Any] = {"model": r["model"], "clean test accuracy (%)": _rate(r)}
        if val is not None:
            row["validation accuracy (%)"] = _rate(val[r["model"]]) if r["model"] in val else "n/a"
        row["seeds"] = int(r["n_seeds"])
        rows.append(row)
    nval = f"; validation accuracy: the validation split (n = {int(clean['n_validation'].iloc[0])})" if val else ""
    return [
        "## Clean accuracy",
        "",
        f"Denominator: the whole test split (n = {n}) per seed{nval}.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]


def _entanglement_section(results: Results, figures_dir: Path | None, prefix: str) -> list[str]:
    tr = results.training
    summ = results.entanglement_summary()
    if summ.empty:
        return []
    cols = [f"entanglement/{layer}" for layer in dict.fromkeys(summ["layer"])]
    rows = []
    for model, g in summ.groupby("model", sort=False):
        row: dict[str, Any] = {"model": model}
        for r in g.itertuples():
            row[str(r.layer)] = _ci(r.mean, r.ci_low, r.ci_high, pct=False)
        rows.append(row)
    out = [
        "## Entanglement per hidden layer",
        "",
        "Soft Nearest Neighbor Loss of each hidden layer at its minimising temperature on a fixed probe set "
        + (
            "(the first examples of the validation split, never test images)"
            if ((results.suite.get("dataset") or {}).get("splits") or {}).get("validation")
            else "(test examples: this run predates the validation split, so its probe read test images)"
        )
        + ", after the last epoch (higher = classes more entangled).",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]
    if figures_dir is not None:
        # lazy: matplotlib takes about a second to import, and a report without figures needs none
        from advbench.reports.plots import entanglement_curves

        layers = [c.split("/", 1)[1] for c in cols]
        entanglement_curves(
            tr, layers, figures_dir / "entanglement.png", title="probe SNNL over epochs (mean over seeds)"
        )
        out += [f"![entanglement over epochs]({prefix}entanglement.png)", ""]
    return out


def _regulariser_section(results: Results) -> list[str]:
    """The last-epoch value of each regulariser term, for the models whose recipe has regularisers."""
    summ = results.regulariser_summary()
    if summ.empty:
        return []

    def g4(v: float) -> str:
        return "n/a" if not np.isfinite(v) else f"{v:.4g}"

    terms = list(dict.fromkeys(summ["term"]))
    rows = []
    for model, g in summ.groupby("model", sort=False):
        by_term = {str(r["term"]): r for r in _records(g)}
        row: dict[str, Any] = {"model": model}
        for t in terms:
            r = by_term.get(t)
            if r is None:
                row[t] = "—"
            elif np.isfinite(float(r["ci_low"])) and np.isfinite(float(r["ci_high"])):
                row[t] = f"{g4(float(r['mean']))} [{g4(float(r['ci_low']))}, {g4(float(r['ci_high']))}]"
            else:
                row[t] = g4(float(r["mean"]))
        row["seeds"] = int(g["n_seeds"].max())
        rows.append(row)
    return [
        "## Regulariser terms",
        "",
        "Models trained with further regularisers (`recipe.regularisers`) only: each logged term or metric, "
        "`<regulariser>/<term>`, unweighted, in the last epoch. Denominator: the training examples of that epoch "
        "(a per-example mean over its batches); mean over seeds with a 95% Student-t interval when there are "
        "several; — = the model does not have that term.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]


def _comparison_section(results: Results) -> list[str]:
    """Quantities as rows, models as columns: the reference's seed mean [CI], every other model's mean and
    paired difference to the reference [CI] (bold when the interval excludes 0)."""
    comp = results.model_comparison()
    if comp.empty or comp["model"].nunique() < 2:
        return []
    ref = results.reference_model()

    def fmt(v: float, unit: str, signed: bool = False) -> str:
        if not np.isfinite(v):
            return "n/a"
        v = 100 * v if unit == "%" else v
        return (
            f"{v:+.1f}"
            if signed and unit == "%"
            else f"{v:+.3f}"
            if signed
            else f"{v:.1f}"
            if unit == "%"
            else f"{v:.3f}"
        )

    models = list(dict.fromkeys(comp["model"]))
    rows, denoms = [], {}
    for quantity, g in comp.groupby("quantity", sort=False):
        row: dict[str, Any] = {"quantity": f"{quantity}{' (%)' if g['unit'].iloc[0] == '%' else ''}"}
        for r in _records(g):
            u = str(r["unit"])
            cell = fmt(r["mean"], u)
            if np.isfinite(r["ci_low"]):
                cell += f" [{fmt(r['ci_low'], u)}, {fmt(r['ci_high'], u)}]"
            elif r["status"] == "saturated":
                cell += " (saturated)"
            if r["model"] != ref and np.isfinite(r["diff"]):
                d = f"Δ {fmt(r['diff'], u, True)}"
                if np.isfinite(r["diff_low"]) and r["diff_low"] == r["diff_high"]:
                    d += " (the same in every seed)"  # e.g. both saturated: no spread to test against
                elif np.isfinite(r["diff_low"]):
                    d += f" [{fmt(r['diff_low'], u, True)}, {fmt(r['diff_high'], u, True)}]"
                    if r["diff_low"] > 0 or r["diff_high"] < 0:
                        d = f"**{d}**"
                cell += f"; {d}"
            row[str(r["model"])] = cell
        row["seeds"] = int(g["n_seeds"].min())
        rows.append(row)
        denoms[str(quantity)] = str(g["denominator"].iloc[0])
    table = pd.DataFrame(rows)[["quantity", *models, "seeds"]].fillna("—")
    return [
        "## Model comparison",
        "",
        f"Every model against `{ref}` on the quantities a change of representation could move. Each cell: the "
        "mean over seeds [95% interval, Student-t on the logit scale as for every rate here; saturated = 0 or 1 "
        "in every seed]; for the other models also Δ, the paired difference to "
        f"`{ref}` of the same seed (same initial weights and batch order) with its 95% interval, **bold** "
        "when it excludes 0 (paired t-test over seeds; no correction for the number of cells: the decisions "
        "are the Claims table's). A transfer Δ compares like with like: into (out of) this model and into (out "
        f"of) `{ref}` from (to) the same third models, attacks and eps, so it differs from the difference of "
        "the two means shown, which average over different partners. Accuracy and transfer in points of %, "
        "AUROC on [0, 1]. "
        "Table: `model_comparison.csv`. Denominators:",
        "",
        *[f"- {q}: {d}." for q, d in denoms.items()],
        "",
        _table(table),
        "",
    ]


_NORM_LABELS = {"linf": "L-inf", "l2": "L2"}


def _attack_norms(met: pd.DataFrame) -> dict[str, str]:
    """Attack label -> the norm of its threat model ("linf" when the metrics predate the column)."""
    if "norm" not in met.columns:
        return {}
    pairs = met[["attack", "norm"]].drop_duplicates()
    return {str(a): str(n) for a, n in zip(pairs["attack"], pairs["norm"], strict=True)}


def _transfer_sections(results: Results, figures_dir: Path | None, prefix: str) -> list[str]:
    met = results.shared_metrics()
    if met.empty:
        return []
    summ = results.transfer_summary()
    rates = results.transfer_rate_intervals()
    order = _model_order(results)
    out = ["## White-box robustness", ""]
    n = int(met["n"].max())
    norms = _attack_norms(met)
    rows = [
        {
            "attack": r["attack"],
            "norm": _NORM_LABELS.get(norms.get(str(r["attack"]), "linf"), "L-inf"),
            "eps": r["eps"],
            "model": r["source"],
            "adversarial accuracy (%)": _rate(r),
        }
        for r in _records(rates[(rates["source"] == rates["target"]) & (rates["metric"] == "adv_accuracy")])
    ]
    out += [
        f"Accuracy of each model on adversarial examples crafted against itself. Denominator: all n = {n} "
        "attacked test examples per seed.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]
    out += [
        "## Transfer matrices (shared-path transfer)",
        "",
        "Transfer rate = fraction of the examples that the target classifies correctly when clean and "
        "misclassifies after the attack crafted on the source (denominator: the target's clean-correct "
        "examples among the n attacked; the diagonal is the white-box attack). Source and target are trained "
        "from the **same seed** (same initial weights and batch order): this is shared-path transfer; the "
        "independently trained control, where there is one, follows these matrices.",
        "",
    ]
    tr = summ[summ["metric"] == "transfer_rate"]
    cells = {
        (r["source"], r["target"], r["attack"], float(r["eps"])): _rate(r)
        for r in _records(rates[rates["metric"] == "transfer_rate"])
    }
    groups = list(tr.groupby(["attack", "eps"], sort=False))
    # L-inf results first, then L2 ones, each under a heading that names its norm
    groups.sort(key=lambda item: list(_NORM_LABELS).index(norms.get(str(item[0][0]), "linf")))
    for (attack, eps), g in groups:
        norm_label = _NORM_LABELS.get(norms.get(str(attack), "linf"), "L-inf")
        mat = g.pivot(index="source", columns="target", values="mean").reindex(index=order, columns=order)
        table = pd.DataFrame(
            {t: [cells.get((s_, t, attack, float(eps)), "n/a") for s_ in order] for t in order},  # type: ignore[arg-type]
            index=order,
        )
        table.insert(0, "source \\ target", order)
        dens = met[(met["attack"] == attack) & (met["eps"] == eps) & (met["metric"] == "transfer_rate")]
        out += [
            f"### {attack}, {norm_label} eps {eps:g}",
            "",
            f"Transfer rate (%), mean [95% CI]; denominators per cell and seed range from "
            f"{int(dens['denominator'].min())} to {int(dens['denominator'].max())} of n = {n}.",
            "",
            _table(table),
            "",
        ]
        if figures_dir is not None:
            # lazy: matplotlib takes about a second to import, and a report without figures needs none
            from advbench.reports.plots import transfer_heatmap

            name = f"transfer_{attack}_{eps:g}.png".replace("/", "_")
            transfer_heatmap(mat, figures_dir / name, title=f"transfer rate, {attack} {norm_label} eps={eps:g}")
            out += [f"![transfer {attack} eps={eps:g}]({prefix}{name})", ""]
    return out


def _minimum_norm_section(results: Results) -> list[str]:
    """Median perturbation size of the minimum-norm attacks (CW, DeepFool); nothing when none ran."""
    summ = results.minimum_norm_summary()
    if summ.empty:
        return []
    n_seeds = int(summ["n_seeds"].max())
    rows = [
        {
            "model": r["source"],
            "attack": r["attack"],
            "norm": _NORM_LABELS.get(str(r["norm"]), str(r["norm"])),
            "eps": f"{r['eps']:g}",
            "median perturbation": (
                "n/a (nothing fooled)"
                if not np.isfinite(r["median"])
                else f"{r['median']:.3g}"
                + (f" ({r['median_min']:.3g}–{r['median_max']:.3g})" if r["n_seeds"] > 1 else "")
            ),
            "within eps / fooled": f"{int(r['n_within_eps'])} / {int(r['n_fooled'])}",
            "n per seed": int(r["n"]),
            "seeds": int(r["n_seeds"]),
        }
        for r in _records(summ)
    ]
    return [
        "## Minimum-norm attacks",
        "",
        "Attacks that search for the smallest perturbation that fools the model, each against the model it is "
        "crafted on. Median perturbation: the median, in the attack's own norm, of its unfiltered perturbation "
        "over the examples it fooled (denominator: those fooled examples, out of the n attacked test examples "
        "per seed), as a mean over seeds"
        + (" (range over seeds in brackets)" if n_seeds > 1 else "")
        + ". Only perturbations within eps count at that radius in the tables above; the fooled and within-eps "
        "counts are summed over seeds. Quartiles per seed: `attack_norms.csv`.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]


def _independent_transfer_section(results: Results) -> list[str]:
    """Cross-seed cells (source of seed s, targets of seed s′ ≠ s) next to the same-seed value of each cell."""
    ind = results.independent_metrics()
    mode = ((results.suite.get("evaluations") or {}).get("transfer") or {}).get("cross_seed", "none")
    if ind.empty:
        if mode in (None, "none"):
            return [
                "## Independent transfer (cross-seed control)",
                "",
                "Not run: the suite sets no `evaluations.transfer.cross_seed`, so every target shares its source's "
                "initial weights and batch order, and claim (f) is not applicable. Set `cross_seed: ring` (one "
                "target seed per source seed) or `all` to add the independently trained control.",
                "",
            ]
        return []
    rates = results.transfer_rate_intervals(independent=True)
    shared = {
        (r["source"], r["target"], r["attack"], float(r["eps"])): _rate(r)
        for r in _records(results.transfer_rate_intervals())
        if r["metric"] == "transfer_rate"
    }
    rows = [
        {
            "attack": r["attack"],
            "eps": r["eps"],
            "source (seed s)": r["source"],
            "target (seed s′ ≠ s)": r["target"],
            "independent transfer (%)": _rate(r),
            "shared-path, same seed (%)": shared.get((r["source"], r["target"], r["attack"], float(r["eps"])), "n/a"),
            "seed pairs": int(r["n_seeds"]),
        }
        for r in _records(rates[rates["metric"] == "transfer_rate"])
    ]
    pairs = sorted({(int(a), int(b)) for a, b in ind[["seed", "target_seed"]].drop_duplicates().to_numpy()})
    den = ind[ind["metric"] == "transfer_rate"]["denominator"]
    return [
        "## Independent transfer (cross-seed control)",
        "",
        f"Adversarial examples crafted on a source trained from seed s, evaluated on targets trained from another "
        f"seed s′ (other initial weights and batch order; `cross_seed: {mode}`, seed pairs s→s′: "
        f"{', '.join(f'{a}→{b}' for a, b in pairs)}). Transfer rate (%), mean over the seed pairs [95% logit "
        f"interval, the seed pair as replicate], next to the same cell within a seed. Denominator: the target's "
        f"clean-correct examples among the n attacked ({int(den.min())} to {int(den.max())} per pair). Claim (f) "
        "reads these cells. All rows: `transfer_metrics.csv` (column `target_seed`).",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]


_PAIRED_LABELS = {
    "white_box": "white-box: V->V minus R->R",
    "source": "as source: V->M minus R->M",
    "target": "as target: M->V minus M->R",
    "cross": "cross: V->R minus R->V",
}


def _pp(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{100 * v:+.1f}"


def _p(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3g}"


def _paired_rows(results: Results) -> pd.DataFrame:
    """The headline rows of the paired table: white-box adversarial accuracy, transfer rate as source / target."""
    diff = results.paired()
    if diff.empty:
        return diff
    keep = ((diff["role"] == "white_box") & (diff["metric"] == "adv_accuracy")) | (
        diff["role"].isin(["source", "target"]) & (diff["metric"] == "transfer_rate")
    )
    return diff[keep]


def _paired_section(results: Results) -> list[str]:
    if results.outcomes.empty:
        return []
    reference = results.reference_model()
    diff = _paired_rows(results)
    if diff.empty:
        return []
    rows = []
    for r in _records(diff):
        if bool(r["saturated"]):
            cell = "saturated"
        elif np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
            cell = f"{_pp(r['estimate'])} [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}]"
        else:
            cell = f"{_pp(r['estimate'])} ({r['status']})"
        rows.append(
            {
                "variant (V)": r["variant"],
                "comparison": _PAIRED_LABELS.get(r["role"], r["role"]),
                "M": r["other"] if isinstance(r["other"], str) else "",
                "attack": r["attack"],
                "eps": r["eps"],
                "metric": r["metric"],
                "difference (pp) [95% CI]": cell,
                "p (t)": _p(r["p_t"]),
                "p (sign-flip)": _p(r["p_signflip"]),
                "I² (%)": "n/a" if not np.isfinite(r["heterogeneity_i2"]) else f"{100 * r['heterogeneity_i2']:.0f}",
                "MDD 80% (pp)": "n/a" if not np.isfinite(r["mdd_80"]) else f"{100 * r['mdd_80']:.1f}",
                "seeds for ±2 pts": "n/a" if pd.isna(r["seeds_for_2pt"]) else int(r["seeds_for_2pt"]),
                "McNemar p, conditional on these networks": _p(r["conditional_p_mcnemar"]),
            }
        )
    n_seeds = int(diff["n_seeds"].max())
    floor = 2.0 / 2**n_seeds if n_seeds else float("nan")
    return [
        "## Paired differences",
        "",
        f"Each variant V minus the reference R = `{reference}` trained from the same seed (same initial weights "
        "and batch order), in percentage points. The trained network is the unit: per seed one difference, and "
        f"the estimate is their mean with a Student-t 95% interval over the {n_seeds} seeds; **p (t)** is the "
        "paired t-test on the same differences, so a row's interval excludes 0 exactly when p (t) < 0.05. "
        "**p (sign-flip)** is the exact permutation test over seeds; with n seeds it cannot go below 2/2^n "
        f"(= {floor:.3g} here). I²: share of the spread of the per-seed differences beyond sampling noise "
        "(heterogeneity across seeds). MDD 80%: the smallest difference this run detects with 80% power; seeds "
        "for ±2 pts: seeds needed to detect 2 points with 80% power (both from the observed between-seed SD). "
        "Saturated: both cells at 0% or 100% in every seed (no interval). The McNemar column pools per-example "
        "discordant pairs over seeds: it is **conditional on these trained networks** (do these networks differ), "
        "not a test of the training method. White-box rows compare adversarial accuracy (positive = V more "
        "robust); source/target rows compare the transfer rate to / from a third model M (negative = fewer "
        "examples transfer). Every comparison and metric: `paired_comparisons.csv`.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]


def _power_section(results: Results) -> list[str]:
    diff = results.paired() if not results.outcomes.empty else pd.DataFrame()
    if diff.empty:
        return []
    ok = diff[np.isfinite(diff["mdd_80"].to_numpy(float))]
    sat = int(diff["saturated"].sum())
    rows = []
    for (role, metric), g in ok.groupby(["role", "metric"], sort=True):
        mdd = 100 * g["mdd_80"].to_numpy(float)
        need = g["seeds_for_2pt"].dropna().to_numpy(float)
        rows.append(
            {
                "comparison": _PAIRED_LABELS.get(str(role), str(role)),
                "metric": metric,
                "rows": len(g),
                "between-seed SD (pp), median": f"{100 * float(np.median(g['sd_between'].to_numpy(float))):.2f}",
                "MDD 80% (pp), median [min, max]": f"{np.median(mdd):.1f} [{mdd.min():.1f}, {mdd.max():.1f}]",
                "power at 2 pts, median": f"{100 * float(np.median(g['power_2pt'].to_numpy(float))):.0f}%",
                "seeds for ±2 pts, median [max]": f"{np.median(need):.0f} [{need.max():.0f}]" if need.size else "n/a",
            }
        )
    n_seeds = int(diff["n_seeds"].max())
    return [
        "## Power",
        "",
        f"From the observed between-seed SD of each paired comparison with {n_seeds} seeds (α = 0.05, two-sided "
        f"paired t): the smallest difference the run detects with 80% power, the power to detect 2 points and the "
        f"seeds that would detect ±2 points with 80% power, summarised per kind of comparison over its rows "
        f"(attacks, eps, third models). {sat} saturated and {len(diff) - sat - len(ok)} degenerate rows "
        "(one seed, or no between-seed variation) have no power figure. Per row: `advbench power RUN_DIR`.",
        "",
        _table(pd.DataFrame(rows)) if rows else "No row has a between-seed spread to compute power from.",
        "",
    ]


def _fmt_value(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:+.3g}"


def _ci_text(est: float, lo: float, hi: float) -> str:
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{_fmt_value(est)} [{_fmt_value(lo)}, {_fmt_value(hi)}]"
    return _fmt_value(est)


def _verdict_text(verdict: str) -> str:
    """A verdict as the report prints it: a contradiction or support holds at the run's setting only."""
    return f"**{verdict}** at this setting" if verdict in ("supported", "contradicted") else f"**{verdict}**"


def _claims_section(results: Results) -> list[str]:
    table = results.claims()
    if table.empty:
        return []
    rows = []
    for r in _records(table):
        per_seed = ", ".join(f"{s}: {_fmt_value(v)}" for s, v in zip(r["seeds"], r["per_seed"], strict=True))
        need = r["seeds_needed"]
        reason = str(r["reason"])
        if need is not None and not pd.isna(need) and r["verdict"] == "inconclusive":
            reason = f"{int(need)} seeds needed; {reason}"
        metric = f"{r['metric']} ({'> 0' if r['direction'] == 'greater' else '< 0'} claimed)"
        if r.get("decided_by"):
            metric += f"; shown: {r['decided_by']}"
        rows.append(
            {
                "claim": r["name"],
                "kind": r.get("kind", "finding"),
                "statement": r["statement"],
                "metric": metric,
                "per-seed values": per_seed or "n/a",
                "estimate [95% CI]": _ci_text(r["estimate"], r["ci_low"], r["ci_high"]),
                "p (t; sign-flip; Holm-adjusted)": f"{_p(r['p'])}; {_p(r['p_signflip'])}; {_p(r['p_adjusted'])}",
                "verdict": _verdict_text(str(r["verdict"])),
                "seeds needed / reason": reason,
            }
        )
    comps = claim_components(table)
    multi = comps[comps["claim"].map(comps["claim"].value_counts()) > 1]
    comp_rows = [
        {
            "claim": c["claim"],
            "component": c["name"],
            "seeds": len(c["seeds"]) if isinstance(c["seeds"], list) else "",
            "estimate [95% CI]": _ci_text(
                *(float("nan") if c[k] is None else float(c[k]) for k in ("estimate", "ci_low", "ci_high"))
            ),
            "p (t; Holm across components)": f"{_p(c['p'])}; {_p(c['p_holm'])}",
            "verdict": str(c["verdict"]),
        }
        for c in multi.to_dict("records")
    ]
    out = [
        "## Claims",
        "",
        f"**Scope.** {claims_scope(results.suite)}",
        "",
        f"Pre-registered hypotheses and their verdicts: {claims_tally(table)}. Each claim reads one value per seed "
        "(the trained network is the unit; its denominator is the number of seeds with a value) and is decided by "
        "rules fixed before the run. A claim's p-value is Holm-adjusted across the suite's claims, and the "
        "verdict uses the adjusted value: **supported** when it is below 0.05 with the 95% Student-t interval on "
        "the claimed side of 0, **contradicted** when below 0.05 on the other side, **inconclusive** otherwise "
        "(with the seeds that would detect the effect with 80% power), **not applicable** when the run lacks the "
        "data. A claim with several components (in every layer, for both models and more so for one) is supported "
        "only when every component is, and contradicted only when a component is contradicted after Holm's "
        "correction across its components; its row shows the component that decides it, and the table below "
        "shows every component. Kinds: a *manipulation check* (did training do what it was meant to), a "
        "*description* (of the baseline), a *finding* (the paper's claims about the manipulation). "
        "p: paired t-test and exact sign-flip test over seeds. Tables: `claims.csv`, `claim_components.csv`.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]
    if comp_rows:
        out += [
            "Components of the composite claims (each decided by itself: supported when its 95% interval "
            "excludes 0 in the claimed direction; contradicted when its Holm-adjusted p is below 0.05 on the "
            "other side):",
            "",
            _table(pd.DataFrame(comp_rows)),
            "",
        ]
    return out


def _se(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3f}"


def _auroc_cell(mean: float, se: float) -> str:
    return "n/a" if not np.isfinite(mean) else f"{mean:.3f} ± {_se(se)}"


_MAHALANOBIS_NOTE = (
    " Mahalanobis: the confidence of Lee et al. (2018), minus the squared Mahalanobis distance of the last hidden "
    "layer's features to the closest class mean (class means and one shared covariance fitted on the training "
    "split; no input pre-processing, no layer ensemble)."
)


def _mahalanobis_column(det: pd.DataFrame) -> dict[str, list[str]]:
    """The Mahalanobis AUROC column of a detection summary, or none for runs that did not score it."""
    if "mahalanobis_auroc" not in det or not np.isfinite(det["mahalanobis_auroc"].to_numpy(float)).any():
        return {}
    pairs = zip(det["mahalanobis_auroc"], det["mahalanobis_auroc_se"], strict=True)
    return {"Mahalanobis AUROC ± SE": [_auroc_cell(m, s) for m, s in pairs]}


def _dknn_section(results: Results, figures_dir: Path | None, prefix: str) -> list[str]:
    # lazy: the summaries import scikit-learn (through calibration), a report without a DkNN needs none
    from advbench.analysis.dknn_summary import conformal_summary, detection_summary, softmax_summary

    dk = results.dknn
    if dk.empty or "kind" not in dk.columns:
        return []
    out = [
        "## DkNN credibility and calibration",
        "",
        "Deep k-Nearest Neighbors over the hidden layers and logits. Credibility is a conformal p-value, judged "
        "by validity and efficiency; a calibration error is shown only for the softmax's maximum probability "
        "(MSP), which is a probability. Seed means; every per-set and per-seed number is in `dknn_metrics.csv.gz`.",
        "",
    ]
    conf = conformal_summary(dk)
    if len(conf):
        tab = pd.DataFrame(
            {
                "model": conf["model"],
                "eps": conf["eps"].map(lambda e: f"{e:g}"),
                "p_true < eps (%)": [
                    f"{_pct(m)} ({_pct(lo)}–{_pct(hi)})"
                    for m, lo, hi in zip(
                        conf["rate"].to_numpy(float),
                        conf["rate_min"].to_numpy(float),
                        conf["rate_max"].to_numpy(float),
                        strict=True,
                    )
                ],
                "validity": [
                    f"⚠ violated in {v}/{k} seeds" if v else "holds"
                    for v, k in zip(conf["violated"].to_numpy(int), conf["n_seeds"].to_numpy(int), strict=True)
                ],
                "min p-value": conf["pvalue_min"].map(lambda v: f"{v:.3g}"),
                "mean set size": conf["set_size"].map(lambda v: f"{v:.2f}"),
                "singleton (%)": conf["singleton_rate"].map(_pct),
                "n per seed": conf["n"],
            }
        )
        out += [
            "### Conformal validity and efficiency (clean test inputs)",
            "",
            "Validity: the fraction of clean test inputs whose true-label p-value is below eps (mean over seeds, "
            "range in brackets) should be at most eps; it is flagged when a seed's one-sided beta-binomial test "
            "(which accounts for the shared calibration set) gives p < 0.05. Efficiency: the mean size of the "
            "prediction set {j : p_j > eps} at confidence 1 − eps, and the fraction of singleton sets. "
            "Denominator: the clean scored test inputs of each seed (n per seed).",
            "",
            _table(tab),
            "",
        ]
    # runs saved before advbench 0.2 scored no detection of successful attacks and no softmax
    recorded = "credibility_auroc" in set(dk["metric"])
    if not recorded:
        out += [
            "This run predates the detection and softmax metrics (detection on successful attacks, the MSP, "
            "the OOD AUROCs with their standard errors): its DkNN cells did not record them, so those tables "
            "are left out. Re-run the suite to compute them.",
            "",
        ]
    det = detection_summary(dk) if recorded else pd.DataFrame()
    if len(det):
        tab = pd.DataFrame(
            {
                "model": det["model"],
                "attack": _dknn_set_labels(det, _attack_norms(results.shared_metrics())),
                "credibility AUROC ± SE": [
                    _auroc_cell(m, s)
                    for m, s in zip(det["credibility_auroc"], det["credibility_auroc_se"], strict=True)
                ],
                "MSP AUROC ± SE": [
                    _auroc_cell(m, s) for m, s in zip(det["msp_auroc"], det["msp_auroc_se"], strict=True)
                ],
                **_mahalanobis_column(det),
                "cred − MSP": det["credibility_minus_msp"].map(lambda v: "n/a" if not np.isfinite(v) else f"{v:+.3f}"),
                "AUPR-out cred / MSP": [
                    f"{_se(a)} / {_se(b)}"
                    for a, b in zip(det["credibility_aupr_out"], det["msp_aupr_out"], strict=True)
                ],
                "TPR@5%FPR cred / MSP (%)": [
                    f"{_pct(a)} / {_pct(b)}"
                    for a, b in zip(det["credibility_tpr_at_5fpr"], det["msp_tpr_at_5fpr"], strict=True)
                ],
                "n_clean": det["n_clean"],
                "n_adv": det["n_out"],
            }
        )
        out += [
            "### Detection of successful attacks: credibility vs the softmax"
            + (" and the Mahalanobis detector" if _mahalanobis_column(det) else ""),
            "",
            "White-box sets (crafted on the scored model). Positive class: the clean test inputs; the other class: "
            "only the adversarial inputs that fooled the classifier (clean prediction right, adversarial wrong), so "
            "detection is not mixed with attack success. AUROC: seed mean ± the SE of that mean from the per-seed "
            "DeLong SEs; AUPR-out: average precision with the attack as positive; TPR@5%FPR: fraction of fooling "
            "inputs flagged at the threshold that flags 5% of clean inputs. n_clean / n_adv: clean and fooling "
            "inputs, summed over seeds. The AUROC over every adversarial input (failed attacks included) is "
            "`credibility_auroc_all_examples` in `dknn_metrics.csv.gz`."
            + (_MAHALANOBIS_NOTE if _mahalanobis_column(det) else ""),
            "",
            _table(tab),
            "",
        ]
    soft = softmax_summary(dk)
    if len(soft):
        tab = pd.DataFrame(
            {
                "model": soft["model"],
                "DkNN accuracy (%)": soft.get("dknn_accuracy", pd.Series(np.nan, index=soft.index)).map(_pct),
                "softmax accuracy (%)": soft.get("softmax_accuracy", pd.Series(np.nan, index=soft.index)).map(_pct),
                "MSP ECE": soft.get("msp_ece", pd.Series(np.nan, index=soft.index)).map(_se),
                "mean MSP": soft.get("mean_msp", pd.Series(np.nan, index=soft.index)).map(_se),
                "mean credibility": soft.get("mean_credibility", pd.Series(np.nan, index=soft.index)).map(_se),
                "n per seed": soft["n"],
                "seeds": soft["n_seeds"],
            }
        )
        out += [
            "### Softmax calibration and accuracy (clean test inputs)",
            "",
            "MSP ECE: expected calibration error of the maximum softmax probability against the softmax's "
            "correctness (15 equal-width bins, Guo et al. 2017), mean over seeds. Mean credibility is shown for "
            "reference only: a p-value is not a probability of being right, so it has no calibration error. "
            "Denominator: the clean scored test inputs of each seed.",
            "",
            _table(tab),
            "",
        ]
    out += _ood_table(dk) if recorded else []
    bins = results.example_summary("dknn_bins")
    if figures_dir is not None and not bins.empty:
        # lazy: matplotlib takes about a second to import, and a report without figures needs none
        from advbench.reports.plots import credibility_histograms, reliability_diagram

        figs = []
        if (bins["figure"] == "reliability_msp_clean").any():
            reliability_diagram(
                bins[bins["figure"] == "reliability_msp_clean"],
                figures_dir / "reliability_msp_clean.png",
                title="Softmax reliability (MSP), clean test inputs",
                labels=("maximum softmax probability", "softmax accuracy"),
            )
            figs.append(f"![MSP reliability, clean]({prefix}reliability_msp_clean.png)")
        reliability_diagram(
            bins[bins["figure"] == "reliability_clean"],
            figures_dir / "reliability_clean.png",
            title="DkNN accuracy per credibility bin (descriptive), clean",
        )
        credibility_histograms(
            bins[bins["figure"] == "credibility_histogram"],
            figures_dir / "credibility.png",
            title="DkNN credibility by input group (descriptive)",
        )
        figs += [
            f"![accuracy per credibility bin, clean]({prefix}reliability_clean.png)",
            f"![credibility histograms]({prefix}credibility.png)",
        ]
        out += [
            "Figures: the MSP's reliability diagram (its gap to the diagonal is the ECE above); accuracy per "
            "credibility bin and credibility histograms per input group, descriptive only (as in Papernot & "
            "McDaniel 2018: credibility is a p-value, so its gap to the diagonal is not a calibration error). "
            + _histogram_groups_note(bins[bins["figure"] == "credibility_histogram"]),
            "",
            " ".join(figs),
            "",
        ]
    return out


def _histogram_groups_note(hist: pd.DataFrame) -> str:
    """What the credibility histograms pool: the input groups when the run's counts have them, else a warning."""
    kinds = set(hist["kind"].astype(str))
    if any("," in k for k in kinds):
        return (
            "The histograms compare like with like: white-box and transferred adversarial inputs apart, those "
            "that fooled the classifier apart from those that did not, near and far OOD apart, each beside the "
            "clean inputs with its count; pooled over seeds, attacks and eps."
        )
    pooled = ", ".join(sorted(kinds - {"clean"}))
    return (
        f"This run's saved counts pool each kind ({pooled}): white-box with transferred and successful with "
        "failed attacks, near with far OOD. They were summarised before the groups were recorded and the "
        "per-example table is not in the run folder, so read them as a mixture; a re-run draws the groups apart."
    )


def _dknn_set_labels(det: pd.DataFrame, norms: dict[str, str]) -> list[str]:
    """``"<attack> eps=<eps>"`` per adversarial set; non-L-inf sets name their norm (``"pgd-l2 L2 eps=0.5"``)."""
    labels = []
    for a, e in zip(det["attack"], det["eps"], strict=True):
        norm = norms.get(str(a), "linf")
        labels.append(f"{a} eps={e:g}" if norm == "linf" else f"{a} {_NORM_LABELS.get(norm, norm)} eps={e:g}")
    return labels


def _ood_table(dk: pd.DataFrame) -> list[str]:
    from advbench.analysis.dknn_summary import ood_summary

    ood = ood_summary(dk)
    if ood.empty:
        return []
    tab = pd.DataFrame(
        {
            "set": ood["input_set"],
            "distance": ood["distance"],
            "model": ood["model"],
            "credibility AUROC ± SE": [
                _auroc_cell(m, s) for m, s in zip(ood["credibility_auroc"], ood["credibility_auroc_se"], strict=True)
            ],
            "MSP AUROC ± SE": [_auroc_cell(m, s) for m, s in zip(ood["msp_auroc"], ood["msp_auroc_se"], strict=True)],
            **_mahalanobis_column(ood),
            "TPR@5%FPR cred / MSP (%)": [
                f"{_pct(a)} / {_pct(b)}"
                for a, b in zip(ood["credibility_tpr_at_5fpr"], ood["msp_tpr_at_5fpr"], strict=True)
            ],
            "DkNN / softmax accuracy (%)": [
                f"{_pct(a)} / {_pct(b)}" for a, b in zip(ood["dknn_accuracy"], ood["softmax_accuracy"], strict=True)
            ],
            "n_clean": ood["n_clean"],
            "n_ood": ood["n_out"],
        }
    )
    return [
        "### Out-of-distribution sets",
        "",
        "Clean test inputs (positive) against every input of each OOD set: `ood` is the named dataset (far; "
        "unlabelled, so no accuracy), `shift <corruption>:<severity>` are seeded corruptions of the scored clean "
        "test images (near: the class stays recognisable; far: the image statistics are no longer the dataset's), "
        "keeping their labels. AUROC: seed mean ± SE of the mean (DeLong per seed). n_clean / n_ood: summed over "
        "seeds." + (_MAHALANOBIS_NOTE if _mahalanobis_column(ood) else ""),
        "",
        _table(tab),
        "",
    ]


def _worst_case_section(results: Results) -> list[str]:
    worst = results.worst_case()
    if worst.empty:
        return []
    rows = []
    for (quantity, model, eps), g in worst.groupby(["quantity", "model", "eps"], sort=False):
        strongest = g["strongest_attack"].value_counts()
        rows.append(
            {
                "defended": "DkNN" if quantity == "dknn" else "classifier",
                "model": model,
                "eps": f"{eps:g}",
                "ensemble robust accuracy (%)": f"{_pct(g['robust_accuracy'].mean())} "
                f"({_pct(g['robust_accuracy'].min())}–{_pct(g['robust_accuracy'].max())})",
                "best single attack (%)": f"{_pct(g['strongest_accuracy'].mean())}",
                "strongest attack (seeds)": ", ".join(f"{a} ({n})" for a, n in strongest.items()),
                "ensemble gain (points)": f"{100 * g['ensemble_gain'].mean():.1f}",
                "attacks": g["attacks"].iloc[0].replace(";", ", "),
                "n per seed": int(g["n"].max()),
                "seeds": int(g["seed"].nunique()),
            }
        )
    order = {m: i for i, m in enumerate(_model_order(results))}
    tab = pd.DataFrame(rows)
    tab = tab.sort_values(["defended", "model", "eps"], key=lambda c: c.map(order) if c.name == "model" else c)
    return [
        "## Worst case over attacks",
        "",
        "Robust accuracy under the attack ensemble (as AutoAttack reports it): an example counts as robust at eps "
        "only if it is classified correctly when clean and under every white-box attack at that eps; per defended "
        "quantity (the classifier's prediction, the DkNN's prediction). Mean over seeds (range in brackets); best "
        "single attack: the lowest accuracy of one attack, counted the same way; ensemble gain: how many points the "
        "per-example worst case removes beyond it (never negative). Denominator: the attacked test examples of each "
        "seed (n per seed; the DkNN scores the first n of them). Per seed: `worst_case.csv`.",
        "",
        _table(tab),
        "",
    ]


def _convergence_section(results: Results) -> list[str]:
    """The convergence check of the attacks on the DkNN (``suite/cells/convergence.py``), when the run has such
    attacks: each attack again with more steps and restarts on the first examples of the first seed."""
    props = _attack_properties(results)
    adaptive = sorted(a for a, p in props.items() if "adaptive-dknn" in p)
    if not adaptive:
        return []
    out = ["## Convergence of the attacks on the DkNN", ""]
    conv = results.convergence
    if conv.empty:
        return out + [
            f"Not measured in this run ({', '.join(adaptive)}): it was made before the check existed, or with "
            "`evaluations.convergence.enabled: false`, so the DkNN's robust accuracy under "
            f"{'this attack' if len(adaptive) == 1 else 'these attacks'} may be an over-estimate by an unknown amount.",
            "",
        ]
    order = {m: i for i, m in enumerate(_model_order(results))}
    conv = conv.sort_values(["model", "attack", "eps"], key=lambda c: c.map(order) if c.name == "model" else c)
    rows = []
    for r in conv.to_dict("records"):
        if pd.isna(r["converged"]):
            verdict = "no parameter to scale"
        else:
            verdict = "converged" if r["converged"] else "⚠ not converged"
        longer = r["dknn_accuracy_longer"]
        rows.append(
            {
                "model": r["model"],
                "attack": r["attack"],
                "eps": f"{r['eps']:g}",
                "seed": int(r["seed"]),
                "n": int(r["n"]),
                "DkNN accuracy (%)": _pct(r["dknn_accuracy"]),
                f"with {int(r['factor'])}x steps and restarts (%)": "—" if pd.isna(longer) else _pct(longer),
                "drop (points)": "—" if pd.isna(r["drop"]) else f"{100 * r['drop']:+.1f}",
                "longer run": r["params"],
                "verdict": verdict,
            }
        )
    bad = int((conv["converged"] == False).sum())  # noqa: E712 - NaN (no verdict) is neither
    tol = 100 * float(conv["tolerance"].iloc[0])
    summary = (
        f"**{bad} of {len(conv)} not converged**: a longer attack lowers the DkNN's accuracy by more than {tol:g} "
        "point(s) there, so the DkNN's robust accuracy (and every claim that reads adversarial DkNN scores) rests "
        "on an attack that has not found the worst case."
        if bad
        else f"Every check within {tol:g} point(s): more steps and restarts do not lower the DkNN's accuracy further."
    )
    return out + [
        "Each attack on the DkNN run again, on the first n attacked examples of the first seed, with more steps "
        "and restarts; both adversarial sets scored by the same DkNN. Denominator: those n examples. "
        + summary
        + " Table: `attack_convergence.csv` in the run's results.",
        "",
        _table(pd.DataFrame(rows), disable_numparse=True),  # keep "50.0" and the drop's sign as written
        "",
    ]


def _attack_properties(results: Results) -> dict[str, frozenset[str]]:
    """Each suite attack's label -> its registered properties (labels need not be registered names)."""
    from advbench.evaluation.flags import registry_properties

    attacks = results.suite.get("attacks", [])
    props = registry_properties(sorted({a["name"] for a in attacks}))
    return {a.get("label") or a["name"]: props[a["name"]] for a in attacks if a["name"] in props}


def _checks(results: Results) -> pd.DataFrame:
    """Every check run on this run's tables and models (table checks and input-gradient checks)."""
    frames = []
    if not results.metrics.empty or not results.dknn.empty:
        frames.append(
            evaluation_flags(
                results.shared_metrics() if not results.metrics.empty else None,
                dknn=results.dknn if not results.dknn.empty and "attack" in results.dknn.columns else None,
                properties=_attack_properties(results),
                num_classes=_num_classes(results),
                tolerance=FLAG_TOLERANCE,
                worst_case=results.worst_case(),
                worst_case_tolerance=WORST_CASE_TOLERANCE,
            )
        )
    if not results.gradient_flags.empty:
        frames.append(results.gradient_flags)
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _flags_section(results: Results) -> list[str]:
    checks = _checks(results)
    out = ["## Evaluation-quality flags", ""]
    if checks.empty:
        return out + ["No check could run (no attack results).", ""]
    rows = []
    for (check, quantity), g in checks.groupby(["check", "quantity"], sort=False):
        worst = g.iloc[int(np.argmax(g["gap"].fillna(-np.inf).to_numpy(float)))]
        flagged = int((g["outcome"] == "flagged").sum())
        what = " ".join(
            str(v)
            for v in (
                worst["model"],
                f"seed={int(worst['seed'])}" if pd.notna(worst["seed"]) else "",
                f"eps={worst['eps']:g}" if pd.notna(worst["eps"]) else "",
                f"{worst['attack']}" if pd.notna(worst["attack"]) else "",
                f"vs {worst['reference']}" if pd.notna(worst["reference"]) else "",
            )
            if v
        )
        rows.append(
            {
                "check": check,
                "quantity": quantity,
                "comparisons": len(g),
                "flagged": flagged,
                "outcome": "⚠ flagged" if flagged else "passed",
                "largest gap at": what,
                "value / reference": f"{worst['value']:.3f} / {worst['reference_value']:.3f}",
                "gap": f"{worst['gap']:+.3f}",
                "threshold": f"{worst['threshold']:.3f}",
            }
        )
    out += [
        "Signs of gradient masking or a broken attack (after Carlini et al. 2019, Tramèr et al. 2020 and AutoAttack's "
        "checks), on the classifier's and the DkNN's accuracy, by the attacks' declared properties. One row per "
        "check and quantity: how many comparisons it made (per model, seed, eps and attack pair), how many were "
        "flagged (gap above the threshold), and the comparison with the largest gap: its two numbers (accuracy, or "
        "the gradient fraction) and the gap in the wrong direction. Every comparison: `evaluation_checks.csv`.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]
    raised = checks[checks["outcome"] == "flagged"]
    if len(raised):
        cols = ["check", "quantity", "model", "source", "attack", "reference", "eps", "seed", "value",
                "reference_value", "gap", "severity"]  # fmt: skip
        out += [f"Flagged comparisons ({len(raised)} of {len(checks)}):", "", _table(raised[cols].head(40)), ""]
        if len(raised) > 40:
            out += [f"... and {len(raised) - 40} more in `evaluation_checks.csv`.", ""]
    return out


def _num_classes(results: Results) -> int:
    if not results.outcomes.empty and "y" in results.outcomes:
        return int(results.outcomes["y"].max()) + 1
    return 10


def _provenance_section(manifest: dict[str, Any]) -> list[str]:
    cells = manifest.get("cells", {})
    hits = sum(1 for c in cells.values() if c.get("cached"))
    hw = manifest.get("hardware", {})
    # the cells' own count (a Ray worker's is not the driver's); older manifests only have the driver's
    threads = (manifest.get("thread_policy") or {}).get("threads") or hw.get("torch_threads", "")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(manifest.get("versions", {}).items()))
    rows = [
        ("run folder", manifest.get("run_dir", "")),
        ("advbench commit", manifest.get("git_commit", "")),
        ("started / finished", f"{manifest.get('started', '')} / {manifest.get('finished', 'running')}"),
        ("wall time (s)", manifest.get("wall_s", "")),
        ("cells", f"{len(cells)} ({hits} from cache)"),
        (
            "machine",
            f"{hw.get('processor', '')}, {hw.get('cpus', '')} CPUs, {hw.get('memory_gib', '?')} GiB, "
            f"torch threads per cell {threads}, GPU: {hw.get('gpu', 'none')}",
        ),
        ("libraries", versions),
        (
            "data hashes (sha256)",
            ", ".join(f"{k} {v[:16]}" for k, v in manifest.get("data", {}).get("hashes", {}).items()),
        ),
        ("stage seconds", ", ".join(f"{k} {v}" for k, v in manifest.get("stage_seconds", {}).items())),
    ]
    return ["## Provenance", "", tabulate(rows, headers=["", ""], tablefmt="github"), ""]


def write_run_report(
    results: Results,
    out: str | Path,
    *,
    results_dir: Path,
    manifest: dict[str, Any],
    force: bool = False,
    suite_id: str | None = None,
) -> bool:
    """Write the report of a run's results to ``out`` unless it is up to date (or ``force``); whether it was.

    The report is a pure function of the results and of the code that renders them: the stamp left in
    its figure folder records the digest of ``results_dir``, the report code, the analysis code (the
    statistics and the claims rules), the claims the suite decides (a plugin's by its version), the
    suite it belongs to (``suite_id``) and the SHA-256 of the report's own bytes. When all of them
    match, nothing is re-rendered; a report edited by hand (its bytes no longer those stamped) or made
    by other code is re-rendered, never kept. A report committed with its stamp is not re-rendered by a
    re-run whose results are the same.
    """
    out = Path(out)
    stamp = out.with_suffix("") / STAMP_NAME
    want = _stamp_text(results, results_dir, suite_id)
    if not force and out.is_file() and not out.is_symlink() and stamp.is_file():
        recorded = stamp.read_text(encoding="utf-8")
        if _without_report_line(recorded) == want:
            if _parse_stamp(recorded).get("report") == hashlib.sha256(out.read_bytes()).hexdigest():
                log.info("report %s is up to date (results and code unchanged)", out)
                return False
            log.warning(
                "report %s was edited since advbench wrote it (its bytes differ from the stamp); re-rendering", out
            )
    write_report(results, out, manifest=manifest, plots=results.suite["report"].get("plots", True))
    report_sha = hashlib.sha256(out.read_bytes()).hexdigest()
    atomic_write_text(stamp, f"{want}report {report_sha}\n", what="the report's stamp")
    log.info("report written to %s", out)
    return True


def _without_report_line(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("report "))


def _stamp_text(results: Results, results_dir: Path, suite_id: str | None) -> str:
    """Everything a report is a function of, one line each (without the report's own digest)."""
    from advbench.analysis.claims import CLAIMS
    from advbench.codeversion import entry_component, results_code_version

    names = results.suite.get("claims")
    claims = []
    for n in CLAIMS.list() if names is None else names:
        try:
            claims.append(entry_component(CLAIMS, n).ident)
        except Exception:  # an unknown or broken claim: its verdict says so; its name still counts
            claims.append(f"{n}@unavailable")
    lines = [
        results_digest(results_dir),
        f"report-code {report_code_version()}",
        f"results-code {results_code_version()}",
        f"claims {' '.join(sorted(set(claims))) or 'none'}",
    ]
    if suite_id is not None:
        lines.append(f"suite {suite_id}")
    return "\n".join(lines) + "\n"


#: Results files a report does not read: the per-example DkNN table (tens of MB, not committed) is read
#: through its per-seed summaries, which are saved beside it and digested; the checksum list only restates
#: the files' digests (and lists the per-example table, which a committed folder lacks).
_UNREAD_BY_REPORT = frozenset({"dknn_examples.csv.gz", "SHA256SUMS"})


def results_digest(folder: Path) -> str:
    """SHA-256 over a results folder's files (names and bytes), to tell whether a report is stale.

    The per-example DkNN table is left out (:data:`_UNREAD_BY_REPORT`): a committed run folder does not
    carry it, and the report it renders is the same with or without it.
    """
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name not in _UNREAD_BY_REPORT:
            h.update(f.name.encode())
            data = f.read_bytes()
            h.update(gzip.decompress(data) if f.suffix == ".gz" else data)  # gzip headers carry a timestamp
    return h.hexdigest()
