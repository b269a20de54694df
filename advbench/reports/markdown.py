"""The Markdown report: a pure function of a run's :class:`Results` (and its manifest for provenance).

Every table says what its numbers are, their denominator and n. Numbers are the ones the run
measured; flags annotate numbers, they never hide them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from advbench.reports.results import Results
from advbench.suite.rundir import atomic_write_text

__all__ = ["render_report", "write_report"]

log = logging.getLogger(__name__)


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _ci(mean: float, lo: float, hi: float, *, pct: bool = True) -> str:
    f = _pct if pct else (lambda v: "n/a" if not np.isfinite(v) else f"{v:.3f}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f(mean)
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


def _table(df: pd.DataFrame, **kw: Any) -> str:
    return tabulate(df, headers="keys", tablefmt="github", showindex=False, **kw)


def _model_order(results: Results) -> list[str]:
    return [m["name"] for m in results.suite["models"]]


def _seed_summary(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    from advbench.evaluation.stats import mean_ci

    rows = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(g[value].to_numpy(dtype=float))
        rows.append({**dict(zip(by, key, strict=True)), "mean": m, "ci_low": lo, "ci_high": hi, "n_seeds": len(g)})
    return pd.DataFrame(rows)


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
        + " Percentages are in points.",
        "",
    ]
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
    fig_dir.mkdir(parents=True, exist_ok=True)
    text = render_report(
        results, manifest=manifest, figures_dir=fig_dir if plots else None, link_prefix=f"{fig_dir.name}/"
    )
    if len(results.metrics):
        results.metrics.to_csv(fig_dir / "transfer_metrics.csv", index=False)
    if len(results.dknn):
        results.dknn.to_csv(fig_dir / "dknn_metrics.csv", index=False)
    atomic_write_text(path, text)
    return path


# -- sections ----------------------------------------------------------------------------------


def _clean_section(results: Results) -> list[str]:
    if results.clean.empty:
        return []
    summ = _seed_summary(results.clean, ["model"], "test_accuracy")
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
    cols = [c for c in tr.columns if c.startswith("probe_snnl/")]
    if tr.empty or not cols:
        return []
    last = tr.loc[tr.groupby(["model", "seed"])["epoch"].idxmax()]
    rows = []
    for model, g in last.groupby("model", sort=False):
        row: dict[str, Any] = {"model": model}
        from advbench.evaluation.stats import mean_ci

        for c in cols:
            m, lo, hi = mean_ci(g[c].to_numpy(dtype=float))
            row[c.split("/", 1)[1]] = _ci(m, lo, hi, pct=False)
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
    from advbench.evaluation.stats import summarize

    summ = summarize(met, outcomes=results.outcomes)
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
            from advbench.reports.plots import transfer_heatmap

            name = f"transfer_{attack}_{eps:g}.png".replace("/", "_")
            transfer_heatmap(mat, figures_dir / name, title=f"transfer rate, {attack} eps={eps:g}")
            out += [f"![transfer {attack} eps={eps:g}]({prefix}{name})", ""]
    return out


def _paired_section(results: Results) -> list[str]:
    if results.outcomes.empty:
        return []
    from advbench.evaluation.stats import paired_differences

    order = _model_order(results)
    reference = "baseline" if "baseline" in order else order[0]
    variants = [m for m in order if m != reference]
    if not variants:
        return []
    diff = paired_differences(results.outcomes, reference=reference, variants=variants)
    if diff.empty:
        return []
    out = [
        "## Paired differences",
        "",
        f"Each variant minus `{reference}` trained from the same seed (same initial weights and batch order), "
        "in percentage points with a 95% CI; the p-value is an exact McNemar test on the per-example "
        "outcomes (discordant pairs pooled over seeds).",
        "",
    ]
    show = diff.copy()
    for c in ("diff", "ci_low", "ci_high"):
        if c in show:
            show[c] = (100 * show[c]).round(2)
    if "p_value" in show:
        show["p_value"] = show["p_value"].map(lambda p: f"{p:.3g}")
    out += [_table(show), ""]
    return out


def _dknn_section(results: Results, figures_dir: Path | None, prefix: str) -> list[str]:
    dk = results.dknn
    if dk.empty:
        return []
    out = [
        "## DkNN credibility and calibration",
        "",
        "Deep k-Nearest Neighbors over the hidden layers and logits. Accuracy and mean credibility on each "
        "input set; ECE of credibility (10 bins); AUROC of credibility for telling clean test inputs "
        "(positive) from the set's inputs. n = examples per set and seed.",
        "",
    ]
    keys = [c for c in ("model", "input_set", "metric") if c in dk]
    summ = _seed_summary(dk, keys, "value")
    wide = (
        summ.assign(cell=[_ci(r.mean, r.ci_low, r.ci_high, pct=False) for r in summ.itertuples()])
        .pivot_table(index=["input_set", "model"], columns="metric", values="cell", aggfunc="first")
        .reset_index()
    )
    if "n" in dk:
        ns = dk.groupby(["input_set", "model"])["n"].first().reset_index()
        wide = wide.merge(ns, on=["input_set", "model"], how="left")
    out += [_table(wide), ""]
    if figures_dir is not None and not results.dknn_examples.empty:
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
    from advbench.evaluation.flags import evaluation_flags

    frames = [evaluation_flags(results.metrics, num_classes=_num_classes(results))] if not results.metrics.empty else []
    if not results.gradient_flags.empty:
        frames.append(results.gradient_flags)
    flags = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    )
    out = ["## Evaluation-quality flags", ""]
    if flags.empty:
        return out + [
            "No flag raised: iterative attacks at least as strong as FGSM, success increasing with eps, "
            "no transfer attack stronger than the white-box one, input gradients finite and non-zero.",
            "",
        ]
    return out + [
        "Signs of gradient masking or a broken attack (after AutoAttack's and ART's checks). "
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
