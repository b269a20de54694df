"""advbench: a benchmark of adversarial transfer and DkNN calibration under the Soft Nearest Neighbor Loss.

From Python (:mod:`advbench.api`)::

    import advbench

    run = advbench.run("suites/quick.yaml")        # train, attack, evaluate, report; cached and resumable
    advbench.load("reports/transfer/run").claims   # a finished run's tables as pandas DataFrames

``import advbench`` stays light: the API (and torch) load on first use of these names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["Run", "__version__", "load", "plan", "render_report", "run", "schema"]

if TYPE_CHECKING:
    from advbench.api import Run, load, plan, render_report, run
    from advbench.config.schema import suite_schema as schema

_API = {"Run", "load", "plan", "render_report", "run"}


def __getattr__(name: str) -> Any:
    # imported by name, not by an import statement: the modules that read ``__version__`` import this
    # package, and neither the import-layer contract nor a cell's code identity may see the API behind them
    if name in _API:
        return getattr(importlib.import_module("advbench.api"), name)
    if name == "schema":
        return importlib.import_module("advbench.config.schema").suite_schema
    raise AttributeError(f"module 'advbench' has no attribute {name!r}")
