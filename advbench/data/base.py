"""The dataset registry, the in-memory dataset type and deterministic, hashed splits."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advbench.errors import DataError
from advbench.registry import Registry

__all__ = ["DATASETS", "RawDataset", "Split", "Splits", "load_dataset", "make_splits", "register_dataset"]


@dataclass(frozen=True)
class RawDataset:
    """A whole dataset in memory, as shipped.

    ``x_*`` are ``uint8`` arrays of shape (N, C, H, W) holding pixel values ``0..max_value``
    (255 for 8-bit images, 16 for scikit-learn's digits); ``y_*`` are ``int64`` labels. Datasets
    without an official test split leave ``x_test``/``y_test`` as ``None``; :func:`make_splits`
    then carves the test set out of the single pool.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    class_names: tuple[str, ...]
    max_value: int = 255
    origin: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class Split:
    """One split as float32 pixels in [0, 1] (N, C, H, W) and int64 labels, with a content hash."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    indices: np.ndarray  # positions in the pool it was drawn from
    sha256: str

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Splits:
    dataset: str
    train: Split
    calibration: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]

    @property
    def hashes(self) -> dict[str, str]:
        return {s.name: s.sha256 for s in (self.train, self.calibration, self.test)}


DatasetLoader = Callable[..., RawDataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset", group="advbench.datasets")
register_dataset = DATASETS.register


def load_dataset(name: str, *, data_dir: str | Path | None = None, **kwargs: Any) -> RawDataset:
    """Load the registered dataset ``name``; ``data_dir`` is passed to loaders that read files."""
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters
    if "data_dir" in params:
        kwargs["data_dir"] = data_dir
    return loader(**kwargs)


def _to_split(name: str, x: np.ndarray, y: np.ndarray, idx: np.ndarray, max_value: int) -> Split:
    xs = np.ascontiguousarray(x[idx])
    ys = np.ascontiguousarray(y[idx]).astype(np.int64)
    h = hashlib.sha256()
    h.update(f"{xs.shape}|{xs.dtype}|{max_value}|".encode())
    h.update(xs.data.cast("B"))  # the array's own buffer: no copy of the images
    h.update(ys.data.cast("B"))
    # one numpy pass from uint8 to float32 (bit-identical to torch's .float().div_(), about 4x faster)
    xt = torch.from_numpy(np.divide(xs, np.float32(max_value), dtype=np.float32))
    return Split(name, xt, torch.from_numpy(ys), idx, h.hexdigest())


def make_splits(
    raw: RawDataset,
    *,
    train: int | None = None,
    calibration: int = 750,
    test: int | None = None,
    seed: int = 0,
) -> Splits:
    """Deterministic, seeded train / calibration / test splits.

    The calibration set (for DkNN) is held out of the training pool, so it is disjoint from the
    training set; the test set comes from the official test pool when the dataset has one, else it
    is held out of the single pool too. ``None`` means "all that is left".
    """
    rng = np.random.default_rng(seed)
    for label, v in (("train", train), ("calibration", calibration), ("test", test)):
        if v is not None and v < 0:
            raise DataError(f"split size {label}={v}: expected a non-negative number of examples")
    n_pool = len(raw.y_train)
    perm = rng.permutation(n_pool)
    if raw.x_test is None or raw.y_test is None:
        n_test = test if test is not None else max(1, n_pool // 5)
        _check_sizes(raw, n_pool, calibration + n_test + (train or 0), "the dataset", train, calibration, n_test)
        test_idx, perm = perm[:n_test], perm[n_test:]
        x_test_pool, y_test_pool = raw.x_train, raw.y_train
    else:
        n_test_pool = len(raw.y_test)
        n_test = test if test is not None else n_test_pool
        if n_test > n_test_pool:
            raise DataError(
                f"{raw.name}: test={n_test} asked for, but the official test set has {n_test_pool} examples; "
                f"set dataset.splits.test to at most {n_test_pool}"
            )
        test_idx = np.sort(rng.permutation(n_test_pool)[:n_test]) if n_test < n_test_pool else np.arange(n_test_pool)
        x_test_pool, y_test_pool = raw.x_test, raw.y_test
    n_left = len(perm)
    n_train = train if train is not None else n_left - calibration
    _check_sizes(raw, n_left, calibration + n_train, "the training pool", n_train, calibration, None)
    cal_idx = np.sort(perm[:calibration])
    train_idx = np.sort(perm[calibration : calibration + n_train])
    return Splits(
        dataset=raw.name,
        train=_to_split("train", raw.x_train, raw.y_train, train_idx, raw.max_value),
        calibration=_to_split("calibration", raw.x_train, raw.y_train, cal_idx, raw.max_value),
        test=_to_split("test", x_test_pool, y_test_pool, test_idx, raw.max_value),
        num_classes=raw.num_classes,
        input_shape=raw.input_shape,
        class_names=raw.class_names,
    )


def _check_sizes(
    raw: RawDataset, available: int, needed: int, pool: str, train: int | None, cal: int, test: int | None
) -> None:
    if needed > available:
        parts = f"train={train}, calibration={cal}" + (f", test={test}" if test is not None else "")
        raise DataError(
            f"{raw.name}: the splits ({parts}) need {needed} examples but {pool} has {available}; "
            f"reduce dataset.splits in the suite"
        )
