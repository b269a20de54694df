"""advbench's built-in attacks, loaded through the ``advbench.attacks`` entry-point group."""

from __future__ import annotations
