"""The Ray executor: the plan's missing cells as Ray tasks, across the cores or machines of a cluster.

Each missing cell becomes one task with its declared resources (``--threads`` CPUs, and a GPU when
the suite runs on CUDA and the cluster has one), submitted with the object references of the tasks
it depends on, so Ray starts it only once its inputs exist. A task reads its inputs from, and writes
its output to, the same content-addressed cache as the local executor (a folder every node can
reach: a shared filesystem on a multi-node cluster), with the same atomic writes. A task whose
worker process dies is retried by Ray (``max_retries``). Every planned cell is a task (a cached one
is a cheap read); each returns its :class:`~advbench.suite.execute.CellReport` and the result-table
rows it made, which the driver adds to its store in plan order, so the tables are the local run's.
A worker builds its context from the suite and options once per process and run, and keeps the models
it loaded for the run's later tasks (:mod:`advbench.suite.worker`, shared with the local process pool).

Ray is an optional dependency (``pip install 'advbench[ray]'``), imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from advbench.errors import AdvbenchError
from advbench.suite.context import ArtefactStore, CellContext
from advbench.suite.execute import CellReport, reports_in_plan_order
from advbench.suite.plan import Cell, Plan
from advbench.suite.worker import payload, run_cell_in_worker

__all__ = ["MAX_RETRIES", "RayExecutor", "require_ray"]

log = logging.getLogger(__name__)

#: How often Ray re-runs a task whose worker process died (a crash, an OOM kill, a lost node).
MAX_RETRIES = 3


def require_ray() -> Any:
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise AdvbenchError(
            "--executor ray needs Ray, which is not installed here: pip install 'advbench[ray]' "
            "(or leave out --executor to run in this process)"
        ) from exc
    return ray


def _node() -> str:
    import ray  # lazy: Ray is optional; this runs only inside a Ray task

    ctx = ray.get_runtime_context()
    return f"{platform.node()}/{ctx.get_node_id()[:12]}"


def _run_cell(body: dict[str, Any], key: str, *deps: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: run one cell through the cache (:func:`~advbench.suite.worker.run_cell_in_worker`).

    Failures come back as a status, not an exception; the task's tables come back under ``"tables"``.
    """
    node = _node()
    with open(body["attempts_log"], "a") as fh:  # one short line per attempt: retries are visible
        fh.write(json.dumps({"key": key, "pid": os.getpid(), "node": node}) + "\n")
    return run_cell_in_worker(body, key, [_dep_report(d) for d in deps], node=node)


def _dep_report(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("key", "label", "status", "error")}


class RayExecutor:
    """Every planned cell as a Ray task, on this machine or a cluster (``address``)."""

    def __init__(self, address: str | None = None, *, attempts_log: Path) -> None:
        self.address = address
        self.attempts_log = attempts_log
        #: what the cluster looked like and what was asked of it (for the run manifest)
        self.info: dict[str, Any] = {}

    def execute(
        self, plan: Plan, ctx: CellContext, store: ArtefactStore, on_report: Callable[[CellReport], None]
    ) -> list[CellReport]:
        ray = require_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            resources = ray.cluster_resources()
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            device = ctx.options.device or ctx.suite.device
            want_gpu = device == "cuda" or (device == "auto" and resources.get("GPU", 0) > 0)
            if want_gpu and resources.get("GPU", 0) == 0:
                raise AdvbenchError(
                    "device: cuda was asked for, but the Ray cluster has no GPU; set device: cpu or auto"
                )
            if want_gpu and ctx.device.type != "cuda":
                raise AdvbenchError(
                    f"the Ray cluster's cells would compute on a GPU, but this driver planned them on "
                    f"{ctx.device} (it sees no GPU), and a cell's key carries the numeric path it computes on "
                    f"(the GPU's among it). Start the run on a node with a GPU (e.g. with `ray job submit`), "
                    f"or set device: cpu"
                )
            threads = ctx.options.threads or 1
            if resources.get("CPU", 0) < threads:
                raise AdvbenchError(
                    f"--threads {threads} asks for {threads} CPUs per cell, but the Ray cluster has "
                    f"{resources.get('CPU', 0):g}; pass a smaller --threads"
                )
            body = ray.put(payload(ctx, device="cuda" if want_gpu else "cpu", attempts_log=str(self.attempts_log)))
            task = ray.remote(_run_cell).options(
                num_cpus=threads, num_gpus=1 if want_gpu else 0, max_retries=MAX_RETRIES, retry_exceptions=False
            )
            todo = sum(not ctx.cache.exists(c.kind, c.key) for c in plan.cells)
            self.info = {
                "address": self.address or "local",
                "nodes": [
                    {"node": n["NodeManagerAddress"], "id": n["NodeID"][:12], "resources": n["Resources"]}
                    for n in nodes
                ],
                "cells_submitted": len(plan.cells),
                "cells_to_compute": todo,
                "cpus_per_cell": threads,
                "gpus_per_cell": 1 if want_gpu else 0,
            }
            log.info(
                "ray: %d cells (%d to compute) on %d nodes (%g CPUs%s)",
                len(plan.cells),
                todo,
                len(nodes),
                resources.get("CPU", 0),
                f", {resources['GPU']:g} GPUs" if want_gpu else "",
            )
            refs: dict[str, Any] = {}
            for cell in plan.cells:
                refs[cell.key] = task.remote(body, cell.key, *[refs[d] for d in cell.deps if d in refs])
            out = _gather(ray, refs, {c.key: c for c in plan.cells}, self.attempts_log, on_report, ctx.options.progress)
        finally:
            if started_here:
                ray.shutdown()
        return reports_in_plan_order(plan, out, store)


def _attempts(attempts_log: Path) -> dict[str, int]:
    """How many times each cell's task started (the attempts log has one line per start)."""
    attempts: dict[str, int] = {}
    if attempts_log.is_file():
        for line in attempts_log.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                k = json.loads(line)["key"]
                attempts[k] = attempts.get(k, 0) + 1
    return attempts


def _gather(
    ray: Any,
    refs: dict[str, Any],
    cells: dict[str, Cell],
    attempts_log: Path,
    on_report: Callable[[CellReport], None],
    progress: bool,
) -> dict[str, tuple[CellReport, dict[str, list[pd.DataFrame]]]]:
    """Each task's report and tables as it finishes; a worker that died too often is a failed cell."""
    out: dict[str, tuple[CellReport, dict[str, list[pd.DataFrame]]]] = {}
    by_ref = {ref: key for key, ref in refs.items()}
    pending = list(refs.values())
    with tqdm(total=len(pending), desc="ray cells", unit="cell", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            key = by_ref[done[0]]
            try:
                result = dict(ray.get(done[0]))
                result.pop("peak_rss_mb", None)
                tables = result.pop("tables")
                report = CellReport(**result)
            except ray.exceptions.RayTaskError as exc:  # --fail-fast or a fatal error: stop everything
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise exc.as_instanceof_cause() from None
            except ray.exceptions.RayError as exc:  # the worker died more than MAX_RETRIES times
                error = f"{type(exc).__name__}: its Ray worker died {MAX_RETRIES + 1} times"
                report = CellReport(key, cells[key].label, cells[key].kind, "failed", error=error)
                tables = {}
            report.attempts = _attempts(attempts_log).get(key, 1)
            if report.attempts > 1:
                log.warning("ray: %s took %d attempts (a worker died)", report.label, report.attempts)
            out[key] = (report, tables)
            on_report(report)
            bar.update(1)
    return out
