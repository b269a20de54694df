"""Which third-party library an attack runs on, and how to install it when it is missing.

torchattacks is advbench's default backend but not a declared dependency: every release that has
the attacks advbench wraps (3.4 and later) declares ``torchvision`` and ``requests~=2.25.1``
although it imports neither, and pip would pull a second torch build and a stale ``requests`` with
it. It is installed with ``--no-deps`` (``scripts/setup.sh`` does this), and ``advbench validate``
(also run by ``advbench run`` before anything starts) names a missing backend with the command
below. foolbox is a declared dependency.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from advbench.params import ParamSpec

__all__ = ["BACKEND_INSTALL", "missing_backend", "missing_package_message", "required_backend"]

#: the command that installs each backend the way advbench's set-up does
BACKEND_INSTALL: dict[str, str] = {
    "torchattacks": 'pip install --no-deps "torchattacks==3.5.1"',
    "foolbox": 'pip install "foolbox==3.3.4"',
}


def required_backend(attack: Any, backend: str | None = None) -> str | None:
    """The library ``attack`` (a registered attack class) imports when run with ``backend``; None if none.

    A wrapped library attack names its ``package``; a built-in with a ``backend`` parameter uses the
    given backend or the parameter's default.
    """
    package = getattr(attack, "package", None)
    if isinstance(package, str) and package in BACKEND_INSTALL:
        return package
    spec = ParamSpec.of(attack, keyword_only=True)
    param = spec.params.get("backend")
    if param is None:
        return None
    chosen = backend if backend is not None else param.default
    return chosen if isinstance(chosen, str) and chosen in BACKEND_INSTALL else None


def missing_package_message(package: str) -> str | None:
    """None when ``package`` imports; otherwise what is missing and the command that installs it."""
    if importlib.util.find_spec(package) is not None:
        return None
    command = BACKEND_INSTALL.get(package, f"pip install {package}")
    return f"needs {package}, which is not installed; install it with: {command}"


def missing_backend(attack: Any, backend: str | None = None) -> str | None:
    """None when the library ``attack`` runs on (with ``backend``) is importable; otherwise how to install it."""
    package = required_backend(attack, backend)
    return None if package is None else missing_package_message(package)
