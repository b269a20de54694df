"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps.

    x' = clip(x + eps * sign(grad_x CE(f(x), y)), 0, 1)

Both backends compute exactly this, so their examples are identical on the same model (tested).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from advbench.attacks import register_attack
from advbench.attacks.base import Attack, Backend, ThreatModel
from advbench.attacks.libraries import run_foolbox, run_torchattacks

__all__ = ["FGSM"]


@register_attack("fgsm", norm="linf", targeted=False, package="advbench")
class FGSM(Attack):
    """Fast Gradient Sign Method, L-inf. ``backend``: ``"torchattacks"`` (default) or ``"foolbox"``."""

    properties: ClassVar[frozenset[str]] = frozenset({"single-step", "gradient-based"})

    def __init__(self, *, backend: Backend = "torchattacks") -> None:
        self.backend = backend
        self._validate()

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        if self.backend == "torchattacks":
            return run_torchattacks("FGSM", model, x, y, generator, eps=threat.eps)
        return run_foolbox("LinfFastGradientAttack", model, x, y, threat, generator, random_start=False)
