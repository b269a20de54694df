"""A worker process's side of a run: its own context built from the driver's suite and options, reused per run.

Both parallel executors — the local process pool (:mod:`advbench.suite.execute`) and Ray
(:mod:`advbench.suite.ray_executor`) — send each cell to a worker as its key plus a *payload*: the resolved
suite and the options, with paths made absolute. A worker builds a
:class:`~advbench.suite.context.CellContext` from it once per process and run (the data splits, the plan,
the cache), keeps the models it loads for the run's later cells, and reads every input a cell needs from
the shared cache. So a cell computes the same bits in any worker as in the driver: same plan, same keys,
same thread count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from advbench.config import Suite
from advbench.errors import AdvbenchError
from advbench.suite.context import ArtefactStore, CellContext, RunOptions
from advbench.suite.execute import run_one
from advbench.suite.numerics import check_worker_path

__all__ = ["payload", "peak_rss_mb", "run_cell_in_worker", "worker_context"]


@dataclass
class _Worker:
    """One worker process's context and model store, reused by every cell of the same run."""

    digest: str = ""
    ctx: CellContext | None = None
    store: ArtefactStore = field(default_factory=ArtefactStore)


_WORKER = _Worker()


def payload(ctx: CellContext, *, device: str | None = None, **extra: Any) -> dict[str, Any]:
    """What a worker needs to rebuild ``ctx``: the suite and the options, paths absolute, run in-process there."""
    opts = asdict(ctx.options)
    opts.update(
        executor="local",
        workers=1,
        address=None,
        progress=False,
        resume=False,
        threads=ctx.options.cell_threads("train"),
        cache_dir=str(ctx.cache.root.resolve()),
        data_dir=str(Path(ctx.options.data_dir).resolve()) if ctx.options.data_dir else None,
        device=device if device is not None else str(ctx.device),
    )
    body = {"suite": ctx.suite.model_dump(mode="json"), "options": opts, "numeric_path": ctx.plan.numeric_path}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return body | {"digest": digest, "cwd": os.getcwd()} | extra


def worker_context(payload: dict[str, Any]) -> CellContext:
    """This worker's context for the payload's run (built once per process and run)."""
    if _WORKER.ctx is None or _WORKER.digest != payload["digest"]:
        with contextlib.suppress(OSError):
            os.chdir(payload["cwd"])  # relative paths in the suite mean what they meant to the driver
        suite = Suite.model_validate(payload["suite"])
        ctx = CellContext.create(suite, RunOptions(**payload["options"]))
        # a worker on another CPU or library build would compute the cells under keys made for other bits
        check_worker_path(payload["numeric_path"], ctx.plan.numeric_path, worker=f"{platform.node()}:{os.getpid()}")
        _WORKER.ctx = ctx
        _WORKER.digest = payload["digest"]
        _WORKER.store = ArtefactStore()
    torch.set_num_threads(int(_WORKER.ctx.options.threads or 1))
    return _WORKER.ctx


def run_cell_in_worker(
    payload: dict[str, Any], key: str, deps: list[dict[str, Any]], *, node: str | None = None
) -> dict[str, Any]:
    """Run the cell ``key`` in this worker: its report (as a dict), the frames it added (``"tables"``) and the
    worker's peak memory so far (``"peak_rss_mb"``).

    ``deps``: the reports (``key``, ``label``, ``status``, ``error``) of the cells it depends on, so that a
    cell whose input failed is skipped (or, a DkNN scoring cell, run without the failed sets) as in-process.
    """
    ctx = worker_context(payload)
    by_key = {c.key: c for c in ctx.plan.cells}
    if key not in by_key:
        raise AdvbenchError(
            f"worker {node or os.getpid()} plans different cells than the driver (no cell with key {key[:12]}); "
            f"its advbench, torch or data differ from the driver's. Install the same versions on every node"
        )
    failed = {d["key"]: d["error"] for d in deps if d["status"] != "ok"}
    labels = {d["key"]: d["label"] for d in deps}
    # Each cell starts from the models this worker already loaded, and nothing else.
    store = _WORKER.store.with_models_only()
    report = run_one(ctx, by_key[key], store, failed, labels)
    report.node = node
    tables = {t: frames for t, frames in store.tables.items() if frames}
    return asdict(report) | {"tables": tables, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (what a worker needs, for ``--plan`` and the bound)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(usage / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB elsewhere
