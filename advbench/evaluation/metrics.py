"""advbench's built-in metrics, loaded through the ``advbench.metrics`` entry-point group."""

from __future__ import annotations

# -- calibration metrics (issue 6): registered by @register_metric in advbench.evaluation.calibration
import advbench.evaluation.calibration  # noqa: F401

# -- transfer metrics (issue 5): per-cell rates over the outcomes table -------------------------------
from advbench.evaluation import register_metric
from advbench.evaluation.transfer import (
    ADV_ACCURACY,
    TRANSFER_RATE,
    TRANSFER_RATE_GIVEN_SOURCE_SUCCESS,
)

for _m in (ADV_ACCURACY, TRANSFER_RATE, TRANSFER_RATE_GIVEN_SOURCE_SUCCESS):
    register_metric(_m.name, kind="transfer", denominator=_m.denominator_desc)(_m)
del _m
