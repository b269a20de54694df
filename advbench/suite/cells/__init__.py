"""Cell handlers, one module per cell kind, and the registry that finds them.

A handler is registered for its kind with :func:`handler` and called as
``handler(ctx, cell, store) -> bool``: it reads the suite, data and cache from the frozen
:class:`~advbench.suite.context.CellContext`, the artefacts of earlier cells from the
:class:`~advbench.suite.context.ArtefactStore` (or, in a process that did not run them, from the
cache), puts its own artefacts into the store, and returns ``True`` when the cell came from the cache.

Each kind's module is a code component of its cells' identity (:mod:`advbench.codeversion`): the cache
key of a cell follows the import closure of its own handler module, not of the others. So this package
file holds only the registries; :mod:`advbench.suite.handlers` imports every kind's module to register it.

A *knowledge provider* gives an attack with a given property what a white-box attacker of a defence
knows (``adaptive-dknn``: the DkNN it attacks). It is looked up here by property rather than imported
by the attack handler, so that only the cells of attacks with that property carry its code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advbench.models import Classifier
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["HANDLERS", "KNOWLEDGE", "Handler", "KnowledgeProvider", "handler", "knowledge"]

#: A cell handler: computes ``cell`` (or reads it from the cache) into the store; ``True`` when cached.
Handler = Callable[["CellContext", "Cell", "ArtefactStore"], bool]
#: ``provider(ctx, store, attack, model_name, seed, model)``: hands the attack its white-box knowledge.
KnowledgeProvider = Callable[["CellContext", "ArtefactStore", Any, str, int, "Classifier"], None]

#: The handler of each cell kind (the kinds :func:`~advbench.suite.plan.build_plan` emits).
HANDLERS: dict[str, Handler] = {}
#: The knowledge provider of each attack property that needs one.
KNOWLEDGE: dict[str, KnowledgeProvider] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of cells of ``kind``."""

    def register(fn: Handler) -> Handler:
        if kind in HANDLERS:
            raise ValueError(f"cell kind {kind!r} already has a handler ({HANDLERS[kind].__qualname__})")
        HANDLERS[kind] = fn
        return fn

    return register


def knowledge(prop: str) -> Callable[[KnowledgeProvider], KnowledgeProvider]:
    """Register the decorated function as the knowledge provider of attacks with property ``prop``."""

    def register(fn: KnowledgeProvider) -> KnowledgeProvider:
        if prop in KNOWLEDGE:
            raise ValueError(
                f"attack property {prop!r} already has a knowledge provider ({KNOWLEDGE[prop].__qualname__})"
            )
        KNOWLEDGE[prop] = fn
        return fn

    return register
