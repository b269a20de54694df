"""The Markdown report: a pure function of a run's :class:`Results` (and its manifest for provenance).

Every table says what its numbers are, their denominator and n. Numbers are the ones the run
measured; flags annotate numbers, they never hide them.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from advbench.codeversion import report_code_version
from advbench.errors import AdvbenchError
from advbench.evaluation.flags import evaluation_flags
from advbench.evaluation.results import Results, seed_summary
from advbench.evaluation.stats import rate_intervals
from advbench.io import atomic_path, atomic_write_text, is_generated_file, write_generated_text

__all__ = ["render_report", "results_digest", "write_report", "write_run_report"]

#: Gap (as a fraction) above which a table-based evaluation-quality flag is raised.
FLAG_TOLERANCE = 0.01

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
    """A row of :func:`~advbench.evaluation.stats.rate_intervals` in percent: ``mean [lo, hi]``, or the
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


def render_report(
    results: Results, *, manifest: dict[str, Any], figures_dir: Path | None, link_prefix: str = ""
) -> str:
    """The report's Markdown text; writes figures into ``figures_dir`` when given."""
    s = results.suite
    out: list[str] = [f"# advbench report: {s['name']}", ""]
    if s.get("description"):
        out += [s["description"], ""]
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
    out += _transfer_sections(results, figures_dir, link_prefix)
    out += _independent_transfer_section(results)
    out += _paired_section(results)
    out += _power_section(results)
    out += _dknn_section(results, figures_dir, link_prefix)
    out += _flags_section(results)
    out += _provenance_section(manifest)
    return "\n".join(out) + "\n"


