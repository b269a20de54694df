"""Helpers shared by the benchmarks: interleaved side-by-side timing and the figures table.

Every figure a benchmark wants in the end-of-session table (and in the JSON) goes through the
``figure`` fixture of ``conftest.py``: ``figure("ratio_cpu", 0.97, target=1.05)`` stores it in the
test's ``benchmark.extra_info["figures"]`` (so it lands in ``--benchmark-json``) and in the table that
``pytest_terminal_summary`` prints. ``python benchmarks/summary.py FILE.json`` prints the same table
from a saved run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> Timing:
    """Wall-clock and process CPU time of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int, *, warmup: int = 1) -> dict[str, list[Timing]]:
    """Time every function ``rounds`` times, round-robin, rotating which goes first in each round.

    Load on a shared machine then hits every contender alike, and a ratio of medians taken from
    these lists is measured side by side.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out: dict[str, list[Timing]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(timed(fns[name]))
    return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The float32 matrix-product throughput torch reaches here (best of ``repeats`` n x n products)."""
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def median(ts: Iterable[Timing], clock: str = "cpu") -> float:
    return statistics.median(getattr(t, clock) for t in ts)


def check(value: float, target: float | None, op: str) -> bool | None:
    if target is None:
        return None
    if op == "<=":
        return value <= target
    if op == ">=":
        return value >= target
    if op == "<":
        return value < target
    if op == ">":
        return value > target
    raise ValueError(f"unknown comparison {op!r}")


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as one plain-text table (test, figure, value, unit, target, status)."""
    from tabulate import tabulate

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    body = [
        [
            r["test"],
            r["figure"],
            fmt(r["value"]),
            r.get("unit", ""),
            "" if r.get("target") is None else f"{r['op']} {fmt(r['target'])}",
            {True: "ok", False: "MISSED", None: ""}[r.get("ok")],
        ]
        for r in rows
    ]
    return tabulate(body, headers=["benchmark", "figure", "value", "unit", "target", ""], tablefmt="simple")


def rows_from_json(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of a ``--benchmark-json`` file, in the order they were recorded."""
    rows = []
    for bench in data.get("benchmarks", []):
        for name, f in bench.get("extra_info", {}).get("figures", {}).items():
            rows.append({"test": bench["name"], "figure": name, **f})
    return rows
