"""The white-box knowledge of an attack on the DkNN (property ``adaptive-dknn``): the DkNN it attacks.

Not a cell kind: the attack handler calls it for attacks with the property, so only those attacks'
cells carry this module's code (and the DkNN's) in their identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from advbench.attacks.dknn_adaptive import DkNNKnowledge
from advbench.errors import AdvbenchError
from advbench.suite.cells import knowledge
from advbench.suite.cells.dknn_index import dknn_index

if TYPE_CHECKING:
    from advbench.models import Classifier
    from advbench.suite.context import ArtefactStore, CellContext

__all__ = ["give_dknn_knowledge"]


@knowledge("adaptive-dknn")
def give_dknn_knowledge(
    ctx: CellContext, store: ArtefactStore, attack: Any, name: str, seed: int, model: Classifier
) -> None:
    """Give an ``adaptive-dknn`` attack the white-box attacker's knowledge of the DkNN it attacks.

    The DkNN index cell of the same model (a dependency of this attack cell in the plan): its training
    inputs and labels, layers, ``k`` and the real DkNN as the scorer of candidates.
    """
    if not callable(getattr(attack, "set_knowledge", None)):
        raise AdvbenchError(
            f"attack {type(attack).__name__} declares the 'adaptive-dknn' property but has no set_knowledge"
            f"(knowledge) method; an attack on the DkNN must accept a DkNNKnowledge"
        )
    dknn = dknn_index(ctx, store, name, seed, model)
    train = ctx.splits.train
    attack.set_knowledge(DkNNKnowledge.from_dknn(dknn, train.x, train.y))
