"""What each kind of cell computes, and how it is stored in and read back from the cache.

A handler returns ``True`` when the cell came from the cache, ``False`` when it was computed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from advbench.errors import AdvbenchError, CacheError
from advbench.suite.plan import Cell

if TYPE_CHECKING:
    from advbench.models import Classifier
    from advbench.suite.runner import Runner, _State

log = logging.getLogger(__name__)


def _read_json(path: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path}: {exc}") from exc


def _entry_or_none(runner: Runner, cell: Cell) -> Any:
    return runner.cache.get(cell.kind, cell.key)


def _required_entry(runner: Runner, cell: Cell) -> Any:
    """The verified cache entry of ``cell``, which a later cell needs; an error if it is missing."""
    entry = runner.cache.get(cell.kind, cell.key)
    if entry is None:
        raise CacheError(
            f"{cell.label} is not in the cache at {runner.cache.root}, but a later cell needs it; "
            f"run the suite again to recompute it"
        )
    return entry


def _model(runner: Runner, state: _State, name: str, seed: int) -> Classifier:
    """The trained model: from this process's state, else from its checkpoint in the cache.

    A cell may run in a process that did not run its dependencies (a Ray worker), so every input
    a cell reads can come back from the cache.
    """
    model = state.models.get((name, seed))
    if model is None:
        from advbench.training import load_checkpoint

        entry = _required_entry(runner, runner.cell("train", model=name, seed=seed))
        model, _ = load_checkpoint(entry.path / "checkpoint")
        model = model.to(runner.device).eval()
        state.models[(name, seed)] = model
    return model


def _adv(runner: Runner, state: _State, seed: int, source: str, akey: str, eps: float) -> dict[str, torch.Tensor]:
    """An adversarial set: from this process's state, else from the cache."""
    k = (seed, source, akey, eps)
    if k not in state.adv:
        entry = _required_entry(runner, runner.cell("attack", seed=seed, model=source, attack=akey, eps=eps))
        state.adv[k] = load_file(str(entry.file("adv.safetensors")))
    return state.adv[k]


# -- training ----------------------------------------------------------------------------------


def run_train(runner: Runner, cell: Cell, state: _State) -> bool:
    from advbench.training import init_model, load_checkpoint, save_checkpoint, train_model

    name, seed = cell.params["model"], cell.params["seed"]
    mcfg = next(m for m in runner.suite.models if m.name == name)
    splits = runner.splits()
    entry = _entry_or_none(runner, cell)
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
            probe=_probe(runner),
            name=f"{name}/seed{seed}",
            progress=runner.opt.progress,
            device=runner.device,
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
        with runner.cache.writer("train", cell.key, {"label": cell.label}) as folder:
            save_checkpoint(result.model, folder / "checkpoint", card)
            (folder / "history.json").write_text(pd.DataFrame(result.history).to_json(orient="records"))
        entry = runner.cache.get("train", cell.key)
        if entry is None:
            raise CacheError(f"the checkpoint of {cell.label} could not be read back from {runner.cache.root}")
    # Fresh and cached runs both continue from the stored checkpoint, so their results are identical.
    try:
        model, card = load_checkpoint(entry.path / "checkpoint")
    except CacheError as exc:
        if not cached:
            raise
        # its checksums matched the cache manifest, but the checkpoint itself was refused: recompute
        runner.cache.discard("train", cell.key, str(exc))
        return run_train(runner, cell, state)
    history = pd.DataFrame(_read_json(entry.file("history.json")))
    model = model.to(runner.device).eval()
    state.models[(name, seed)] = model
    history = history.assign(model=name, seed=seed)
    state.histories.append(history)
    _clean_evaluation(runner, cell, state, model, name, seed)
    return cached


