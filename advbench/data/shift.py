"""Seeded distribution-shift sets made from in-distribution test images (Fashion-MNIST-C / MNIST-C style).

Each corruption takes float images in [0, 1] of shape (N, C, H, W) and a severity 1..5, and returns
images in [0, 1]; :func:`make_shift_set` quantises them to 8 bits (so a set is exactly a stored image
set, with a platform-independent hash) and hashes them. Randomness (noise, rotation angles) comes from
``numpy.random.default_rng`` seeded by ``(seed, corruption, severity)``, so a set is reproducible.

=================  ====================================================  =====================
corruption         severity 1 .. 5                                       near / far
=================  ====================================================  =====================
gaussian_noise     additive N(0, sigma), sigma 0.08 0.12 0.18 0.26 0.38  near 1-3, far 4-5
uniform_noise      additive U(-w, w), w 0.1 0.2 0.3 0.45 0.6             near 1-3, far 4-5
blur               Gaussian blur (scipy.ndimage), sigma 0.5 0.75 1 1.5 2  near
rotation           by +-U(lo, hi) degrees: 10-20 20-30 30-45 45-60 60-90   near
contrast           (x - mean) * c + mean, c 0.5 0.35 0.25 0.15 0.08        near 1-3, far 4-5
inversion          (1 - a) x + a (1 - x), a 0.6 0.7 0.8 0.9 1.0           far
=================  ====================================================  =====================

*Near*: the class is still recognisable and the image statistics are close to the training data's
(covariate shift a model should ideally handle or at least doubt a little). *Far*: the statistics are
no longer the dataset's (inverted polarity, noise or contrast loss that dominates the signal), where
a model should be clearly uncertain. The labels of a shift set are the source images' labels.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage

from advbench.errors import DataError

__all__ = [
    "CORRUPTIONS",
    "DEFAULT_SHIFTS",
    "ShiftSet",
    "corrupt",
    "make_shift_set",
    "parse_shift",
    "shift_distance",
    "shift_sets",
]

Distance = Literal["near", "far"]


@dataclass(frozen=True)
class _Corruption:
    fn: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]
    levels: tuple[Any, ...]
    far_from: int | None  # first severity labelled far; None = always near; 1 = always far


def _gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, size=x.shape)


def _uniform_noise(x: np.ndarray, w: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.uniform(-w, w, size=x.shape)


def _blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="constant", cval=0.0)


def _rotation(x: np.ndarray, bounds: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(*bounds, size=len(x)) * rng.choice([-1.0, 1.0], size=len(x))
    out = np.empty_like(x)
    for i, angle in enumerate(angles):  # one angle per image: scipy rotates one array at a time
        out[i] = ndimage.rotate(x[i], angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    return out


def _contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * c + mean


def _inversion(x: np.ndarray, a: float, rng: np.random.Generator) -> np.ndarray:
    return (1.0 - a) * x + a * (1.0 - x)


#: name -> (function, parameter per severity 1..5, first far severity)
CORRUPTIONS: dict[str, _Corruption] = {
    "gaussian_noise": _Corruption(_gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38), 4),
    "uniform_noise": _Corruption(_uniform_noise, (0.1, 0.2, 0.3, 0.45, 0.6), 4),
    "blur": _Corruption(_blur, (0.5, 0.75, 1.0, 1.5, 2.0), None),
    "rotation": _Corruption(_rotation, ((10, 20), (20, 30), (30, 45), (45, 60), (60, 90)), None),
    "contrast": _Corruption(_contrast, (0.5, 0.35, 0.25, 0.15, 0.08), 4),
    "inversion": _Corruption(_inversion, (0.6, 0.7, 0.8, 0.9, 1.0), 1),
}


def _check(corruption: str, severity: int) -> _Corruption:
    if corruption not in CORRUPTIONS:
        raise DataError(f"unknown corruption {corruption!r}; expected one of {sorted(CORRUPTIONS)}")
    spec = CORRUPTIONS[corruption]
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or not 1 <= severity <= len(spec.levels)
    ):
        raise DataError(f"{corruption}: severity={severity!r}; expected an integer 1..{len(spec.levels)}")
    return spec


def shift_distance(corruption: str, severity: int) -> Distance:
    """``"near"`` or ``"far"`` for a corruption at a severity (the module docstring's table)."""
    spec = _check(corruption, severity)
    return "far" if spec.far_from is not None and severity >= spec.far_from else "near"


def parse_shift(name: str) -> tuple[str, int]:
    """``"rotation:3"`` (or ``"rotation-3"``) -> ``("rotation", 3)``; a bare name means severity 3."""
    for sep in (":", "-"):
        if sep in name:
            corruption, _, level = name.rpartition(sep)
            try:
                severity = int(level)
            except ValueError:
                raise DataError(f"shift set {name!r}: expected '<corruption>:<severity 1..5>'") from None
            _check(corruption, severity)
            return corruption, severity
    _check(name, 3)
    return name, 3


def _as_unit_float(x: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 4:
        raise DataError(f"expected images of shape (N, C, H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype.kind != "f" or (arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1)):
        raise DataError(f"expected uint8 images or floats in [0, 1], got {arr.dtype} images; rescale them first")
    return arr.astype(np.float64)


def corrupt(x: np.ndarray | torch.Tensor, corruption: str, severity: int = 3, *, seed: int = 0) -> np.ndarray:
    """``x`` ((N, C, H, W) uint8 or floats in [0, 1]) corrupted, as float64 in [0, 1] (not quantised)."""
    spec = _check(corruption, severity)
    # the stream depends on the corruption and severity, so two sets of one seed are not correlated
    stream = zlib.crc32(f"{corruption}:{severity}".encode())
    rng = np.random.default_rng([int(seed), stream])
    return np.clip(spec.fn(_as_unit_float(x), spec.levels[severity - 1], rng), 0.0, 1.0)


@dataclass(frozen=True)
class ShiftSet:
    """A corrupted copy of a set of images: 8-bit pixels, the source labels and ids, content hashes."""

    name: str  # "<corruption>:<severity>"
    corruption: str
    severity: int
    distance: Distance
    seed: int
    x: np.ndarray  # (N, C, H, W) uint8
    y: np.ndarray  # (N,) int64, the source images' labels
    example_ids: np.ndarray  # (N,) the source images' ids (e.g. positions in the test split)
    source_sha256: str
    sha256: str

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def tensor(self) -> torch.Tensor:
        """The images as float32 pixels in [0, 1], like :class:`advbench.data.Split`."""
        return torch.from_numpy(np.divide(self.x, np.float32(255), dtype=np.float32))


def _digest(x: np.ndarray, y: np.ndarray, tag: str) -> str:
    h = hashlib.sha256()
    h.update(f"{tag}|{x.shape}|{x.dtype}|".encode())
    h.update(np.ascontiguousarray(x).data.cast("B"))
    h.update(np.ascontiguousarray(y, dtype=np.int64).data.cast("B"))
    return h.hexdigest()


def make_shift_set(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    corruption: str,
    severity: int = 3,
    *,
    seed: int = 0,
    example_ids: np.ndarray | None = None,
) -> ShiftSet:
    """Corrupt the images ``x`` (labels ``y``) and quantise to 8 bits; hashes of the source and the result.

    ``sha256`` covers the shifted pixels, labels and the recipe (corruption, severity, seed), so a
    cache key built from it changes whenever the set does.
    """
    spec_y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    labels = spec_y.astype(np.int64)
    src = _as_unit_float(x)
    if labels.shape != (len(src),):
        raise DataError(f"expected {len(src)} labels, one per image, got shape {labels.shape}")
    ids = np.arange(len(src)) if example_ids is None else np.asarray(example_ids)
    if ids.shape != (len(src),):
        raise DataError(f"expected {len(src)} example ids, got shape {ids.shape}")
    src8 = np.rint(src * 255.0).astype(np.uint8)
    shifted = np.rint(corrupt(src, corruption, severity, seed=seed) * 255.0).astype(np.uint8)
    name = f"{corruption}:{severity}"
    return ShiftSet(
        name=name,
        corruption=corruption,
        severity=int(severity),
        distance=shift_distance(corruption, severity),
        seed=int(seed),
        x=shifted,
        y=labels,
        example_ids=ids,
        source_sha256=_digest(src8, labels, "source"),
        sha256=_digest(shifted, labels, f"{name}|seed={seed}"),
    )


#: a default panel: every corruption at a moderate and a strong severity
DEFAULT_SHIFTS: tuple[str, ...] = tuple(f"{c}:{s}" for c in CORRUPTIONS for s in (2, 5))


def shift_sets(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    names: tuple[str, ...] | list[str] = DEFAULT_SHIFTS,
    *,
    seed: int = 0,
    example_ids: np.ndarray | None = None,
) -> list[ShiftSet]:
    """:func:`make_shift_set` for each ``"<corruption>:<severity>"`` in ``names``, in that order."""
    return [make_shift_set(x, y, *parse_shift(name), seed=seed, example_ids=example_ids) for name in names]
