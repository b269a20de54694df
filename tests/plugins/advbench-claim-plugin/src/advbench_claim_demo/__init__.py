"""A demonstration claim plugin: registering on import through the ``advbench.claims`` entry point."""

from __future__ import annotations

import pandas as pd

from advbench.analysis.claims import NotApplicableError, TidyResults, model_roles, register_claim


@register_claim(
    "demo-baseline-beats-chance",
    statement="The baseline's clean test accuracy is above chance (10 classes).",
    metric="clean test accuracy of the baseline − 0.1",
    direction="greater",
)
def baseline_beats_chance(results: TidyResults) -> pd.Series:
    base, _ = model_roles(results.suite)
    clean = results.clean
    if clean.empty or "test_accuracy" not in clean.columns:
        raise NotApplicableError("clean.csv has no test_accuracy")
    rows = clean[clean["model"] == base]
    return rows.set_index("seed")["test_accuracy"] - 0.1
