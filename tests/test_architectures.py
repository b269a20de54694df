"""advbench.models.architectures: the built-in networks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advbench.models import create_model


def _relu_first(model: nn.Module) -> nn.Module:
    """The same network (same weights) with each block's ReLU before its max-pooling, the textbook order."""
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod)
            for i in range(len(kids) - 1):
                if isinstance(kids[i], nn.MaxPool2d) and isinstance(kids[i + 1], nn.ReLU):
                    mod[i], mod[i + 1] = kids[i + 1], kids[i]
    return ref


@pytest.mark.parametrize(("arch", "shape"), [("cnn", (1, 28, 28)), ("cnn-digits", (1, 8, 8))])
def test_pooling_before_relu_gives_the_same_bits_as_relu_first(arch, shape):
    """Pooling first is a speed-up only: features, logits, input gradients and Adam steps are bit-identical."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, input_shape=shape)
    ref = _relu_first(model)
    assert [type(m) for m in ref.modules()] != [type(m) for m in model.modules()]  # the order really differs
    assert list(model.state_dict()) == list(ref.state_dict())  # checkpoints are unchanged
    x = torch.rand(64, *shape).contiguous(memory_format=torch.channels_last)
    x[:8] -= 0.5  # windows whose maximum is negative or zero, where the two orders could part
    y = torch.randint(0, 10, (64,))
    for m in (model, ref):
        m.train()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (model, ref)]
    for _ in range(5):
        outs = []
        for m, opt in zip((model, ref), opts):
            opt.zero_grad()
            xi = x.clone().requires_grad_(True)
            feats = m.features(xi, ["conv1", "conv2", "fc1", "logits"])
            loss = nn.functional.cross_entropy(feats["logits"], y)
            loss.backward()
            opt.step()
            outs.append((feats, xi.grad))
        (fa, ga), (fb, gb) = outs
        for layer in fa:
            assert torch.equal(fa[layer], fb[layer]), layer
        assert torch.equal(ga, gb)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), name
