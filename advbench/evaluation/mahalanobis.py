"""The Mahalanobis detector of Lee, Lee, Lee and Shin (NeurIPS 2018, arXiv:1807.03888).

On one layer's features ``f(x)`` of the training set, fit a Gaussian per class with a shared
covariance (the generative classifier induced by a softmax classifier, their eq. 1)::

    mu_c  = mean of f(x_i) over the training points of class c
    Sigma = (1/N) sum_c sum_{i in c} (f(x_i) - mu_c)(f(x_i) - mu_c)^T

and score an input by its confidence (their eq. 2), the negated distance to the closest class::

    M(x) = max_c -(f(x) - mu_c)^T Sigma^{-1} (f(x) - mu_c)

Higher is more in-distribution, like DkNN credibility and the maximum softmax probability, so the
three go into :func:`advbench.evaluation.calibration.detection_metrics` the same way. A convolutional
layer's (C, H, W) features are averaged over space first, as the paper does (``pool="mean"``);
``pool="flatten"`` keeps every unit. ``Sigma^{-1}`` is the Moore-Penrose pseudo-inverse (the
paper's code uses scikit-learn's ``EmpiricalCovariance``, whose precision is the same), optionally
after adding ``ridge * I``. Not implemented: the paper's input pre-processing (a small gradient step
on the input) and its logistic-regression ensemble over layers, which need tuning on OOD data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from advbench.models import Classifier

__all__ = [
    "MahalanobisDetector",
    "fit_mahalanobis",
    "layer_features",
    "mahalanobis_detection",
    "mahalanobis_scores",
]

Pool = Literal["mean", "flatten"]


@dataclass(frozen=True)
class MahalanobisDetector:
    """Class means (C, d), the shared precision (d, d), the class labels (C,), and how features were read."""

    means: np.ndarray
    precision: np.ndarray
    classes: np.ndarray
    layer: str = ""
    pool: Pool = "mean"

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, *, ridge: float = 0.0, layer: str = "", pool: Pool = "mean"
    ) -> MahalanobisDetector:
        """Fit on training ``features`` (n, d) with ``labels`` (n,), in float64."""
        f = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).ravel()
        if f.ndim != 2 or len(f) != len(y):
            raise ValueError(f"expected features (n, d) and n labels, got shapes {f.shape} and {y.shape}")
        if len(y) < 2:
            raise ValueError(f"need at least 2 training points to fit a covariance, got {len(y)}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        classes = np.unique(y)
        means = np.stack([f[y == c].mean(0) for c in classes])
        centred = f - means[np.searchsorted(classes, y)]
        cov = centred.T @ centred / len(y)
        if ridge:
            cov = cov + ridge * np.eye(cov.shape[0])
        precision = np.linalg.pinv(cov, hermitian=True)
        return cls(means, precision, classes, layer, pool)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``features`` to each class mean: (n, C)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.means.shape[1]:
            raise ValueError(f"expected features of shape (n, {self.means.shape[1]}), got {f.shape}")
        diff = f[:, None, :] - self.means[None, :, :]  # (n, C, d)
        return np.einsum("ncd,de,nce->nc", diff, self.precision, diff)

    def score(self, features: np.ndarray) -> np.ndarray:
        """The confidence ``M(x) = -min_c distance`` (higher = more in-distribution), shape (n,)."""
        return -self.distances(features).min(1)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The class of the closest mean (the generative classifier's prediction)."""
        return np.asarray(self.classes[self.distances(features).argmin(1)])


@torch.no_grad()
def layer_features(
    model: Classifier,
    x: Tensor,
    layer: str,
    *,
    pool: Pool = "mean",
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """The model's ``layer`` features of inputs ``x`` as float64 (n, d), in eval mode.

    4-d (N, C, H, W) features are averaged over space with ``pool="mean"``; otherwise flattened.
    """
    if pool not in ("mean", "flatten"):
        raise ValueError(f"pool must be 'mean' or 'flatten', got {pool!r}")
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    parts = []
    try:
        for i in range(0, len(x), batch_size):
            h = model.features(x[i : i + batch_size].to(dev), [layer])[layer]
            if h.dim() == 4 and pool == "mean":
                h = h.mean(dim=(2, 3))
            parts.append(h.reshape(h.shape[0], -1).double().cpu())
    finally:
        model.train(was_training)
    if not parts:
        return np.zeros((0, 0))
    return torch.cat(parts).numpy()


def mahalanobis_scores(
    model: Classifier, detector: MahalanobisDetector, x: Tensor, *, device: torch.device | str | None = None
) -> np.ndarray:
    """Detection scores ``M(x)`` (higher = more in-distribution) of inputs ``x`` at the detector's layer."""
    return detector.score(layer_features(model, x, detector.layer, pool=detector.pool, device=device))


def fit_mahalanobis(
    model: Classifier,
    x_train: Tensor,
    y_train: Tensor,
    *,
    layer: str | None = None,
    pool: Pool = "mean",
    ridge: float = 0.0,
    device: torch.device | str | None = None,
) -> MahalanobisDetector:
    """The detector fitted on the model's ``layer`` features of the training set (one pass over it).

    ``layer`` defaults to the last hidden layer; score inputs with :func:`mahalanobis_scores`.
    """
    name = layer if layer is not None else model.hidden_layers[-1]
    if name not in (*model.hidden_layers, "logits"):
        raise ValueError(
            f"layer {name!r} is not a layer of {model.arch!r}; choose from {[*model.hidden_layers, 'logits']}"
        )
    train = layer_features(model, x_train, name, pool=pool, device=device)
    return MahalanobisDetector.fit(train, y_train.cpu().numpy(), ridge=ridge, layer=name, pool=pool)


def mahalanobis_detection(
    model: Classifier,
    x_train: Tensor,
    y_train: Tensor,
    inputs: Mapping[str, Tensor],
    *,
    layer: str | None = None,
    pool: Pool = "mean",
    ridge: float = 0.0,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Fit the detector on the training set at ``layer`` (default: the last hidden layer) and score each input set.

    Returns, per name of ``inputs``, the scores ``M(x)``: pass the clean set's and another set's to
    :func:`~advbench.evaluation.calibration.detection_metrics` as ``scores_in`` / ``scores_out``.
    """
    detector = fit_mahalanobis(model, x_train, y_train, layer=layer, pool=pool, ridge=ridge, device=device)
    return {k: mahalanobis_scores(model, detector, v, device=device) for k, v in inputs.items()}
