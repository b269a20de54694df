"""PGD in the L2 ball (Madry et al. 2018): normalised-gradient steps projected onto the L2 ball.

    x_{t+1} = Proj_{||x' - x||_2 <= eps, box}( x_t + step_size * g / ||g||_2 ),  g = grad_x CE(f(x_t), y)

``step_size=None`` means ``2.5 * eps / steps``, as for L-inf PGD. Runs torchattacks' ``PGDL2`` or
foolbox's ``L2PGD``, seeded like :mod:`advbench.attacks.pgd`. Its outputs are validated against the
L2 ball of the threat model (``norm: l2`` in the suite's attack entry).
"""

from __future__ import annotations

from typing import Any, ClassVar

from advbench.attacks import register_attack
from advbench.attacks.pgd import PGD

__all__ = ["PGDL2"]


@register_attack("pgd-l2", norm="l2", targeted=False, package="advbench")
class PGDL2(PGD):
    """Projected Gradient Descent, L2: :class:`~advbench.attacks.pgd.PGD` run by the libraries' L2 classes.

    ``backend``: ``"torchattacks"`` (default, ``PGDL2``) or ``"foolbox"`` (``L2PGD``).
    """

    norm = "l2"
    torchattacks_class = "PGDL2"
    foolbox_class = "L2PGD"
    foolbox_options: ClassVar[dict[str, Any]] = {"output": "clipped"}
