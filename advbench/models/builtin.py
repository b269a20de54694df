"""advbench's own architectures: importing this module (the ``advbench.models`` entry point) registers them."""

from __future__ import annotations

from advbench.models import architectures as _architectures  # noqa: F401  (imported to register)
from advbench.models import resnet as _resnet  # noqa: F401
