"""The classifier wrapper: owns input normalisation and exposes named hidden representations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Classifier", "ToMemoryFormat"]


class ToMemoryFormat(torch.autograd.Function):
    """``x.contiguous(memory_format=...)`` whose gradient comes back in the standard layout.

    The network runs channels-last (faster convolutions), but the gradient with respect to the
    caller's input must keep the caller's layout: attack libraries flatten input gradients with
    ``.view`` (torchattacks' PGDL2, for one), which a channels-last gradient of a multi-channel image
    refuses. Values are unchanged either way; only strides differ.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.contiguous(), None


class Classifier(nn.Module):
    """A network as a sequence of named blocks whose outputs can be read by name.

    Inputs are pixels in [0, 1]; normalisation ``(x - mean) / std`` happens inside, so attacks only
    ever see the bounded pixel space. ``blocks`` run in order; the last one produces the logits and
    is named ``"logits"``. ``hidden`` names the block outputs that count as hidden representations
    (regularised by the SNNL, indexed by the DkNN).

    A network with 2-d convolutions computes in the channels-last memory format: its weights are stored
    so and every input is converted on entry (:meth:`normalize`). On the reference 2-core CPU machine this makes
    the 28x28 CNN's training step 0.68x the time and its feature extraction 0.47x (one thread, side by side;
    ``benchmarks/test_bench_training.py``). Values, shapes and the state dict (saved contiguous) are
    unchanged; only the float reduction order moves, so results agree with the NCHW computation to
    float32 rounding, not bit for bit.
    """

    def __init__(
        self,
        blocks: Sequence[tuple[str, nn.Module]],
        *,
        hidden: Sequence[str],
        num_classes: int,
        input_shape: tuple[int, int, int],
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        arch: str = "custom",
    ) -> None:
        super().__init__()
        names = [n for n, _ in blocks]
        if not names or names[-1] != "logits":
            raise ValueError(f"the last block must be named 'logits', got {names}")
        unknown = [h for h in hidden if h not in names[:-1]]
        if unknown:
            raise ValueError(f"hidden layers {unknown} are not blocks; blocks: {names[:-1]}")
        self.blocks = nn.ModuleDict(dict(blocks))
        self.hidden_layers: tuple[str, ...] = tuple(hidden)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.arch = arch
        c = input_shape[0]
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", _per_channel(mean, c))
        self.register_buffer("std", _per_channel(std, c))
        #: the memory format inputs are converted to (channels-last when the network has a 2-d convolution)
        self.memory_format = (
            torch.channels_last
            if any(isinstance(m, nn.Conv2d) for m in self.blocks.modules())
            else torch.contiguous_format
        )
        if self.memory_format == torch.channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Every readable representation: the hidden layers then ``"logits"``."""
        return (*self.hidden_layers, "logits")

    def set_normalization(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        c = self.input_shape[0]
        self.mean.copy_(_per_channel(mean, c))
        self.std.copy_(_per_channel(std, c))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and self.memory_format != torch.contiguous_format:
            x = ToMemoryFormat.apply(x, self.memory_format)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalize(x)
        for block in self.blocks.values():
            h = block(h)
        return h

    def features(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Outputs of the named ``layers`` (default: every hidden layer and the logits), unflattened.

        Runs the network only as far as the last layer asked for.
        """
        wanted = list(self.layer_names if layers is None else layers)
        names = list(self.blocks.keys())
        missing = [w for w in wanted if w not in names]
        if missing:
            raise KeyError(f"unknown layers {missing} for {self.arch}; readable layers: {list(self.layer_names)}")
        last = max(names.index(w) for w in wanted)
        out: dict[str, torch.Tensor] = {}
        h = self.normalize(x)
        for i, (name, block) in enumerate(self.blocks.items()):
            h = block(h)
            if name in wanted:
                out[name] = h
            if i == last:
                break
        return {w: out[w] for w in wanted}

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, hidden={list(self.hidden_layers)}, num_classes={self.num_classes}"


def _per_channel(v: float | Sequence[float], c: int) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.repeat(c)
    if t.numel() != c:
        raise ValueError(f"expected 1 or {c} normalisation values, got {t.numel()}")
    return t.view(1, c, 1, 1)
