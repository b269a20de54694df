import torch


def test_digits_model_is_accurate(digits_model, digits_splits):
    with torch.no_grad():
        acc = (digits_model(digits_splits.test.x).argmax(1) == digits_splits.test.y).float().mean().item()
    assert acc > 0.9


def test_features_names_and_shapes(digits_model, digits_splits):
    feats = digits_model.features(digits_splits.test.x[:5])
    assert list(feats) == ["conv1", "conv2", "fc1", "logits"]
    assert feats["logits"].shape == (5, 10)
    only = digits_model.features(digits_splits.test.x[:5], ["conv2"])
    assert torch.equal(only["conv2"], feats["conv2"])