def check_report_path(path: str | Path) -> Path:
    """Refuse a report path advbench may not write, before anything runs; the path when it may.

    ``path`` must end in ``.md``; it may not exist yet, or be a regular file advbench wrote (its first
    line is advbench's marker). A file advbench did not write, a symlink or a folder is refused, and
    so is a *file* where the report's figure folder (``path`` without ``.md``) goes.
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
    return path


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, what="a report table") as tmp:
        frame.to_csv(tmp, index=False)


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
        _write_csv(results.dknn, fig_dir / "dknn_metrics.csv")
    if len(results.outcomes):
        order = [m["name"] for m in results.suite["models"]]
        ref = "baseline" if "baseline" in order else order[0]
        if len(order) > 1:
            _write_csv(
                results.paired_differences(ref, [m for m in order if m != ref]), fig_dir / "paired_differences.csv"
            )
            _write_csv(results.paired(), fig_dir / "paired_comparisons.csv")
    _write_csv(results.claims(), fig_dir / "claims.csv")
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


def _claims_section(results: Results) -> list[str]:
    table = results.claims()
    if table.empty:
        return []
    rows = []
    for r in _records(table):
        per_seed = ", ".join(f"{s}: {_fmt_value(v)}" for s, v in zip(r["seeds"], r["per_seed"], strict=True))
        est = r["estimate"]
        ci = (
            f"{_fmt_value(est)} [{_fmt_value(r['ci_low'])}, {_fmt_value(r['ci_high'])}]"
            if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])
            else _fmt_value(est)
        )
        need = r["seeds_needed"]
        reason = str(r["reason"])
        if need is not None and not pd.isna(need):
            reason = f"{int(need)} seeds needed; {reason}"
        rows.append(
            {
                "claim": r["name"],
                "statement": r["statement"],
                "metric": f"{r['metric']} ({'> 0' if r['direction'] == 'greater' else '< 0'} claimed)",
                "per-seed values": per_seed or "n/a",
                "estimate [95% CI]": ci,
                "p (t; sign-flip)": f"{_p(r['p'])}; {_p(r['p_signflip'])}",
                "verdict": f"**{r['verdict']}**",
                "seeds needed / reason": reason,
            }
        )
    counts = table["verdict"].value_counts()
    tally = ", ".join(
        f"{int(counts[v])} {v}" for v in ("supported", "contradicted", "inconclusive", "not applicable") if v in counts
    )
    return [
        "## Claims",
        "",
        f"Pre-registered hypotheses and their verdicts ({tally}). Each claim reads one value per seed (the trained "
        "network is the unit; its denominator is the number of seeds with a value) and is decided by one rule "
        "fixed before the run: **supported** when the 95% Student-t interval of the per-seed values excludes 0 in "
        "the claimed direction, **contradicted** when it excludes 0 in the other, **inconclusive** otherwise (with "
        "the seeds that would detect the effect with 80% power), **not applicable** when the run lacks the data. "
        "p: paired t-test (agrees with the interval) and exact sign-flip test over seeds. Table: `claims.csv`.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]


_DKNN_METRICS = {
    "dknn_accuracy": "DkNN accuracy",
    "mean_credibility": "mean credibility",
    "ece_credibility": "ECE",
    "auroc_clean_vs_set": "AUROC clean vs set",
}


def _dknn_section(results: Results, figures_dir: Path | None, prefix: str) -> list[str]:
    dk = results.dknn
    if dk.empty:
        return []
    dk = dk[dk["metric"].isin(list(_DKNN_METRICS))].copy()

    # Collapse adversarial sets into white-box (crafted on the scored model) and transferred (crafted on another).
    def group(r: Any) -> str:
        if r["kind"] != "adversarial":
            return str(r["kind"])
        where = "white-box" if r["source"] == r["model"] else "transferred"
        return f"{r['attack']} eps={r['eps']:g} ({where})"

    dk["input"] = dk.apply(group, axis=1)
    per_seed = dk.groupby(["model", "input", "metric", "seed"], sort=False)["value"].mean().reset_index()
    sets = dk.drop_duplicates(["model", "input", "seed", "input_set"])
    n = sets.groupby(["model", "input", "seed"])["n"].sum().groupby(["model", "input"]).max()
    summ = seed_summary(per_seed, ["input", "model", "metric"], "value")
    summ["cell"] = [_ci(r.mean, r.ci_low, r.ci_high, pct=False) for r in summ.itertuples()]
    wide = summ.pivot_table(index=["input", "model"], columns="metric", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=[c for c in _DKNN_METRICS if c in wide.columns]).rename(columns=_DKNN_METRICS)
    wide["n per seed"] = [int(n.get((m, i), 0)) for i, m in wide.index]
    wide = wide.reset_index()
    out = [
        "## DkNN credibility and calibration",
        "",
        "Deep k-Nearest Neighbors over the hidden layers and logits, mean [95% CI] across seeds. Accuracy: DkNN "
        "prediction equals the true label (not defined for OOD inputs). ECE: expected calibration error of "
        "credibility against correctness (10 bins; for OOD every prediction counts as wrong). AUROC: how well "
        "credibility tells the clean test inputs (positive class, higher credibility) from the set's inputs. "
        "Adversarial sets are pooled per attack and eps into those crafted on the scored model (white-box) and "
        "on the other models (transferred); n per seed counts the scored examples. Per-set rows: "
        "`dknn_metrics.csv`.",
        "",
        _table(wide),
        "",
    ]
    if figures_dir is not None and not results.dknn_examples.empty:
        # lazy: matplotlib takes about a second to import, and a report without figures needs none
        from advbench.reports.plots import credibility_histograms, reliability_diagram

        ex = results.dknn_examples
        reliability_diagram(
            ex[ex["kind"] == "clean"],
            figures_dir / "reliability_clean.png",
            title="DkNN reliability, clean test inputs",
        )
        adv = ex[ex["kind"] == "adversarial"]
        if len(adv):
            reliability_diagram(
                adv, figures_dir / "reliability_adversarial.png", title="DkNN reliability, all adversarial sets"
            )
        credibility_histograms(ex, figures_dir / "credibility.png", title="DkNN credibility by input kind")
        out += [
            f"![reliability, clean]({prefix}reliability_clean.png) "
            + (f"![reliability, adversarial]({prefix}reliability_adversarial.png) " if len(adv) else "")
            + f"![credibility histograms]({prefix}credibility.png)",
            "",
        ]
    return out


def _flags_section(results: Results) -> list[str]:
    frames = (
        [evaluation_flags(results.shared_metrics(), num_classes=_num_classes(results), tolerance=FLAG_TOLERANCE)]
        if not results.metrics.empty
        else []
    )
    if not results.gradient_flags.empty:
        frames.append(results.gradient_flags)
    flags = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    )
    out = ["## Evaluation-quality flags", ""]
    if flags.empty:
        return out + [
            f"No flag raised (gaps above {100 * FLAG_TOLERANCE:g} points): iterative attacks at least as strong as "
            "FGSM, success increasing with eps, no transfer attack stronger than the white-box one, input gradients "
            "finite and non-zero.",
            "",
        ]
    return out + [
        "Signs of gradient masking or a broken attack (after AutoAttack's and ART's checks), per seed, raised "
        f"when a gap exceeds {100 * FLAG_TOLERANCE:g} points (a smaller gap is within a few examples' noise). "
        "The numbers above are shown as measured.",
        "",
        _table(flags),
        "",
    ]


def _num_classes(results: Results) -> int:
    if not results.outcomes.empty and "y" in results.outcomes:
        return int(results.outcomes["y"].max()) + 1
    return 10


def _provenance_section(manifest: dict[str, Any]) -> list[str]:
    cells = manifest.get("cells", {})
    hits = sum(1 for c in cells.values() if c.get("cached"))
    hw = manifest.get("hardware", {})
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
            f"torch threads {hw.get('torch_threads', '')}, GPU: {hw.get('gpu', 'none')}",
        ),
        ("libraries", versions),
        (
            "data hashes (sha256)",
            ", ".join(f"{k} {v[:16]}" for k, v in manifest.get("data", {}).get("hashes", {}).items()),
        ),
        ("stage seconds", ", ".join(f"{k} {v}" for k, v in manifest.get("stage_seconds", {}).items())),
    ]
    return ["## Provenance", "", tabulate(rows, headers=["", ""], tablefmt="github"), ""]


def write_run_report(results: Results, out: str | Path, *, results_dir: Path, manifest: dict[str, Any]) -> bool:
    """Write the report of a run's results to ``out`` unless it is up to date; whether it was written.

    The report is a pure function of the results and of the renderer's code: when the digest of
    ``results_dir`` and :func:`~advbench.codeversion.report_code_version` both match the stamp
    left by the last rendering, nothing is re-rendered.
    """
    out = Path(out)
    stamp = out.with_suffix("") / "results.sha256"
    digest = results_digest(results_dir)
    want = f"{digest}\nreport-code {report_code_version()}\n"
    if out.is_file() and stamp.is_file() and stamp.read_text() == want:
        log.info("report %s is up to date (results and report code unchanged, sha256 %s)", out, digest[:12])
        return False
    write_report(results, out, manifest=manifest, plots=results.suite["report"].get("plots", True))
    atomic_write_text(stamp, want, what="the report's stamp")
    log.info("report written to %s", out)
    return True


def results_digest(folder: Path) -> str:
    """SHA-256 over a results folder's files (names and bytes), to tell whether a report is stale."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            data = f.read_bytes()
            h.update(gzip.decompress(data) if f.suffix == ".gz" else data)  # gzip headers carry a timestamp
    return h.hexdigest()
