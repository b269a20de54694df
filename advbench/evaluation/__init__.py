"""Evaluation: what the cells compute — transfer outcomes, the DkNN, calibration, detectors, gradient checks.

The analysis of saved results (statistics, claims, comparisons) is :mod:`advbench.analysis`.

There is no metric registry: the tidy results hold the metrics of :mod:`advbench.evaluation.transfer`
(``TRANSFER_METRICS``) and :mod:`advbench.evaluation.calibration`; a new metric is added there (see
the README's Development section).
"""

from __future__ import annotations
