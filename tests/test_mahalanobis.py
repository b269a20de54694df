"""The Mahalanobis detector (Lee et al. 2018) against a brute-force numpy computation, and on a real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advbench.evaluation.calibration import detection_metrics
from advbench.evaluation.mahalanobis import (
    MahalanobisDetector,
    layer_features,
    mahalanobis_detection,
    mahalanobis_scores,
)


def _brute(train: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    classes = sorted(set(labels.tolist()))
    means = {c: train[labels == c].mean(0) for c in classes}
    d = train.shape[1]
    cov = np.zeros((d, d))
    for x, c in zip(train, labels, strict=True):
        v = (x - means[c])[:, None]
        cov += v @ v.T
    cov /= len(train)
    prec = np.linalg.inv(cov)
    out = []
    for q in queries:
        out.append(max(-float((q - means[c]) @ prec @ (q - means[c])) for c in classes))
    return np.array(out)


def test_scores_equal_a_brute_force_computation():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:3] * 3, 20, axis=0)
    labels = np.repeat([0, 1, 2], 20)
    queries = rng.normal(size=(7, 4)) * 2
    det = MahalanobisDetector.fit(train, labels)
    np.testing.assert_allclose(det.score(queries), _brute(train, labels, queries), rtol=1e-10)
    # the nearest mean classifies the training points of well-separated classes
    assert (det.predict(train) == labels).mean() > 0.9


def test_singular_covariance_uses_the_pseudo_inverse_and_bad_shapes_are_refused():
    rng = np.random.default_rng(1)
    train = np.c_[rng.normal(size=(30, 2)), np.zeros(30)]  # a constant feature: singular covariance
    labels = np.arange(30) % 2
    det = MahalanobisDetector.fit(train, labels)
    assert np.isfinite(det.score(train)).all()
    with pytest.raises(ValueError, match=r"expected features of shape \(n, 3\)"):
        det.score(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        MahalanobisDetector.fit(train[:1], labels[:1])


def test_on_a_trained_model_ood_inputs_score_lower(digits_model, digits_splits):
    x_train, y_train = digits_splits.train.x, digits_splits.train.y
    clean = digits_splits.test.x[:200]
    noise = torch.rand(200, *digits_splits.input_shape, generator=torch.Generator().manual_seed(0))
    scores = mahalanobis_detection(digits_model, x_train, y_train, {"clean": clean, "noise": noise})
    assert set(scores) == {"clean", "noise"} and scores["clean"].shape == (200,)
    auroc = detection_metrics(scores["clean"], scores["noise"])["auroc"]
    assert auroc > 0.9  # uniform noise is far from every class of a trained digits model
    # the layer's spatial average for conv features (the paper), by hand
    feats = layer_features(digits_model, clean[:5], "conv1")
    with torch.no_grad():
        h = digits_model.eval().features(clean[:5], ["conv1"])["conv1"]
    np.testing.assert_allclose(feats, h.mean(dim=(2, 3)).double().numpy(), rtol=1e-6)
    det = MahalanobisDetector.fit(layer_features(digits_model, x_train, "fc1"), y_train.numpy(), layer="fc1")
    np.testing.assert_allclose(mahalanobis_scores(digits_model, det, clean), scores["clean"], rtol=1e-9)
