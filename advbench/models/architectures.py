"""Built-in architectures, registered through the ``advbench.models`` entry-point group.

Each factory takes ``num_classes`` and ``input_shape`` (set by advbench from the dataset) plus its
own keyword-only hyper-parameters, and returns a :class:`Classifier` whose hidden layers are the
ReLU outputs named below (read by the SNNL and the DkNN).
"""

from __future__ import annotations

from torch import nn

from advbench.models import register_model
from advbench.models.blocks import BasicBlock
from advbench.models.classifier import Classifier


def _flat_dim(input_shape: tuple[int, int, int], pools: int, channels: int) -> int:
    _, h, w = input_shape
    for _ in range(pools):
        h, w = h // 2, w // 2
    return channels * h * w


def _mlp_layers(*, hidden: tuple[int, ...] = (256, 128), **_: object) -> tuple[str, ...]:
    return tuple(f"fc{i}" for i in range(1, len(hidden) + 1))


@register_model("mlp", layers=_mlp_layers)
def mlp(*, num_classes: int, input_shape: tuple[int, int, int], hidden: tuple[int, ...] = (256, 128)) -> Classifier:
    """Fully connected ReLU network; hidden layers ``fc1``, ``fc2``, ..."""
    c, h, w = input_shape
    blocks: list[tuple[str, nn.Module]] = []
    width = c * h * w
    for i, n in enumerate(hidden, 1):
        layer: list[nn.Module] = [nn.Flatten()] if i == 1 else []
        blocks.append((f"fc{i}", nn.Sequential(*layer, nn.Linear(width, n), nn.ReLU())))
        width = n
    blocks.append(("logits", nn.Linear(width, num_classes)))
    return Classifier(
        blocks, hidden=[b for b, _ in blocks[:-1]], num_classes=num_classes, input_shape=input_shape, arch="mlp"
    )


def _pool_relu() -> tuple[nn.Module, nn.Module]:
    """2x2 max-pooling, then ReLU: the same numbers as ReLU then pooling, forward and backward, for a quarter of
    the ReLU's work.

    ReLU is monotone, so ``max(relu(x)) == relu(max(x))`` exactly; the backward pass routes each window's
    gradient to the same element (the first maximum, when the maximum is positive) and gives zero where the
    window's maximum is not (ReLU's gradient at 0 is 0). ``tests/test_architectures.py`` checks Adam steps
    and input gradients bit for bit against the ReLU-first order. Weights keep their names: both are
    parameter-free.
    """
    return nn.MaxPool2d(2), nn.ReLU()


@register_model("cnn", layers=("conv1", "conv2", "fc1"))
def cnn(
    *, num_classes: int, input_shape: tuple[int, int, int], channels: tuple[int, int] = (32, 64), fc: int = 128
) -> Classifier:
    """conv32-pool-conv64-pool-fc128-fc10 with ReLU, for 28x28 inputs; hidden ``conv1``, ``conv2``, ``fc1``."""
    c1, c2 = channels
    blocks: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Sequential(nn.Conv2d(input_shape[0], c1, 3, padding=1), *_pool_relu())),
        ("conv2", nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), *_pool_relu())),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape, 2, c2), fc), nn.ReLU())),
        ("logits", nn.Linear(fc, num_classes)),
    ]
    return Classifier(
        blocks, hidden=["conv1", "conv2", "fc1"], num_classes=num_classes, input_shape=input_shape, arch="cnn"
    )


@register_model("cnn-digits", layers=("conv1", "conv2", "fc1"))
def cnn_digits(
    *, num_classes: int, input_shape: tuple[int, int, int], channels: tuple[int, int] = (16, 32), fc: int = 64
) -> Classifier:
    """The CNN scaled for 8x8 digits: conv16-conv32-pool-fc64; hidden ``conv1``, ``conv2``, ``fc1``."""
    c1, c2 = channels
    blocks: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Sequential(nn.Conv2d(input_shape[0], c1, 3, padding=1), nn.ReLU())),
        ("conv2", nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), *_pool_relu())),
        ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape, 1, c2), fc), nn.ReLU())),
        ("logits", nn.Linear(fc, num_classes)),
    ]
    return Classifier(
        blocks, hidden=["conv1", "conv2", "fc1"], num_classes=num_classes, input_shape=input_shape, arch="cnn-digits"
    )


@register_model("resnet-small", layers=("stem", "stage1", "stage2", "stage3", "pool"))
def resnet_small(
    *, num_classes: int, input_shape: tuple[int, int, int], widths: tuple[int, int, int] = (16, 32, 64)
) -> Classifier:
    """A ResNet-8-style network for 3x32x32 inputs; hidden ``stem``, ``stage1``..``stage3``, ``pool``."""
    w1, w2, w3 = widths
    blocks: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(nn.Conv2d(input_shape[0], w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())),
        ("stage1", BasicBlock(w1, w1, 1)),
        ("stage2", BasicBlock(w1, w2, 2)),
        ("stage3", BasicBlock(w2, w3, 2)),
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("logits", nn.Linear(w3, num_classes)),
    ]
    return Classifier(
        blocks,
        hidden=["stem", "stage1", "stage2", "stage3", "pool"],
        num_classes=num_classes,
        input_shape=input_shape,
        arch="resnet-small",
    )
