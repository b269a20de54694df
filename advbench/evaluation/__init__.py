"""Evaluation: transfer matrices, statistics, evaluation-quality flags, DkNN and calibration.

There is no metric registry: the tidy results hold the metrics of :mod:`advbench.evaluation.transfer`
(``TRANSFER_METRICS``) and :mod:`advbench.evaluation.calibration`; a new metric is added there (see
the README's Development section).
"""

from __future__ import annotations
