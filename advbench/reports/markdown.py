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

from advbench.errors import AdvbenchError
from advbench.evaluation.flags import evaluation_flags
from advbench.evaluation.results import Results, seed_summary
from advbench.io import atomic_write_text

__all__ = ["render_report", "results_digest", "write_report", "write_run_report"]

#: Gap (as a fraction) above which a table-based evaluation-quality flag is raised.
FLAG_TOLERANCE = 0.01

log = logging.getLogger(__name__)


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _ci(mean: float, lo: float, hi: float, *, pct: bool = True, bounds: tuple[float, float] | None = (0.0, 1.0)) -> str:
    """``mean [lo, hi]``; the interval is clipped to the metric's range (rates and scores live in [0, 1])."""
    f = _pct if pct else (lambda v: "n/a" if not np.isfinite(v) else f"{v:.3f}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f(mean)
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


def _table(df: pd.DataFrame, **kw: Any) -> str:
    return tabulate(df, headers="keys", tablefmt="github", showindex=False, **kw)


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
        f"seeds {seeds}. Intervals are 95% confidence intervals: a t-interval across the {len(seeds)} seeds "
        + (
            "(each seed is an independent pair of models)."
            if len(seeds) > 1
            else "— with a single seed, a bootstrap over examples instead."
        )
        + " Percentages are in points; intervals of rates are clipped to [0, 100].",
        "",
    ]
    out += _failures_section(results)
    out += _clean_section(results)
    out += _entanglement_section(results, figures_dir, link_prefix)
    out += _transfer_sections(results, figures_dir, link_prefix)
    out += _paired_section(results)
    out += _dknn_section(results, figures_dir, link_prefix)
    out += _worst_case_section(results)
    out += _flags_section(results)
    out += _provenance_section(manifest)
    return "\n".join(out) + "\n"


