"""Two runs side by side: every metric both runs have, its difference (B − A) and a seed-level interval.

The unit is the seed (a trained network), as everywhere in advbench's inference. A metric is matched
across the runs by what identifies it: the section (clean accuracy, transfer, DkNN), the model names,
the attack label, eps (compared as ``%g`` text) and the metric's name; the suites may differ. For each
matched metric the per-seed values of each run give the difference ``mean_B − mean_A`` and its interval:

* **paired by seed** when both runs have the same seeds (at least two): the Student-t interval of the
  per-seed differences ``B_s − A_s`` (``n − 1`` df; :func:`~advbench.analysis.inference.paired_t`).
  Same seed means the same initialisation and data order, so pairing removes that variation;
* **Welch** otherwise: the unpaired t interval with Welch–Satterthwaite df, from each run's seed mean
  and variance (each run needs at least two seeds).

What only one run has is listed as unmatched. The intervals are per metric, not simultaneous.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from advbench.analysis.inference import paired_t
from advbench.analysis.results import verify_checksums
from advbench.errors import AdvbenchError
from advbench.io import read_run_table

__all__ = [
    "CONCLUSION_COLUMNS",
    "KEY_COLUMNS",
    "PAIRED",
    "REPRODUCTION_COLUMNS",
    "WALL_CLOCK_COLUMNS",
    "WELCH",
    "Comparison",
    "compare_runs",
    "conclusion_check",
    "per_seed_metrics",
    "reproduction_check",
    "welch_interval",
]

#: What identifies one metric across runs (``""`` where not applicable).
KEY_COLUMNS: tuple[str, ...] = ("section", "source", "model", "attack", "eps", "input_set", "metric")
PAIRED = "paired by seed (t interval of per-seed differences)"
WELCH = "unpaired Welch t interval across the two runs' seeds"

_SECTIONS = ("clean", "transfer", "dknn")


def _eps_text(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(f) else f"{f:g}"


def per_seed_metrics(results: Any) -> pd.DataFrame:
    """One row per (metric, seed) of a run: :data:`KEY_COLUMNS`, ``seed``, ``value``.

    Sections: ``clean`` (test accuracy per model), ``transfer`` (every transfer metric per source,
    target = ``model``, attack and eps), ``dknn`` (every DkNN metric per model and input set, standard
    errors left out).
    """
    frames = []
    clean = results.clean
    if clean is not None and not clean.empty:
        frames.append(
            pd.DataFrame(
                {
                    "section": "clean",
                    "source": "",
                    "model": clean["model"].astype(str),
                    "attack": "",
                    "eps": "",
                    "input_set": "",
                    "metric": "test_accuracy",
                    "seed": clean["seed"].astype(int),
                    "value": clean["test_accuracy"].astype(float),
                }
            )
        )
    tm = results.metrics
    if tm is not None and not tm.empty:
        frames.append(
            pd.DataFrame(
                {
                    "section": "transfer",
                    "source": tm["source"].astype(str),
                    "model": tm["target"].astype(str),
                    "attack": tm["attack"].astype(str),
                    "eps": tm["eps"].map(_eps_text),
                    "input_set": "",
                    "metric": tm["metric"].astype(str),
                    "seed": tm["seed"].astype(int),
                    "value": tm["value"].astype(float),
                }
            )
        )
    dk = results.dknn
    if dk is not None and not dk.empty:
        dk = dk[~dk["metric"].astype(str).str.endswith("_se")]
        col = lambda c: dk[c].fillna("").astype(str) if c in dk else ""  # noqa: E731
        frames.append(
            pd.DataFrame(
                {
                    "section": "dknn",
                    "source": col("source"),
                    "model": dk["model"].astype(str),
                    "attack": col("attack"),
                    "eps": dk["eps"].map(_eps_text) if "eps" in dk else "",
                    "input_set": dk["input_set"].astype(str),
                    "metric": dk["metric"].astype(str),
                    "seed": dk["seed"].astype(int),
                    "value": pd.to_numeric(dk["value"], errors="coerce").astype(float),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=[*KEY_COLUMNS, "seed", "value"])
    return pd.concat(frames, ignore_index=True)


def welch_interval(a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """``mean(b) − mean(a)``, its Welch t interval and the Welch–Satterthwaite df (NaN bounds below 2 values each)."""
    a = a[np.isfinite(a)]
    b = b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    d = float(b.mean() - a.mean())
    if a.size < 2 or b.size < 2:
        return d, math.nan, math.nan, math.nan
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    se2 = va + vb
    if se2 == 0.0:
        return d, d, d, math.inf
    df = se2**2 / ((va**2 / (a.size - 1) if va else 0.0) + (vb**2 / (b.size - 1) if vb else 0.0))
    q = float(_st.t.ppf(0.5 + confidence / 2, df))
    se = math.sqrt(se2)
    return d, d - q * se, d + q * se, df


@dataclass
class Comparison:
    """The matched metrics and what could not be matched.

    ``table``: :data:`KEY_COLUMNS`, ``mean_a``, ``mean_b``, ``n_seeds_a``, ``n_seeds_b``, ``diff``
    (B − A), ``ci_low``, ``ci_high``, ``n_pairs`` (seeds paired; 0 for Welch).
    ``only_a`` / ``only_b``: the key columns of metrics one run has and the other does not.
    ``method``: :data:`PAIRED` or :data:`WELCH`; ``seeds_a`` / ``seeds_b``: each run's seeds.
    """

    table: pd.DataFrame
    only_a: pd.DataFrame
    only_b: pd.DataFrame
    method: str
    seeds_a: list[int]
    seeds_b: list[int]
    confidence: float
    #: per section and metric, what a per-seed value is a fraction of, in each run
    denominators: dict[tuple[str, str], str]


def compare_runs(a: Any, b: Any, *, confidence: float = 0.95) -> Comparison:
    """Compare run ``b`` with run ``a`` (both :class:`~advbench.analysis.results.Results`) metric by metric."""
    la, lb = per_seed_metrics(a), per_seed_metrics(b)
    seeds_a, seeds_b = sorted(set(la["seed"].astype(int))), sorted(set(lb["seed"].astype(int)))
    paired = seeds_a == seeds_b and len(seeds_a) >= 2
    keys = list(KEY_COLUMNS)
    ka = {tuple(k) for k in la[keys].itertuples(index=False)}
    kb = {tuple(k) for k in lb[keys].itertuples(index=False)}
    ga = {k: g for k, g in la.groupby(keys, sort=False)}
    gb = {k: g for k, g in lb.groupby(keys, sort=False)}
    rows = []
    for key in sorted(ka & kb, key=_sort_key):
        va = ga[key].set_index("seed")["value"]
        vb = gb[key].set_index("seed")["value"]
        if paired:
            shared = sorted(set(va.index) & set(vb.index))
            d = vb.loc[shared].to_numpy(float) - va.loc[shared].to_numpy(float)
            res = paired_t(d, confidence=confidence)
            diff, lo, hi, n_pairs = res.estimate, res.low, res.high, res.n
        else:
            diff, lo, hi, _ = welch_interval(va.to_numpy(float), vb.to_numpy(float), confidence=confidence)
            n_pairs = 0
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "mean_a": float(np.nanmean(va.to_numpy(float))) if len(va) else math.nan,
                "mean_b": float(np.nanmean(vb.to_numpy(float))) if len(vb) else math.nan,
                "n_seeds_a": int(va.notna().sum()),
                "n_seeds_b": int(vb.notna().sum()),
                "diff": diff,
                "ci_low": lo,
                "ci_high": hi,
                "n_pairs": n_pairs,
            }
        )
    cols = [*keys, "mean_a", "mean_b", "n_seeds_a", "n_seeds_b", "diff", "ci_low", "ci_high", "n_pairs"]

    def only(ks: set[tuple[Any, ...]]) -> pd.DataFrame:
        ordered: list[tuple[Any, ...]] = sorted(ks, key=_sort_key)
        return pd.DataFrame([list(k) for k in ordered], columns=keys)

    return Comparison(
        table=pd.DataFrame(rows, columns=cols),
        only_a=only(ka - kb),
        only_b=only(kb - ka),
        method=PAIRED if paired else WELCH,
        seeds_a=seeds_a,
        seeds_b=seeds_b,
        confidence=confidence,
        denominators=_denominators(a, b),
    )


def _ns(values: Any) -> str:
    vals = sorted({int(v) for v in pd.to_numeric(pd.Series(values), errors="coerce").dropna()})
    return "/".join(map(str, vals)) if vals else "?"


def _denominators(a: Any, b: Any) -> dict[tuple[str, str], str]:
    """What each metric's per-seed value is a fraction of, with the example counts of A and B."""
    out: dict[tuple[str, str], str] = {}
    for name, run in (("A", a), ("B", b)):
        parts: dict[tuple[str, str], str] = {}
        if run.clean is not None and not run.clean.empty and "n" in run.clean:
            parts[("clean", "test_accuracy")] = f"test examples (n={_ns(run.clean['n'])})"
        tm = run.metrics
        if tm is not None and not tm.empty:
            for metric, g in tm.groupby("metric", sort=False):
                desc = str(g["denominator_desc"].iloc[0]) if "denominator_desc" in g else "examples"
                parts[("transfer", str(metric))] = f"{desc} (n attacked={_ns(g['n'])})"
        dk = run.dknn
        if dk is not None and not dk.empty:
            for metric, g in dk.groupby("metric", sort=False):
                parts[("dknn", str(metric))] = f"queries per input set (n={_ns(g['n'])})"
        for k, v in parts.items():
            out[k] = f"{out[k]}; {name}: {v}" if k in out else f"{name}: {v}"
    return out


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    section = _SECTIONS.index(key[0]) if key[0] in _SECTIONS else len(_SECTIONS)
    return (section, *(str(k) for k in key[1:]))


