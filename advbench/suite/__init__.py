"""Validation of a suite file, the plan of cells, the cache, the cell handlers and the executors."""

from __future__ import annotations

from advbench.suite.validate import load_suite

__all__ = ["load_suite"]
