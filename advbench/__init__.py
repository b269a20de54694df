"""advbench: a benchmark of adversarial transfer and DkNN calibration under the Soft Nearest Neighbor Loss."""

from __future__ import annotations

__version__ = "0.2.0"