def _clean_evaluation(runner: Runner, cell: Cell, state: _State, model: torch.nn.Module, name: str, seed: int) -> None:
    """Clean test accuracy and the input-gradient checks of a trained model, cached with its key."""
    from advbench.evaluation.flags import FLAG_COLUMNS, flags_frame, gradient_flags
    from advbench.suite.cache import cache_key

    test = runner.splits().test
    key = cache_key("clean-eval", {"model": cell.key, "test": runner.splits().hashes["test"], "n_grad": _N_GRAD})
    entry = runner.cache.get("clean-eval", key)
    if entry is None:
        idx = torch.from_numpy(runner.transfer_indices()[:_N_GRAD])
        record = {
            "model": name,
            "seed": seed,
            "test_accuracy": _accuracy(model, test.x, test.y, runner.device),
            "n": len(test),
        }
        flags = flags_frame(
            gradient_flags(model, test.x[idx].to(runner.device), test.y[idx].to(runner.device), name=name, seed=seed)
        )
        with runner.cache.writer("clean-eval", key, {"label": f"clean evaluation {name} seed={seed}"}) as folder:
            (folder / "clean.json").write_text(json.dumps(record))
            flags.to_csv(folder / "gradient_flags.csv", index=False)
        entry = runner.cache.get("clean-eval", key)
        if entry is None:
            raise CacheError(f"the clean evaluation of {name} seed={seed} could not be read back")
    state.clean.append(_read_json(entry.file("clean.json")))
    flags = pd.read_csv(entry.file("gradient_flags.csv"))
    if len(flags):
        state.flags.append(flags.reindex(columns=list(FLAG_COLUMNS)))


#: Test examples whose input gradients are checked for masking (zero or non-finite).
_N_GRAD = 256


