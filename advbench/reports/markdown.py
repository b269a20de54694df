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


_NORM_LABELS = {"linf": "L-inf", "l2": "L2"}


def _attack_norms(met: pd.DataFrame) -> dict[str, str]:
    """Attack label -> the norm of its threat model ("linf" when the metrics predate the column)."""
    if "norm" not in met.columns:
        return {}
    pairs = met[["attack", "norm"]].drop_duplicates()
    return {str(a): str(n) for a, n in zip(pairs["attack"], pairs["norm"], strict=True)}


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
    norms = _attack_norms(met)
    for r in wb.itertuples():
        rows.append(
            {
                "attack": r.attack,
                "norm": _NORM_LABELS.get(norms.get(str(r.attack), "linf"), "L-inf"),
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
    groups = list(tr.groupby(["attack", "eps"], sort=False))
    # L-inf results first, then L2 ones, each under a heading that names its norm
    groups.sort(key=lambda item: list(_NORM_LABELS).index(norms.get(str(item[0][0]), "linf")))
    for (attack, eps), g in groups:
        norm_label = _NORM_LABELS.get(norms.get(str(attack), "linf"), "L-inf")
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
        [evaluation_flags(results.metrics, num_classes=_num_classes(results), tolerance=FLAG_TOLERANCE)]
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
