"""torchattacks and foolbox, the whole of both, behind advbench's attack contract.

Every attack of both libraries is registered under a namespaced name (``torchattacks.MIFGSM``,
``foolbox.LinfDeepFoolAttack``, foolbox's aliases such as ``foolbox.LinfPGD`` too) when the
``advbench.attacks`` entry point loads. Registration reads the libraries' ``__init__.py`` as text (no
import: torchattacks and foolbox take about a second each to import); the library is imported the
first time one of its attacks is checked, described or run, and its parameters are then read from the
attack's own signature.

How a library attack meets the threat model (see also :class:`~advbench.attacks.base.ThreatModel`):

* Under an L2 threat model, an L2 attack with an eps (torchattacks ``PGDL2``, foolbox ``L2PGD``)
  gets the radius and is validated against the L2 ball; a minimum-norm L2 attack (``CW``,
  ``DeepFool``, foolbox's ``L2CarliniWagnerAttack``, ``L2DeepFoolAttack``) runs with its own
  parameters and its examples outside the ball revert to the clean input
  (:attr:`~advbench.attacks.base.Attack.minimum_norm`); an attack of another norm is refused.

Under the L-inf threat model:

* ``eps`` (torchattacks) or ``epsilons`` (foolbox) is set from the threat model and cannot be given;
  so are ``model`` and a ``seed`` parameter (drawn from the attack's generator). ``n_classes``
  defaults to the model's ``num_classes``.
* Attacks whose own threat model is not an L-inf ball of radius eps (L2, L1, L0 and unbounded
  attacks such as CW or DeepFool, foolbox's minimisation attacks, torchattacks attacks without an
  ``eps``) declare ``project_output``: their output is projected onto the L-inf ball and the box,
  and success is measured after the projection. For L1/L2 attacks given radius eps this is a no-op
  (an Lp ball of radius eps, p >= 1, lies inside the L-inf ball of radius eps).
* Randomness: both libraries draw from torch's global RNG; it is forked and seeded from the attack's
  generator around the call (:func:`~advbench.attacks.base.seeded_global_rng`).
* AutoAttack (Croce & Hein 2020), the reference ensemble, is ``torchattacks.AutoAttack``: ``eps``,
  ``n_classes`` and ``seed`` come from the threat model, the model and the generator, so it matches
  calling torchattacks directly with those values (``tests/test_autoattack.py``). Pick ``version``
  (``"standard"``: APGD-CE, APGD-T, FAB-T, Square; ``"plus"``; ``"rand"``) in the suite's params.
* Each wrapper declares :attr:`~advbench.attacks.base.Attack.properties` from the library's class
  name (:data:`TORCHATTACKS_PROPERTIES`, :func:`foolbox_properties`), e.g. AutoAttack is
  ``iterative + gradient-based + ensemble`` and Square ``score-based``.
* The library's wrapper classes (torchattacks' ``MultiAttack`` and ``LGV``, which wrap other attacks
  or need a training loader) are not attacks on their own and are not registered.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import typing
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advbench.attacks.base import (
    Attack,
    AttackParamsError,
    ThreatModel,
    derive_seed,
    seeded_global_rng,
)
from advbench.params import ParamSpec, check_params

__all__ = [
    "TORCHATTACKS_PROPERTIES",
    "FoolboxAttack",
    "LibraryAttack",
    "TorchattacksAttack",
    "discover_foolbox",
    "discover_torchattacks",
    "foolbox_properties",
    "register_library_attacks",
    "run_foolbox",
    "run_torchattacks",
]


# -- running a library attack -------------------------------------------------------------------


def run_torchattacks(
    name: str, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, **params: Any
) -> Tensor:
    """``torchattacks.<name>(model, **params)(x, y)`` with its global-RNG draws seeded from ``generator``.

    The model sees pixels in [0, 1]: normalisation is inside advbench's ``Classifier``, so
    torchattacks' ``set_normalization_used`` is never called.
    """
    import torchattacks

    attack = getattr(torchattacks, name)(model, **params)
    with seeded_global_rng(derive_seed(generator), x.device):
        return attack(x, y)


def run_foolbox(
    name: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    generator: torch.Generator | None,
    *,
    output: str = "raw",
    **params: Any,
) -> Tensor:
    """``foolbox.attacks.<name>(**params)`` run on ``model`` within ``threat``.

    Fixed-epsilon attacks get ``epsilons=threat.eps``; minimisation attacks get ``epsilons=None``
    and return their unrestricted result (the caller projects it). ``output`` picks foolbox's
    ``"raw"`` or ``"clipped"`` (restricted to the attack's own eps-ball) result.
    """
    import foolbox as fb

    attack = getattr(fb.attacks, name)(**params)
    fmodel = fb.PyTorchModel(model, bounds=threat.bounds, device=x.device)
    minimization = isinstance(attack, fb.attacks.base.MinimizationAttack)
    with seeded_global_rng(derive_seed(generator), x.device):
        raw, clipped, _ = attack(fmodel, x, y, epsilons=None if minimization else threat.eps)
    return raw if output == "raw" or minimization else clipped


# -- discovering the libraries' attacks without importing them ----------------------------------


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


_TA_SECTION = re.compile(r"^#\s*(.+?)\s+(attacks|Class)\s*$")
_TA_IMPORT = re.compile(r"^from \.attacks\.(\w+) import (\w+)\s*$")
_TA_NORMS = {"none": "none", "linf": "linf", "l2": "l2", "l1": "l1", "l0": "l0", "linf, l2": "linf"}


def discover_torchattacks() -> list[dict[str, Any]]:
    """One record per torchattacks attack: name, module, norm (from ``__init__``'s section comments), targeted."""
    root = _package_dir("torchattacks")
    if root is None:
        return []
    out = []
    section = ""
    for line in (root / "__init__.py").read_text(encoding="utf-8").splitlines():
        if m := _TA_SECTION.match(line.strip()):
            section = m.group(1).strip().lower()
        elif (m := _TA_IMPORT.match(line.strip())) and section in _TA_NORMS:
            module, name = m.groups()
            source = (root / "attacks" / f"{module}.py").read_text(encoding="utf-8")
            targeted = re.search(r"supported_mode\s*=\s*\[[^\]]*['\"]targeted['\"]", source) is not None
            out.append(
                {
                    "name": name,
                    "module": f"torchattacks.attacks.{module}",
                    "norm": _TA_NORMS[section],
                    "targeted": targeted,
                }
            )
    return out


_FB_NORMS = {
    "EADAttack": "l1",
    "SparseL1DescentAttack": "l1",
    "PointwiseAttack": "l0",
    "GenAttack": "linf",
    "DDNAttack": "l2",
    "VirtualAdversarialAttack": "l2",
    "NewtonFoolAttack": "l2",
    "BoundaryAttack": "l2",
    "HopSkipJumpAttack": "l2",
    "SaltAndPepperNoiseAttack": "l2",
}


def _foolbox_norm(name: str) -> str:
    if m := re.match(r"(Linfinity|LInf|Linf|L0|L1|L2)", name):
        return "linf" if m.group(1).lower().startswith("linf") else m.group(1).lower()
    return _FB_NORMS.get(name, "other")


def discover_foolbox() -> list[dict[str, Any]]:
    """One record per foolbox attack class and alias exported by ``foolbox.attacks``."""
    root = _package_dir("foolbox")
    if root is None:
        return []
    tree = ast.parse((root / "attacks" / "__init__.py").read_text(encoding="utf-8"))
    names: dict[str, str] = {}  # exported name -> the class it names
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module != "base":
            for alias in node.names:
                names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
            for target in node.targets:
                if isinstance(target, ast.Name) and node.value.id in names:
                    names[target.id] = names[node.value.id]
    return [
        {"name": n, "module": "foolbox.attacks", "norm": _foolbox_norm(cls), "targeted": None, "class": cls}
        for n, cls in names.items()
    ]


# -- what each library attack is ---------------------------------------------------------------

_SINGLE = frozenset({"single-step", "gradient-based"})
_ITERATIVE = frozenset({"iterative", "gradient-based"})
_SCORE = frozenset({"iterative", "score-based"})
_DECISION = frozenset({"decision-based"})

#: torchattacks class name -> :attr:`~advbench.attacks.base.Attack.properties` (every attack it exports).
TORCHATTACKS_PROPERTIES: dict[str, frozenset[str]] = {
    "VANILA": frozenset(),  # returns its input: no attack
    "GN": frozenset(),  # Gaussian noise: reads neither gradients, scores nor decisions
    **dict.fromkeys(("FGSM", "RFGSM", "FFGSM"), _SINGLE),
    **dict.fromkeys(
        (
            "BIM",
            "PGD",
            "EOTPGD",
            "TPGD",
            "MIFGSM",
            "UPGD",
            "APGD",
            "APGDT",
            "DIFGSM",
            "TIFGSM",
            "Jitter",
            "NIFGSM",
            "PGDRS",
            "SINIFGSM",
            "VMIFGSM",
            "VNIFGSM",
            "PIFGSM",
            "PIFGSMPP",
            "CW",
            "PGDL2",
            "PGDRSL2",
            "DeepFool",
            "EADEN",
            "EADL1",
            "SparseFool",
            "JSMA",
            "FAB",
        ),
        _ITERATIVE,
    ),
    **dict.fromkeys(("SPSA", "OnePixel", "Pixle", "Square"), _SCORE),
    # APGD-CE, APGD-T, FAB-T and Square, each example's worst case kept (Croce & Hein 2020)
    "AutoAttack": frozenset({"iterative", "gradient-based", "ensemble"}),
}

_FB_SCORE = ("GenAttack",)
_FB_DECISION = (
    "Boundary", "HopSkipJump", "Noise", "Blur", "Contrast", "Inversion", "Pointwise", "Dataset", "Spatial",
    "BinarizationRefinement",
)  # fmt: skip
_FB_SINGLE = ("FastGradient", "VirtualAdversarial")


def foolbox_properties(class_name: str) -> frozenset[str]:
    """The properties of a foolbox attack class, from the method its name names."""
    if any(k in class_name for k in _FB_SCORE):
        return _SCORE
    if any(k in class_name for k in _FB_DECISION):
        return _DECISION
    if any(k in class_name for k in _FB_SINGLE):
        return _SINGLE
    return _ITERATIVE  # PGD, BIM, MI-FGSM, DeepFool, CW, DDN, EAD, FMN, Brendel-Bethge, NewtonFool, ...


# -- the wrapper classes ------------------------------------------------------------------------


class LibraryAttack(Attack):
    """An attack of a third-party library; one subclass per attack is made by :func:`register_library_attacks`."""

    package: ClassVar[str]
    library_name: ClassVar[str]
    library_module: ClassVar[str]
    #: library parameters advbench sets itself
    reserved: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **params: Any) -> None:
        self._params = dict(params)
        problems = type(self).check_params(self._params)
        if problems:
            raise AttackParamsError(type(self).__name__, problems)

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @classmethod
    def library_class(cls) -> type:
        return getattr(importlib.import_module(cls.library_module), cls.library_name)

    @classmethod
    def library_params(cls) -> dict[str, inspect.Parameter]:
        """The library attack's hyper-parameters a user may set (its signature minus ``reserved``)."""
        return _library_params(cls.library_class(), cls.reserved)

    @classmethod
    def reserved_params(cls) -> dict[str, str]:
        """The library parameters advbench sets itself, and how."""
        return dict.fromkeys(sorted(cls.reserved), "from the threat model")

    @classmethod
    def param_spec(cls) -> ParamSpec:
        """The library attack's signature, with types from its annotations or else its defaults."""
        library = cls.library_class()
        params = _library_params(library, frozenset())
        hints = _library_hints(library)
        return ParamSpec(params, {n: hints.get(n, _hint_from_default(p.default)) for n, p in params.items()})

    @classmethod
    def check_params(cls, params: dict[str, Any], *, backend: str | None = None) -> list[str]:
        problems = []
        if backend is not None and backend != cls.package:
            problems.append(
                f"backend {backend!r} given, but {cls.__name__} is implemented by {cls.package} only; remove it"
            )
        problems += [str(p) for p in check_params(cls.param_spec(), params, reserved=cls.reserved_params())]
        return problems

    @classmethod
    def describe_params(cls) -> str:
        try:
            accepted = cls.library_params()
        except ImportError as exc:
            return f"({cls.package} is not installed: {exc})"
        return ", ".join(
            n if p.default is inspect.Parameter.empty else f"{n}={p.default!r}" for n, p in accepted.items()
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"


class TorchattacksAttack(LibraryAttack):
    package = "torchattacks"
    reserved = frozenset({"model", "seed"})

    @classmethod
    def _sets_eps(cls) -> bool:
        return cls.norm == "linf" and "eps" in _library_params(cls.library_class(), frozenset())

    @classmethod
    def library_params(cls) -> dict[str, inspect.Parameter]:
        reserved = cls.reserved | ({"eps"} if cls._sets_eps() else set())
        return _library_params(cls.library_class(), frozenset(reserved))

    @classmethod
    def reserved_params(cls) -> dict[str, str]:
        reserved = super().reserved_params()
        if cls._sets_eps():
            reserved["eps"] = "from the threat model (list the radii in the attack's 'eps')"
        return reserved

    @property
    def project_output(self) -> bool:  # type: ignore[override]
        norm = str(self._params.get("norm", "Linf")).lower()
        return not self._sets_eps() or norm != "linf"

    @property
    def minimum_norm(self) -> bool:  # type: ignore[override]
        """Attacks without an ``eps`` (CW, DeepFool, ...) search for the smallest perturbation."""
        return "eps" not in _library_params(self.library_class(), frozenset())

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        signature = _library_params(self.library_class(), frozenset())
        kwargs = dict(self._params)
        if "eps" in signature and (self._sets_eps() or "eps" not in kwargs):
            kwargs["eps"] = threat.eps
        if "seed" in signature:
            kwargs["seed"] = derive_seed(generator) % 2**31
        if "n_classes" in signature and "n_classes" not in kwargs and hasattr(model, "num_classes"):
            kwargs["n_classes"] = model.num_classes
        return run_torchattacks(self.library_name, model, x, y, generator, **kwargs)


class FoolboxAttack(LibraryAttack):
    package = "foolbox"

    @property
    def project_output(self) -> bool:  # type: ignore[override]
        import foolbox as fb

        return self.norm != "linf" or issubclass(self.library_class(), fb.attacks.base.MinimizationAttack)

    @property
    def minimum_norm(self) -> bool:  # type: ignore[override]
        import foolbox as fb

        return issubclass(self.library_class(), fb.attacks.base.MinimizationAttack)

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, generator: torch.Generator | None
    ) -> Tensor:
        return run_foolbox(self.library_name, model, x, y, threat, generator, output="clipped", **self._params)


# -- signatures ---------------------------------------------------------------------------------


@cache
def _library_params(cls: type[Any], reserved: frozenset[str]) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)
    return {
        n: p
        for n, p in sig.parameters.items()
        if n != "self" and n not in reserved and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


@cache
def _library_hints(cls: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # annotations that do not resolve: fall back to the defaults' types
        return {}


def _hint_from_default(default: Any) -> Any:
    """Torchattacks has no annotations: infer a lenient type from the default value."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int | float):
        return float  # accepts ints too; torchattacks writes c=1 for a real-valued constant
    if isinstance(default, str):
        return str
    return Any


# -- registration -------------------------------------------------------------------------------


def register_library_attacks(registry: Any) -> None:
    """Add a lightweight wrapper class for every attack of torchattacks and foolbox to ``registry``."""
    for base, records in ((TorchattacksAttack, discover_torchattacks()), (FoolboxAttack, discover_foolbox())):
        for rec in records:
            name = f"{base.package}.{rec['name']}"
            cls = type(
                name,
                (base,),
                {
                    "library_name": rec["name"],
                    "library_module": rec["module"],
                    "norm": rec["norm"],
                    "supports_targeted": bool(rec["targeted"]),
                    "properties": (
                        TORCHATTACKS_PROPERTIES.get(rec["name"], frozenset())
                        if base is TorchattacksAttack
                        else foolbox_properties(rec["class"])
                    ),
                    "__module__": __name__,
                    "__qualname__": name,
                    "__doc__": f"{base.package}'s {rec['name']} behind advbench's attack contract.",
                },
            )
            registry.add(name, cls, source="advbench", norm=rec["norm"], targeted=rec["targeted"], package=base.package)
