"""The ``figure`` fixture and the end-of-session table of every figure against its target.

A benchmark records a figure with ``figure(name, value, unit=..., target=..., op="<=")``; it goes
into ``benchmark.extra_info["figures"]`` (and so into the ``--benchmark-json`` file) and into the
table printed at the end of the session, where a missed target is marked ``MISSED``. The benchmark
still asserts its targets itself, so ``tox -e benchmark`` fails when one is missed.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from _bench import check, table

_FIGURES: list[dict[str, Any]] = []


@pytest.fixture
def figure(benchmark, request):
    def record(
        name: str, value: float, *, unit: str = "", target: float | None = None, op: str = "<=", digits: int = 4
    ) -> bool | None:
        value = round(float(value), digits) if isinstance(value, float | int) else value
        ok = check(value, target, op)
        entry = {"value": value, "unit": unit, "target": target, "op": op, "ok": ok}
        benchmark.extra_info.setdefault("figures", {})[name] = entry
        _FIGURES.append({"test": request.node.name, "figure": name, **entry})
        return ok

    return record


@pytest.fixture(autouse=True)
def _load(request):
    """Record the 1-minute load average before and after each benchmark (in ``extra_info``)."""
    if "benchmark" not in request.fixturenames:
        yield
        return
    bench = request.getfixturevalue("benchmark")
    before = os.getloadavg()[0]
    yield
    bench.extra_info["loadavg_1m_before"] = round(before, 2)
    bench.extra_info["loadavg_1m_after"] = round(os.getloadavg()[0], 2)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _FIGURES:
        return
    terminalreporter.section("benchmark figures (ratios measured side by side in one run)")
    terminalreporter.write_line(table(_FIGURES))
    missed = [f for f in _FIGURES if f["ok"] is False]
    terminalreporter.write_line(
        f"{len(_FIGURES)} figures, {sum(f['ok'] is not None for f in _FIGURES)} with a target, {len(missed)} missed"
    )
