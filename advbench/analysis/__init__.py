"""Analysis: what is computed from a run's saved results, after the cells (nothing here is in a cell's key).

The tidy results (:mod:`~advbench.analysis.results`), the seed-level statistics and paired comparisons
(:mod:`~advbench.analysis.stats`, :mod:`~advbench.analysis.inference`), the pre-registered claims
(:mod:`~advbench.analysis.claims`), the worst case over attacks, the headline and the comparison of two
runs. Editing them re-renders reports and never recomputes a cell; what the cells compute (transfer
outcomes, DkNN scores, calibration, detectors) is in :mod:`advbench.evaluation`.
"""