def _probe(runner: Runner) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed probe set (the first 500 calibration-free test examples) for the entanglement probe."""
    test = runner.splits().test
    n = min(500, len(test))
    return test.x[:n], test.y[:n]


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    from advbench.evaluation.transfer import predict

    return float((predict(model, x.to(device)) == y.numpy()).mean())


# -- attacks -----------------------------------------------------------------------------------


def run_attack(runner: Runner, cell: Cell, state: _State) -> bool:
    from advbench.attacks.base import ThreatModel, create_attack, generate

    seed, source, akey, eps = cell.params["seed"], cell.params["model"], cell.params["attack"], cell.params["eps"]
    entry = _entry_or_none(runner, cell)
    if entry is not None:
        try:
            state.adv[(seed, source, akey, eps)] = load_file(str(entry.file("adv.safetensors")))
            return True
        except Exception as exc:  # a safetensors parse error of a file whose checksum matched: treat as corrupt
            runner.cache.discard(cell.kind, cell.key, f"unreadable adversarial set: {exc}")
    acfg = next(a for a in runner.suite.attacks if a.key == akey)
    model = _model(runner, state, source, seed)
    test = runner.splits().test
    idx = torch.from_numpy(runner.transfer_indices())
    x, y = test.x[idx].to(runner.device), test.y[idx].to(runner.device)
    attack = create_attack(acfg.name, backend=acfg.backend, **acfg.params)
    t0 = time.perf_counter()
    res = generate(
        model, attack, x, y, ThreatModel(eps=eps), batch_size=acfg.batch_size, seed=seed, progress=runner.opt.progress
    )
    tensors = {
        "x_adv": res.x_adv.detach().cpu().contiguous(),
        "success": res.success.detach().cpu().to(torch.uint8).contiguous(),
        "linf": res.linf.detach().cpu().contiguous(),
        "indices": idx.contiguous(),
    }
    with runner.cache.writer("attack", cell.key, {"label": cell.label, "seconds": time.perf_counter() - t0}) as folder:
        save_file(tensors, str(folder / "adv.safetensors"), metadata={"attack": repr(attack), "eps": str(eps)})
    state.adv[(seed, source, akey, eps)] = tensors
    return False


# -- transfer ----------------------------------------------------------------------------------


def run_transfer(runner: Runner, cell: Cell, state: _State) -> bool:
    from advbench.evaluation.transfer import outcomes_for

    seed, source, akey, eps = cell.params["seed"], cell.params["source"], cell.params["attack"], cell.params["eps"]
    entry = _entry_or_none(runner, cell)
    if entry is not None:
        try:
            state.outcomes.append(pd.read_csv(entry.file("outcomes.csv.gz")))
            return True
        except (OSError, ValueError) as exc:
            runner.cache.discard(cell.kind, cell.key, f"unreadable outcomes: {exc}")
    adv = _adv(runner, state, seed, source, akey, eps)
    test = runner.splits().test
    idx = adv["indices"].long()
    targets = {m.name: _model(runner, state, m.name, seed) for m in runner.suite.models}
    df = outcomes_for(
        seed=seed,
        source=source,
        attack=akey,
        eps=eps,
        x_clean=test.x[idx].to(runner.device),
        x_adv=adv["x_adv"].to(runner.device),
        y=test.y[idx].to(runner.device),
        targets=targets,
        examples=idx.numpy(),
    )
    with runner.cache.writer("transfer", cell.key, {"label": cell.label}) as folder:
        df.to_csv(folder / "outcomes.csv.gz", index=False)
    state.outcomes.append(df)
    return False


# -- DkNN --------------------------------------------------------------------------------------


def _dknn_for(runner: Runner, model: Classifier) -> Any:
    from advbench.evaluation.dknn import DkNN

    dk = runner.suite.evaluations.dknn
    assert dk is not None
    return DkNN(model, layers=dk.layers, k=dk.k, index=dk.index, distance=dk.distance)


def run_dknn_index(runner: Runner, cell: Cell, state: _State) -> bool:
    """Build and cache the DkNN index of one model; dknn-score loads it."""
    # Presence is enough here: the checksums of a (possibly multi-GB) index are verified when
    # dknn-score loads it, and a corrupt index is rebuilt there.
    if runner.cache.exists(cell.kind, cell.key):
        return True
    name, seed = cell.params["model"], cell.params["seed"]
    model = _model(runner, state, name, seed)
    splits = runner.splits()
    dknn = _dknn_for(runner, model)
    dknn.fit(splits.train.x, splits.train.y)
    dknn.calibrate(splits.calibration.x, splits.calibration.y)
    with runner.cache.writer("dknn-index", cell.key, {"label": cell.label}) as folder:
        dknn.save(folder / "dknn")
    return False


def _ood_set(runner: Runner) -> tuple[torch.Tensor, torch.Tensor] | None:
    ood = runner.suite.evaluations.ood
    if ood is None:
        return None
    from advbench.data import load_dataset

    raw = load_dataset(ood.dataset, **ood.params)
    x = np.concatenate([raw.x_train] + ([raw.x_test] if raw.x_test is not None else []))
    y = np.concatenate([raw.y_train] + ([raw.y_test] if raw.y_test is not None else []))
    shape = runner.splits().input_shape
    if tuple(x.shape[1:]) != tuple(shape):
        raise AdvbenchError(
            f"evaluations.ood: the dataset {ood.dataset!r} has inputs of shape {tuple(x.shape[1:])}, but the models "
            f"take {tuple(shape)}; pick a dataset of that shape or pass params that resize it (e.g. digits: size: 28)"
        )
    rng = np.random.default_rng(runner.suite.dataset.seed + 2)
    idx = np.sort(rng.permutation(len(y))[: ood.n_examples])
    return torch.from_numpy(x[idx]).float() / float(raw.max_value), torch.from_numpy(y[idx]).long()


def run_dknn_score(runner: Runner, cell: Cell, state: _State) -> bool:
    name, seed = cell.params["model"], cell.params["seed"]
    entry = _entry_or_none(runner, cell)
    if entry is not None:
        try:
            state.dknn.append(pd.read_csv(entry.file("records.csv")))
            state.dknn_examples.append(pd.read_csv(entry.file("examples.csv.gz")))
            return True
        except (OSError, ValueError) as exc:
            runner.cache.discard(cell.kind, cell.key, f"unreadable DkNN scores: {exc}")
    # imported only when scoring (scikit-learn's metrics take ~2 s to import; a cache hit needs none)
    from advbench.evaluation.calibration import calibration_records
    from advbench.evaluation.dknn import DkNN

    model = _model(runner, state, name, seed)
    index_cell = runner.cell("dknn-index", model=name, seed=seed)
    ientry = runner.cache.get("dknn-index", index_cell.key)
    if ientry is None:
        run_dknn_index(runner, index_cell, state)
        ientry = runner.cache.get("dknn-index", index_cell.key)
    if ientry is None:
        raise CacheError(f"the DkNN index of {name} seed={seed} could not be built or read")
    try:
        dknn = DkNN.load(ientry.path / "dknn", model)
    except CacheError as exc:  # checksums matched, contents refused: rebuild the index once
        runner.cache.discard("dknn-index", index_cell.key, str(exc))
        run_dknn_index(runner, index_cell, state)
        ientry = runner.cache.get("dknn-index", index_cell.key)
        if ientry is None:
            raise CacheError(f"the DkNN index of {name} seed={seed} could not be rebuilt") from exc
        dknn = DkNN.load(ientry.path / "dknn", model)
    n = runner.n_dknn()
    test = runner.splits().test
    idx = torch.from_numpy(runner.transfer_indices()[:n])
    x_clean, y = test.x[idx], test.y[idx]
    sets: dict[str, dict[str, Any]] = {"clean": {"x": x_clean, "y": y, "kind": "clean"}}
    # The adversarial sets this cell scores are the ones its spec lists (all of the seed's, less
    # any whose attack failed), in a fixed order.
    wanted = set(cell.spec["adv"])
    attacks = sorted(
        (c.params["model"], c.params["attack"], c.params["eps"])
        for c in runner.cells_of("attack")
        if c.params["seed"] == seed and c.key in wanted
    )
    for source, akey, eps in attacks:
        adv = _adv(runner, state, seed, source, akey, eps)
        sets[f"{akey}@{eps:g} from {source}"] = {
            "x": adv["x_adv"][:n],
            "y": y,
            "kind": "adversarial",
            "source": source,
            "attack": akey,
            "eps": eps,
        }
    ood = _ood_set(runner)
    if ood is not None:
        sets["ood"] = {"x": ood[0], "y": ood[1], "kind": "ood"}
    outputs = {k: dknn.predict(v["x"].to(runner.device)) for k, v in sets.items()}
    rows: list[dict[str, Any]] = []
    frames = []
    clean_cred = outputs["clean"].credibility
    for set_name, info in sets.items():
        out = outputs[set_name]
        labels = None if info["kind"] == "ood" else info["y"].numpy()
        extra = {k: info[k] for k in ("source", "attack", "eps") if k in info} | {"kind": info["kind"]}
        rows += calibration_records(
            model=name,
            seed=seed,
            input_set=set_name,
            prediction=out.prediction,
            credibility=out.credibility,
            labels=labels,
            clean_credibility=None if set_name == "clean" else clean_cred,
            extra=extra,
        )
        correct = out.prediction == labels if labels is not None else np.zeros(len(out), dtype=bool)
        frames.append(
            pd.DataFrame(
                {
                    "model": name,
                    "seed": seed,
                    "input_set": set_name,
                    "kind": info["kind"],
                    "credibility": out.credibility,
                    "confidence": out.confidence,
                    "prediction": out.prediction,
                    "correct": correct,
                }
            )
        )
    records, examples = pd.DataFrame(rows), pd.concat(frames, ignore_index=True)
    with runner.cache.writer("dknn-score", cell.key, {"label": cell.label}) as folder:
        records.to_csv(folder / "records.csv", index=False)
        examples.to_csv(folder / "examples.csv.gz", index=False)
    state.dknn.append(records)
    state.dknn_examples.append(examples)
    return False
