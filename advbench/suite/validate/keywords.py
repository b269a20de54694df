"""Keyword arguments of a suite's datasets, models and attacks against their signatures.

The checking itself is :func:`advbench.params.check_params`, shared with the attacks; this module
knows which arguments advbench sets itself and where each problem sits in the suite file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from advbench.params import ParamSpec, check_params
from advbench.suite.validate.messages import PathT, Problems, short

__all__ = [
    "RESERVED_ATTACK",
    "RESERVED_DATASET",
    "RESERVED_MODEL",
    "RESERVED_OOD",
    "RESERVED_REGULARISER",
    "report_attack_params",
    "report_params",
]

#: keyword arguments advbench sets itself, per kind of component, and where it takes them from
RESERVED_DATASET: Mapping[str, str] = {"data_dir": "from dataset.data_dir", "download": "from dataset.download"}
RESERVED_OOD: Mapping[str, str] = {"data_dir": "from dataset.data_dir"}
RESERVED_MODEL: Mapping[str, str] = {"num_classes": "from the dataset", "input_shape": "from the dataset"}
RESERVED_REGULARISER: Mapping[str, str] = {
    "ctx": "from the recipe entry (layers, weight) and the dataset (number of classes)"
}
RESERVED_ATTACK: Mapping[str, str] = {"eps": "from the attack's 'eps' list (one run per radius)"}


def report_params(
    report: Problems, obj: Any, given: Any, loc: PathT, reserved: Mapping[str, str], *, check_missing: bool
) -> None:
    """Report the problems of ``given`` against the signature of the factory ``obj`` (a dataset or model)."""
    if obj is None or not isinstance(given, dict):
        return  # an unknown name or a non-mapping: reported elsewhere
    spec = ParamSpec.of(obj, skip=("model",))
    for p in check_params(spec, given, reserved=reserved, check_missing=check_missing):
        if p.key is not None and p.key in given:
            report.add((*loc, p.key), p.message)
        else:
            report.add(loc, str(p))


def report_attack_params(report: Problems, attack: Any, entry: dict[str, Any], index: int) -> None:
    """Report the problems of ``attacks[index]``'s params and backend, through the attack's own ``check_params``."""
    given = entry.get("params", {})
    if attack is None or not isinstance(given, dict):
        return
    loc: PathT = ("attacks", index, "params")
    checker = getattr(attack, "check_params", None)
    if not callable(checker):  # a plain factory registered as an attack
        report_params(report, attack, given, loc, RESERVED_ATTACK, check_missing=False)
        return
    for key, how in RESERVED_ATTACK.items():
        if key in given:
            report.add(
                (*loc, key), f"given {short(given[key])}; expected no {key!r} here: advbench sets it {how}; remove it"
            )
    rest = {k: v for k, v in given.items() if k not in RESERVED_ATTACK}
    try:  # the attack's own check is a plugin's code: an unannotated parameter reaches it with any type
        messages = list(checker(rest, backend=entry.get("backend")))
    except (Exception, SystemExit) as exc:
        what = f"sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        given_text = ", ".join(f"{k}={short(v)} ({type(v).__name__})" for k, v in rest.items()) or "none"
        report.add(
            loc,
            f"the attack's own parameter check failed ({what}) on the given parameters ({given_text}); a value "
            f"probably has the wrong type (e.g. a quoted number): fix it, or ask the plugin to annotate its parameters",
        )
        return
    for msg in messages:
        field = "backend" if msg.startswith("backend ") and "backend" in entry else "params"
        report.add(("attacks", index, field), msg)