# -- exact reproduction ----------------------------------------------------------------------------

#: Columns that record wall-clock time, not a result; an exact comparison leaves them out.
WALL_CLOCK_COLUMNS: frozenset[str] = frozenset({"seconds", "wall_s"})

#: Columns of :func:`reproduction_check`.
REPRODUCTION_COLUMNS: tuple[str, ...] = ("table", "rows_a", "rows_b", "status", "max_abs_diff", "detail")


def _read_tidy(path: Path) -> pd.DataFrame:
    try:
        return read_run_table(path, keep_default_na=True, low_memory=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except AdvbenchError:
        raise
    except Exception as exc:  # binary junk, bad encodings, a truncated gzip: all damage
        raise AdvbenchError(
            f"{path}: not a readable table ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); the run "
            f"folder is damaged. Re-run its suite to write it again"
        ) from None


def _table_difference(a: pd.DataFrame, b: pd.DataFrame, tolerance: float) -> tuple[str, float, str]:
    """``(status, max |a - b| over numeric cells, detail)`` for two versions of one tidy table."""
    a = a.drop(columns=[c for c in a.columns if c in WALL_CLOCK_COLUMNS])
    b = b.drop(columns=[c for c in b.columns if c in WALL_CLOCK_COLUMNS])
    if list(a.columns) != list(b.columns):
        only = sorted(set(a.columns) ^ set(b.columns))
        return "differs", math.nan, f"columns differ ({', '.join(only) or 'order'})"
    if a.shape != b.shape:
        return "differs", math.nan, f"{len(a)} vs {len(b)} rows"
    worst, where = 0.0, ""
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            both_nan = np.isnan(xv) & np.isnan(yv)
            if np.any(np.isnan(xv) != np.isnan(yv)):
                return "differs", math.nan, f"column {col}: missing values in different rows"
            d = np.abs(np.where(both_nan, 0.0, xv - yv))
            if d.size and float(d.max()) > worst:
                worst, where = float(d.max()), f"largest in column {col}"
        elif not x.astype(str).equals(y.astype(str)):
            row = int(np.flatnonzero(x.astype(str).to_numpy() != y.astype(str).to_numpy())[0])
            return "differs", math.nan, f"column {col}, row {row}: {x.iloc[row]!r} vs {y.iloc[row]!r}"
    if worst == 0.0:
        return "identical", 0.0, ""
    return ("within tolerance" if worst <= tolerance else "differs"), worst, where


def reproduction_check(results_a: str | Path, results_b: str | Path, *, tolerance: float = 0.0) -> pd.DataFrame:
    """Whether two runs' tidy results are the same, table by table (columns :data:`REPRODUCTION_COLUMNS`).

    Every ``*.csv`` / ``*.csv.gz`` of the two ``results`` folders is read (a gzip file's header carries
    its write time, so bytes are not compared) and compared cell by cell after dropping the wall-clock
    columns (:data:`WALL_CLOCK_COLUMNS`): ``identical`` (every value equal, NaN equal to NaN), ``within
    tolerance`` (numeric differences at most ``tolerance``, e.g. across thread counts), ``differs``, or
    ``only in A`` / ``only in B``. ``claims.csv`` and the other derived tables are compared like
    the rest, and ``suite.json`` (the resolved suite) as parsed JSON.
    """
    fa, fb = Path(results_a), Path(results_b)
    for f in (fa, fb):
        if not f.is_dir():
            raise FileNotFoundError(f"{f}: not a folder; expected a run's results folder (RUN/results)")
        verify_checksums(f)
    names = sorted({p.name for d in (fa, fb) for p in d.iterdir() if p.name.endswith((".csv", ".csv.gz"))})
    rows = []
    for name in names:
        pa, pb = fa / name, fb / name
        if not pa.is_file() or not pb.is_file():
            rows.append({"table": name, "rows_a": math.nan, "rows_b": math.nan, "max_abs_diff": math.nan,
                         "status": "only in A" if pa.is_file() else "only in B", "detail": ""})  # fmt: skip
            continue
        a, b = _read_tidy(pa), _read_tidy(pb)
        status, diff, detail = _table_difference(a, b, tolerance)
        rows.append({"table": name, "rows_a": len(a), "rows_b": len(b), "status": status,
                     "max_abs_diff": diff, "detail": detail})  # fmt: skip
    sa, sb = fa / "suite.json", fb / "suite.json"
    if sa.is_file() and sb.is_file():
        same = json.loads(sa.read_text()) == json.loads(sb.read_text())
        rows.append({"table": "suite.json", "rows_a": math.nan, "rows_b": math.nan, "max_abs_diff": math.nan,
                     "status": "identical" if same else "differs",
                     "detail": "" if same else "the resolved suites differ"})  # fmt: skip
    return pd.DataFrame(rows, columns=list(REPRODUCTION_COLUMNS))


#: The columns of :func:`conclusion_check`.
CONCLUSION_COLUMNS: tuple[str, ...] = (
    "claim",
    "verdict_a",
    "verdict_b",
    "estimate_a",
    "estimate_b",
    "interval_a",
    "interval_b",
    "status",
)


def _interval(row: pd.Series) -> str:
    lo, hi = row.get("ci_low"), row.get("ci_high")
    return "" if pd.isna(lo) or pd.isna(hi) else f"[{lo:+.4g}, {hi:+.4g}]"


def conclusion_check(results_a: str | Path, results_b: str | Path) -> pd.DataFrame:
    """Whether two runs draw the same conclusions: each pre-registered claim's verdict, side by side.

    The tolerance comparison for runs that cannot agree bit for bit (another numeric code path, another
    thread count): a claim ``agrees`` when both runs give it the same verdict, whatever its estimate;
    ``differs`` otherwise; ``only in A`` / ``only in B`` for a claim one run lacks. Columns
    :data:`CONCLUSION_COLUMNS`; an empty frame when neither run has claims.
    """
    frames = []
    for folder in (Path(results_a), Path(results_b)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder; expected a run's results folder (RUN/results)")
        verify_checksums(folder)
        path = folder / "claims.csv"
        frames.append(_read_tidy(path).set_index("name") if path.is_file() else pd.DataFrame())
    a, b = frames
    rows = []
    for name in sorted(set(a.index) | set(b.index)):
        ra = a.loc[name] if name in a.index else None
        rb = b.loc[name] if name in b.index else None
        if ra is None or rb is None:
            status = "only in A" if rb is None else "only in B"
        else:
            status = "agrees" if ra["verdict"] == rb["verdict"] else "differs"
        rows.append(
            {
                "claim": name,
                "verdict_a": "" if ra is None else ra["verdict"],
                "verdict_b": "" if rb is None else rb["verdict"],
                "estimate_a": math.nan if ra is None else ra["estimate"],
                "estimate_b": math.nan if rb is None else rb["estimate"],
                "interval_a": "" if ra is None else _interval(ra),
                "interval_b": "" if rb is None else _interval(rb),
                "status": status,
            }
        )
    return pd.DataFrame(rows, columns=list(CONCLUSION_COLUMNS))
