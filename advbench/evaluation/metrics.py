"""advbench's built-in metrics, loaded through the ``advbench.metrics`` entry-point group."""

from __future__ import annotations
