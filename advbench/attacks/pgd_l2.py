"""PGD in the L2 ball (Madry et al. 2018): normalised-gradient steps projected onto the L2 ball.

    x_{t+1} = Proj_{||x' - x||_2 <= eps, box}( x_t + step_size * g / ||g||_2 ),  g = grad_x CE(f(x_t), y)

``step_size=None`` means ``2.5 * eps / steps``, as for L-inf PGD. Runs torchattacks' ``PGDL2`` or
foolbox's ``L2PGD``, seeded like :mod:`advbench.attacks.pgd`. Its outputs are validated against the
L2 ball of the threat model (``norm: l2`` in the suite's attack entry).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advbench.attacks import register_attack
from advbench.attacks.base import Attack, Backend, ThreatModel, check_steps
from advbench.attacks.libraries import run_foolbox, run_torchattacks

__all__ = ["PGDL2"]


@register_attack("pgd-l2", norm="l2", targeted=False, package="advbench")
class PGDL2(Attack):
    """Projected Gradient Descent, L2. ``backend``: ``"torchattacks"`` (default) or ``"foolbox"``."""

    norm = "l2"

    def __init__(
        self,
        *,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        backend: Backend = "torchattacks",
    ) -> None:
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.backend = backend
        self._validate()

    @classmethod
    def _check_values(cls, params: dict[str, Any]) -> list[str]:
        return check_steps(params, default_step="2.5*eps/steps")

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        step_size = 2.5 * threat.eps / self.steps if self.step_size is None else self.step_size
        if self.backend == "torchattacks":
            return run_torchattacks(
                "PGDL2",
                model,
                x,
                y,
                generator,
                eps=threat.eps,
                alpha=step_size,
                steps=self.steps,
                random_start=self.random_start,
            )
        return run_foolbox(
            "L2PGD",
            model,
            x,
            y,
            threat,
            generator,
            output="clipped",
            abs_stepsize=step_size,
            steps=self.steps,
            random_start=self.random_start,
        )
