"""The cell handlers: what each kind of cell computes, and how it is stored in and read back from the cache.

A handler is registered for its kind with :func:`handler` and called as
``handler(ctx, cell, store) -> bool``: it reads the suite, data and cache from the frozen
:class:`~advbench.suite.context.CellContext`, the artefacts of earlier cells from the
:class:`~advbench.suite.context.ArtefactStore` (or, in a process that did not run them, from the
cache), puts its own artefacts into the store, and returns ``True`` when the cell came from the cache.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from advbench.attacks.base import ThreatModel, create_attack, generate
from advbench.attacks.contract import call_plugin, run_with_time_limit
from advbench.codeversion import code_spec
from advbench.config import ModelConfig
from advbench.data import load_dataset
from advbench.errors import AdvbenchError, CacheError
from advbench.evaluation.dknn import DkNN
from advbench.evaluation.flags import FLAG_COLUMNS, flags_frame, gradient_flags
from advbench.evaluation.min_norm import attack_norm_record
from advbench.evaluation.transfer import outcomes_for, predict
from advbench.io import check_suite_path
from advbench.models import Classifier, create_model
from advbench.models.external import build_from_entry_point, load_weights
from advbench.suite.cache import CacheEntry, cache_key
from advbench.suite.context import ArtefactStore, CellContext
from advbench.suite.plan import Cell
from advbench.training import init_model, load_checkpoint, save_checkpoint, train_model

__all__ = ["HANDLERS", "Handler", "handler"]

log = logging.getLogger(__name__)

#: A cell handler: computes ``cell`` (or reads it from the cache) into the store; ``True`` when cached.
Handler = Callable[[CellContext, Cell, ArtefactStore], bool]

#: The handler of each cell kind (the kinds :func:`~advbench.suite.plan.build_plan` emits).
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of cells of ``kind``."""

    def register(fn: Handler) -> Handler:
        if kind in HANDLERS:
            raise ValueError(f"cell kind {kind!r} already has a handler ({HANDLERS[kind].__qualname__})")
        HANDLERS[kind] = fn
        return fn

    return register


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: {exc}") from exc


def _required_entry(ctx: CellContext, cell: Cell) -> CacheEntry:
    """The verified cache entry of ``cell``, which a later cell needs; an error if it is missing."""
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is None:
        raise CacheError(
            f"{cell.label} is not in the cache at {ctx.cache.root}, but a later cell needs it; "
            f"run the suite again to recompute it"
        )
    return entry


def _model(ctx: CellContext, store: ArtefactStore, name: str, seed: int) -> Classifier:
    """The trained model: from the store, else from its checkpoint in the cache.

    A cell may run in a process that did not run its dependencies (a Ray worker), so every input
    a cell reads can come back from the cache.
    """
    model = store.models.get((name, seed))
    mcfg = next((m for m in ctx.suite.models if m.name == name), None)
    if model is None and mcfg is not None and mcfg.recipe is None:
        model = _external_model(ctx, mcfg)
        store.models[(name, seed)] = model
    if model is None:
        entry = _required_entry(ctx, ctx.cell("train", model=name, seed=seed))
        model, _ = load_checkpoint(entry.path / "checkpoint")
        model = model.to(ctx.device).eval()
        store.models[(name, seed)] = model
    return model


def _adv(
    ctx: CellContext, store: ArtefactStore, seed: int, source: str, akey: str, eps: float
) -> dict[str, torch.Tensor]:
    """An adversarial set: from the store, else from the cache."""
    k = (seed, source, akey, eps)
    if k not in store.adversarial:
        entry = _required_entry(ctx, ctx.cell("attack", seed=seed, model=source, attack=akey, eps=eps))
        store.adversarial[k] = load_file(str(entry.file("adv.safetensors")))
    return store.adversarial[k]


# -- training ----------------------------------------------------------------------------------


