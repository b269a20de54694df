"""The local parallel executor: the plan's cells in worker processes on this machine's free cores.

The driver reads the cached cells itself (a cheap read whose result tables it needs anyway) and sends
each cell still to compute to a worker process (:mod:`advbench.suite.worker`) once every cell it needs
has finished, the earliest in plan order first, never more at once than there are workers. A worker
builds the run's context from the suite and options and reads every input from the cache, so a cell
computes the same bits here as in one process or on Ray with the same thread count, under the same key.
The result tables are added to the store in plan order, as the in-process executor adds them.

A worker that dies (an OOM kill, a crash in native code) breaks the pool: the pool is replaced and the
cells that were running on it are tried again, one at a time, so that a death is blamed on the cell that
caused it; a cell whose worker dies :data:`MAX_ATTEMPTS` times is recorded as failed and the run goes on.
Workers are spawned (never forked: forking a process whose OpenMP runtime already has threads can deadlock
the child) as children of the driver, and each ends itself as soon as the driver is gone, even when the
driver was killed outright.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from advbench.suite.context import ArtefactStore, CellContext
from advbench.suite.execute import CellReport, log_problem, reports_in_plan_order, run_one
from advbench.suite.plan import Plan
from advbench.suite.worker import payload, run_cell_in_worker

__all__ = ["MAX_ATTEMPTS", "PoolExecutor"]

log = logging.getLogger(__name__)

#: How often a cell's worker may die (the cell running alone) before the cell is recorded as failed.
MAX_ATTEMPTS = 3

Tables = dict[str, list[pd.DataFrame]]


def _init_worker(threads: int, driver: int) -> None:
    """A worker's set-up: its thread count, and a watchdog that ends it when the driver is gone.

    A driver killed outright (``kill -9``, the OOM killer) cannot shut its pool down, and a worker blocked
    on the pool's queue would wait for it forever (or finish its cell and write it to the cache long after
    the run ended). The worker is the driver's child (``spawn``), so the driver's death shows as a new
    parent process; the watchdog then ends the worker at once.
    """
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_driver, args=(driver,), name="advbench-watchdog", daemon=True).start()


def _exit_with_driver(driver: int) -> None:
    while os.getppid() == driver:
        time.sleep(_WATCHDOG_S)
    os._exit(1)


#: How often a worker checks that its driver is alive.
_WATCHDOG_S = 0.5


def _context() -> Any:
    # spawn, not fork: forking a process whose OpenMP runtime already has threads can deadlock the child;
    # not forkserver: its workers are the server's children, which outlive a driver killed with SIGKILL
    return multiprocessing.get_context("spawn")


class PoolExecutor:
    """The plan's cells to compute in ``workers`` processes, the cached ones read in this one."""

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"a pool needs at least 2 workers, got {workers}; use the in-process LocalExecutor")
        self.workers = workers
        #: what the pool looked like (for the run manifest)
        self.info: dict[str, Any] = {}

    def execute(
        self, plan: Plan, ctx: CellContext, store: ArtefactStore, on_report: Callable[[CellReport], None]
    ) -> list[CellReport]:
        cells = {c.key: c for c in plan.cells}
        to_compute = {c.key for c in plan.cells if not ctx.cache.exists(c.kind, c.key)}
        threads = ctx.options.cell_threads("train")
        workers = max(1, min(self.workers, len(to_compute)))
        self.info = {"workers": workers, "threads_per_cell": threads, "cells_to_compute": len(to_compute)}
        log.info(
            "%d cells (%d to compute) on %d worker processes, %d thread(s) each",
            len(cells),
            len(to_compute),
            workers,
            threads,
        )
        body = payload(ctx)
        labels = {k: c.label for k, c in cells.items()}
        out: dict[str, tuple[CellReport, Tables]] = {}
        failed: dict[str, str] = {}
        attempts: Counter[str] = Counter()
        order = {c.key: i for i, c in enumerate(plan.cells)}
        waiting = [c.key for c in plan.cells]  # not started, in plan order
        running: dict[Future[dict[str, Any]], str] = {}

        #: cells that were running when a worker died beside others: each runs alone until it finishes, so
        #: that a death is blamed on the cell that caused it, never on an innocent neighbour
        suspects: set[str] = set()
        deaths: Counter[str] = Counter()
        peak = 0.0

        def finish(key: str, report: CellReport, tables: Tables) -> None:
            log_problem(report, failed, key)
            out[key] = (report, tables)
            on_report(report)
            bar.update(1)

        def start(key: str) -> None:
            waiting.remove(key)
            attempts[key] += 1
            deps = [_dep(out[d][0]) for d in cells[key].deps]
            running[pool.submit(run_cell_in_worker, body, key, deps)] = key

        pool = _pool(workers, threads)
        bar = tqdm(total=len(cells), desc=f"suite {ctx.suite.name}", unit="cell", disable=not ctx.options.progress)
        try:
            while waiting or running:
                for key in [k for k in waiting if all(d in out for d in cells[k].deps)]:
                    if key not in to_compute:  # cached (or skipped for a failed input): read here
                        waiting.remove(key)
                        cell_store = store.with_models_only()
                        finish(key, run_one(ctx, cells[key], cell_store, failed, labels), _tables(cell_store))
                    elif suspects:
                        if not running and key in suspects:
                            start(key)  # alone: nothing else starts until it is done
                    elif len(running) < workers:
                        start(key)
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                lost: list[str] = []
                for fut in done:
                    key = running.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        lost.append(key)
                        continue
                    suspects.discard(key)
                    peak = max(peak, float(result.pop("peak_rss_mb", 0.0)))
                    tables = result.pop("tables")
                    report = CellReport(**result)
                    report.attempts = attempts[key]
                    finish(key, report, tables)
                if not lost:
                    continue
                lost += list(running.values())  # a broken pool fails every cell still on it
                running.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                if len(lost) == 1:
                    deaths[lost[0]] += 1  # it ran alone: its own death
                log.warning(
                    "a worker process died (out of memory or a crash); retrying %s", ", ".join(labels[k] for k in lost)
                )
                suspects.update(lost)
                for key in lost:
                    if deaths[key] >= MAX_ATTEMPTS:
                        suspects.discard(key)
                        error = f"its worker process died {deaths[key]} times (out of memory or a crash)"
                        report = CellReport(key, labels[key], cells[key].kind, "failed", error=error)
                        report.attempts = attempts[key]
                        finish(key, report, {})
                    else:
                        waiting.append(key)
                waiting.sort(key=order.__getitem__)
                pool = _pool(workers, threads)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)
        self.info["worker_peak_rss_mb"] = peak
        return reports_in_plan_order(plan, out, store)


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers, mp_context=_context(), initializer=_init_worker, initargs=(threads, os.getpid())
    )


def _dep(report: CellReport) -> dict[str, Any]:
    return {"key": report.key, "label": report.label, "status": report.status, "error": report.error}


def _tables(store: ArtefactStore) -> Tables:
    return {t: frames for t, frames in store.tables.items() if frames}
