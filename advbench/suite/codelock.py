"""The lock of component versions: which modules are components, whether their code matches the lock, re-locking.

The identity itself (closures, versions, a cell's code) is :mod:`advbench.codeversion`; this module lists
the components, which needs the registries and the cell handlers, and so lives above them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advbench.codeversion import LOCK_FILE, clear_lock_cache, closure_hash, read_lock
from advbench.errors import AdvbenchError

__all__ = ["LockProblem", "check_lock", "lock_roots", "write_lock"]


def lock_roots() -> list[str]:
    """Every advbench component: each cell kind's handler and knowledge provider, each built-in registry entry."""
    from advbench.attacks import ATTACKS
    from advbench.data.base import DATASETS
    from advbench.models import MODELS
    from advbench.suite.handlers import HANDLERS, KNOWLEDGE
    from advbench.training.regularisers import REGULARISERS

    roots = {fn.__module__ for fn in HANDLERS.values()} | {fn.__module__ for fn in KNOWLEDGE.values()}
    for registry in (ATTACKS, MODELS, DATASETS, REGULARISERS):
        for entry in registry.entries():
            module = getattr(entry.obj, "__module__", "") or ""
            if entry.source == "advbench" and module.startswith("advbench."):
                roots.add(module)
    return sorted(roots)


@dataclass(frozen=True)
class LockProblem:
    """A component whose code and lock disagree."""

    module: str
    problem: str  # "changed", "new" or "gone"
    locked_version: int | None
    locked_hash: str | None
    current_hash: str | None


def check_lock(path: Path = LOCK_FILE) -> list[LockProblem]:
    """The components whose code differs from the lock at ``path`` (empty: the lock is up to date)."""
    lock = read_lock(path)
    problems = []
    roots = lock_roots()
    for module in roots:
        digest = closure_hash(module)
        locked = lock.get(module)
        if locked is None:
            problems.append(LockProblem(module, "new", None, None, digest))
        elif locked.get("hash") != digest:
            problems.append(LockProblem(module, "changed", int(locked["version"]), locked.get("hash"), digest))
    for module in sorted(set(lock) - set(roots)):
        problems.append(LockProblem(module, "gone", int(lock[module]["version"]), lock[module].get("hash"), None))
    return problems


def write_lock(bump: Iterable[str] = (), *, bump_changed: bool = False, path: Path = LOCK_FILE) -> dict[str, Any]:
    """Re-lock every component at its current hash; bump the version of those in ``bump`` (or every changed one).

    A component not in the lock starts at version 1; one no longer a component is dropped. Returns the new lock.
    """
    lock = read_lock(path)
    wanted = set(bump)
    roots = lock_roots()
    unknown = wanted - set(roots)
    if unknown:
        raise AdvbenchError(
            f"cannot bump {', '.join(sorted(unknown))}: not a component; the components are listed by "
            f"`advbench code check --all`"
        )
    out: dict[str, dict[str, Any]] = {}
    for module in roots:
        digest = closure_hash(module)
        old = lock.get(module)
        version = int(old["version"]) if old else 1
        changed = old is not None and old.get("hash") != digest
        if old is not None and (module in wanted or (bump_changed and changed)):
            version += 1
        out[module] = {"version": version, "hash": digest}
    data = {
        "comment": "Code identity of every advbench component (advbench/codeversion.py). Bump a version when "
        "its results change: `advbench code lock --bump MODULE`; re-lock a refactor that changes none: "
        "`advbench code lock`.",
        "components": out,
    }
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    clear_lock_cache()
    return data
