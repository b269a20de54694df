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

__all__ = [
    "DATASETS",
    "RawDataset",
    "Split",
    "Splits",
    "check_raw_dataset",
    "dataset_sizes",
    "load_dataset",
    "make_splits",
    "register_dataset",
]


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
    #: held out of the training pool for model selection (hyper-parameters, the entanglement probe);
    #: ``None`` when no validation split was asked for
    validation: Split | None = None

    @property
    def hashes(self) -> dict[str, str]:
        parts = (self.train, self.calibration, self.test, *((self.validation,) if self.validation is not None else ()))
        return {s.name: s.sha256 for s in parts}


DatasetLoader = Callable[..., RawDataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset", group="advbench.datasets")
register_dataset = DATASETS.register


def dataset_sizes(name: str, params: dict[str, Any] | None = None) -> tuple[int, int | None] | None:
    """``(training pool, official test set or None)`` of a registered dataset, known without loading it.

    A loader declares its size with the registry's ``sizes`` metadata, either a tuple or a function
    of the loader's parameters (``@register_dataset("x", sizes=(60000, 10000))``). ``None`` when the
    dataset does not declare one (its size is then checked by :func:`make_splits` once loaded).
    """
    try:
        sizes = DATASETS.entry(name).meta.get("sizes")
    except KeyError:  # UnknownNameError: validation reports the name itself
        return None
    try:
        if callable(sizes):
            sizes = sizes(dict(params or {}))
        if sizes is None:
            return None
        pool, test = sizes
        return int(pool), None if test is None else int(test)
    except Exception:  # bad params are reported by the parameter checks, not here
        return None


def dataset_shape(name: str, params: dict[str, Any] | None = None) -> tuple[int, ...] | None:
    """The shape of one input ``(C, H, W)`` of a registered dataset, known without loading it.

    A loader declares it with the registry's ``shape`` metadata (a tuple or a function of the
    loader's parameters); ``None`` when it does not, or its parameters are invalid.
    """
    try:
        shape = DATASETS.entry(name).meta.get("shape")
    except KeyError:
        return None
    try:
        if callable(shape):
            shape = shape(dict(params or {}))
        if shape is None:
            return None
        out = tuple(int(s) for s in shape)
        return out if all(s >= 1 for s in out) and all(isinstance(s, int) for s in shape) else None
    except Exception:  # bad params are reported by the parameter checks
        return None


def load_dataset(name: str, *, data_dir: str | Path | None = None, download: bool = True, **kwargs: Any) -> RawDataset:
    """Load the registered dataset ``name``; ``data_dir`` and ``download`` (``dataset.download``: fetch files
    not found locally) are passed to loaders that take them.

    The result is checked with :func:`check_raw_dataset`, so a plugin returning NaN pixels or labels
    out of range fails here with a :class:`DataError`, before anything is trained on it.
    """
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters
    if "data_dir" in params:
        kwargs["data_dir"] = data_dir
    if "download" in params:
        kwargs["download"] = download
    raw = loader(**kwargs)
    if not isinstance(raw, RawDataset):
        raise DataError(
            f"dataset {name!r}: the loader returned a {type(raw).__name__}; expected an "
            f"advbench.data.RawDataset; fix the loader registered as {name!r}"
        )
    check_raw_dataset(raw)
    return raw


def check_raw_dataset(raw: RawDataset) -> None:
    """Raise :class:`DataError` naming the dataset, the array and the fix if ``raw`` is malformed.

    Checks the shapes ((N, C, H, W) images, (N,) labels of the same N), that images are finite and
    within ``0..max_value``, and that labels are whole numbers in ``0..num_classes-1``. The checks
    are cheap for the usual ``uint8`` images (no pass over the pixels is needed for finiteness).
    """
    fix = f"fix the loader of {raw.name!r} (see advbench.data.RawDataset for the expected format)"
    if not isinstance(raw.num_classes, (int, np.integer)) or isinstance(raw.num_classes, bool) or raw.num_classes < 2:
        raise DataError(f"{raw.name}: num_classes={raw.num_classes!r}; expected an integer >= 2; {fix}")
    if not isinstance(raw.max_value, (int, float, np.number)) or not 0 < float(raw.max_value) < float("inf"):
        raise DataError(f"{raw.name}: max_value={raw.max_value!r}; expected a positive finite number; {fix}")
    pairs: list[tuple[str, Any, Any]] = [("train", raw.x_train, raw.y_train)]
    if raw.x_test is not None or raw.y_test is not None:
        pairs.append(("test", raw.x_test, raw.y_test))
    shape = None
    for split, x, y in pairs:
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise DataError(
                f"{raw.name}: x_{split} is a {type(x).__name__} and y_{split} a {type(y).__name__}; "
                f"expected two numpy arrays; {fix}"
            )
        if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{raw.name}: x_{split} has shape {x.shape} and y_{split} {y.shape}; expected (N, C, H, W) "
                f"images and (N,) labels with the same N; {fix}"
            )
        if shape is not None and x.shape[1:] != shape:
            raise DataError(f"{raw.name}: test images {x.shape[1:]} differ from training images {shape}; {fix}")
        shape = x.shape[1:]
        _check_pixels(raw, split, x, fix)
        _check_labels(raw, split, y, fix)


