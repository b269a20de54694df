"""advbench's built-in regularisers, loaded through the ``advbench.regularisers`` entry-point group.

Importing this module registers ``snnl`` (:mod:`advbench.training.loss`), ``center``, ``supcon`` and
``cdd`` (:mod:`advbench.training.regularisers`). :mod:`advbench.training` imports both, so the
built-ins are there even where the entry points are not installed.
"""

from __future__ import annotations

from advbench.training.loss import SNNLRegulariser
from advbench.training.regularisers import CenterLoss, ClassDataDescription, SupervisedContrastive

__all__ = ["CenterLoss", "ClassDataDescription", "SNNLRegulariser", "SupervisedContrastive"]
