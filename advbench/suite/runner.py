"""Run a suite: plan, execute the cells through the cache, save tidy results, hand them to a renderer.

Every cell's output goes through :class:`~advbench.suite.cache.Cache` (atomic, checksummed), so a
run killed at any moment resumes with the same command and recomputes only unfinished cells. The
report is rendered by whoever calls :meth:`Runner.run` (the CLI passes a Markdown renderer); this
layer does not import :mod:`advbench.reports`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from tabulate import tabulate

from advbench.analysis.results import Results
from advbench.attacks import ATTACKS
from advbench.codeversion import results_code_version
from advbench.config import Suite
from advbench.suite.cache import CacheEntry, cache_key
from advbench.suite.context import ArtefactStore, CellContext, RunOptions
from advbench.suite.execute import CellReport, Executor, LocalExecutor
from advbench.suite.numerics import path_record
from advbench.suite.plan import Plan, library_versions
from advbench.suite.pool_executor import PoolExecutor
from advbench.suite.rundir import RunDir
from advbench.suite.threads import thread_policy

__all__ = ["RESULTS_KIND", "Renderer", "Runner", "results_from_store"]

log = logging.getLogger(__name__)

#: The cache kind of a whole run's results folder (see :meth:`Runner.results_key`).
RESULTS_KIND = "results"

#: Renders the report of a finished run from its results (see ``advbench.cli.run_cmd``).
Renderer = Callable[[Results, RunDir], None]


def results_from_store(suite: Suite, store: ArtefactStore, failures: list[dict[str, Any]]) -> Results:
    """The tidy results of a run from the tables its cells added to ``store``."""
    return Results.from_parts(
        suite=suite.model_dump(mode="json"),
        outcomes=store.table("outcomes"),
        training=store.table("training"),
        clean=store.table("clean"),
        dknn=store.table("dknn"),
        dknn_examples=store.table("dknn_examples"),
        gradient_flags=store.table("gradient_flags"),
        cross_outcomes=store.table("cross_outcomes"),
        attack_norms=store.table("attack_norms"),
        convergence=store.table("convergence"),
        failures=pd.DataFrame(failures, columns=["cell", "kind", "status", "error"]),
    )


class Runner:
    """Executes a validated suite with the local or the Ray executor."""

    def __init__(self, suite: Suite, *, source: str = "<suite>", options: RunOptions | None = None) -> None:
        self.suite = suite
        self.source = source
        self.opt = options or RunOptions()
        self.ctx = CellContext.create(suite, self.opt)
        self.stage_seconds: dict[str, float] = defaultdict(float)
        self.failures: list[dict[str, Any]] = []
        #: the tidy results of the last :meth:`run`
        self.results: Results | None = None
        #: the in-process artefacts of the last :meth:`run` (models, adversarial sets, tables)
        self.store = ArtefactStore()

    @property
    def plan(self) -> Plan:
        return self.ctx.plan

    def _executor(self, run_dir: RunDir) -> Executor:
        if self.opt.executor == "ray":
            # lazy: Ray is an optional dependency, and a local run never needs it
            from advbench.suite.ray_executor import RayExecutor

            return RayExecutor(self.opt.address, attempts_log=run_dir.path / "ray-attempts.jsonl")
        workers = self.local_workers()
        if workers > 1:
            local_code = self.plan.local_code
            if not local_code:
                return PoolExecutor(workers)
            log.info(
                "running every cell in this process: the suite uses code registered by this program (%s), which "
                "a worker process would not have; install it as a plugin (an entry point) to run cells in parallel",
                ", ".join(local_code),
            )
        return LocalExecutor()

    def worker_memory(self) -> tuple[float, Any] | None:
        """The largest peak memory (MiB) of a local worker measured by an earlier run of this suite, and that run."""
        return RunDir.worker_memory_mb(self.opt.runs_dir, self.suite.name)

    def local_workers(self) -> int:
        """The local executor's worker processes for this run (bounded by the memory a worker was measured to use)."""
        measured = self.worker_memory()
        return self.opt.local_workers(self.ctx.device, worker_mb=measured[0] if measured else None)

    def run(self, render: Renderer | None = None, on_cell: Callable[[CellReport], None] | None = None) -> RunDir:
        """Run every cell, save the results in a new (or resumed) run folder and render them with ``render``.

        ``on_cell`` is called with each cell's report as it finishes (the CLI's progress lines).
        """
        t0 = time.perf_counter()
        # the cells this process runs use the thread count their keys record; restored afterwards
        threads_before = torch.get_num_threads()
        torch.set_num_threads(self.opt.cell_threads("train"))
        try:
            return self._run(t0, render, on_cell)
        finally:
            torch.set_num_threads(threads_before)

    def _run(self, t0: float, render: Renderer | None, on_cell: Callable[[CellReport], None] | None) -> RunDir:
        ctx, plan = self.ctx, self.ctx.plan
        run_dir = RunDir.create(self.opt.runs_dir, self.suite, resume=self.opt.resume)
        run_dir.write_config(self.suite, self.source)
        splits = ctx.splits
        run_dir.start(
            self.suite,
            source=self.source,
            versions=library_versions(),
            cache_dir=str(ctx.cache.root),
            data={
                "dataset": splits.dataset,
                "hashes": splits.hashes,
                "sizes": {"train": len(splits.train), "calibration": len(splits.calibration), "test": len(splits.test)},
                "transfer_examples": len(ctx.transfer_indices),
            },
            plugins={e.name: e.source for e in ATTACKS.entries() if e.source not in ("advbench", "user")}
            | {"failed": ATTACKS.failed_plugins},
        )
        run_dir.manifest["executor"] = self.opt.executor
        # the torch thread count each kind of cell runs with; it is part of every cell's cache key
        run_dir.manifest["threads"] = {
            kind: self.opt.cell_threads(kind) for kind in sorted({c.kind for c in plan.cells})
        }
        external = {
            m.name: {"architecture": m.architecture, "builder": m.builder, "params": m.params}
            | ({"weights": m.weights.path, "sha256": m.weights.sha256.lower()} if m.weights else {})
            | {"identity": plan.find("train", model=m.name).spec["model"]}
            for m in self.suite.models
            if m.recipe is None
        }
        if external:  # models brought by the user, with their weights' digests
            run_dir.manifest["external_models"] = external
        # how that count was chosen, the machine's load then, and the OpenMP wait policy (suite/threads.py)
        requested = "auto" if self.opt.threads_auto else self.opt.threads
        run_dir.manifest["thread_policy"] = thread_policy(requested, self.opt.cell_threads("train"))
        # the numeric code path every cell's key carries, and the CPU and environment behind it (suite/numerics.py)
        run_dir.manifest["numeric_path"] = path_record(plan.numeric_path)
        try:
            self._run_cells(run_dir, render, t0, on_cell)
        except BaseException as exc:
            # never leave a manifest saying 'running' (or 'complete') for a run that stopped
            run_dir.manifest["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            run_dir.manifest["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            try:
                run_dir.save()
            except Exception as save_exc:  # the disk that failed the run may refuse this too
                log.error("could not record the failure in %s: %s", run_dir.manifest_path, save_exc)
            run_dir.release()
            raise
        return run_dir

    def _run_cells(
        self, run_dir: RunDir, render: Renderer | None, t0: float, on_cell: Callable[[CellReport], None] | None
    ) -> None:
        ctx, plan = self.ctx, self.ctx.plan
        log.info("run folder %s; %d cells; cache %s", run_dir.path, len(plan.cells), ctx.cache.root)
        ctx.cache.sweep_tmp()
        self.store = store = ArtefactStore()
        failures: list[dict[str, Any]] = []
        executor = self._executor(run_dir)

        # what each cell's computation took when an earlier run (or part of this one) computed it
        measured = {c.key: c.estimate_s for c in plan.cells if c.estimate_basis == "measured"}

        def record(report: CellReport) -> None:
            key = report.run_key or report.key
            if report.status == "ok":
                self.stage_seconds[report.kind] += report.seconds
                run_dir.record_cell(
                    report.label,
                    report.kind,
                    key,
                    cached=report.cached,
                    seconds=report.seconds,
                    node=report.node,
                    attempts=report.attempts,
                    compute_seconds=measured.get(key) if report.cached else report.seconds,
                )
                return
            failures.append({"cell": report.label, "kind": report.kind, "status": report.status, "error": report.error})
            run_dir.record_failure(report.label, report.kind, key, status=report.status, error=report.error)

        def on_report(report: CellReport) -> None:
            record(report)
            if on_cell is not None:
                on_cell(report)

        results_key = self.results_key()
        entry = ctx.cache.get(RESULTS_KIND, results_key)
        if entry is not None:
            # every cell's output and the code that assembles them are those of a finished run: its
            # results folder is the answer, and the cells need not even be read back from the cache
            reports = self._reuse_results(entry, run_dir, on_report)
            t_collect = time.perf_counter()
            results = Results.load(run_dir.results, per_example=False)
        else:
            reports = executor.execute(plan, ctx, store, on_report)
            if executor.info:
                run_dir.manifest[self.opt.executor] = executor.info
            t_collect = time.perf_counter()
            results = results_from_store(self.suite, store, failures)
            results.save(run_dir.results)
            if not failures:  # a failed cell may be transient (a time limit, a dead node): never cache that
                with ctx.cache.writer(RESULTS_KIND, results_key, {"suite": self.suite.name}) as tmp:
                    for f in sorted(run_dir.results.iterdir()):
                        shutil.copy2(f, tmp / f.name)
        self.results = results
        self.stage_seconds["collect"] = time.perf_counter() - t_collect
        run_dir.manifest["failed_cells"] = len(failures)
        # what the report's provenance shows; 'complete' only once the report is written too
        run_dir.finish(time.perf_counter() - t0, dict(self.stage_seconds), status="rendering")
        if render is not None:
            t_render = time.perf_counter()
            render(results, run_dir)
            self.stage_seconds["report"] = time.perf_counter() - t_render
        # The manifest's final wall time runs from the start of run() to the written report; the
        # process's own start-up (interpreter, imports) comes before, and the end-to-end benchmark
        # measures it.
        wall = time.perf_counter() - t0
        run_dir.finish(wall, dict(self.stage_seconds))
        self._summary(plan, sum(r.status == "ok" and r.cached for r in reports), wall, run_dir)
        if failures:
            log.error(
                "%d cells failed or were skipped (listed in the report's 'Failed cells' section): %s",
                len(failures),
                "; ".join(f"{f['cell']}: {f['error']}" for f in failures[:3]) + (" ..." if len(failures) > 3 else ""),
            )
        self.failures = failures

    def results_key(self) -> str:
        """The cache key of this run's results folder: every cell's key, the resolved suite and the code that
        assembles results (:func:`~advbench.codeversion.results_code_version`)."""
        return cache_key(
            RESULTS_KIND,
            {
                "cells": [c.key for c in self.plan.cells],
                "suite": self.suite.model_dump(mode="json"),
                "code": results_code_version(),
            },
        )

    def _reuse_results(
        self, entry: CacheEntry, run_dir: RunDir, on_report: Callable[[CellReport], None]
    ) -> list[CellReport]:
        """Copy a cached results folder into ``run_dir`` and report every cell as a cache hit."""
        run_dir.results.mkdir(parents=True, exist_ok=True)
        for f in sorted(entry.path.iterdir()):
            if f.name != "MANIFEST.json" and f.is_file():
                shutil.copyfile(f, run_dir.results / f.name)
        reports = []
        for cell in self.plan.cells:
            report = CellReport(key=cell.key, label=cell.label, kind=cell.kind, status="ok", cached=True)
            on_report(report)
            reports.append(report)
        run_dir.manifest["results_from_cache"] = entry.key
        log.info("every cell and the results were in the cache (%s); results copied", entry.key[:12])
        return reports

    def _summary(self, plan: Plan, hits: int, wall: float, run_dir: RunDir) -> None:
        rows = [
            {"stage": k, "cells": len(plan.by_kind(k)), "seconds": round(v, 1)} for k, v in self.stage_seconds.items()
        ]
        log.info("stages:\n%s", tabulate(rows, headers="keys", tablefmt="simple"))
        log.info(
            "%d cells: %d from cache, %d computed; %.1f s; results in %s",
            len(plan.cells),
            hits,
            len(plan.cells) - hits,
            wall,
            run_dir.path,
        )
        if self.ctx.cache.corrupt_found:
            log.warning(
                "recomputed %d corrupt cache entries: %s",
                len(self.ctx.cache.corrupt_found),
                self.ctx.cache.corrupt_found,
            )
