"""The torch thread policy of a run: how many threads each cell gets, decided once, recorded in the manifest.

The thread count is part of every cell's cache key (float reductions split per thread), so it must
not drift with the machine's load from run to run. The policy:

* ``--threads N``: N threads per cell, always.
* no ``--threads`` (the default): 1 thread per cell, the cells in parallel: as many worker processes as
  the CPUs this process may run on (its affinity mask, e.g. ``taskset`` or a container's cpuset), or as
  many Ray tasks as the cluster has CPUs. The same on every machine, so keys and numbers do not depend
  on the machine's size, and many 1-thread cells use the cores better than one many-thread cell.
* ``--threads auto``: the CPUs actually free when the run starts (affinity minus the rounded 1-minute
  load, at least 1), resolved once and recorded in the manifest. Fast on a shared machine, but a
  busier machine gives a different count and so different keys (the cells are recomputed, never mixed).

Oversubscription itself is made cheap by ``advbench.cli.passive_openmp``: the ``advbench`` command sets
``OMP_WAIT_POLICY=PASSIVE`` (and ``KMP_BLOCKTIME=0``) before torch loads, so an OpenMP thread waiting
at a barrier sleeps instead of spinning on a core another thread (or another job) needs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = [
    "AUTO",
    "MAX_THREADS",
    "OPENMP_VARIABLES",
    "available_cpus",
    "available_memory_mb",
    "check_local_threads",
    "free_cpus",
    "resolve_threads",
    "thread_policy",
]

log = logging.getLogger(__name__)

#: The ``--threads`` value that picks the free CPUs once at the start of the run.
AUTO = "auto"
#: The OpenMP settings the manifest records (``advbench.cli.passive_openmp`` sets them before torch loads).
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def available_memory_mb() -> float | None:
    """The memory the system can give new processes without swapping (``MemAvailable``), in MiB; None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_cpus(load: float | None = None, cpus: int | None = None) -> int:
    """The CPUs not already busy: ``cpus`` minus the rounded 1-minute ``load`` average, at least 1."""
    cpus = available_cpus() if cpus is None else cpus
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, cpus - round(load)))


#: The most torch threads a cell may ask for anywhere (OpenMP starts them all; 100,000 does not start).
MAX_THREADS = 1024
#: On this machine (the local executor), at most this many threads per CPU it may use.
LOCAL_THREADS_PER_CPU = 4


def check_local_threads(threads: int | None, cpus: int | None = None) -> None:
    """Refuse a ``--threads`` that this machine cannot run: more than :data:`LOCAL_THREADS_PER_CPU` per CPU."""
    cpus = available_cpus() if cpus is None else cpus
    if threads is not None and threads > LOCAL_THREADS_PER_CPU * cpus:
        raise ValueError(
            f"--threads {threads}: this process may use {cpus} CPU(s), so {threads} threads per cell would only "
            f"oversubscribe them; pass at most {cpus} (or use --executor ray on a larger cluster)"
        )


def resolve_threads(requested: int | str | None) -> int | None:
    """``--threads`` as a count: an int as is, ``"auto"`` as :func:`free_cpus` now, ``None`` stays ``None``.

    ``None`` means torch's own count (see the module docstring); a run resolves this once, before any
    cell is planned, so every cell of the run shares one count.
    """
    if requested is None:
        return None
    if requested == AUTO:
        n = free_cpus()
        log.info("--threads auto: %d of %d CPUs free (1-minute load %.2f)", n, available_cpus(), _load())
        return n
    if isinstance(requested, int) and 1 <= requested <= MAX_THREADS:
        return requested
    raise ValueError(
        f"threads must be a whole number from 1 to {MAX_THREADS} or {AUTO!r}, got {requested!r}; pass e.g. --threads 1"
    )


def thread_policy(requested: int | str | None, threads: int) -> dict[str, Any]:
    """What the manifest records about the thread policy.

    ``requested``: the ``--threads`` value as given; ``threads``: the count the cells run with.
    """
    cpus, load = available_cpus(), _load()
    free = free_cpus(load, cpus)
    record: dict[str, Any] = {
        "requested": requested,
        "threads": threads,
        "cpus": cpus,
        "loadavg_1m": round(load, 2),
        "free_cpus": free,
        **{k: os.environ.get(k) for k in OPENMP_VARIABLES},
    }
    return record


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
