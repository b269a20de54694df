"""The Ray executor: the plan's missing cells as Ray tasks, across the cores or machines of a cluster.

Each missing cell becomes one task with its declared resources (``--threads`` CPUs, and a GPU when
the suite runs on CUDA and the cluster has one), submitted with the object references of the tasks
it depends on, so Ray starts it only once its inputs exist. A task reads its inputs from, and writes
its output to, the same content-addressed cache as the local executor (a folder every node can
reach: a shared filesystem on a multi-node cluster), with the same atomic writes. A task whose
worker process dies is retried by Ray (``max_retries``). The driver then assembles the results
exactly as a local run does, reading every cell back from the cache, so the tables are the same.

Ray is an optional dependency (``pip install 'advbench[ray]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from advbench.errors import AdvbenchError

if TYPE_CHECKING:
    from advbench.suite.rundir import RunDir
    from advbench.suite.runner import Runner

__all__ = ["compute_on_ray", "require_ray"]

log = logging.getLogger(__name__)

#: How often Ray re-runs a task whose worker process died (a crash, an OOM kill, a lost node).
MAX_RETRIES = 3

#: One runner per worker process, reused by every task of the same run (data and plan load once).
_WORKER: dict[str, Any] = {}


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


def _payload(runner: Runner, want_gpu: bool, attempts_log: Path) -> dict[str, Any]:
    opts = asdict(runner.opt)
    opts.update(
        executor="local",
        address=None,
        progress=False,
        resume=False,
        threads=runner.opt.threads or 1,
        cache_dir=str(runner.cache.root.resolve()),
        data_dir=str(Path(runner.opt.data_dir).resolve()) if runner.opt.data_dir else None,
        device="cuda" if want_gpu else "cpu",
    )
    body = {"suite": runner.suite.model_dump(mode="json"), "source": runner.source, "options": opts}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return body | {"digest": digest, "cwd": os.getcwd(), "attempts_log": str(attempts_log)}


def _worker_runner(payload: dict[str, Any]) -> Any:
    from advbench.config import Suite
    from advbench.suite.runner import Runner, RunOptions

    runner = _WORKER.get(payload["digest"])
    if runner is None:
        with contextlib.suppress(OSError):
            os.chdir(payload["cwd"])  # relative paths in the suite mean what they meant to the driver
        suite = Suite.model_validate(payload["suite"])
        runner = Runner(suite, source=payload["source"], options=RunOptions(**payload["options"]))
        runner.plan()
        _WORKER.clear()
        _WORKER[payload["digest"]] = runner
    torch.set_num_threads(int(runner.opt.threads or 1))
    return runner


def _node() -> str:
    import ray

    ctx = ray.get_runtime_context()
    return f"{platform.node()}/{ctx.get_node_id()[:12]}"


def _run_cell(payload: dict[str, Any], key: str, *deps: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: compute one cell into the cache. Failures come back as a status, not an exception."""
    from advbench.suite.execute import execute_cell, failure_message, is_fatal, without_failed
    from advbench.suite.runner import _State

    node = _node()
    with open(payload["attempts_log"], "a") as fh:  # one short line per attempt: retries are visible
        fh.write(json.dumps({"key": key, "pid": os.getpid(), "node": node, "time": time.time()}) + "\n")
    runner = _worker_runner(payload)
    by_key = {c.key: c for c in runner.plan().cells}
    if key not in by_key:
        raise AdvbenchError(
            f"worker {node} plans different cells than the driver (no cell with key {key[:12]}); its advbench, "
            f"torch or data differ from the driver's. Install the same versions on every node"
        )
    planned = by_key[key]
    failed = {d["key"]: d["error"] for d in deps if d["status"] != "ok"}
    labels = {d["key"]: d["label"] for d in deps}
    info = {"key": key, "label": planned.label, "node": node, "pid": os.getpid()}
    cell, reason = without_failed(planned, failed, labels)
    if cell is None:
        return info | {"status": "skipped", "error": reason}
    # Each task starts from the models this worker already loaded, and nothing else.
    state = _State(models=runner.worker_models)
    t0 = time.perf_counter()
    try:
        cached = execute_cell(runner, cell, state)
    except Exception as exc:
        if runner.opt.fail_fast or is_fatal(exc):
            raise
        return info | {"status": "failed", "error": failure_message(exc)}
    return info | {"status": "ok", "cached": cached, "seconds": time.perf_counter() - t0}


