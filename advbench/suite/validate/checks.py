"""Checks beyond the schema: names against the registries, sizes against the dataset, fields that
exclude each other, and layer names against what each architecture declares."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from advbench.analysis.claims import CLAIMS
from advbench.attacks import ATTACKS
from advbench.attacks.backends import BACKEND_INSTALL, missing_backend, missing_package_message
from advbench.config import Suite
from advbench.data import DATASETS, dataset_sizes
from advbench.data.shift import parse_shift
from advbench.errors import DataError, UnknownNameError
from advbench.io import suite_path_problems
from advbench.models import MODELS, declared_hidden_layers
from advbench.suite.validate.keywords import (
    RESERVED_DATASET,
    RESERVED_MODEL,
    RESERVED_OOD,
    RESERVED_REGULARISER,
    report_attack_params,
    report_params,
)
from advbench.suite.validate.messages import PathT, Problems
from advbench.training import REGULARISERS

__all__ = ["cross_field_problems", "layer_problems", "registry_problems", "regulariser_problems"]


def registry_problems(data: dict[str, Any], report: Problems) -> None:
    """Names against the registries, keyword arguments against signatures, names used twice."""

    def lookup(registry: Any, name: Any, loc: PathT) -> Any:
        if not isinstance(name, str):
            return None  # the schema reports the missing value or the wrong type
        try:
            return registry.get(name)
        except UnknownNameError as exc:
            package = name.split(".")[0] if "." in name else None
            missing = missing_package_message(package) if package in BACKEND_INSTALL else None
            if missing:
                report.add(loc, f"given {name!r}, which {missing}")
                return None
            mean = f"; did you mean {', '.join(repr(c) for c in exc.close)}?" if exc.close else ""
            shown = ", ".join(exc.available[:12]) + (", ..." if len(exc.available) > 12 else "")
            report.add(
                loc,
                f"given {name!r}; expected a registered {exc.kind} ({shown or 'none registered'}){mean}; "
                f"see `advbench list {exc.kind}s`",
            )
            return None

    ds = data.get("dataset")
    if isinstance(ds, dict):
        loader = lookup(DATASETS, ds.get("name"), ("dataset", "name"))
        report_params(report, loader, ds.get("params", {}), ("dataset", "params"), RESERVED_DATASET, check_missing=True)
    evaluations = data.get("evaluations")
    ood = evaluations.get("ood") if isinstance(evaluations, dict) else None
    if isinstance(ood, dict):
        if ood.get("dataset") is not None:
            loader = lookup(DATASETS, ood.get("dataset"), ("evaluations", "ood", "dataset"))
            report_params(
                report,
                loader,
                ood.get("params", {}),
                ("evaluations", "ood", "params"),
                RESERVED_OOD,
                check_missing=True,
            )
        shifts = ood.get("shifts")
        for i, name in enumerate(shifts if isinstance(shifts, list) else []):
            if isinstance(name, str):
                try:
                    parse_shift(name)
                except DataError as exc:
                    report.add(("evaluations", "ood", "shifts", i), str(exc))

    claims = data.get("claims")
    if isinstance(claims, list):
        for i, name in enumerate(claims):
            lookup(CLAIMS, name, ("claims", i))

    models = data.get("models")
    if isinstance(models, list):
        seen: dict[str, int] = {}
        for i, m in enumerate(models):
            if not isinstance(m, dict):
                continue
            name = m.get("name")
            if isinstance(name, str):
                if name in seen:
                    report.add(
                        ("models", i, "name"),
                        f"given {name!r}, already used by models[{seen[name]}]; expected a distinct name per model",
                    )
                seen.setdefault(name, i)
            if m.get("architecture") is None and isinstance(m.get("builder"), str) and ":" not in m["builder"]:
                lookup(MODELS, m.get("builder"), ("models", i, "builder"))
                continue  # a user's builder takes its own params
            arch = lookup(MODELS, m.get("architecture"), ("models", i, "architecture"))
            report_params(
                report, arch, m.get("params", {}), ("models", i, "params"), RESERVED_MODEL, check_missing=True
            )
            regulariser_problems(m.get("recipe"), ("models", i, "recipe"), report, lookup)

    attacks = data.get("attacks")
    if isinstance(attacks, list):
        seen = {}
        for i, a in enumerate(attacks):
            if not isinstance(a, dict):
                continue
            key = a.get("label") or a.get("name")
            if isinstance(key, str):
                if key in seen:
                    field = "label" if a.get("label") else "name"
                    report.add(
                        ("attacks", i, field),
                        f"given {key!r}, already used by attacks[{seen[key]}]; expected each attack once: merge "
                        f"their eps lists or give one a distinct 'label'",
                    )
                seen.setdefault(key, i)
            attack = lookup(ATTACKS, a.get("name"), ("attacks", i, "name"))
            if attack is None:
                continue
            norm = a.get("norm", "linf")
            declared = ATTACKS.metadata(str(a.get("name"))).get("norm", getattr(attack, "norm", None))
            if norm == "l2" and declared not in (None, "l2"):
                report.add(
                    ("attacks", i, "norm"),
                    f"given norm 'l2', but {a.get('name')} is a {declared!r} attack; expected an L2 attack "
                    f"(pgd-l2, torchattacks.PGDL2, torchattacks.CW, foolbox.L2CarliniWagnerAttack, ...; "
                    f"`advbench list attacks` shows each norm) or norm: linf",
                )
            if a.get("warm_start") is True and not callable(getattr(attack, "set_warm_starts", None)):
                report.add(
                    ("attacks", i, "warm_start"),
                    f"given warm_start: true, but {a.get('name')} takes no warm starts (it has no set_warm_starts "
                    f"method); expected an attack that accepts them (dknn-adaptive) or warm_start: false",
                )
            backend = a.get("backend")
            missing = missing_backend(attack, backend if isinstance(backend, str) else None)
            if missing:  # its parameters cannot be read without the library
                report.add(("attacks", i, "backend" if "backend" in a else "name"), f"{a.get('name')} {missing}")
            else:
                report_attack_params(report, attack, a, i)


def regulariser_problems(recipe: Any, loc: PathT, report: Problems, lookup: Callable[[Any, Any, PathT], Any]) -> None:
    """A recipe's ``regularisers``: names against the registry, params against each constructor, no name twice.

    ``lookup(registry, name, loc)`` returns the registered object or reports the unknown name (with
    close matches) and returns None.
    """
    if not isinstance(recipe, dict) or not isinstance(recipe.get("regularisers"), list):
        return  # absent, or the schema reports the type
    snnl = recipe.get("snnl")
    alpha = snnl.get("alpha", 0) if isinstance(snnl, dict) else 0
    seen: dict[str, int] = {}
    for j, r in enumerate(recipe["regularisers"]):
        if not isinstance(r, dict):
            continue
        here: PathT = (*loc, "regularisers", j)
        name = r.get("name")
        if isinstance(name, str):
            if name in seen:
                report.add(
                    (*here, "name"),
                    f"given {name!r}, already used by regularisers[{seen[name]}]; expected each regulariser once "
                    f"per recipe: merge them (their layers and params) into one entry",
                )
            seen.setdefault(name, j)
            if name == "snnl" and isinstance(alpha, int | float) and alpha != 0:
                report.add(
                    (*here, "name"),
                    f"given 'snnl' while snnl.alpha is {alpha}: the SNNL would be added twice; expected one of "
                    f"them: remove this entry or set snnl.alpha to 0",
                )
        reg = lookup(REGULARISERS, name, (*here, "name"))
        report_params(report, reg, r.get("params", {}), (*here, "params"), RESERVED_REGULARISER, check_missing=True)


def cross_field_problems(suite: Suite, data: dict[str, Any], report: Problems) -> None:
    """Problems that involve several fields: sizes against the dataset, options that exclude each other."""
    raw = data if isinstance(data, dict) else {}
    ds = suite.dataset
    evaluations = suite.evaluations
    dk = evaluations.dknn if evaluations.dknn is not None and evaluations.dknn.enabled else None
    cal = dk.calibration_size if dk is not None else 0
    train, test = ds.splits.train, ds.splits.test
    sizes = dataset_sizes(ds.name, ds.params) if ds.name in DATASETS else None
    n_train: int | None = train
    if sizes is not None:
        pool, test_pool = sizes
        val = ds.splits.validation
        cal_text = f", calibration={cal} (evaluations.dknn.calibration_size)" if cal else ""
        cal_text += f", validation={val}" if val else ""
        if test_pool is None:
            n_test = test if test is not None else max(1, pool // 5)
            needed = (train or 0) + cal + val + n_test
            if needed > pool:
                report.add(
                    ("dataset", "splits"),
                    f"given train={train}{cal_text}, test={n_test}: {needed} examples in all; expected at most "
                    f"the {pool} examples of {ds.name!r}; reduce dataset.splits"
                    + (" or evaluations.dknn.calibration_size" if cal else ""),
                )
                n_train = None
            elif train is None:
                n_train = pool - n_test - cal - val
        else:
            if test is not None and test > test_pool:
                report.add(
                    ("dataset", "splits", "test"),
                    f"given {test}; expected at most the {test_pool} examples of {ds.name!r}'s official test set; "
                    f"set it to {test_pool} or less (or null for all of them)",
                )
            if (train or 0) + cal + val > pool:
                report.add(
                    ("dataset", "splits"),
                    f"given train={train}{cal_text}: {(train or 0) + cal + val} examples from the training pool; "
                    f"expected at most the {pool} training examples of {ds.name!r}; reduce dataset.splits.train"
                    + (" or evaluations.dknn.calibration_size" if cal else ""),
                )
                n_train = None
            elif train is None:
                n_train = pool - cal - val
        if n_train is not None and n_train < 1:
            report.add(
                ("dataset", "splits"),
                f"given train=null: the calibration and test sets leave {n_train} training examples of "
                f"{ds.name!r}; expected at least 1; reduce evaluations.dknn.calibration_size or dataset.splits.test",
            )
            n_train = None
    if dk is not None and n_train is not None and dk.k > n_train:
        report.add(
            ("evaluations", "dknn", "k"),
            f"given {dk.k}; expected at most the {n_train} training examples the DkNN searches (dataset.splits.train); "
            f"lower k or enlarge the training split",
        )

    # options that contradict each other
    if evaluations.ood is not None and dk is None:
        why = "is disabled" if evaluations.dknn is not None else "is not configured"
        report.add(
            ("evaluations", "ood"),
            f"given an out-of-distribution set, but evaluations.dknn {why}; expected the DkNN too (the OOD inputs "
            f"are scored by the DkNN's credibility): add evaluations.dknn or remove evaluations.ood",
        )
    cross = evaluations.transfer.cross_seed
    if cross != "none" and len(suite.seeds) < 2:
        report.add(
            ("evaluations", "transfer", "cross_seed"),
            f"given {cross!r} with the single seed {suite.seeds}; expected at least 2 seeds (cross-seed cells attack "
            f"the models of another seed): add seeds or set cross_seed: none",
        )
    if cross != "none" and not evaluations.transfer.enabled:
        report.add(
            ("evaluations", "transfer", "cross_seed"),
            f"given {cross!r}, but transfer is disabled; expected transfer.enabled: true for cross-seed cells",
        )
    if ds.data_dir is not None and ds.name in DATASETS:
        loader = DATASETS.get(ds.name)
        try:
            reads_files = "data_dir" in inspect.signature(loader).parameters
        except (TypeError, ValueError):
            reads_files = True
        if not reads_files:
            report.add(
                ("dataset", "data_dir"),
                f"given {ds.data_dir!r}, but the dataset {ds.name!r} reads no files; expected no data_dir for it; "
                f"remove it (or pick a dataset that reads files, e.g. fashion-mnist)",
            )
    given_models = raw.get("models")
    models: list[Any] = given_models if isinstance(given_models, list) else []
    for i, m in enumerate(suite.models):
        if m.weights is not None:
            for problem in suite_path_problems(m.weights.path, field="weights.path", allowed_roots=["."]):
                report.add(("models", i, "weights", "path"), problem)
        if m.recipe is None:
            continue  # brought by the user: no recipe to check
        recipe = models[i].get("recipe") if i < len(models) and isinstance(models[i], dict) else None
        given: dict[str, Any] = recipe if isinstance(recipe, dict) else {}
        if "momentum" in given and m.recipe.optimizer != "sgd":
            report.add(
                ("models", i, "recipe", "momentum"),
                f"given {m.recipe.momentum}, but optimizer is {m.recipe.optimizer!r}, which takes no momentum; "
                f"expected momentum only with optimizer: sgd; remove it or switch to sgd",
            )
        given_snnl = given.get("snnl")
        snnl: dict[str, Any] = given_snnl if isinstance(given_snnl, dict) else {}
        if "temperature_lr" in snnl and m.recipe.snnl.temperature == "fixed":
            report.add(
                ("models", i, "recipe", "snnl", "temperature_lr"),
                f"given {m.recipe.snnl.temperature_lr}, but temperature is 'fixed' (T = T0 throughout), so "
                f"nothing is learned; expected temperature_lr only with temperature: learned or reference; "
                f"remove it or change the temperature",
            )


def layer_problems(suite: Suite, report: Problems) -> None:
    """Layer names in ``snnl.layers``, ``dknn.layers`` and an attack's ``layers`` against each architecture.

    Reads the layers each architecture declared when it registered (nothing is built); models whose
    architecture declares none are not checked.
    """
    declared: dict[str, tuple[str, ...]] = {}  # model name -> hidden layers
    for i, m in enumerate(suite.models):
        known = m.architecture is not None and m.architecture in MODELS
        hidden = declared_hidden_layers(m.architecture, m.params) if known and m.architecture else None
        if hidden is None:
            continue
        declared[m.name] = hidden
        for j, layer in enumerate((m.recipe.snnl.layers if m.recipe else None) or ()):
            if layer not in hidden:
                why = " (the SNNL shapes hidden layers, never the logits)" if layer == "logits" else ""
                report.add(
                    ("models", i, "recipe", "snnl", "layers", j),
                    f"given {layer!r}{why}; expected a hidden layer of {m.architecture!r}: "
                    f"{', '.join(hidden)}{_close(layer, hidden)}",
                )
        for j, r in enumerate(m.recipe.regularisers if m.recipe else ()):
            for k, layer in enumerate(r.layers or ()):
                if layer not in hidden:
                    why = " (regularisers shape hidden layers, never the logits)" if layer == "logits" else ""
                    report.add(
                        ("models", i, "recipe", "regularisers", j, "layers", k),
                        f"given {layer!r}{why}; expected a hidden layer of {m.architecture!r}: "
                        f"{', '.join(hidden)}{_close(layer, hidden)}",
                    )
    if not declared:
        return
    # the DkNN and attacks with `layers` read every model: a name must exist in all of them
    readable = {name: (*hidden, "logits") for name, hidden in declared.items()}
    common = [n for n in next(iter(readable.values())) if all(n in r for r in readable.values())]

    def check(layers: Any, loc: PathT, what: str) -> None:
        if not isinstance(layers, list | tuple):
            return  # the schema or the attack's own check reports the type
        for j, layer in enumerate(layers):
            lacking = [name for name, r in readable.items() if layer not in r]
            if isinstance(layer, str) and lacking:
                report.add(
                    (*loc, j),
                    f"given {layer!r}, which model(s) {', '.join(lacking)} do not have; expected a layer every "
                    f"model has ({what}): {', '.join(common) or '(none in common)'}{_close(layer, common)}",
                )

    dknn = suite.evaluations.dknn
    if dknn is not None and dknn.enabled:
        check(dknn.layers, ("evaluations", "dknn", "layers"), "the DkNN indexes each model")
    for i, a in enumerate(suite.attacks):
        if "layers" in a.params:
            check(a.params["layers"], ("attacks", i, "params", "layers"), "the attack runs on each model")


def _close(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
