"""Training with the Soft Nearest Neighbor Loss: the loss, the composite objective, paired training, checkpoints."""

from __future__ import annotations

from advbench.training.checkpoint import library_versions, load_checkpoint, save_checkpoint
from advbench.training.loss import CompositeLoss, LayerTemperature, LossTerms
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
    fit_normalization,
    init_model,
    make_optimizer,
    probe_entanglement,
    train_model,
    weights_hash,
)

__all__ = [
    "SNNL_EPS",
    "CompositeLoss",
    "LayerTemperature",
    "LossTerms",
    "SoftNearestNeighborLoss",
    "TrainResult",
    "TrainStep",
    "batch_order",
    "entanglement",
    "fit_normalization",
    "floor_rate",
    "init_model",
    "library_versions",
    "load_checkpoint",
    "make_optimizer",
    "pairwise_distances",
    "probe_entanglement",
    "save_checkpoint",
    "snnl",
    "snnl_from_distances",
    "train_model",
    "weights_hash",
]
