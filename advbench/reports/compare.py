"""Markdown rendering of a comparison of two runs (:mod:`advbench.analysis.compare`)."""

from __future__ import annotations

import math

import pandas as pd

from advbench.analysis.compare import Comparison

__all__ = ["render_comparison"]

_TITLES = {
    "clean": "Clean accuracy",
    "transfer": "Transfer (adversarial examples crafted on source, evaluated on target)",
    "dknn": "DkNN",
}
_COLUMNS = {
    "clean": [("model", "model")],
    "transfer": [("source", "source"), ("model", "target"), ("attack", "attack"), ("eps", "eps"), ("metric", "metric")],
    "dknn": [("model", "model"), ("input_set", "input set"), ("metric", "metric")],
}


def _f(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _signed(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.3f}"


def _interval(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a (needs 2+ seeds)"
    return f"[{lo:+.3f}, {hi:+.3f}]"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_comparison(
    c: Comparison, *, label_a: str = "A", label_b: str = "B", sections: tuple[str, ...] = ("clean", "transfer", "dknn")
) -> str:
    """The comparison as Markdown: one table per section, then what could not be matched."""
    pct = round(100 * c.confidence)
    lines = [
        f"## {label_b} vs {label_a}",
        "",
        f"A = {label_a} (seeds {c.seeds_a}); B = {label_b} (seeds {c.seeds_b}). Values are means over seeds of "
        f"per-seed rates; B − A is their difference with a {pct}% seed-level interval, {c.method}. "
        "Intervals are per row, not simultaneous.",
    ]
    for section in sections:
        part = c.table[c.table["section"] == section]
        if part.empty:
            continue
        cols = _COLUMNS[section]
        header = [h for _, h in cols] + [f"A ({label_a})", f"B ({label_b})", "B − A", f"{pct}% CI"]
        rows = [
            [str(r[k]) for k, _ in cols]
            + [_f(r["mean_a"]), _f(r["mean_b"]), _signed(r["diff"]), _interval(r["ci_low"], r["ci_high"])]
            for _, r in part.iterrows()
        ]
        dens = [
            f"`{m}`: {c.denominators[(section, m)]}"
            for m in dict.fromkeys(part["metric"])
            if (section, m) in c.denominators
        ]
        lines += [
            "",
            f"### {_TITLES[section]}",
            "",
            f"Denominators: {'; '.join(dens)}." if dens else "",
            "",
            _md_table(header, rows),
        ]
    lines += ["", "### Not matched", ""]
    lines += _unmatched(c.only_a, label_a) + _unmatched(c.only_b, label_b)
    if c.only_a.empty and c.only_b.empty:
        lines.append("Every metric of each run has a match in the other.")
    return "\n".join(lines) + "\n"


def _unmatched(df: pd.DataFrame, label: str) -> list[str]:
    if df.empty:
        return []
    out = [f"Only in {label}: {len(df)} metrics"]
    for (section, model), g in df.groupby(["section", "model"], sort=False):
        metrics = sorted(set(g["metric"]))
        out.append(f"- {section} / {model or '-'}: {len(g)} ({', '.join(metrics)})")
    return out + [""]
