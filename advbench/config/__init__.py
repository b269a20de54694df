"""The suite configuration: pydantic models of the suite file (the layer every other package reads).

It sits just above ``errors`` / ``hashing`` / ``io`` / ``registry`` and imports nothing else from
advbench, so training, attacks and evaluation can take their settings from it without reaching up
into :mod:`advbench.suite`.
"""

from __future__ import annotations

from advbench.config.suite import (
    AttackConfig,
    ConvergenceConfig,
    DatasetConfig,
    DknnConfig,
    Eps,
    EvaluationsConfig,
    ModelConfig,
    OODConfig,
    RecipeConfig,
    RegulariserConfig,
    ReportConfig,
    SNNLConfig,
    SplitSizes,
    Suite,
    TransferConfig,
    WeightsConfig,
    parse_eps,
)

__all__ = [
    "AttackConfig",
    "ConvergenceConfig",
    "DatasetConfig",
    "DknnConfig",
    "Eps",
    "EvaluationsConfig",
    "ModelConfig",
    "OODConfig",
    "RecipeConfig",
    "RegulariserConfig",
    "ReportConfig",
    "SNNLConfig",
    "SplitSizes",
    "Suite",
    "TransferConfig",
    "WeightsConfig",
    "parse_eps",
]