def _external_model(ctx: CellContext, mcfg: ModelConfig) -> Classifier:
    """A model brought by the user (``recipe: none``): built by its builder or architecture, weights loaded.

    The weights file obeys the suite path rule and must match the suite's sha256; it is read as
    safetensors only.
    """
    splits = ctx.splits
    what = f"model {mcfg.name!r}"
    model: Any
    if mcfg.builder is not None:
        model = build_from_entry_point(
            mcfg.builder,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            params=dict(mcfg.params),
            what=what,
        )
    else:
        assert mcfg.architecture is not None  # the config requires one of the two
        model = create_model(
            mcfg.architecture, num_classes=splits.num_classes, input_shape=splits.input_shape, **mcfg.params
        )
    if mcfg.weights is not None:
        path = check_suite_path(mcfg.weights.path, field=f"models[{mcfg.name}].weights.path", allowed_roots=["."])
        load_weights(model, path, mcfg.weights.sha256, what=what)
    return model.to(ctx.device).eval()  # type: ignore[no-any-return]


def _run_external(ctx: CellContext, cell: Cell, store: ArtefactStore, mcfg: ModelConfig) -> bool:
    """The train cell of a model brought by the user: load it (nothing is trained), evaluate it clean."""
    name, seed = cell.params["model"], cell.params["seed"]
    cached = ctx.cache.exists(cell.kind, cell.key)
    model = _external_model(ctx, mcfg)
    if not cached:
        card = {"label": name, "external": True, **cell.spec["model"]}
        if mcfg.weights is not None:
            card["weights_path"] = mcfg.weights.path
        with ctx.cache.writer("train", cell.key, {"label": cell.label}) as folder:
            (folder / "card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    store.models[(name, seed)] = model
    _clean_evaluation(ctx, cell, store, model, name, seed)
    return cached


@handler("train")
def run_train(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    name, seed = cell.params["model"], cell.params["seed"]
    mcfg = next(m for m in ctx.suite.models if m.name == name)
    if mcfg.recipe is None or mcfg.architecture is None:
        return _run_external(ctx, cell, store, mcfg)
    splits = ctx.splits
    entry = ctx.cache.get(cell.kind, cell.key)
    cached = entry is not None
    if entry is None:
        model = init_model(
            mcfg.architecture,
            params=mcfg.params,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            seed=seed,
            x_train=splits.train.x,
        )
        result = train_model(
            model,
            splits.train.x,
            splits.train.y,
            mcfg.recipe,
            seed=seed,
            probe=_probe(ctx),
            name=f"{name}/seed{seed}",
            progress=ctx.options.progress,
            device=ctx.device,
        )
        card = {
            "label": name,
            "architecture": mcfg.architecture,
            "params": mcfg.params,
            "recipe": mcfg.recipe.model_dump(),
            "seed": seed,
            "data": cell.spec["data"],
            "versions": cell.spec["versions"],
            "final": result.history[-1] if result.history else {},
            "init_weight_hash": result.initial_weights_hash,
            "batch_order_hash": result.batch_order_hash,
        }
        with ctx.cache.writer("train", cell.key, {"label": cell.label}) as folder:
            save_checkpoint(result.model, folder / "checkpoint", card, regularisers=result.regulariser_state)
            (folder / "history.json").write_text(pd.DataFrame(result.history).to_json(orient="records"))
        entry = ctx.cache.get("train", cell.key)
        if entry is None:
            raise CacheError(f"the checkpoint of {cell.label} could not be read back from {ctx.cache.root}")
    # Fresh and cached runs both continue from the stored checkpoint, so their results are identical.
    try:
        model, card = load_checkpoint(entry.path / "checkpoint")
    except CacheError as exc:
        if not cached:
            raise
        # its checksums matched the cache manifest, but the checkpoint itself was refused: recompute
        ctx.cache.discard("train", cell.key, str(exc))
        return run_train(ctx, cell, store)
    history = pd.DataFrame(_read_json(entry.file("history.json")))
    model = model.to(ctx.device).eval()
    store.models[(name, seed)] = model
    history = history.assign(model=name, seed=seed)
    store.add("training", history)
    _clean_evaluation(ctx, cell, store, model, name, seed)
    return cached


def _clean_evaluation(
    ctx: CellContext, cell: Cell, store: ArtefactStore, model: torch.nn.Module, name: str, seed: int
) -> None:
    """Clean test accuracy and the input-gradient checks of a trained model, cached with its key."""
    test = ctx.splits.test
    val = ctx.splits.validation
    spec = {
        "model": cell.key,
        "test": ctx.splits.hashes["test"],
        "n_grad": _N_GRAD,
        "code": code_spec("clean-eval", threads=cell.spec["code"]["threads"]),
    } | ({"validation": val.sha256} if val is not None else {})
    key = cache_key("clean-eval", spec)
    entry = ctx.cache.get("clean-eval", key)
    if entry is None:
        idx = torch.from_numpy(ctx.transfer_indices[:_N_GRAD])
        record = {
            "model": name,
            "seed": seed,
            "test_accuracy": _accuracy(model, test.x, test.y, ctx.device),
            "n": len(test),
        }
        if val is not None:  # what a hyper-parameter choice reads (suites/alpha-sweep.yaml), never the test split
            record["validation_accuracy"] = _accuracy(model, val.x, val.y, ctx.device)
            record["n_validation"] = len(val)
        flags = flags_frame(
            gradient_flags(model, test.x[idx].to(ctx.device), test.y[idx].to(ctx.device), name=name, seed=seed)
        )
        with ctx.cache.writer("clean-eval", key, {"label": f"clean evaluation {name} seed={seed}"}) as folder:
            (folder / "clean.json").write_text(json.dumps(record))
            flags.to_csv(folder / "gradient_flags.csv", index=False)
        entry = ctx.cache.get("clean-eval", key)
        if entry is None:
            raise CacheError(f"the clean evaluation of {name} seed={seed} could not be read back")
    store.add("clean", pd.DataFrame([_read_json(entry.file("clean.json"))]))
    flags = pd.read_csv(entry.file("gradient_flags.csv"))
    if len(flags):
        store.add("gradient_flags", flags.reindex(columns=list(FLAG_COLUMNS)))


#: Test examples whose input gradients are checked for masking (zero or non-finite).
_N_GRAD = 256


#: Validation examples the entanglement probe reads after each epoch.
_N_PROBE = 500


def _probe(ctx: CellContext) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entanglement probe set: the first 500 examples of the validation split, never test images.

    Without a validation split (``dataset.splits.validation: 0``) there is no probe: the training
    history has no ``entanglement/<layer>`` columns and the claims that read them are not applicable.
    Holding probe examples out of the training set silently would change the training data, so a
    suite that wants the probe declares ``validation``.
    """
    val = ctx.splits.validation
    if val is None or len(val) == 0:
        return None
    n = min(_N_PROBE, len(val))
    return val.x[:n], val.y[:n]


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    return float((predict(model, x.to(device)) == y.numpy()).mean())


# -- attacks -----------------------------------------------------------------------------------


@handler("attack")
def run_attack(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    seed, source, akey, eps = cell.params["seed"], cell.params["model"], cell.params["attack"], cell.params["eps"]
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is not None:
        try:
            store.adversarial[(seed, source, akey, eps)] = load_file(str(entry.file("adv.safetensors")))
            _add_attack_norms(ctx, cell, store)
            return True
        except Exception as exc:  # a safetensors parse error of a file whose checksum matched: treat as corrupt
            ctx.cache.discard(cell.kind, cell.key, f"unreadable adversarial set: {exc}")
    acfg = next(a for a in ctx.suite.attacks if a.key == akey)
    model = _model(ctx, store, source, seed)
    test = ctx.splits.test
    idx = torch.from_numpy(ctx.transfer_indices)
    x, y = test.x[idx].to(ctx.device), test.y[idx].to(ctx.device)
    # the plugin's constructor is its code too: an exit there is this cell's failure
    attack = call_plugin(acfg.name, create_attack, acfg.name, backend=acfg.backend, **acfg.params)
    if "adaptive-dknn" in getattr(attack, "properties", frozenset()):
        _give_dknn_knowledge(ctx, store, attack, source, seed, model)
    t0 = time.perf_counter()

    def attack_all() -> dict[str, torch.Tensor]:
        res = generate(
            model,
            attack,
            x,
            y,
            ThreatModel(eps=eps, norm=acfg.norm),
            batch_size=acfg.batch_size,
            seed=seed,
            progress=ctx.options.progress,
        )
        out = {
            "x_adv": res.x_adv.detach().cpu().contiguous(),
            "success": res.success.detach().cpu().to(torch.uint8).contiguous(),
            "linf": res.linf.detach().cpu().contiguous(),
            "indices": idx.contiguous(),
        }
        if res.l2 is not None:
            out["l2"] = res.l2.detach().cpu().contiguous()
        if res.raw_norm is not None:  # a minimum-norm attack: its own perturbation sizes, before the eps filter
            out["raw_norm"] = res.raw_norm.detach().cpu().contiguous()
        return out

    if ctx.time_limit:
        # in a child process that is killed when the time is up: a plugin cannot swallow the limit
        # (it runs with CHILD_THREADS threads, which the cell's key records)
        tensors = run_with_time_limit(attack_all, timeout_s=ctx.time_limit, name=cell.label)
    else:
        tensors = attack_all()
    meta = {"attack": repr(attack), "eps": str(eps), "norm": acfg.norm}
    with ctx.cache.writer("attack", cell.key, {"label": cell.label, "seconds": time.perf_counter() - t0}) as folder:
        save_file(tensors, str(folder / "adv.safetensors"), metadata=meta)
    store.adversarial[(seed, source, akey, eps)] = tensors
    _add_attack_norms(ctx, cell, store)
    return False


def _add_attack_norms(ctx: CellContext, cell: Cell, store: ArtefactStore) -> None:
    """Table ``attack_norms``: a minimum-norm attack's perturbation sizes (its set holds ``raw_norm``)."""
    seed, source, akey, eps = cell.params["seed"], cell.params["model"], cell.params["attack"], cell.params["eps"]
    tensors = store.adversarial[(seed, source, akey, eps)]
    if "raw_norm" not in tensors:
        return
    norm = next(a.norm for a in ctx.suite.attacks if a.key == akey)
    raw = tensors["raw_norm"].double().numpy()
    store.add(
        "attack_norms", attack_norm_record(seed=seed, source=source, attack=akey, eps=eps, norm=norm, raw_norm=raw)
    )


def _give_dknn_knowledge(
    ctx: CellContext, store: ArtefactStore, attack: Any, name: str, seed: int, model: Classifier
) -> None:
    """Give an ``adaptive-dknn`` attack the white-box attacker's knowledge of the DkNN it attacks.

    The DkNN index cell of the same model (a dependency of this attack cell in the plan): its training
    inputs and labels, layers, ``k`` and the real DkNN as the scorer of candidates.
    """
    from advbench.attacks.dknn_adaptive import DkNNKnowledge

    if not callable(getattr(attack, "set_knowledge", None)):
        raise AdvbenchError(
            f"attack {type(attack).__name__} declares the 'adaptive-dknn' property but has no set_knowledge"
            f"(knowledge) method; an attack on the DkNN must accept a DkNNKnowledge"
        )
    dknn = _dknn_index(ctx, store, name, seed, model)
    train = ctx.splits.train
    attack.set_knowledge(DkNNKnowledge.from_dknn(dknn, train.x, train.y))


# -- transfer ----------------------------------------------------------------------------------


@handler("transfer")
def run_transfer(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    """One adversarial set on every model of ``target_seed``: its own seed (the paired, shared-path
    design; table ``outcomes``) or another seed (the independent-training control; ``cross_outcomes``)."""
    seed, source, akey, eps = cell.params["seed"], cell.params["source"], cell.params["attack"], cell.params["eps"]
    target_seed = cell.params.get("target_seed", seed)
    table = "outcomes" if target_seed == seed else "cross_outcomes"
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is not None:
        try:
            store.add(table, pd.read_csv(entry.file("outcomes.csv.gz")).assign(target_seed=target_seed))
            return True
        except (OSError, ValueError) as exc:
            ctx.cache.discard(cell.kind, cell.key, f"unreadable outcomes: {exc}")
    adv = _adv(ctx, store, seed, source, akey, eps)
    test = ctx.splits.test
    idx = adv["indices"].long()
    targets = {m.name: _model(ctx, store, m.name, target_seed) for m in ctx.suite.models}
    src = source
    if target_seed != seed:
        # the source (of `seed`) gives source_success; the targets are the models of `target_seed`
        src = f"{source}@seed{seed}"
        targets = {src: _model(ctx, store, source, seed), **targets}
    df = outcomes_for(
        seed=seed,
        source=src,
        attack=akey,
        eps=eps,
        x_clean=test.x[idx].to(ctx.device),
        x_adv=adv["x_adv"].to(ctx.device),
        y=test.y[idx].to(ctx.device),
        targets=targets,
        examples=idx.numpy(),
        norm=next(a.norm for a in ctx.suite.attacks if a.key == akey),
    )
    if src != source:
        df = df[df["target"] != src].assign(source=source).reset_index(drop=True)
    with ctx.cache.writer("transfer", cell.key, {"label": cell.label}) as folder:
        df.to_csv(folder / "outcomes.csv.gz", index=False)
    store.add(table, df.assign(target_seed=target_seed))
    return False


# -- DkNN --------------------------------------------------------------------------------------


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
    model = _model(ctx, store, name, seed)
    splits = ctx.splits
    dknn = _dknn_for(ctx, model)
    dknn.fit(splits.train.x, splits.train.y)
    dknn.calibrate(splits.calibration.x, splits.calibration.y)
    with ctx.cache.writer("dknn-index", cell.key, {"label": cell.label}) as folder:
        dknn.save(folder / "dknn")
    return False


def _dknn_index(ctx: CellContext, store: ArtefactStore, name: str, seed: int, model: Classifier) -> DkNN:
    """The DkNN index cell's output for ``(name, seed)``: from the store, else loaded from the cache.

    A corrupt index (checksums matched, contents refused) is discarded, so the next run rebuilds it.
    """
    index = store.indices.get((name, seed))
    if index is None:
        index_cell = ctx.cell("dknn-index", model=name, seed=seed)
        entry = _required_entry(ctx, index_cell)
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


def _ood_set(ctx: CellContext) -> tuple[torch.Tensor, torch.Tensor] | None:
    ood = ctx.suite.evaluations.ood
    if ood is None or ood.dataset is None:
        return None
    raw = load_dataset(ood.dataset, **ood.params)
    x = np.concatenate([raw.x_train] + ([raw.x_test] if raw.x_test is not None else []))
    y = np.concatenate([raw.y_train] + ([raw.y_test] if raw.y_test is not None else []))
    shape = ctx.splits.input_shape
    if tuple(x.shape[1:]) != tuple(shape):
        raise AdvbenchError(
            f"evaluations.ood: the dataset {ood.dataset!r} has inputs of shape {tuple(x.shape[1:])}, but the models "
            f"take {tuple(shape)}; pick a dataset of that shape or pass params that resize it (e.g. digits: size: 28)"
        )
    rng = np.random.default_rng(ctx.suite.dataset.seed + 2)
    idx = np.sort(rng.permutation(len(y))[: ood.n_examples])
    return torch.from_numpy(x[idx]).float() / float(raw.max_value), torch.from_numpy(y[idx]).long()


@handler("dknn-score")
def run_dknn_score(ctx: CellContext, cell: Cell, store: ArtefactStore) -> bool:
    """Score the clean, adversarial and OOD sets of one model with its DkNN and its softmax.

    Per example: :func:`~advbench.evaluation.dknn.example_records` (p-values, neighbour counts per
    layer, the softmax beside the DkNN) with the set's identity (``input_set``, ``kind``, ``source``/
    ``attack``/``eps`` of adversarial sets, ``distance`` and ``shift_sha256`` of shift sets). Per set:
    :func:`~advbench.evaluation.calibration.dknn_set_records` (conformal validity and efficiency,
    detection of *successful* attacks and of OOD inputs against the clean set, the MSP's ECE).
    Beside credibility and the MSP, every set is scored by the Mahalanobis detector (column
    ``mahalanobis``), fitted once per model on the training split's last-hidden-layer features.
    """
    name, seed = cell.params["model"], cell.params["seed"]
    entry = ctx.cache.get(cell.kind, cell.key)
    if entry is not None:
        try:
            store.add("dknn", pd.read_csv(entry.file("records.csv")))
            store.add("dknn_examples", pd.read_csv(entry.file("examples.csv.gz")))
            return True
        except (OSError, ValueError) as exc:
            ctx.cache.discard(cell.kind, cell.key, f"unreadable DkNN scores: {exc}")
    # lazy: scikit-learn's metrics take ~2 s to import, and a cache hit needs none
    from advbench.data.shift import shift_sets
    from advbench.evaluation.calibration import dknn_set_records
    from advbench.evaluation.dknn import example_records, softmax_probabilities
    from advbench.evaluation.mahalanobis import fit_mahalanobis, mahalanobis_scores

    model = _model(ctx, store, name, seed)
    dknn = _dknn_index(ctx, store, name, seed, model)
    train = ctx.splits.train
    maha = fit_mahalanobis(model, train.x, train.y, device=ctx.device)
    n = ctx.n_dknn
    test = ctx.splits.test
    ids = ctx.transfer_indices[:n]
    idx = torch.from_numpy(ids)
    x_clean, y = test.x[idx], test.y[idx]
    n_cal = len(ctx.splits.calibration)

    def examples(x: torch.Tensor, labels: np.ndarray | None, example_ids: np.ndarray, **kw: Any) -> pd.DataFrame:
        x = x.to(ctx.device)
        return example_records(
            dknn.predict(x),
            labels=labels,
            example_ids=example_ids,
            softmax=softmax_probabilities(model, x),
            mahalanobis=mahalanobis_scores(model, maha, x, device=ctx.device),
            **kw,
        )

    rows: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []

    def add(frame: pd.DataFrame, input_set: str, kind: str, extra: dict[str, Any], clean: pd.DataFrame | None) -> None:
        rows.extend(
            dknn_set_records(
                frame,
                model=name,
                seed=seed,
                input_set=input_set,
                kind=kind,
                clean_examples=clean,
                n_calibration=n_cal,
                extra=extra,
            )
        )
        ident = {"model": name, "seed": seed, "input_set": input_set, "kind": kind, **extra}
        frames.append(frame.assign(**ident)[[*ident, *frame.columns]])

    y_np = y.numpy()
    clean = examples(x_clean, y_np, ids)
    add(clean, "clean", "clean", {}, None)
    clean_correct = clean["softmax_correct"].to_numpy(dtype=bool)
    # The adversarial sets this cell scores are the ones its spec lists (all of the seed's, less
    # any whose attack failed), in a fixed order.
    wanted = set(cell.spec["adv"])
    attacks = sorted(
        (c.params["model"], c.params["attack"], c.params["eps"])
        for c in ctx.cells_of("attack")
        if c.params["seed"] == seed and c.key in wanted
    )
    for source, akey, eps in attacks:
        adv = _adv(ctx, store, seed, source, akey, eps)
        frame = examples(adv["x_adv"][:n], y_np, ids, clean_correct=clean_correct)
        add(
            frame, f"{akey}@{eps:g} from {source}", "adversarial", {"source": source, "attack": akey, "eps": eps}, clean
        )
    ood_cfg = ctx.suite.evaluations.ood
    ood = _ood_set(ctx)
    if ood is not None and ood_cfg is not None:
        # another dataset: far from the training distribution; its ids are positions in its sample, and
        # its labels (another dataset's classes) are not the models' classes, so it is scored unlabelled
        add(examples(ood[0], None, np.arange(len(ood[0]))), "ood", "ood", {"distance": "far"}, clean)
    if ood_cfg is not None and ood_cfg.shifts:
        for sh in shift_sets(x_clean, y_np, ood_cfg.shifts, seed=ctx.suite.dataset.seed, example_ids=ids):
            extra = {"distance": sh.distance, "shift": sh.name, "shift_sha256": sh.sha256}
            add(examples(sh.tensor(), sh.y, ids), f"shift {sh.name}", "ood", extra, clean)
    records, table = pd.DataFrame(rows), pd.concat(frames, ignore_index=True)
    with ctx.cache.writer("dknn-score", cell.key, {"label": cell.label}) as folder:
        records.to_csv(folder / "records.csv", index=False)
        table.to_csv(folder / "examples.csv.gz", index=False)
    store.add("dknn", records)
    store.add("dknn_examples", table)
    return False
