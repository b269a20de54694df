"""The ``advbench`` command line: one thin module per subcommand.

Importing this package sets the OpenMP wait policy (:func:`passive_openmp`) before any subcommand
module imports torch, so it applies to every ``advbench`` command.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: What :func:`passive_openmp` sets where the user has not: idle OpenMP threads sleep instead of spinning.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def passive_openmp(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`OPENMP_DEFAULTS` in ``environ`` (default ``os.environ``) where unset; returns what it set.

    Only effective before the OpenMP runtime loads (before ``import torch``). With the default active
    waiting, a thread that finishes its share of a parallel region spins on its core; beside another
    busy process that spinning takes the core the late thread needs, and a 2-thread training loop
    ran 5x slower than with passive waiting (``benchmarks/test_bench_threads.py``). A value the user
    set (even ``ACTIVE``) is kept.
    """
    env = os.environ if environ is None else environ
    set_now = {k: v for k, v in OPENMP_DEFAULTS.items() if k not in env}
    env.update(set_now)
    return set_now


passive_openmp()
