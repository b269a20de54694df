"""Run a suite: validate, plan, execute cells through the cache, save tidy results, render the report.

Every cell's output goes through :class:`~advbench.suite.cache.Cache` (atomic, checksummed), so a
run killed at any moment resumes with the same command and recomputes only unfinished cells.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from advbench.config import Suite
from advbench.data import Splits, load_dataset, make_splits
from advbench.errors import AdvbenchError, ConfigError
from advbench.models import Classifier
from advbench.suite.cache import Cache, default_cache_dir
from advbench.suite.plan import Cell, Plan, build_plan, describe_plan, library_versions
from advbench.suite.rundir import RunDir
from advbench.suite.validate import load_suite

if TYPE_CHECKING:
    from advbench.evaluation.results import Results

__all__ = ["RunOptions", "Runner", "report_from_cli", "run_from_cli"]

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    runs_dir: str = "runs"
    cache_dir: str | None = None
    data_dir: str | None = None
    device: str | None = None
    report: str | None = None
    resume: bool = False
    progress: bool = True
    executor: str = "local"  # "local" (in this process) or "ray"
    address: str | None = None  # Ray cluster address; None starts a local Ray instance
    fail_fast: bool = False  # stop at the first failed cell instead of recording it and going on
    time_limit: float | None = None  # seconds per attack cell (plugins can hang); None: no limit
    threads: int | None = None  # torch threads per cell; None: torch's default locally, 1 on Ray


@dataclass
class _State:
    models: dict[tuple[str, int], Classifier] = field(default_factory=dict)
    adv: dict[tuple[int, str, str, float], dict[str, torch.Tensor]] = field(default_factory=dict)
    outcomes: list[pd.DataFrame] = field(default_factory=list)
    histories: list[pd.DataFrame] = field(default_factory=list)
    clean: list[dict[str, Any]] = field(default_factory=list)
    dknn: list[pd.DataFrame] = field(default_factory=list)
    dknn_examples: list[pd.DataFrame] = field(default_factory=list)
    flags: list[pd.DataFrame] = field(default_factory=list)
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)


class Runner:
    """Executes a validated suite."""

    def __init__(self, suite: Suite, *, source: str = "<suite>", options: RunOptions | None = None) -> None:
        self.suite = suite
        self.source = source
        self.opt = options or RunOptions()
        self.cache = Cache(self.opt.cache_dir or suite.cache_dir or default_cache_dir())
        self.device = _device(self.opt.device or suite.device)
        self.stage_seconds: dict[str, float] = defaultdict(float)
        self._splits: Splits | None = None
        self._plan: Plan | None = None
        self._cells: dict[tuple[str, tuple[tuple[str, Any], ...]], Cell] = {}
        self.failures: list[dict[str, Any]] = []
        self.worker_models: dict[tuple[str, int], Classifier] = {}  # on a Ray worker: models loaded so far

    # -- data ---------------------------------------------------------------------------------
    def splits(self) -> Splits:
        if self._splits is None:
            d = self.suite.dataset
            raw = load_dataset(d.name, data_dir=self.opt.data_dir or d.data_dir, **d.params)
            self._splits = make_splits(
                raw, train=d.splits.train, calibration=self.suite.calibration_size, test=d.splits.test, seed=d.seed
            )
        return self._splits

    def transfer_indices(self) -> np.ndarray:
        """The fixed test subset every attack and evaluation uses (the same for every seed)."""
        n_test = len(self.splits().test)
        n = min(self.suite.evaluations.transfer.n_examples or n_test, n_test)
        rng = np.random.default_rng(self.suite.dataset.seed + 1)
        return np.sort(rng.permutation(n_test)[:n]) if n < n_test else np.arange(n_test)

    def n_dknn(self) -> int:
        dk = self.suite.evaluations.dknn
        n = len(self.transfer_indices())
        return min(dk.n_examples or n, n) if dk is not None else 0

    def plan(self) -> Plan:
        if self._plan is None:
            ood = self.suite.evaluations.ood
            self._plan = build_plan(
                self.suite,
                self.splits(),
                n_transfer=len(self.transfer_indices()),
                n_dknn=self.n_dknn(),
                n_ood=ood.n_examples if ood else 0,
            )
            self._cells = {(c.kind, tuple(sorted(c.params.items()))): c for c in self._plan.cells}
        return self._plan

    def cell(self, kind: str, **params: Any) -> Cell:
        """The plan's cell of ``kind`` with exactly these ``params`` (e.g. ``cell("train", model=..., seed=0)``)."""
        self.plan()
        try:
            return self._cells[(kind, tuple(sorted(params.items())))]
        except KeyError:
            raise KeyError(f"the plan of suite {self.suite.name!r} has no {kind} cell with {params}") from None

    def cells_of(self, kind: str) -> list[Cell]:
        return self.plan().by_kind(kind)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> RunDir:
        t0 = time.perf_counter()
        from advbench.attacks import ATTACKS

        if self.opt.threads:
            torch.set_num_threads(self.opt.threads)
        run_dir = RunDir.create(self.opt.runs_dir, self.suite, resume=self.opt.resume)
        run_dir.write_config(self.suite, self.source)
        splits = self.splits()
        plan = self.plan()
        run_dir.start(
            self.suite,
            source=self.source,
            versions=library_versions(),
            cache_dir=str(self.cache.root),
            data={
                "dataset": splits.dataset,
                "hashes": splits.hashes,
                "sizes": {"train": len(splits.train), "calibration": len(splits.calibration), "test": len(splits.test)},
                "transfer_examples": len(self.transfer_indices()),
            },
            plugins={e.name: e.source for e in ATTACKS.entries() if e.source not in ("advbench", "user")}
            | {"failed": ATTACKS.failed_plugins},
        )
        run_dir.manifest["executor"] = self.opt.executor
        log.info("run folder %s; %d cells; cache %s", run_dir.path, len(plan.cells), self.cache.root)
        self.cache.sweep_tmp()
        remote: dict[str, dict[str, Any]] = {}
        if self.opt.executor == "ray":
            from advbench.suite.ray_executor import compute_on_ray

            # Workers compute every missing cell into the shared cache; the loop below then reads
            # them all back here (cache hits), so both executors assemble results the same way.
            remote = compute_on_ray(self, run_dir)
        failures = self._run_cells(plan, run_dir, remote)
        t_collect = time.perf_counter()
        results = self._collect(self._state, failures)
        results.save(run_dir.results)
        self.stage_seconds["collect"] = time.perf_counter() - t_collect
        run_dir.manifest["failed_cells"] = len(failures)
        run_dir.finish(time.perf_counter() - t0, dict(self.stage_seconds))  # what the report's provenance shows
        t_render = time.perf_counter()
        self._render(results, run_dir)
        self.stage_seconds["report"] = time.perf_counter() - t_render
        # The manifest's final wall time runs from the start of run() to the written report; the
        # process's own start-up (interpreter, imports) comes before, and the end-to-end benchmark
        # measures it.
        wall = time.perf_counter() - t0
        run_dir.finish(wall, dict(self.stage_seconds))
        self._summary(plan, self._hits, wall, run_dir)
        if failures:
            log.error(
                "%d cells failed or were skipped (listed in the report's 'Failed cells' section): %s",
                len(failures),
                "; ".join(f"{f['cell']}: {f['error']}" for f in failures[:3]) + (" ..." if len(failures) > 3 else ""),
            )
        self.failures = failures
        return run_dir

    def _run_cells(self, plan: Plan, run_dir: RunDir, remote: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Every cell in plan order (each reads its inputs from the cells before it); the failures."""
        from advbench.suite.execute import execute_cell, failure_message, is_fatal, without_failed

        self._state = state = _State()
        self._hits = 0
        failed: dict[str, str] = {}
        labels = {c.key: c.label for c in plan.cells}
        failures: list[dict[str, Any]] = []

        def fail(key: str, cell: Cell, status: str, message: str) -> None:
            failed[key] = message
            failures.append({"cell": cell.label, "kind": cell.kind, "status": status, "error": message})
            run_dir.record_failure(cell.label, cell.kind, cell.key, status=status, error=message)

        bar = tqdm(plan.cells, desc=f"suite {self.suite.name}", unit="cell", disable=not self.opt.progress)
        for planned in bar:
            bar.set_postfix_str(planned.label[:60])
            cell, reason = without_failed(planned, failed, labels)
            info = remote.get(planned.key)
            status = "skipped"
            if cell is not None and info is not None and info["status"] == "failed":
                cell, reason, status = None, info["error"], "failed"
            if cell is None:
                fail(planned.key, planned, status, reason)
                log.warning("%s %s: %s", status, planned.label, reason)
                continue
            start = time.perf_counter()
            try:
                cached = execute_cell(self, cell, state)
            except Exception as exc:
                if self.opt.fail_fast or is_fatal(exc):
                    raise
                message = failure_message(exc)
                fail(planned.key, cell, "failed", message)
                log.error("cell %s failed: %s (the run goes on; --fail-fast stops it)", cell.label, message)
                continue
            seconds = time.perf_counter() - start
            if info is not None and info["status"] == "ok" and not info["cached"]:
                # computed on a Ray worker: record its compute time and node, not the read-back here
                self.stage_seconds[cell.kind] += info["seconds"]
                run_dir.record_cell(
                    cell.label,
                    cell.kind,
                    cell.key,
                    cached=False,
                    seconds=info["seconds"],
                    node=info["node"],
                    attempts=info["attempts"],
                )
                continue
            self._hits += cached
            self.stage_seconds[cell.kind] += seconds
            run_dir.record_cell(cell.label, cell.kind, cell.key, cached=cached, seconds=seconds)
        bar.close()
        return failures

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
        if self.cache.corrupt_found:
            log.warning(
                "recomputed %d corrupt cache entries: %s", len(self.cache.corrupt_found), self.cache.corrupt_found
            )

    def _collect(self, state: _State, failures: list[dict[str, Any]]) -> Results:
        from advbench.evaluation.results import Results

        return Results.from_parts(
            suite=self.suite.model_dump(mode="json"),
            outcomes=pd.concat(state.outcomes, ignore_index=True) if state.outcomes else pd.DataFrame(),
            training=pd.concat(state.histories, ignore_index=True) if state.histories else pd.DataFrame(),
            clean=pd.DataFrame(state.clean),
            dknn=pd.concat(state.dknn, ignore_index=True) if state.dknn else pd.DataFrame(),
            dknn_examples=pd.concat(state.dknn_examples, ignore_index=True) if state.dknn_examples else pd.DataFrame(),
            gradient_flags=pd.concat(state.flags, ignore_index=True) if state.flags else pd.DataFrame(),
            failures=pd.DataFrame(failures, columns=["cell", "kind", "status", "error"]),
        )

    def _render(self, results: Results, run_dir: RunDir) -> None:
        from advbench.reports.markdown import write_report

        out = Path(self.opt.report or self.suite.report.output.format(name=self.suite.name))
        stamp = out.with_suffix("") / "results.sha256"
        digest = _results_digest(run_dir.results)
        if out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
            # The report is a pure function of the results: identical results, nothing to re-render.
            log.info("report %s is up to date (results unchanged, sha256 %s)", out, digest[:12])
            return
        manifest = dict(run_dir.manifest)
        manifest["run_dir"] = str(run_dir.path)
        write_report(results, out, manifest=manifest, plots=self.suite.report.plots)
        stamp.write_text(digest + "\n")
        log.info("report written to %s", out)


def _results_digest(folder: Path) -> str:
    """SHA-256 over a results folder's files (names and bytes), to tell whether a report is stale."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            data = f.read_bytes()
            h.update(gzip.decompress(data) if f.suffix == ".gz" else data)  # gzip headers carry a timestamp
    return h.hexdigest()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AdvbenchError("device: cuda was asked for but torch sees no GPU; set device: cpu or auto")
    return torch.device(name)


# -- CLI glue ----------------------------------------------------------------------------------


def run_from_cli(args: argparse.Namespace) -> int:
    suite = load_suite(args.file)
    if args.address and args.executor != "ray":
        raise ConfigError(args.file, [f"--address {args.address} is for the Ray executor; add --executor ray"])
    if args.executor == "ray":
        from advbench.suite.ray_executor import require_ray

        require_ray()
    opts = RunOptions(
        runs_dir=args.runs_dir,
        cache_dir=args.cache_dir,
        data_dir=args.data_dir,
        device=args.device,
        report=args.report,
        resume=args.resume,
        progress=not getattr(args, "quiet", False) and sys.stderr.isatty(),
        executor=args.executor,
        address=args.address,
        fail_fast=args.fail_fast,
        time_limit=args.time_limit,
        threads=args.threads,
    )
    runner = Runner(suite, source=args.file, options=opts)
    if args.plan:
        plan = runner.plan()
        rows = describe_plan(plan, runner.cache)
        todo = [r for r in rows if not r["cached"]]
        sys.stdout.write(tabulate(rows, headers="keys", tablefmt="github") + "\n\n")
        sys.stdout.write(
            f"{len(rows)} cells, {len(rows) - len(todo)} cached, {len(todo)} to compute; "
            f"estimated {sum(r['estimate_s'] for r in todo) / 60:.1f} min of work on a 2-core CPU "
            f"(cache: {runner.cache.root})\n"
        )
        return 0
    runner.run()
    # 1 when cells failed: the results are partial (the report lists what is missing).
    return 1 if runner.failures else 0


def report_from_cli(args: argparse.Namespace) -> int:
    from advbench.evaluation.results import Results
    from advbench.reports.markdown import write_report

    run_dir = Path(args.run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise AdvbenchError(f"{run_dir}: no manifest.json; expected a folder written by `advbench run`")
    manifest = json.loads(manifest_path.read_text())
    results = Results.load(run_dir / "results")
    out = Path(args.output or results.suite["report"]["output"].format(name=results.suite["name"]))
    manifest["run_dir"] = str(run_dir)
    write_report(results, out, manifest=manifest, plots=results.suite["report"].get("plots", True))
    sys.stdout.write(f"report written to {out}\n")
    return 0
