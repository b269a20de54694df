"""Expand a suite into cells with content-addressed keys and dependencies.

train (model x seed) -> clean-eval (clean accuracy, gradient checks) ; train -> attack (source x attack x
eps x seed) -> transfer (one per adversarial set, evaluated on every model of its seed, plus one per
other seed the suite's ``transfer.cross_seed`` names: the independent-training control) ; train -> dknn-index (model x
seed) -> dknn-score (model x seed, over clean, every adversarial set and the OOD sets) ; all -> report.
An attack on the DkNN (property ``adaptive-dknn``) also depends on the dknn-index cell it attacks.

A cell's key hashes everything that determines its output: its own config, the keys of the cells
it reads, the hashes of the data splits and of the examples it reads, and its code identity (the
components it uses, the versions of the libraries they import, its thread count:
:mod:`advbench.codeversion`).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from advbench import __version__
from advbench.attacks import ATTACKS
from advbench.codeversion import BACKENDS, Component, advbench_component, cell_code, entry_component
from advbench.config import AttackConfig, ModelConfig, Suite
from advbench.data import Splits
from advbench.errors import AdvbenchError
from advbench.suite.cache import Cache, cache_key
from advbench.suite.numerics import numeric_path

__all__ = [
    "N_GRAD",
    "Cell",
    "CellCode",
    "Plan",
    "build_plan",
    "calibrate",
    "cross_seed_targets",
    "library_versions",
]

#: Test examples whose input gradients the clean evaluation checks for masking (zero or non-finite).
N_GRAD = 256

#: Units of work per second (images trained, image-steps attacked) on the reference 2-core CPU machine,
#: for estimates only.
_TRAIN_IMAGES_PER_S = 1600.0
_ATTACK_STEPS_IMAGES_PER_S = 2500.0


def library_versions() -> dict[str, str]:
    out = {"advbench": __version__}
    for lib in ("torch", "numpy", "torchattacks", "foolbox", "faiss-cpu", "scikit-learn", "safetensors"):
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


@dataclass
class Cell:
    kind: str
    label: str
    key: str
    deps: list[str]
    spec: dict[str, Any]
    estimate_s: float
    params: dict[str, Any] = field(default_factory=dict)  # runtime handles (names), not part of the key
    #: where :attr:`estimate_s` comes from (see :func:`calibrate`): ``"model"`` (the work model below),
    #: ``"measured"`` (this cell's own recorded seconds), ``"other seeds"`` (the median of the same cell
    #: measured on other seeds), ``"earlier code"`` (the same cell measured under another code version) or
    #: ``"kind ratio"`` (the model scaled by its kind's measured/model ratio)
    estimate_basis: str = "model"


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    #: components registered by code running in this process (not advbench's, not an entry point's): a
    #: fresh worker process lacks them, so a plan that uses any runs in this process
    local_code: list[str] = field(default_factory=list)
    #: the numeric code path the cells were keyed with, every library the plan uses (see
    #: :mod:`advbench.suite.numerics`): the manifest records it, a worker on another path refuses the cells
    numeric_path: dict[str, Any] = field(default_factory=dict)

    def by_kind(self, kind: str) -> list[Cell]:
        return [c for c in self.cells if c.kind == kind]

    def find(self, kind: str, **params: Any) -> Cell:
        for c in self.cells:
            if c.kind == kind and all(c.params.get(k) == v for k, v in params.items()):
                return c
        raise KeyError(f"no {kind} cell with {params}")


def _attack_steps(a: AttackConfig) -> int:
    return int(a.params.get("steps", 1 if a.name == "fgsm" else 10))


def attack_properties(a: AttackConfig) -> frozenset[str]:
    """The registered attack's :attr:`~advbench.attacks.base.Attack.properties` (empty if unknown)."""
    try:
        cls = ATTACKS.get(a.name)
    except Exception:  # an unregistered name: validation reports it; the plan only estimates
        return frozenset()
    return frozenset(getattr(cls, "properties", frozenset()))


