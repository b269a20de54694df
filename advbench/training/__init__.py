"""Training with representation regularisers (the SNNL and others): the losses, the composite objective,
paired training, checkpoints.

Importing this package registers the built-in regularisers (``snnl``, ``center``, ``supcon``, ``cdd``),
so they are available without the ``advbench.regularisers`` entry points being installed.
"""

from __future__ import annotations

from advbench.training.checkpoint import library_versions, load_checkpoint, load_regulariser_state, save_checkpoint
from advbench.training.loss import CompositeLoss, LayerTemperature, LossTerms, SNNLRegulariser
from advbench.training.regularisers import (
    REGULARISERS,
    CenterLoss,
    ClassDataDescription,
    Regulariser,
    RegulariserContext,
    SupervisedContrastive,
    create_regulariser,
    list_regularisers,
    register_regulariser,
)
from advbench.training.snnl import (
    SNNL_EPS,
    SoftNearestNeighborLoss,
    entanglement,
    floor_rate,
    pairwise_distances,
    snnl,
    snnl_from_distances,
)
from advbench.training.trainer import (
    TrainResult,
    TrainStep,
    batch_order,
    build_regularisers,
    fit_normalization,
    init_model,
    layer_widths,
    make_optimizer,
    probe_entanglement,
    train_model,
    weights_hash,
)

__all__ = [
    "REGULARISERS",
    "SNNL_EPS",
    "CenterLoss",
    "ClassDataDescription",
    "CompositeLoss",
    "LayerTemperature",
    "LossTerms",
    "Regulariser",
    "RegulariserContext",
    "SNNLRegulariser",
    "SoftNearestNeighborLoss",
    "SupervisedContrastive",
    "TrainResult",
    "TrainStep",
    "batch_order",
    "build_regularisers",
    "create_regulariser",
    "entanglement",
    "fit_normalization",
    "floor_rate",
    "init_model",
    "layer_widths",
    "library_versions",
    "list_regularisers",
    "load_checkpoint",
    "load_regulariser_state",
    "make_optimizer",
    "pairwise_distances",
    "probe_entanglement",
    "register_regulariser",
    "save_checkpoint",
    "snnl",
    "snnl_from_distances",
    "train_model",
    "weights_hash",
]
