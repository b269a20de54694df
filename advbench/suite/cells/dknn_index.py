"""Cell kind ``dknn-index``: one model's DkNN (training features indexed, calibration scored)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from advbench.errors import CacheError
from advbench.evaluation.dknn import DkNN
from advbench.suite.cells import handler
from advbench.suite.cells.store import required_entry, trained_model

if TYPE_CHECKING:
    from advbench.models import Classifier
    from advbench.suite.context import ArtefactStore, CellContext
    from advbench.suite.plan import Cell

__all__ = ["dknn_index", "run_dknn_index"]


def _dknn_for(ctx: CellContext, model: Classifier) -> DkNN:
    dk = ctx.suite.evaluations.dknn
    assert dk is not None
    return DkNN(model, layers=dk.layers, k=dk.k, index=dk.index, distance=dk.distance)


@handler("dknn-index")
def run_dknn_index(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    """Build and cache the DkNN index of one model; dknn-score loads it."""
    # Presence is enough here: the checksums of a (possibly multi-GB) index are verified when
    # dknn-score loads it; a corrupt one is discarded there and rebuilt by the next run.
    if ctx.cache.exists(cell.kind, cell.key):
        return True
    name, seed = cell.params["model"], cell.params["seed"]
    model = trained_model(ctx, store, name, seed)
    splits = ctx.splits
    dknn = _dknn_for(ctx, model)
    dknn.fit(splits.train.x, splits.train.y)
    dknn.calibrate(splits.calibration.x, splits.calibration.y)
    with ctx.cache.writer("dknn-index", cell.key, {"label": cell.label}) as folder:
        dknn.save(folder / "dknn")
    return False


def dknn_index(ctx: CellContext, store: ArtefactStore, name: str, seed: int, model: Classifier) -> DkNN:
    """The DkNN index cell's output for ``(name, seed)``: from the store, else loaded from the cache.

    A corrupt index (checksums matched, contents refused) is discarded, so the next run rebuilds it.
    """
    index = store.indices.get((name, seed))
    if index is None:
        index_cell = ctx.cell("dknn-index", model=name, seed=seed)
        entry = required_entry(ctx, index_cell)
        try:
            index = DkNN.load(entry.path / "dknn", model)
        except CacheError as exc:
            ctx.cache.discard(index_cell.kind, index_cell.key, str(exc))
            raise CacheError(
                f"the DkNN index of {name} seed={seed} in {ctx.cache.root} could not be read ({exc}); it was "
                f"discarded: run the suite again to rebuild it"
            ) from exc
        store.indices[(name, seed)] = index
    return index
