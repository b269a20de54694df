"""Channels-last convolutions: the same model and the same numbers up to float32 rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from advbench.config import RecipeConfig, SNNLConfig
from advbench.evaluation.dknn import model_fingerprint
from advbench.training import TrainStep, init_model


def _nchw(model):
    """The same model computing in the contiguous (NCHW) format, as before channels-last."""
    ref = copy.deepcopy(model)
    ref.memory_format = torch.contiguous_format
    return ref.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def test_conv_models_store_channels_last_weights_and_mlps_do_not():
    cnn = init_model("cnn-digits", params={}, num_classes=10, input_shape=(1, 8, 8), seed=0)
    mlp = init_model("mlp", params={}, num_classes=10, input_shape=(1, 8, 8), seed=0)
    assert cnn.memory_format == torch.channels_last
    assert mlp.memory_format == torch.contiguous_format
    conv = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # >1 input channel: unambiguous
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_weights_and_fingerprint_do_not_depend_on_the_format():
    model = init_model("cnn", params={}, num_classes=10, input_shape=(1, 28, 28), seed=3)
    ref = _nchw(model)
    assert model_fingerprint(model) == model_fingerprint(ref)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_features_and_logits_match_the_nchw_computation_to_float32_rounding():
    model = init_model("cnn", params={}, num_classes=10, input_shape=(1, 28, 28), seed=0)
    ref = _nchw(model)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model.features(x), ref.features(x)
    for name in want:
        assert got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, -0.1])
def test_training_steps_stay_within_tolerance_of_nchw(alpha):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.arange(64) % 10
    model = init_model("cnn-digits", params={}, num_classes=10, input_shape=(1, 8, 8), seed=0, x_train=x)
    ref = _nchw(model)
    recipe = RecipeConfig(batch_size=64, optimizer="adam", lr=0.003, snnl=SNNLConfig(alpha=alpha))
    a, b = TrainStep(model, recipe, model.hidden_layers), TrainStep(ref, recipe, ref.hidden_layers)
    # one step: float32 rounding; 5 steps: the drift any reordering gives
    for i in range(5):
        la, lb = float(a(x, y).loss.detach()), float(b(x, y).loss.detach())
        assert la == pytest.approx(lb, rel=1e-5 if i == 0 else 1e-3)
    for (k, p), (_, q) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert float((p - q).abs().max()) <= 1e-3, k  # 5 Adam steps at lr 3e-3 move a weight up to 0.015


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_pairwise_distances_of_a_channels_last_activation_match_and_keep_its_gradient_layout(distance):
    from advbench.training import pairwise_distances

    h = torch.rand(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    cl = h.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.testing.assert_close(
        pairwise_distances(cl, distance=distance), pairwise_distances(h, distance=distance), rtol=1e-5, atol=1e-5
    )
    pairwise_distances(cl, distance=distance).sum().backward()
    assert cl.grad is not None and cl.grad.is_contiguous(memory_format=torch.channels_last)
