"""Load and validate a suite file, reporting every problem at once before anything runs.

Each problem names the file, the line, the field path, what was given, what was expected and a
hint; unknown registry names come with close matches (in the spirit of torchtune's ``validate``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from advbench.errors import ConfigError, UnknownNameError
from advbench.suite.schema import Suite

__all__ = ["load_suite", "validate_suite_dict", "check_params"]

PathT = tuple[str | int, ...]


def load_suite(path: str | Path) -> Suite:
    """Read, parse and fully validate a suite file; raises :class:`ConfigError` with all problems."""
    path = Path(path)
    if not path.is_file():
        hint = "" if path.suffix in (".yaml", ".yml") else " (suite files end in .yaml)"
        raise ConfigError(str(path), [f"the file does not exist{hint}; check the path"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc}"]) from exc
    try:
        data = yaml.safe_load(text)
        lines = _line_map(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}invalid YAML: {problem}; fix the syntax"]) from exc
    return validate_suite_dict(data, source=str(path), lines=lines)


def validate_suite_dict(data: Any, *, source: str = "<suite>", lines: dict[PathT, int] | None = None) -> Suite:
    """Validate an already-parsed suite (a dict) against the schema and the registries."""
    lines = lines or {}
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(source, [f"expected a mapping with keys like 'name', 'dataset', 'models', got {got}"])
    problems: list[str] = []
    suite: Suite | None = None
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(_format_pydantic(err, data, lines))
    problems += _semantic_problems(data, lines)
    if problems:
        raise ConfigError(source, problems)
    assert suite is not None
    return suite


# -- formatting -------------------------------------------------------------------------------


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _where(loc: PathT, lines: dict[PathT, int]) -> str:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"line {lines[loc[:n]]}: "
    return ""


def _fields_of(data: Any, loc: PathT) -> list[str]:
    """The allowed keys at ``loc`` (for 'unknown key' hints), found by walking the schema."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _inner_model(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _format_pydantic(err: Any, data: Any, lines: dict[PathT, int]) -> str:
    loc: PathT = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    given = err.get("input")
    kind = err["type"]
    where = _where(loc, lines)
    field = _dotted(loc)
    if kind == "extra_forbidden":
        allowed = _fields_of(data, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{where}{field}: unknown key; {hint}allowed keys here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{where}{field}: required but missing; add it"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}{field}: given {_short(given)}; expected: {msg}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _line_map(text: str) -> dict[PathT, int]:
    """Map field paths to 1-based line numbers by walking the YAML node tree."""
    out: dict[PathT, int] = {}

    def walk(node: yaml.Node, path: PathT) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = (*path, str(key.value))
                out[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return out


# -- semantic checks against the registries ---------------------------------------------------


def _semantic_problems(data: dict[str, Any], lines: dict[PathT, int]) -> list[str]:
    from advbench.attacks import ATTACKS
    from advbench.data import DATASETS
    from advbench.models import MODELS

    problems: list[str] = []

    def lookup(registry: Any, name: Any, loc: PathT) -> Any:
        if not isinstance(name, str):
            return None  # the schema reports the wrong type
        try:
            return registry.get(name)
        except UnknownNameError as exc:
            problems.append(f"{_where(loc, lines)}{_dotted(loc)}: {exc}")
            return None

    def params(obj: Any, given: Any, loc: PathT, reserved: tuple[str, ...]) -> None:
        if obj is None or not isinstance(given, dict):
            return
        for p in check_params(obj, given, reserved=reserved):
            problems.append(f"{_where(loc, lines)}{_dotted(loc)}: {p}")

    ds = data.get("dataset")
    if isinstance(ds, dict):
        loader = lookup(DATASETS, ds.get("name"), ("dataset", "name"))
        params(loader, ds.get("params", {}), ("dataset", "params"), ("data_dir",))
    ood = (data.get("evaluations") or {}).get("ood") if isinstance(data.get("evaluations"), dict) else None
    if isinstance(ood, dict):
        loader = lookup(DATASETS, ood.get("dataset"), ("evaluations", "ood", "dataset"))
        params(loader, ood.get("params", {}), ("evaluations", "ood", "params"), ("data_dir",))

    models = data.get("models")
    if isinstance(models, list):
        seen: dict[str, int] = {}
        for i, m in enumerate(models):
            if not isinstance(m, dict):
                continue
            name = m.get("name")
            if isinstance(name, str):
                if name in seen:
                    problems.append(
                        f"{_where(('models', i, 'name'), lines)}models[{i}].name: {name!r} is already used by "
                        f"models[{seen[name]}]; give each model a distinct name"
                    )
                seen.setdefault(name, i)
            arch = lookup(MODELS, m.get("architecture"), ("models", i, "architecture"))
            params(arch, m.get("params", {}), ("models", i, "params"), ("num_classes", "input_shape"))

    attacks = data.get("attacks")
    if isinstance(attacks, list):
        seen = {}
        for i, a in enumerate(attacks):
            if not isinstance(a, dict):
                continue
            key = a.get("label") or a.get("name")
            if isinstance(key, str):
                if key in seen:
                    problems.append(
                        f"{_where(('attacks', i), lines)}attacks[{i}]: {key!r} appears twice (also attacks[{seen[key]}]); "
                        f"merge their eps lists or give one a distinct 'label'"
                    )
                seen.setdefault(key, i)
            attack = lookup(ATTACKS, a.get("name"), ("attacks", i, "name"))
            if attack is not None and isinstance(a.get("params", {}), dict):
                checker: Callable[..., list[str]] | None = getattr(attack, "check_params", None)
                found = checker(a.get("params", {}), backend=a.get("backend")) if checker else check_params(
                    attack, a.get("params", {}), reserved=()
                )
                for p in found:
                    problems.append(f"{_where(('attacks', i, 'params'), lines)}attacks[{i}].params: {p}")
    return problems


def check_params(obj: Any, given: dict[str, Any], *, reserved: tuple[str, ...] = ()) -> list[str]:
    """Problems binding ``given`` keyword arguments to ``obj``'s signature (unknown or reserved names)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    accepted = {
        n: p
        for n, p in sig.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in ("self", "model")
    }
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    out = []
    for key in given:
        if key in reserved:
            out.append(f"{key!r} is set by advbench and cannot be given here; remove it")
        elif key not in accepted and not takes_any:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            valid = ", ".join(n for n in accepted if n not in reserved) or "(none)"
            out.append(f"unknown parameter {key!r}; {hint}accepted: {valid}")
    return out