#: Forward+backward passes per example of torchattacks' AutoAttack ("standard", 10 classes) for the
#: estimate: APGD-CE's 100 steps on every example, then APGD-T and FAB-T (9 targets x 100 steps) and
#: Square (5000 queries, forward only, counted as 1/3) on the examples still robust, assumed to be
#: 10% of them (PGD-20 leaves about 2% at the transfer suite's eps 0.1). The upper bound, every
#: example surviving every stage, is 3,566 passes.
_AUTOATTACK_PASSES = 100 + (900 + 900 + 5000 // 3) // 10


def attack_passes(a: AttackConfig) -> int:
    """Forward+backward passes per example of an attack cell, for ``--plan``'s estimate."""
    if a.name.endswith("AutoAttack"):
        return _AUTOATTACK_PASSES
    if "adaptive-dknn" in attack_properties(a):
        cls = ATTACKS.get(a.name)
        return int(cls.passes_per_example(a.params))
    return _attack_steps(a)


def _adaptive_dknn_extra(a: AttackConfig, n: int, n_train: int) -> float:
    """Seconds an adaptive DkNN attack spends querying the real DkNN and the training features."""
    full = {"n_targets": 2, "restarts": 2} | dict(a.params)
    queries = n * (int(full["n_targets"]) * int(full["restarts"]) + 1)
    return queries * n_train / 2.0e7 + n_train / 5000.0


class CellCode:
    """The one spec builder of a plan: every cell's ``code`` (components, libraries, threads, numeric path)
    comes from here.

    Components are memoised per plan (a suite of 1,000 cells uses a dozen). ``threads``: the torch thread
    count each kind runs with (one for all, or per kind; ``None``: this process's). ``device``: where the
    cells compute; with the CPU it decides the numeric path a cell's key carries (:mod:`advbench.suite.numerics`).
    """

    def __init__(self, threads: Mapping[str, int] | int | None = None, device: str = "cpu") -> None:
        self.threads = threads
        self.device = device
        self._components: dict[tuple[str, str], Component] = {}
        self._libraries: set[str] = set()

    def _threads(self, kind: str) -> int:
        n = self.threads.get(kind) if isinstance(self.threads, Mapping) else self.threads
        if n is None:
            import torch

            n = torch.get_num_threads()
        return int(n)

    def attack_roles(self, a: AttackConfig, props: frozenset[str]) -> dict[str, Any]:
        """The components of a cell that runs attack ``a``: its registry entry and the knowledge providers of its
        properties (an attack on the DkNN: the module that hands it the DkNN)."""
        roles: dict[str, Any] = {"attack": self.entry(ATTACKS, a.name)} if a.name in ATTACKS else {}
        providers = {f"knowledge:{p}": self.knowledge(p) for p in sorted(props)}
        return roles | {role: comp for role, comp in providers.items() if comp is not None}

    def handler(self, kind: str) -> Component:
        """The handler module of cell kind ``kind``."""
        from advbench.suite.handlers import HANDLERS

        if kind not in HANDLERS:
            raise AdvbenchError(f"no handler for cell kind {kind!r}; registered: {', '.join(sorted(HANDLERS))}")
        return self._memo("cell", kind, lambda: advbench_component(HANDLERS[kind].__module__))

    def knowledge(self, prop: str) -> Component | None:
        """The module that hands attacks with property ``prop`` their knowledge (None: no provider)."""
        from advbench.suite.handlers import KNOWLEDGE

        if prop not in KNOWLEDGE:
            return None
        return self._memo("knowledge", prop, lambda: advbench_component(KNOWLEDGE[prop].__module__))

    def entry(self, registry: Any, name: str) -> Component:
        """The component of registry entry ``name`` (advbench's module, a plugin's distribution, user code)."""
        return self._memo(registry.kind, name, lambda: entry_component(registry, name))

    def local_code(self) -> list[str]:
        """The components used so far that only this process has (see :attr:`Plan.local_code`)."""
        return sorted(c.ident for c in self._components.values() if not c.portable)

    def _memo(self, role: str, name: str, make: Any) -> Component:
        key = (role, name)
        if key not in self._components:
            self._components[key] = make()
        comp: Component = self._components[key]
        return comp

    def spec(
        self, kind: str, body: dict[str, Any], roles: Mapping[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """``body`` with the cell's ``code``: its kind's handler, the components in ``roles``, threads, and the
        numeric path of the libraries those components use."""
        code = cell_code({"cell": self.handler(kind), **(roles or {})}, self._threads(kind), **kw)
        self._libraries |= set(code["libraries"])
        return {**body, "code": code | {"path": numeric_path(self.device, code["libraries"])}}

    def numeric_path(self) -> dict[str, Any]:
        """The numeric path of every library the cells built so far use (what the manifest records)."""
        return numeric_path(self.device, self._libraries)


def attack_unused_backends(a: AttackConfig) -> frozenset[str]:
    """The attack backends ``a`` does not run (their versions stay out of its key)."""
    try:
        cls = ATTACKS.get(a.name)
    except Exception:  # an unregistered name: validation reports it
        return frozenset()
    used = getattr(cls, "package", None)
    if used not in BACKENDS:
        used = a.backend
        if used is None:
            try:
                default = inspect.signature(cls).parameters.get("backend")
            except (TypeError, ValueError):
                default = None
            used = default.default if default is not None and default.default is not inspect.Parameter.empty else None
    return BACKENDS - {used}


def build_plan(
    suite: Suite,
    splits: Splits,
    *,
    n_transfer: int,
    n_dknn: int,
    n_ood: int,
    threads: Mapping[str, int] | int | None = None,
    examples: str = "",
    device: str = "cpu",
) -> Plan:
    """The cells of ``suite``; ``threads``: the torch thread count each kind runs with (one for all, or per kind).

    Every spec is built by :class:`CellCode`: the code identity of the components the cell uses and its
    thread count, so a change to either gives new keys and cells computed differently never mix.
    ``examples``: a digest of the test examples the attacks and evaluations read (their ids); ``device``:
    where the cells compute (with this machine's CPU and libraries, the numeric path in every key).
    """
    from advbench.data.base import DATASETS
    from advbench.models import MODELS
    from advbench.training.regularisers import REGULARISERS

    code = CellCode(threads, device)
    data = {"dataset": suite.dataset.name, "hashes": splits.hashes}
    cells: list[Cell] = []
    train_keys: dict[tuple[str, int], str] = {}
    n_train = len(splits.train)
    val = splits.validation
    for seed in suite.seeds:
        for m in suite.models:
            roles: dict[str, Any] = {"dataset": code.entry(DATASETS, suite.dataset.name)}
            if m.architecture is not None and m.architecture in MODELS:
                roles["architecture"] = code.entry(MODELS, m.architecture)
            if m.builder is not None and m.builder in MODELS:  # a brought model's builder: its package's code
                roles["builder"] = code.entry(MODELS, m.builder)
            if m.recipe is not None:
                roles["regularisers"] = [code.entry(REGULARISERS, r.name) for r in m.recipe.regularisers]
            spec = code.spec(
                "train",
                {
                    "model": _model_spec(m),
                    "seed": seed,
                    # the entanglement probe reads the validation split (none without one; never test images)
                    "probe": "validation" if val is not None else None,
                    "data": data,
                },
                roles,
            )
            key = cache_key("train", spec)
            train_keys[(m.name, seed)] = key
            if m.recipe is None:  # a model brought by the user: loaded, not trained
                work = 0.5
            else:
                work = (
                    n_train
                    * m.recipe.epochs
                    / _TRAIN_IMAGES_PER_S
                    * (1.6 if m.recipe.snnl.alpha or m.recipe.regularisers else 1.0)
                    * _model_cost(m)
                )
            params = {"model": m.name, "seed": seed}
            cells.append(Cell("train", f"train {m.name} seed={seed}", key, [], spec, work, params))
            espec = code.spec(
                "clean-eval",
                {"model": key, "test": splits.hashes["test"], "n_grad": N_GRAD, "examples": examples}
                | ({"validation": val.sha256} if val is not None else {}),
            )
            cells.append(
                Cell(
                    "clean-eval",
                    f"clean evaluation {m.name} seed={seed}",
                    cache_key("clean-eval", espec),
                    [key],
                    espec,
                    (len(splits.test) + (len(val) if val is not None else 0)) / 20000.0 + N_GRAD / 2000.0,
                    dict(params),
                )
            )
    # DkNN index cells come before the attacks: an attack on the DkNN (``adaptive-dknn``) reads the
    # index it attacks (the white-box attacker's knowledge), and cells run in plan order.
    dk = suite.evaluations.dknn
    index_keys: dict[tuple[str, int], str] = {}
    if dk is not None and dk.enabled:
        for seed in suite.seeds:
            for m in suite.models:
                ispec = code.spec(
                    "dknn-index",
                    {"model": train_keys[(m.name, seed)], "dknn": dk.model_dump(exclude={"n_examples"}), "data": data},
                )
                ikey = cache_key("dknn-index", ispec)
                index_keys[(m.name, seed)] = ikey
                cells.append(
                    Cell(
                        "dknn-index",
                        f"dknn index {m.name} seed={seed}",
                        ikey,
                        [train_keys[(m.name, seed)]],
                        ispec,
                        n_train / 5000.0,
                        {"model": m.name, "seed": seed},
                    )
                )
    attack_keys: dict[tuple[int, str, str, float], str] = {}
    # attacks with warm_start come after the others of their model and seed: they read those attacks' examples
    ordered = [a for a in suite.attacks if not a.warm_start] + [a for a in suite.attacks if a.warm_start]
    for seed in suite.seeds:
        for m in suite.models:
            for a in ordered:
                props = attack_properties(a)
                adaptive = "adaptive-dknn" in props
                if adaptive and (m.name, seed) not in index_keys:
                    raise AdvbenchError(
                        f"attack {a.key!r} ({a.name}) attacks the DkNN and needs its index (the white-box "
                        f"attacker's knowledge), but evaluations.dknn is not enabled; enable evaluations.dknn or "
                        f"remove the attack"
                    )
                roles = code.attack_roles(a, props)
                for eps in a.eps:
                    body = {
                        "source": train_keys[(m.name, seed)],
                        "attack": a.model_dump(exclude={"eps", "label"}),
                        "eps": eps,
                        "n": n_transfer,
                        "examples": examples,
                        "seed": seed,
                        "data": data,
                    }
                    deps = [train_keys[(m.name, seed)]]
                    work = n_transfer * attack_passes(a) / _ATTACK_STEPS_IMAGES_PER_S * _model_cost(m)
                    if adaptive:  # the DkNN it attacks: its index is part of the attacker's knowledge
                        body["dknn_index"] = index_keys[(m.name, seed)]
                        deps.append(index_keys[(m.name, seed)])
                        work += _adaptive_dknn_extra(a, n_transfer, n_train)
                    if a.warm_start:  # the other attacks' examples it starts from (suite/cells/attack.py)
                        warm = {w: attack_keys[(seed, m.name, w, eps)] for w in suite.warm_start_sources(a, eps)}
                        body["warm_starts"] = warm
                        deps += list(warm.values())
                        work += n_transfer * len(warm) * n_train / 2.0e7  # the real DkNN scores each warm start
                    spec = code.spec("attack", body, roles, drop_libraries=attack_unused_backends(a))
                    key = cache_key("attack", spec)
                    attack_keys[(seed, m.name, a.key, eps)] = key
                    cells.append(
                        Cell(
                            "attack",
                            f"attack {a.key} eps={eps:g} on {m.name} seed={seed}",
                            key,
                            deps,
                            spec,
                            work,
                            {"model": m.name, "seed": seed, "attack": a.key, "eps": eps},
                        )
                    )
    conv = suite.evaluations.convergence
    if conv.enabled and suite.seeds:
        # the convergence check of every attack on the DkNN, on the first seed: the attack again on the first
        # examples with `factor` times its steps and restarts (suite/cells/convergence.py)
        seed = suite.seeds[0]
        n_check = min(conv.n_examples, n_transfer)
        for m in suite.models:
            for a in suite.attacks:
                props = attack_properties(a)
                if "adaptive-dknn" not in props:
                    continue
                roles = code.attack_roles(a, props)
                for eps in a.eps:
                    akey = attack_keys[(seed, m.name, a.key, eps)]
                    body = {
                        "adv": akey,
                        "source": train_keys[(m.name, seed)],
                        "dknn_index": index_keys[(m.name, seed)],
                        "attack": a.model_dump(exclude={"eps", "label"}),
                        "eps": eps,
                        "check": conv.model_dump(exclude={"enabled"}),
                        "n": n_check,
                        "examples": examples,
                        "seed": seed,
                    }
                    spec = code.spec("convergence", body, roles, drop_libraries=attack_unused_backends(a))
                    work = n_check * attack_passes(a) * conv.factor**2 / _ATTACK_STEPS_IMAGES_PER_S * _model_cost(m)
                    cells.append(
                        Cell(
                            "convergence",
                            f"convergence {a.key} eps={eps:g} on {m.name} seed={seed}",
                            cache_key("convergence", spec),
                            [akey, train_keys[(m.name, seed)], index_keys[(m.name, seed)]],
                            spec,
                            work + _adaptive_dknn_extra(a, n_check, n_train),
                            {"model": m.name, "seed": seed, "attack": a.key, "eps": eps},
                        )
                    )
    if suite.evaluations.transfer.enabled:
        for (seed, source, attack, eps), akey in attack_keys.items():
            targets = {m.name: train_keys[(m.name, seed)] for m in suite.models}
            spec = code.spec("transfer", {"adv": akey, "targets": targets})
            cells.append(
                Cell(
                    "transfer",
                    f"transfer {attack} eps={eps:g} from {source} seed={seed}",
                    cache_key("transfer", spec),
                    [akey, *targets.values()],
                    spec,
                    0.05 * len(targets),
                    {"seed": seed, "source": source, "attack": attack, "eps": eps, "target_seed": seed},
                )
            )
        # the independent-training control: the same adversarial set on the models of another seed
        # (other initial weights and batch order); ring keeps the cost linear in the number of seeds
        for (seed, source, attack, eps), akey in attack_keys.items():
            for target_seed in cross_seed_targets(suite.seeds, seed, suite.evaluations.transfer.cross_seed):
                targets = {m.name: train_keys[(m.name, target_seed)] for m in suite.models}
                source_key = train_keys[(source, seed)]
                spec = code.spec(
                    "transfer", {"adv": akey, "source": source_key, "targets": targets, "target_seed": target_seed}
                )
                cells.append(
                    Cell(
                        "transfer",
                        f"transfer {attack} eps={eps:g} from {source} seed={seed} to seed={target_seed}",
                        cache_key("transfer", spec),
                        [akey, source_key, *targets.values()],
                        spec,
                        0.05 * (len(targets) + 1),
                        {"seed": seed, "source": source, "attack": attack, "eps": eps, "target_seed": target_seed},
                    )
                )
    if dk is not None and dk.enabled:
        ocfg = suite.evaluations.ood
        ood_roles = {"ood dataset": code.entry(DATASETS, ocfg.dataset)} if ocfg and ocfg.dataset else {}
        for seed in suite.seeds:
            for m in suite.models:
                ikey = index_keys[(m.name, seed)]
                adv = sorted(k for (s, *_), k in attack_keys.items() if s == seed)
                sspec = code.spec(
                    "dknn-score",
                    {
                        "index": ikey,
                        "adv": adv,
                        "ood": ocfg.model_dump() if ocfg else None,
                        "n": n_dknn,
                        "n_ood": n_ood,
                        "examples": examples,
                    },
                    ood_roles,
                )
                n_sets = 1 + len(adv) + (int(ocfg.dataset is not None) + len(ocfg.shifts) if ocfg else 0)
                cells.append(
                    Cell(
                        "dknn-score",
                        f"dknn score {m.name} seed={seed} ({n_sets} input sets)",
                        cache_key("dknn-score", sspec),
                        [ikey, *adv],
                        sspec,
                        n_sets * n_dknn * n_train / 2.0e7,
                        {"model": m.name, "seed": seed},
                    )
                )
    return Plan(suite, cells, code.local_code(), code.numeric_path())


_SEED = re.compile(r"\bseed=-?\d+")


def cell_family(cell: Cell) -> tuple[str, str]:
    """The cells that do the same work on another replicate: kind and label with every seed blanked."""
    return cell.kind, _SEED.sub("seed=*", cell.label)


def calibrate(plan: Plan, measured: Mapping[str, float], *, earlier: Mapping[str, float] | None = None) -> Plan:
    """``plan`` with its estimates replaced by measurements where there are some.

    ``measured`` maps cell keys to the seconds their computation took (run manifests, cache entries);
    ``earlier`` maps cell labels to the same, so that a cell is found again under another code version. A cell
    with a measurement takes it; one without takes the median of its :func:`cell_family` measured on other
    seeds; failing that, what the same cell took under earlier code; failing that, the work model's estimate
    scaled by the median measured/model ratio of its kind; failing that, the work model alone. The work
    model's constants are fitted on one machine and drift from what a given machine and a given attack
    really cost (6-8x low for the adaptive DkNN attack, measured); a suite's own finished cells are the better
    guide to its unfinished ones.
    """
    family: dict[tuple[str, str], list[float]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    for c in plan.cells:
        if c.key in measured:
            family[cell_family(c)].append(measured[c.key])
            if c.estimate_s > 0:
                ratios[c.kind].append(measured[c.key] / c.estimate_s)
    cells = []
    for c in plan.cells:
        if c.key in measured:
            c = replace(c, estimate_s=measured[c.key], estimate_basis="measured")
        elif family.get(cell_family(c)):
            c = replace(c, estimate_s=statistics.median(family[cell_family(c)]), estimate_basis="other seeds")
        elif earlier and c.label in earlier:
            c = replace(c, estimate_s=earlier[c.label], estimate_basis="earlier code")
        elif ratios.get(c.kind):
            c = replace(c, estimate_s=c.estimate_s * statistics.median(ratios[c.kind]), estimate_basis="kind ratio")
        cells.append(c)
    return replace(plan, cells=cells)


def cross_seed_targets(seeds: list[int], seed: int, mode: str) -> list[int]:
    """The target seeds of the cross-seed transfer cells of source seed ``seed``.

    ``"ring"``: the next seed in ``seeds`` (cyclic), so n seeds give n cells per adversarial set;
    ``"all"``: every other seed; ``"none"``: no cross-seed cell.
    """
    if mode == "none" or len(seeds) < 2:
        return []
    if mode == "ring":
        return [seeds[(seeds.index(seed) + 1) % len(seeds)]]
    if mode == "all":
        return [s for s in seeds if s != seed]
    raise ValueError(f"cross_seed {mode!r}: expected 'ring', 'all' or 'none'")


def _model_cost(m: ModelConfig) -> float:
    """Per-image cost of ``m``'s architecture relative to the ``cnn`` (registry metadata ``cost``; 1 if none)."""
    from advbench.models import MODELS

    if m.architecture is None:  # a model built by the user's own code: no declared cost
        return 1.0
    try:
        cost = MODELS.metadata(m.architecture).get("cost", 1.0)
        return float(cost(**m.params) if callable(cost) else cost)
    except Exception:  # an unknown architecture or bad params: validation reports them
        return 1.0


def _model_spec(m: ModelConfig) -> dict[str, Any]:
    # the label is not part of the key: two labels with the same config share one trained model
    if m.recipe is None:  # brought by the user: its weights' digest and its builder (a component) identify it
        return {
            "architecture": m.architecture,
            "builder": m.builder,
            "params": m.params,
            "weights_sha256": m.weights.sha256.lower() if m.weights else None,
        }
    return {"architecture": m.architecture, "params": m.params, "recipe": m.recipe.model_dump()}


def describe_plan(plan: Plan, cache: Cache) -> list[dict[str, Any]]:
    """One row per cell: kind, label, cached or not, estimated seconds (for ``advbench run --plan``)."""
    return [
        {
            "kind": c.kind,
            "cell": c.label,
            "cached": cache.exists(c.kind, c.key),
            "estimate_s": round(c.estimate_s, 1),
            "basis": c.estimate_basis,
            "key": c.key[:12],
        }
        for c in plan.cells
    ]
