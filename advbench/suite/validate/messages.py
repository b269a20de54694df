"""Problems as ``FILE:LINE: FIELD: message`` lines, and pydantic's errors in the suite's own words."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from advbench.config import Suite
from advbench.params import describe_type

__all__ = ["EXPECTED", "TOP_KEYS", "PathT", "Problems", "dotted", "kind_of", "pydantic_message", "short"]

#: A field's place in the suite: mapping keys and list indices from the top.
PathT = tuple[str | int, ...]

TOP_KEYS = ", ".join(repr(k) for k in Suite.model_fields)


class Problems:
    """Collects problems as ``FILE:LINE: FIELD: message`` lines, in the order found."""

    def __init__(self, source: str, lines: dict[PathT, int]) -> None:
        self.source, self.lines = source, lines
        self.items: list[str] = []

    def line(self, loc: PathT) -> int | None:
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return None

    def add(self, loc: PathT, message: str) -> None:
        line = self.line(loc)
        where = f"{self.source}:{line}" if line is not None else self.source
        item = f"{where}: {dotted(loc)}: {message}"
        if item not in self.items:
            self.items.append(item)


def dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def kind_of(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def field_info(loc: PathT) -> Any:
    """The pydantic FieldInfo of the last key of ``loc`` (for its description), or None."""
    model: Any = Suite
    info: Any = None
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        model = inner_model(info.annotation)
    return info


def allowed_keys(loc: PathT) -> list[str]:
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        model = inner_model(info.annotation) if info is not None else None
        if model is None:
            return []
    return list(model.model_fields)


def describe(loc: PathT) -> str:
    """What a field holds, for 'missing' messages: its description, or the keys of its section."""
    info = field_info(loc)
    if info is None:
        return "a value"
    if info.description:
        return info.description
    inner = inner_model(info.annotation)
    if inner is not None:
        keys = ", ".join(inner.model_fields)
        shape = "a list of mappings" if getattr(info.annotation, "__origin__", None) is list else "a mapping"
        return f"{shape} with the keys {keys}"
    return describe_type(info.annotation)


def inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = inner_model(arg)
        if found is not None:
            return found
    return None


EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list, e.g. [a, b] or one '- item' per line",
    "dict_type": "a mapping of 'key: value' lines",
    "model_type": "a mapping of 'key: value' lines",
    "model_attributes_type": "a mapping of 'key: value' lines",
    "tuple_type": "a list",
    "string_pattern_mismatch": "a name of letters, digits, '_', '.' and '-' that starts with a letter or digit",
}


def pydantic_message(err: Any, loc: PathT) -> str:
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    desc = getattr(field_info(loc), "description", None)
    hint = f" ({desc})" if desc else ""
    if kind == "extra_forbidden":
        allowed = allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        mean = f"; did you mean {close[0]!r}?" if close else "; remove it"
        return f"unknown key {loc[-1]!r}; expected one of: {', '.join(allowed)}{mean}"
    if kind == "missing":
        return f"required but missing; expected {describe(loc)}; add it"
    if kind == "value_error":  # our own validators: the message names what was given and expected
        return str(ctx.get("error") or err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        options = str(ctx.get("expected", ""))
        choices = [c.strip(" '\"") for c in options.replace(" or ", ", ").split(", ")]
        close = difflib.get_close_matches(str(given), choices, n=1) if isinstance(given, str) else []
        mean = f"; did you mean {close[0]!r}?" if close else ""
        return f"given {short(given)}; expected one of {options}{mean}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"given {short(given)}; expected a number {op} {bound}{hint}"
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        size = "at least" if kind == "too_short" else "at most"
        return f"given {short(given)}; expected {size} {n} item(s){hint}"
    expected = EXPECTED.get(kind) or err["msg"].removeprefix("Input should be ")
    given_text = short(given) if kind != "model_type" else f"a {kind_of(given)} {short(given)}"
    return f"given {given_text}; expected {expected}{hint}"
