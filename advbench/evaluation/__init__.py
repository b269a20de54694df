"""Evaluation: transfer matrices, statistics, evaluation-quality flags, DkNN and calibration."""

from __future__ import annotations

from advbench.registry import Registry

__all__ = ["METRICS", "register_metric"]

#: name -> metric function
METRICS: Registry = Registry("metric", group="advbench.metrics")
register_metric = METRICS.register