def compute_on_ray(runner: Runner, run_dir: RunDir) -> dict[str, dict[str, Any]]:
    """Compute every cell missing from the cache on Ray; per planned cell key, what its task reported."""
    ray = require_ray()
    plan = runner.plan()
    todo = [c for c in plan.cells if not runner.cache.exists(c.kind, c.key)]
    if not todo:
        log.info("ray: every cell is cached; nothing to submit")
        return {}
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=runner.opt.address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        device = runner.opt.device or runner.suite.device
        want_gpu = device == "cuda" or (device == "auto" and resources.get("GPU", 0) > 0)
        if want_gpu and resources.get("GPU", 0) == 0:
            raise AdvbenchError("device: cuda was asked for, but the Ray cluster has no GPU; set device: cpu or auto")
        threads = runner.opt.threads or 1
        if resources.get("CPU", 0) < threads:
            raise AdvbenchError(
                f"--threads {threads} asks for {threads} CPUs per cell, but the Ray cluster has "
                f"{resources.get('CPU', 0):g}; pass a smaller --threads"
            )
        attempts_log = run_dir.path / "ray-attempts.jsonl"
        payload = ray.put(_payload(runner, want_gpu, attempts_log))
        task = ray.remote(_run_cell).options(
            num_cpus=threads, num_gpus=1 if want_gpu else 0, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        run_dir.manifest["ray"] = {
            "address": runner.opt.address or "local",
            "nodes": [
                {"node": n["NodeManagerAddress"], "id": n["NodeID"][:12], "resources": n["Resources"]} for n in nodes
            ],
            "cells_submitted": len(todo),
            "cpus_per_cell": threads,
            "gpus_per_cell": 1 if want_gpu else 0,
        }
        run_dir.save()
        log.info(
            "ray: %d cells to compute on %d nodes (%g CPUs%s)",
            len(todo),
            len(nodes),
            resources.get("CPU", 0),
            f", {resources['GPU']:g} GPUs" if want_gpu else "",
        )
        refs: dict[str, Any] = {}
        for cell in todo:
            deps = [refs[d] for d in cell.deps if d in refs]
            refs[cell.key] = task.remote(payload, cell.key, *deps)
        return _gather(ray, refs, {c.key: c.label for c in todo}, attempts_log, runner.opt.progress)
    finally:
        if started_here:
            ray.shutdown()


def _gather(
    ray: Any, refs: dict[str, Any], labels: dict[str, str], attempts_log: Path, progress: bool
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    by_ref = {ref: key for key, ref in refs.items()}
    pending = list(refs.values())
    with tqdm(total=len(pending), desc="ray cells", unit="cell", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            key = by_ref[done[0]]
            try:
                out[key] = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # --fail-fast or a fatal error: stop everything
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise exc.as_instanceof_cause() from None
            except ray.exceptions.RayError as exc:  # the worker died more than MAX_RETRIES times
                out[key] = {
                    "key": key,
                    "label": labels[key],
                    "status": "failed",
                    "error": f"{type(exc).__name__}: its Ray worker died {MAX_RETRIES + 1} times",
                }
            bar.update(1)
    attempts: dict[str, int] = {}
    if attempts_log.is_file():
        for line in attempts_log.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                k = json.loads(line)["key"]
                attempts[k] = attempts.get(k, 0) + 1
    for key, info in out.items():
        info["attempts"] = attempts.get(key, 1)
        if info["attempts"] > 1:
            log.warning("ray: %s took %d attempts (a worker died)", labels[key], info["attempts"])
    return out
