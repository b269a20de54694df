"""Every cell kind's handler, registered: importing this module imports one module per kind.

The handlers live in :mod:`advbench.suite.cells` (one module per cell kind, so that a cell's code
identity is its own kind's code); this module only brings them all in, for the executors.
"""

from __future__ import annotations

from advbench.suite.cells import HANDLERS, KNOWLEDGE, Handler, handler
from advbench.suite.cells import attack as _attack  # noqa: F401  (imported to register)
from advbench.suite.cells import clean_eval as _clean_eval  # noqa: F401
from advbench.suite.cells import convergence as _convergence  # noqa: F401
from advbench.suite.cells import dknn_index as _dknn_index  # noqa: F401
from advbench.suite.cells import dknn_knowledge as _dknn_knowledge  # noqa: F401
from advbench.suite.cells import dknn_score as _dknn_score  # noqa: F401
from advbench.suite.cells import train as _train  # noqa: F401
from advbench.suite.cells import transfer as _transfer  # noqa: F401

__all__ = ["HANDLERS", "KNOWLEDGE", "Handler", "handler"]
