"""BIM (Kurakin et al. 2016): ``steps`` FGSM steps of size ``step_size``, projected after each.

    x_0 = x;  x_{t+1} = clip_{x, eps}( x_t + step_size * sign(grad_x CE(f(x_t), y)) )

``step_size=None`` means ``eps / steps``: the smallest step with which ``steps`` steps can reach any
corner of the eps-ball (Kurakin et al. use 1/255 per step with about 1.25 * eps * 255 steps, which is
close to it). There is no random start; BIM is deterministic.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advbench.attacks import register_attack
from advbench.attacks.base import Attack, Backend, ThreatModel, check_steps
from advbench.attacks.libraries import run_foolbox, run_torchattacks

__all__ = ["BIM"]


@register_attack("bim", norm="linf", targeted=False, package="advbench")
class BIM(Attack):
    """Basic Iterative Method, L-inf. ``backend``: ``"torchattacks"`` (default) or ``"foolbox"``."""

    properties: ClassVar[frozenset[str]] = frozenset({"iterative", "gradient-based"})

    def __init__(self, *, steps: int = 10, step_size: float | None = None, backend: Backend = "torchattacks") -> None:
        self.steps = steps
        self.step_size = step_size
        self.backend = backend
        self._validate()

    @classmethod
    def _check_values(cls, params: dict[str, Any]) -> list[str]:
        return check_steps(params, default_step="eps/steps")

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        step_size = threat.eps / self.steps if self.step_size is None else self.step_size
        if self.backend == "torchattacks":
            return run_torchattacks("BIM", model, x, y, generator, eps=threat.eps, alpha=step_size, steps=self.steps)
        return run_foolbox(
            "LinfBasicIterativeAttack",
            model,
            x,
            y,
            threat,
            generator,
            abs_stepsize=step_size,
            steps=self.steps,
            random_start=False,
        )
