"""PGD (Madry et al. 2018): BIM from a uniform random start in the eps-ball.

    x_0 = clip(x + U(-eps, eps), 0, 1);  x_{t+1} = clip_{x, eps}( x_t + step_size * sign(grad_x CE(f(x_t), y)) )

``step_size=None`` means ``2.5 * eps / steps`` (Madry et al.'s rule: enough to cross the ball and back).

Seeding: both libraries draw the random start from torch's *global* RNG. advbench draws a seed from
the ``generator`` it is given and runs the library inside ``torch.random.fork_rng`` seeded with it, so
the same generator gives the same examples and the caller's global RNG stream is left untouched.
(Rather than re-implementing the random start, which would make the backends diverge from the
libraries they claim to run.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advbench.attacks import register_attack
from advbench.attacks.base import Attack, Backend, ThreatModel, check_steps
from advbench.attacks.libraries import run_foolbox, run_torchattacks

__all__ = ["PGD"]


@register_attack("pgd", norm="linf", targeted=False, package="advbench")
class PGD(Attack):
    """Projected Gradient Descent, L-inf. ``backend``: ``"torchattacks"`` (default) or ``"foolbox"``."""

    properties: ClassVar[frozenset[str]] = frozenset({"iterative", "gradient-based"})
    #: the library classes that run it (:class:`~advbench.attacks.pgd_l2.PGDL2` names the L2 ones)
    torchattacks_class: ClassVar[str] = "PGD"
    foolbox_class: ClassVar[str] = "LinfPGD"
    foolbox_options: ClassVar[dict[str, Any]] = {}

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
                self.torchattacks_class,
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
            self.foolbox_class,
            model,
            x,
            y,
            threat,
            generator,
            **self.foolbox_options,
            abs_stepsize=step_size,
            steps=self.steps,
            random_start=self.random_start,
        )
