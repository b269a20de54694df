"""advbench's built-in attacks, loaded through the ``advbench.attacks`` entry-point group.

Importing this module registers ``fgsm``, ``bim`` and ``pgd`` (each with a torchattacks and a
foolbox backend), ``dknn-adaptive`` (a feature-space attack on the DkNN) and a namespaced wrapper
for every attack of torchattacks and foolbox, discovered without importing either library.
"""

from __future__ import annotations

from advbench.attacks import ATTACKS, bim, dknn_adaptive, fgsm, pgd, pgd_l2
from advbench.attacks.libraries import register_library_attacks

__all__ = ["bim", "dknn_adaptive", "fgsm", "pgd", "pgd_l2"]

register_library_attacks(ATTACKS)
