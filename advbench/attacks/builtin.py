"""advbench's built-in attacks, loaded through the ``advbench.attacks`` entry-point group.

Importing this module registers ``fgsm``, ``bim`` and ``pgd`` (each with a torchattacks and a
foolbox backend) and a namespaced wrapper for every attack of torchattacks and foolbox, discovered
without importing either library.
"""

from __future__ import annotations

from advbench.attacks import ATTACKS, bim, fgsm, pgd
from advbench.attacks.libraries import register_library_attacks

__all__ = ["bim", "fgsm", "pgd"]

register_library_attacks(ATTACKS)
