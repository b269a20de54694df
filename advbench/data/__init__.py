"""Datasets: a registry of loaders, IDX readers with verified downloads, and seeded splits."""

from __future__ import annotations

from advbench.data.base import (
    DATASETS,
    RawDataset,
    Split,
    Splits,
    check_raw_dataset,
    dataset_shape,
    dataset_sizes,
    load_dataset,
    make_splits,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "RawDataset",
    "Split",
    "Splits",
    "check_raw_dataset",
    "dataset_shape",
    "dataset_sizes",
    "load_dataset",
    "make_splits",
    "register_dataset",
]
