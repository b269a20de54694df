"""Keyword arguments checked against a signature: the one parameter checker of advbench.

Datasets, models and attacks take their hyper-parameters as keyword arguments, from a suite file or
from Python. :func:`check_params` checks a mapping of them against a :class:`ParamSpec` (the
parameters a callable accepts and their annotations) and returns every problem at once: unknown
names (with a close match), names advbench sets itself, values of the wrong type and, optionally,
required parameters that are missing. ``advbench validate``, :meth:`advbench.attacks.Attack.check_params`
and the library attack wrappers all call it, so a parameter is judged the same way everywhere.

Types are checked strictly for scalars (an ``int`` is not a ``bool``, a string of digits is not a
number: the callable would receive exactly that string) and with pydantic's rules for containers
(a YAML list passes for a ``tuple[int, int]``). Annotations pydantic cannot describe (a tensor, a
module) are not checked.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import TypeAdapter, ValidationError

__all__ = ["ParamProblem", "ParamSpec", "check_params", "describe_type"]


@dataclass(frozen=True)
class ParamProblem:
    """One problem with the keyword arguments: the parameter concerned (None: the mapping) and what is wrong."""

    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key is not None else self.message


@dataclass(frozen=True)
class ParamSpec:
    """The keyword arguments a callable accepts: parameters by name, their annotations, and ``**kwargs``."""

    params: Mapping[str, inspect.Parameter]
    hints: Mapping[str, Any] = field(default_factory=dict)
    open_ended: bool = False

    @classmethod
    def of(cls, target: Callable[..., Any], *, keyword_only: bool = False, skip: tuple[str, ...] = ()) -> ParamSpec:
        """The spec of ``target`` (a function or a class, whose ``__init__`` is read).

        ``keyword_only`` keeps only keyword-only parameters (advbench's attack classes); otherwise
        positional-or-keyword ones count too. ``skip`` names parameters that are not
        hyper-parameters (e.g. ``model``). A target without a readable signature gives an open spec
        (nothing is refused).
        """
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return cls({}, {}, open_ended=True)
        kinds = (
            (inspect.Parameter.KEYWORD_ONLY,)
            if keyword_only
            else (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        params = {n: p for n, p in sig.parameters.items() if p.kind in kinds and n not in ("self", *skip)}
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        return cls(params, _type_hints(target), open_ended)


def check_params(
    spec: ParamSpec,
    given: Mapping[str, Any],
    *,
    reserved: Mapping[str, str] | None = None,
    check_missing: bool = True,
) -> list[ParamProblem]:
    """Every problem binding the keyword arguments ``given`` to ``spec``; empty when they fit.

    ``reserved`` maps the names advbench sets itself to how it sets them (e.g. ``{"eps": "from the
    threat model"}``); giving one is a problem even when the callable accepts it. With
    ``check_missing``, parameters without a default that are neither given nor reserved are reported.
    """
    reserved = reserved or {}
    accepted = [n for n in spec.params if n not in reserved]
    valid = ", ".join(accepted) or "(none)"
    out: list[ParamProblem] = []
    for key, value in given.items():
        if key in reserved:
            out.append(
                ParamProblem(
                    key, f"given {_short(value)}; expected no {key!r} here: advbench sets it {reserved[key]}; remove it"
                )
            )
        elif key not in spec.params:
            if not spec.open_ended:
                close = difflib.get_close_matches(str(key), accepted, n=1)
                mean = f"did you mean {close[0]!r}? " if close else ""
                out.append(ParamProblem(key, f"unknown parameter; {mean}accepted: {valid}"))
        elif key in spec.hints:
            expected = _type_problem(spec.hints[key], value)
            if expected is not None:
                out.append(ParamProblem(key, f"given {_short(value)} ({type(value).__name__}); expected {expected}"))
    if check_missing:
        for n, p in spec.params.items():
            if p.default is inspect.Parameter.empty and n not in given and n not in reserved:
                out.append(ParamProblem(n, f"required but missing; add it (accepted: {valid})"))
    return out


def describe_type(hint: Any) -> str:
    """An annotation in words: ``int`` -> ``an integer``, ``Literal['a', 'b']`` -> ``one of 'a', 'b'``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(h) for h in typing.get_args(hint))
    words = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if isinstance(hint, type) and hint in words:
        return words[hint]
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _type_problem(hint: Any, value: Any) -> str | None:
    """None when ``value`` fits ``hint``; otherwise what was expected, in words."""
    return None if _fits(value, hint) else describe_type(hint)


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int or hint is str:
        return isinstance(value, hint) and not isinstance(value, bool)
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(hint)
    except Exception:  # a type pydantic cannot describe (a tensor, a module): not checkable here
        return True
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _type_hints(target: Callable[..., Any]) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # unresolvable annotations: check names only
        return {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