def _check_pixels(raw: RawDataset, split: str, x: np.ndarray, fix: str) -> None:
    if x.dtype.kind not in "uif":
        raise DataError(f"{raw.name}: x_{split} has dtype {x.dtype}; expected integer or float pixel values; {fix}")
    if x.size == 0:
        return
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise DataError(
                f"{raw.name}: x_{split} holds {int(bad.sum())} NaN or infinite pixel value(s) (first in "
                f"example {first}); expected finite values in 0..{raw.max_value}; drop or repair those examples"
            )
    lo = 0 if x.dtype.kind == "u" else x.min()
    # uint8 images with max_value 255 cannot leave the range: no pass over the pixels
    fits = x.dtype.kind in "iu" and np.iinfo(x.dtype).max <= raw.max_value
    hi = raw.max_value if fits else x.max()
    if lo < 0 or hi > raw.max_value:
        raise DataError(
            f"{raw.name}: x_{split} holds pixel values in [{lo:g}, {hi:g}]; expected 0..max_value={raw.max_value}; "
            f"rescale the images or set max_value; {fix}"
        )


def _check_labels(raw: RawDataset, split: str, y: np.ndarray, fix: str) -> None:
    if y.dtype.kind == "f":
        if y.size and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            bad = y[~(np.isfinite(y) & (y == np.round(y)))]
            raise DataError(
                f"{raw.name}: y_{split} holds non-integer labels (e.g. {bad[0]!r}); expected whole numbers "
                f"0..{raw.num_classes - 1}; {fix}"
            )
    elif y.dtype.kind not in "iu":
        raise DataError(
            f"{raw.name}: y_{split} has dtype {y.dtype}; expected integer class indices 0..{raw.num_classes - 1} "
            f"(map class names to indices); {fix}"
        )
    if y.size:
        lo, hi = y.min(), y.max()
        if lo < 0 or hi >= raw.num_classes:
            bad = int(((y < 0) | (y >= raw.num_classes)).sum())
            raise DataError(
                f"{raw.name}: y_{split} holds {bad} label(s) outside 0..{raw.num_classes - 1} (min {lo:g}, "
                f"max {hi:g}) for num_classes={raw.num_classes}; expected class indices 0..{raw.num_classes - 1}; "
                f"{fix}"
            )


def _to_split(name: str, x: np.ndarray, y: np.ndarray, idx: np.ndarray, max_value: int) -> Split:
    xs = np.ascontiguousarray(x[idx])
    ys = np.ascontiguousarray(y[idx]).astype(np.int64)
    h = hashlib.sha256()
    h.update(f"{xs.shape}|{xs.dtype}|{max_value}|".encode())
    if xs.size:  # an empty split (no calibration without a DkNN) has no buffer to cast
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
    validation: int = 0,
) -> Splits:
    """Deterministic, seeded train / calibration / test (/ validation) splits.

    The calibration set (for DkNN) is held out of the training pool, so it is disjoint from the
    training set; the test set comes from the official test pool when the dataset has one, else it
    is held out of the single pool too. ``None`` means "all that is left".

    ``validation`` examples (default 0: none, and every other split is exactly as without it) are
    carved from the training pool after the training set, so they are disjoint from training,
    calibration and test; with ``train=None`` the training set shrinks by ``validation``. Use them,
    never the test set, for hyper-parameter choices and the entanglement probe.
    """
    rng = np.random.default_rng(seed)
    for label, v in (("train", train), ("calibration", calibration), ("test", test), ("validation", validation)):
        if v is None and label != "calibration":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise DataError(
                f"split size {label}={v!r}: expected a non-negative whole number of examples; "
                f"fix dataset.splits (or evaluations.dknn.calibration_size) in the suite"
            )
    check_raw_dataset(raw)
    n_pool = len(raw.y_train)
    perm = rng.permutation(n_pool)
    if raw.x_test is None or raw.y_test is None:
        n_test = test if test is not None else max(1, n_pool // 5)
        _check_sizes(
            raw, n_pool, calibration + n_test + (train or 0) + validation, "the dataset", train, calibration, n_test,
            validation,
        )  # fmt: skip
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
    n_train = train if train is not None else n_left - calibration - validation
    _check_sizes(
        raw, n_left, calibration + n_train + validation, "the training pool", n_train, calibration, None, validation
    )
    cal_idx = np.sort(perm[:calibration])
    train_idx = np.sort(perm[calibration : calibration + n_train])
    val_idx = np.sort(perm[calibration + n_train : calibration + n_train + validation])
    return Splits(
        dataset=raw.name,
        train=_to_split("train", raw.x_train, raw.y_train, train_idx, raw.max_value),
        calibration=_to_split("calibration", raw.x_train, raw.y_train, cal_idx, raw.max_value),
        test=_to_split("test", x_test_pool, y_test_pool, test_idx, raw.max_value),
        num_classes=raw.num_classes,
        input_shape=raw.input_shape,
        class_names=raw.class_names,
        validation=_to_split("validation", raw.x_train, raw.y_train, val_idx, raw.max_value) if validation else None,
    )


def _check_sizes(
    raw: RawDataset,
    available: int,
    needed: int,
    pool: str,
    train: int | None,
    cal: int,
    test: int | None,
    validation: int = 0,
) -> None:
    if needed > available or (train is not None and train < 0):
        parts = f"train={train}, calibration={cal}" + (f", test={test}" if test is not None else "")
        parts += f", validation={validation}" if validation else ""
        raise DataError(
            f"{raw.name}: the splits ({parts}) need {needed} examples but {pool} has {available}; "
            f"reduce dataset.splits in the suite"
        )
