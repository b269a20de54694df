"""ResNet-20 and its family for 32x32 colour images (He et al. 2016, section 4.2).

A 3x3 stem convolution, three stages of ``n`` basic blocks with ``w``, ``2w`` and ``4w`` channels
(the second and third start with a stride-2 block), global average pooling and a linear layer:
``depth = 6n + 2`` (20, 32, 44, 56, 110). ``width`` scales ``w`` (16 in the paper; 4 makes a tiny
network for CPU smoke tests). Shortcuts that change shape are 1x1 convolutions with batch norm
(He et al.'s option B).

Hidden layers, read by the SNNL and the DkNN: ``stem``, ``stage1``, ``stage2``, ``stage3`` (the
outputs of the last block of each stage) and ``pool`` (the pooled features).
"""

from __future__ import annotations

from torch import nn

from advbench.models import register_model
from advbench.models.blocks import BasicBlock
from advbench.models.classifier import Classifier

__all__ = ["RESNET_LAYERS", "resnet20"]

RESNET_LAYERS = ("stem", "stage1", "stage2", "stage3", "pool")


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(*(BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(blocks)))


def cifar_resnet(
    *, num_classes: int, input_shape: tuple[int, int, int], depth: int = 20, width: int = 16, arch: str = "resnet"
) -> Classifier:
    """A CIFAR ResNet of ``depth = 6n + 2`` layers and base ``width``; see the module docstring."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth={depth!r}: expected 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110)")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width={width!r}: expected a positive integer (16 in He et al.)")
    n = (depth - 2) // 6
    w1, w2, w3 = width, 2 * width, 4 * width
    blocks: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(nn.Conv2d(input_shape[0], w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())),
        ("stage1", _stage(w1, w1, n, 1)),
        ("stage2", _stage(w1, w2, n, 2)),
        ("stage3", _stage(w2, w3, n, 2)),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("logits", nn.Linear(w3, num_classes)),
    ]
    model = Classifier(blocks, hidden=list(RESNET_LAYERS), num_classes=num_classes, input_shape=input_shape, arch=arch)
    for m in model.modules():  # He et al.'s initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def _cost(*, depth: int = 20, width: int = 16, **_: object) -> float:
    """Training time per image relative to the ``cnn`` on the reference CPU (measured: 6.4 at width 16, 1.9 at 4)."""
    return 1.5 + 4.9 * (width / 16) ** 2 * (depth - 2) / 18


@register_model("resnet20", layers=RESNET_LAYERS, cost=_cost)
def resnet20(*, num_classes: int, input_shape: tuple[int, int, int], depth: int = 20, width: int = 16) -> Classifier:
    """ResNet-20 for 3x32x32 inputs (He et al. 2016): 3 stages x 3 basic blocks, 16/32/64 channels.

    ``depth`` (6n + 2) and ``width`` (base channels) give the rest of the family; hidden layers
    ``stem``, ``stage1``, ``stage2``, ``stage3``, ``pool``.
    """
    return cifar_resnet(num_classes=num_classes, input_shape=input_shape, depth=depth, width=width, arch="resnet20")
