"""Checks that need no data: paths the suite names, memory the data would need, seeds, OOD shapes.

* paths: ``report.output`` and ``cache_dir`` must stay inside the project's report and cache
  folders (:mod:`advbench.suite.paths`); command-line paths are not the suite's and are not checked;
* memory: the images of the dataset, the OOD set and the adversarial sets a local run holds, from
  the sizes and shapes datasets declare (nothing is loaded), against :func:`max_data_bytes`;
* seeds: ``0 <= seed < 2**63`` (torch and numpy take 64-bit seeds, and advbench derives others by adding);
* the OOD set's input shape must be the dataset's.
"""

from __future__ import annotations

import math
import os

from advbench.config import Suite
from advbench.data import DATASETS, dataset_shape, dataset_sizes
from advbench.suite.paths import suite_paths_problems
from advbench.suite.validate.messages import Problems

__all__ = ["BYTES_PER_VALUE", "MAX_SEED", "max_data_bytes", "resource_problems"]

#: Seeds must be below this (they are passed to torch and numpy as signed 64-bit integers).
MAX_SEED = 2**63
#: Bytes per pixel value while a dataset is loaded and converted (a float64 copy plus the float32 tensors).
BYTES_PER_VALUE = 12
#: Default limit on the estimated data memory; ``$ADVBENCH_MAX_DATA_GB`` changes it.
DEFAULT_MAX_DATA_GB = 32.0


def max_data_bytes() -> float:
    """The largest estimated data memory ``validate`` accepts: ``$ADVBENCH_MAX_DATA_GB`` GiB, default 32 GiB."""
    text = os.environ.get("ADVBENCH_MAX_DATA_GB")
    try:
        gb = float(text) if text else DEFAULT_MAX_DATA_GB
    except ValueError:
        gb = DEFAULT_MAX_DATA_GB
    return gb * 2**30


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def resource_problems(suite: Suite, report: Problems) -> None:
    """Add every path, memory, seed and OOD-shape problem of ``suite`` to ``report``."""
    for loc, msg in suite_paths_problems(suite):
        report.add(loc, msg)
    for i, s in enumerate(suite.seeds):
        if s >= MAX_SEED:
            report.add(("seeds", i), f"given {s}; expected a seed in [0, 2**63 - 1]; pick a smaller seed")
    if suite.dataset.seed >= MAX_SEED:
        report.add(("dataset", "seed"), f"given {suite.dataset.seed}; expected a seed in [0, 2**63 - 1]")
    ds = suite.dataset
    shape = dataset_shape(ds.name, ds.params) if ds.name in DATASETS else None
    sizes = dataset_sizes(ds.name, ds.params) if ds.name in DATASETS else None
    parts: list[tuple[str, float]] = []
    if shape is not None and sizes is not None:
        per = math.prod(shape)
        n = sizes[0] + (sizes[1] or 0)
        parts.append((f"dataset {ds.name!r}: {n:,} images of shape {shape}", float(n) * per * BYTES_PER_VALUE))
        n_test = ds.splits.test or (sizes[1] if sizes[1] is not None else max(1, sizes[0] // 5))
        n_adv = min(suite.evaluations.transfer.n_examples or n_test, n_test)
        sets = len(suite.seeds) * len(suite.models) * sum(len(a.eps) for a in suite.attacks)
        if sets:
            parts.append((f"{sets} adversarial sets of {n_adv:,} images", float(sets) * n_adv * per * 4))
    ood = suite.evaluations.ood
    if ood is not None and ood.dataset is not None and ood.dataset in DATASETS:
        oshape = dataset_shape(ood.dataset, ood.params)
        osizes = dataset_sizes(ood.dataset, ood.params)
        if oshape is not None and shape is not None and oshape != shape:
            report.add(
                ("evaluations", "ood", "dataset"),
                f"given {ood.dataset!r} with inputs of shape {oshape}; expected the dataset's shape {shape} "
                f"(the models take {shape}); pick a dataset of that shape or pass params that resize it "
                f"(e.g. digits: size: {shape[-1]})",
            )
        if oshape is not None and osizes is not None:
            n = osizes[0] + (osizes[1] or 0)
            parts.append((f"OOD set {ood.dataset!r}: {n:,} images", float(n) * math.prod(oshape) * BYTES_PER_VALUE))
    total = sum(b for _, b in parts)
    limit = max_data_bytes()
    if total > limit:
        detail = "; ".join(f"{what}: {_gib(b)}" for what, b in parts)
        report.add(
            ("dataset", "params") if ds.params else ("dataset",),
            f"the data would need about {_gib(total)} of memory ({detail}); expected at most {_gib(limit)} "
            f"(set $ADVBENCH_MAX_DATA_GB to raise the limit); use smaller images or fewer examples",
        )