def write_report(results: Results, path: str | Path, *, manifest: dict[str, Any], plots: bool = True) -> Path:
    """Render the report to ``path`` with its figures in ``<path without .md>/`` and the tidy CSVs beside them."""
    path = Path(path)
    fig_dir = path.with_suffix("")
    if fig_dir.exists() and not fig_dir.is_dir():
        raise AdvbenchError(
            f"the report {path} keeps its figures and tables in {fig_dir}, which is a file; "
            f"move that file or pass another report path (--report)"
        )
    fig_dir.mkdir(parents=True, exist_ok=True)
    text = render_report(
        results, manifest=manifest, figures_dir=fig_dir if plots else None, link_prefix=f"{fig_dir.name}/"
    )
    if len(results.metrics):
        results.metrics.to_csv(fig_dir / "transfer_metrics.csv", index=False)
    if len(results.dknn):
        results.dknn.to_csv(fig_dir / "dknn_metrics.csv", index=False)
    worst = results.worst_case()
    if len(worst):
        worst.to_csv(fig_dir / "worst_case.csv", index=False)
    checks = _checks(results)
    if len(checks):
        checks.to_csv(fig_dir / "evaluation_checks.csv", index=False)
    if len(results.outcomes):
        order = [m["name"] for m in results.suite["models"]]
        ref = "baseline" if "baseline" in order else order[0]
        if len(order) > 1:
            results.paired_differences(ref, [m for m in order if m != ref]).to_csv(
                fig_dir / "paired_differences.csv", index=False
            )
    atomic_write_text(path, text)
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
    summ = seed_summary(results.clean, ["model"], "test_accuracy")
    n = int(results.clean["n"].iloc[0])
    rows = [
        {"model": r.model, "clean test accuracy (%)": _ci(r.mean, r.ci_low, r.ci_high), "seeds": r.n_seeds}
        for r in summ.itertuples()
    ]
    return [
        "## Clean accuracy",
        "",
        f"Denominator: the whole test split (n = {n}) per seed.",
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
            row[str(r.layer)] = _ci(r.mean, r.ci_low, r.ci_high, pct=False, bounds=(0.0, np.inf))
        rows.append(row)
    out = [
        "## Entanglement per hidden layer",
        "",
        "Soft Nearest Neighbor Loss of each hidden layer at its minimising temperature on a fixed probe set "
        "of test examples, after the last epoch (higher = classes more entangled).",
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


def _transfer_sections(results: Results, figures_dir: Path | None, prefix: str) -> list[str]:
    met = results.metrics
    if met.empty:
        return []
    summ = results.transfer_summary()
    order = _model_order(results)
    out = ["## White-box robustness", ""]
    wb = summ[(summ["source"] == summ["target"]) & (summ["metric"] == "adv_accuracy")]
    n = int(met["n"].max())
    rows = []
    for r in wb.itertuples():
        rows.append(
            {
                "attack": r.attack,
                "eps": r.eps,
                "model": r.source,
                "adversarial accuracy (%)": _ci(r.mean, r.ci_low, r.ci_high),
            }
        )
    out += [
        f"Accuracy of each model on adversarial examples crafted against itself. Denominator: all n = {n} "
        "attacked test examples per seed.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]
    out += [
        "## Transfer matrices",
        "",
        "Transfer rate = fraction of the examples that the target classifies correctly when clean and "
        "misclassifies after the attack crafted on the source (denominator: the target's clean-correct "
        "examples among the n attacked; the diagonal is the white-box attack).",
        "",
    ]
    tr = summ[summ["metric"] == "transfer_rate"]
    for (attack, eps), g in tr.groupby(["attack", "eps"], sort=False):
        mat = g.pivot(index="source", columns="target", values="mean").reindex(index=order, columns=order)
        cells = g.set_index(["source", "target"])
        table = pd.DataFrame(
            {
                t: [
                    _ci(*cells.loc[(s_, t), ["mean", "ci_low", "ci_high"]]) if (s_, t) in cells.index else "n/a"
                    for s_ in order
                ]
                for t in order
            },
            index=order,
        )
        table.insert(0, "source \\ target", order)
        dens = met[(met["attack"] == attack) & (met["eps"] == eps) & (met["metric"] == "transfer_rate")]
        out += [
            f"### {attack}, eps = {eps:g}",
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
            transfer_heatmap(mat, figures_dir / name, title=f"transfer rate, {attack} eps={eps:g}")
            out += [f"![transfer {attack} eps={eps:g}]({prefix}{name})", ""]
    return out


_PAIRED_LABELS = {
    "white_box": "white-box: V->V minus R->R",
    "from": "as source: V->M minus R->M",
    "to": "as target: M->V minus M->R",
    "cross": "cross: V->R minus R->V",
}


def _paired_section(results: Results) -> list[str]:
    if results.outcomes.empty:
        return []
    order = _model_order(results)
    reference = "baseline" if "baseline" in order else order[0]
    variants = [m for m in order if m != reference]
    if not variants:
        return []
    diff = results.paired_differences(reference, variants)
    if diff.empty:
        return []
    keep = ((diff["comparison"] == "white_box") & (diff["metric"] == "adv_accuracy")) | (
        diff["comparison"].isin(["from", "to"]) & (diff["metric"] == "transfer_rate")
    )
    rows = []
    for r in diff[keep].itertuples():
        lo, hi = r.ci_low, r.ci_high
        ci = f"[{100 * lo:+.1f}, {100 * hi:+.1f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
        rows.append(
            {
                "variant (V)": r.variant,
                "comparison": _PAIRED_LABELS.get(r.comparison, r.comparison),
                "M": "" if not isinstance(r.other, str) else r.other,
                "attack": r.attack,
                "eps": r.eps,
                "metric": r.metric,
                "difference (pp)": f"{100 * r.diff:+.1f} {ci}",
                "McNemar p": f"{r.p_value:.3g}",
                "n paired": int(r.n_paired),
            }
        )
    out = [
        "## Paired differences",
        "",
        f"Each variant V minus the reference R = `{reference}` trained from the same seed (same initial weights "
        "and batch order), in percentage points with a 95% CI across seeds (a paired bootstrap over examples "
        "when there is one seed). White-box rows compare adversarial accuracy (positive = V more robust); "
        "source/target rows compare the transfer rate to / from a third model M (negative = fewer examples "
        "transfer). p: exact McNemar test on the per-example outcomes, discordant pairs pooled over seeds; "
        "n paired: examples in both cells' denominators, summed over seeds. Every comparison and metric is in "
        "`transfer_metrics.csv` and `paired_differences.csv` next to this report.",
        "",
        _table(pd.DataFrame(rows)),
        "",
    ]
    return out


def _se(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3f}"


def _auroc_cell(mean: float, se: float) -> str:
    return "n/a" if not np.isfinite(mean) else f"{mean:.3f} ± {_se(se)}"


def _dknn_section(results: Results, figures_dir: Path | None, prefix: str) -> list[str]:
    # lazy: the summaries import scikit-learn (through calibration), a report without a DkNN needs none
    from advbench.evaluation.dknn_summary import conformal_summary, detection_summary, softmax_summary

    dk = results.dknn
    if dk.empty or "kind" not in dk.columns:
        return []
    out = [
        "## DkNN credibility and calibration",
        "",
        "Deep k-Nearest Neighbors over the hidden layers and logits. Credibility is a conformal p-value, judged "
        "by validity and efficiency; a calibration error is shown only for the softmax's maximum probability "
        "(MSP), which is a probability. Seed means; every per-set and per-seed number is in `dknn_metrics.csv`.",
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
    det = detection_summary(dk)
    if len(det):
        tab = pd.DataFrame(
            {
                "model": det["model"],
                "attack": [f"{a} eps={e:g}" for a, e in zip(det["attack"], det["eps"], strict=True)],
                "credibility AUROC ± SE": [
                    _auroc_cell(m, s)
                    for m, s in zip(det["credibility_auroc"], det["credibility_auroc_se"], strict=True)
                ],
                "MSP AUROC ± SE": [
                    _auroc_cell(m, s) for m, s in zip(det["msp_auroc"], det["msp_auroc_se"], strict=True)
                ],
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
            "### Detection of successful attacks: credibility vs the softmax",
            "",
            "White-box sets (crafted on the scored model). Positive class: the clean test inputs; the other class: "
            "only the adversarial inputs that fooled the classifier (clean prediction right, adversarial wrong), so "
            "detection is not mixed with attack success. AUROC: seed mean ± the SE of that mean from the per-seed "
            "DeLong SEs; AUPR-out: average precision with the attack as positive; TPR@5%FPR: fraction of fooling "
            "inputs flagged at the threshold that flags 5% of clean inputs. n_clean / n_adv: clean and fooling "
            "inputs, summed over seeds. The AUROC over every adversarial input (failed attacks included) is "
            "`credibility_auroc_all_examples` in `dknn_metrics.csv`.",
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
    out += _ood_table(dk)
    if figures_dir is not None and not results.dknn_examples.empty:
        # lazy: matplotlib takes about a second to import, and a report without figures needs none
        from advbench.reports.plots import credibility_histograms, reliability_diagram

        ex = results.dknn_examples
        clean = ex[ex["kind"] == "clean"]
        figs = []
        if "msp" in ex.columns and "softmax_correct" in ex.columns:
            reliability_diagram(
                clean,
                figures_dir / "reliability_msp_clean.png",
                title="Softmax reliability (MSP), clean test inputs",
                score="msp",
                correct_col="softmax_correct",
                labels=("maximum softmax probability", "softmax accuracy"),
                n_bins=15,
            )
            figs.append(f"![MSP reliability, clean]({prefix}reliability_msp_clean.png)")
        reliability_diagram(
            clean,
            figures_dir / "reliability_clean.png",
            title="DkNN accuracy per credibility bin (descriptive), clean",
        )
        credibility_histograms(
            ex, figures_dir / "credibility.png", title="DkNN credibility by input kind (descriptive)"
        )
        figs += [
            f"![accuracy per credibility bin, clean]({prefix}reliability_clean.png)",
            f"![credibility histograms]({prefix}credibility.png)",
        ]
        out += [
            "Figures: the MSP's reliability diagram (its gap to the diagonal is the ECE above); accuracy per "
            "credibility bin and credibility histograms per input kind, descriptive only (as in Papernot & "
            "McDaniel 2018: credibility is a p-value, so its gap to the diagonal is not a calibration error).",
            "",
            " ".join(figs),
            "",
        ]
    return out


def _ood_table(dk: pd.DataFrame) -> list[str]:
    from advbench.evaluation.dknn_summary import ood_summary

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
        "seeds.",
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
                results.metrics if not results.metrics.empty else None,
                dknn=results.dknn if not results.dknn.empty and "attack" in results.dknn.columns else None,
                properties=_attack_properties(results),
                num_classes=_num_classes(results),
                tolerance=FLAG_TOLERANCE,
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

    The report is a pure function of the results: when the digest of ``results_dir`` matches the
    stamp left by the last rendering, nothing is re-rendered.
    """
    out = Path(out)
    stamp = out.with_suffix("") / "results.sha256"
    digest = results_digest(results_dir)
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        log.info("report %s is up to date (results unchanged, sha256 %s)", out, digest[:12])
        return False
    write_report(results, out, manifest=manifest, plots=results.suite["report"].get("plots", True))
    stamp.write_text(digest + "\n")
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
