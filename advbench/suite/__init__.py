"""The suite format (schema), its validation, the plan of cells and the runner."""

from __future__ import annotations

from advbench.suite.schema import Suite
from advbench.suite.validate import load_suite

__all__ = ["Suite", "load_suite"]
