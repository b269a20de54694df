"""Load and validate a suite file, reporting every problem at once before anything runs.

Each problem is one line, ``FILE:LINE: FIELD: given ...; expected ...; hint``, so an editor can jump
to it; unknown registry names come with close matches (in the spirit of torchtune's ``validate``).
Validation reads the file and the registries only: nothing is run, downloaded or written.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from advbench.config import Suite
from advbench.errors import ConfigError, UnknownNameError

__all__ = ["check_params", "load_suite", "validate_suite_dict"]

PathT = tuple[str | int, ...]

_TOP_KEYS = ", ".join(repr(k) for k in Suite.model_fields)


def load_suite(path: str | Path) -> Suite:
    """Read, parse and fully validate a suite file; raises :class:`ConfigError` with all problems."""
    path = Path(path)
    src = str(path)
    if path.is_dir():
        raise ConfigError(src, [f"{src}: given a folder; expected a suite file (e.g. suites/quick.yaml)"])
    if not path.is_file():
        hint = "" if path.suffix in (".yaml", ".yml") else " (suite files end in .yaml)"
        raise ConfigError(src, [f"{src}: the file does not exist{hint}; check the path"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(src, [f"{src}: cannot read the file ({exc}); expected a UTF-8 YAML file"]) from exc
    try:
        lines, duplicates, tags = _line_map(text)
        if tags:  # refused before anything is constructed: nothing in the file is ever executed
            report = _Problems(src, lines)
            for loc, msg in tags:
                report.add(loc, msg)
            raise ConfigError(src, report.items)
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(
            src, [f"{src}: given values nested too deeply to read; expected a suite nested a few levels; flatten it"]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{src}:{mark.line + 1}:{mark.column + 1}" if mark is not None else src
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        what = f"{problem} ({context})" if context else problem
        raise ConfigError(
            src,
            [f"{where}: invalid YAML: {what}; fix the syntax (indent with spaces; quote strings holding ': ' or '#')"],
        ) from exc
    return validate_suite_dict(data, source=src, lines=lines, _extra=duplicates)


def validate_suite_dict(
    data: Any,
    *,
    source: str = "<suite>",
    lines: dict[PathT, int] | None = None,
    _extra: list[tuple[PathT, str]] | None = None,
) -> Suite:
    """Validate an already-parsed suite (a dict) against the schema and the registries."""
    report = _Problems(source, lines or {})
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_kind_of(data)}"
        report.add((), f"given {got}; expected a mapping with the keys {_TOP_KEYS} (see suites/quick.yaml)")
        raise ConfigError(source, report.items)
    for loc, msg in _extra or ():
        report.add(loc, msg)
    suite: Suite | None = None
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            report.add(loc, _pydantic_message(err, loc))
    _semantic_problems(data, report)
    if suite is not None:
        _cross_field_problems(suite, data, report)
    if report.items or suite is None:
        raise ConfigError(source, report.items)
    return suite


# -- formatting -------------------------------------------------------------------------------


class _Problems:
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
        item = f"{where}: {_dotted(loc)}: {message}"
        if item not in self.items:
            self.items.append(item)


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _kind_of(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_info(loc: PathT) -> Any:
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
        model = _inner_model(info.annotation)
    return info


def _allowed_keys(loc: PathT) -> list[str]:
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        model = _inner_model(info.annotation) if info is not None else None
        if model is None:
            return []
    return list(model.model_fields)


def _describe(loc: PathT) -> str:
    """What a field holds, for 'missing' messages: its description, or the keys of its section."""
    info = _field_info(loc)
    if info is None:
        return "a value"
    if info.description:
        return info.description
    inner = _inner_model(info.annotation)
    if inner is not None:
        keys = ", ".join(inner.model_fields)
        shape = "a list of mappings" if getattr(info.annotation, "__origin__", None) is list else "a mapping"
        return f"{shape} with the keys {keys}"
    return _type_name(info.annotation)


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


_EXPECTED = {
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


def _pydantic_message(err: Any, loc: PathT) -> str:
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    desc = getattr(_field_info(loc), "description", None)
    hint = f" ({desc})" if desc else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        mean = f"; did you mean {close[0]!r}?" if close else "; remove it"
        return f"unknown key {loc[-1]!r}; expected one of: {', '.join(allowed)}{mean}"
    if kind == "missing":
        return f"required but missing; expected {_describe(loc)}; add it"
    if kind == "value_error":  # our own validators: the message names what was given and expected
        return str(ctx.get("error") or err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        options = str(ctx.get("expected", ""))
        choices = [c.strip(" '\"") for c in options.replace(" or ", ", ").split(", ")]
        close = difflib.get_close_matches(str(given), choices, n=1) if isinstance(given, str) else []
        mean = f"; did you mean {close[0]!r}?" if close else ""
        return f"given {_short(given)}; expected one of {options}{mean}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"given {_short(given)}; expected a number {op} {bound}{hint}"
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        size = "at least" if kind == "too_short" else "at most"
        return f"given {_short(given)}; expected {size} {n} item(s){hint}"
    expected = _EXPECTED.get(kind) or err["msg"].removeprefix("Input should be ")
    given_text = _short(given) if kind != "model_type" else f"a {_kind_of(given)} {_short(given)}"
    return f"given {given_text}; expected {expected}{hint}"


#: The tags yaml.safe_load understands; any other tag (``!!python/object/apply:os.system``, ``!foo``) is refused.
_SAFE_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}"
    for t in (
        "str",
        "int",
        "float",
        "bool",
        "null",
        "map",
        "seq",
        "timestamp",
        "binary",
        "merge",
        "omap",
        "pairs",
        "set",
    )
)


def _tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    builds = "builds a Python object" if shown.startswith("!!python/") else "is not a plain YAML type"
    return (
        f"given the YAML tag {shown!r}, which {builds}; expected plain YAML values (advbench reads suites "
        f"with yaml.safe_load and never constructs objects or runs code from them); remove the tag"
    )


def _line_map(text: str) -> tuple[dict[PathT, int], list[tuple[PathT, str]], list[tuple[PathT, str]]]:
    """Field paths -> 1-based line numbers, keys given twice in one mapping (YAML keeps the last), and
    explicit tags other than the plain YAML types (composing builds no Python objects)."""
    out: dict[PathT, int] = {}
    duplicates: list[tuple[PathT, str]] = []
    tags: list[tuple[PathT, str]] = []
    walked: set[int] = set()

    def walk(node: yaml.Node, path: PathT) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if id(node) in walked:  # an alias (*name) of a node already walked: walk each node once
            return
        walked.add(id(node))
        if node.tag not in _SAFE_TAGS:
            tags.append((path, _tag_message(str(node.tag))))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                p = (*path, name)
                line = key.start_mark.line + 1
                if name in seen and name != "<<":
                    duplicates.append(
                        (
                            p,
                            f"key given twice (lines {seen[name]} and {line}); YAML would silently keep the last; "
                            f"expected each key once: remove or merge one",
                        )
                    )
                else:
                    seen[name] = line
                    out[p] = line
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
        size = _expanded_size(root)
        if size > _MAX_VALUES:
            tags.append(
                (
                    (),
                    f"given a document that expands to more than {_MAX_VALUES:,} values through YAML aliases "
                    f"(*name); expected a plain suite (a 'billion laughs' file?); write the values out instead",
                )
            )
    return out, duplicates, tags


#: Values a suite may expand to through aliases; real suites hold a few hundred.
_MAX_VALUES = 100_000


def _expanded_size(root: yaml.Node) -> int:
    """The number of values ``root`` stands for once every alias is expanded (memoised, so cheap)."""
    memo: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in memo:
            return memo[id(node)]
        memo[id(node)] = 1  # a recursive alias counts once rather than looping
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        else:
            n = 1
        memo[id(node)] = min(n, 10 * _MAX_VALUES)
        return memo[id(node)]

    return size(root)


# -- semantic checks against the registries ---------------------------------------------------

#: keyword arguments advbench sets itself, per kind of component
RESERVED_DATASET = ("data_dir", "download")
RESERVED_MODEL = ("num_classes", "input_shape")
RESERVED_ATTACK = ("eps",)


def _semantic_problems(data: dict[str, Any], report: _Problems) -> None:
    from advbench.attacks import ATTACKS
    from advbench.data import DATASETS
    from advbench.models import MODELS

    def lookup(registry: Any, name: Any, loc: PathT) -> Any:
        if not isinstance(name, str):
            return None  # the schema reports the missing value or the wrong type
        try:
            return registry.get(name)
        except UnknownNameError as exc:
            mean = f"; did you mean {', '.join(repr(c) for c in exc.close)}?" if exc.close else ""
            shown = ", ".join(exc.available[:12]) + (", ..." if len(exc.available) > 12 else "")
            report.add(
                loc,
                f"given {name!r}; expected a registered {exc.kind} ({shown or 'none registered'}){mean}; "
                f"see `advbench list {exc.kind}s`",
            )
            return None

    def params(obj: Any, given: Any, loc: PathT, reserved: tuple[str, ...], *, check_missing: bool) -> None:
        if obj is None or not isinstance(given, dict):
            return
        for key, msg in _param_problems(obj, given, reserved=reserved, check_missing=check_missing):
            report.add((*loc, key) if key is not None and key in given else loc, msg)

    ds = data.get("dataset")
    if isinstance(ds, dict):
        loader = lookup(DATASETS, ds.get("name"), ("dataset", "name"))
        params(loader, ds.get("params", {}), ("dataset", "params"), RESERVED_DATASET, check_missing=True)
    evaluations = data.get("evaluations")
    ood = evaluations.get("ood") if isinstance(evaluations, dict) else None
    if isinstance(ood, dict):
        loader = lookup(DATASETS, ood.get("dataset"), ("evaluations", "ood", "dataset"))
        params(loader, ood.get("params", {}), ("evaluations", "ood", "params"), ("data_dir",), check_missing=True)

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
            arch = lookup(MODELS, m.get("architecture"), ("models", i, "architecture"))
            params(arch, m.get("params", {}), ("models", i, "params"), RESERVED_MODEL, check_missing=True)

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
            given = a.get("params", {})
            if attack is None or not isinstance(given, dict):
                continue
            checker: Callable[..., list[str]] | None = getattr(attack, "check_params", None)
            if checker is not None:
                for key in RESERVED_ATTACK:
                    if key in given:
                        report.add(("attacks", i, "params", key), _reserved_message(key, given[key]))
                rest = {k: v for k, v in given.items() if k not in RESERVED_ATTACK}
                for msg in checker(rest, backend=a.get("backend")):
                    field = "backend" if msg.startswith("backend ") and "backend" in a else "params"
                    report.add(("attacks", i, field), msg)
            else:
                params(attack, given, ("attacks", i, "params"), RESERVED_ATTACK, check_missing=False)


def _cross_field_problems(suite: Suite, data: dict[str, Any], report: _Problems) -> None:
    """Problems that involve several fields: sizes against the dataset, options that exclude each other."""
    from advbench.data import DATASETS, dataset_sizes

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
        cal_text = f", calibration={cal} (evaluations.dknn.calibration_size)" if cal else ""
        if test_pool is None:
            n_test = test if test is not None else max(1, pool // 5)
            needed = (train or 0) + cal + n_test
            if needed > pool:
                report.add(
                    ("dataset", "splits"),
                    f"given train={train}{cal_text}, test={n_test}: {needed} examples in all; expected at most "
                    f"the {pool} examples of {ds.name!r}; reduce dataset.splits"
                    + (" or evaluations.dknn.calibration_size" if cal else ""),
                )
                n_train = None
            elif train is None:
                n_train = pool - n_test - cal
        else:
            if test is not None and test > test_pool:
                report.add(
                    ("dataset", "splits", "test"),
                    f"given {test}; expected at most the {test_pool} examples of {ds.name!r}'s official test set; "
                    f"set it to {test_pool} or less (or null for all of them)",
                )
            if (train or 0) + cal > pool:
                report.add(
                    ("dataset", "splits"),
                    f"given train={train}{cal_text}: {(train or 0) + cal} examples from the training pool; expected "
                    f"at most the {pool} training examples of {ds.name!r}; reduce dataset.splits.train"
                    + (" or evaluations.dknn.calibration_size" if cal else ""),
                )
                n_train = None
            elif train is None:
                n_train = pool - cal
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


def check_params(
    obj: Any, given: dict[str, Any], *, reserved: tuple[str, ...] = (), check_missing: bool = False
) -> list[str]:
    """Problems binding ``given`` keyword arguments to ``obj``'s signature.

    Reports unknown names (with close matches), names advbench sets itself (``reserved``), values
    of the wrong type (checked against the annotations with pydantic's lax rules) and, with
    ``check_missing``, required parameters that were not given.
    """
    found = _param_problems(obj, given, reserved, check_missing)
    return [f"{key}: {msg}" if key is not None else msg for key, msg in found]


def _param_problems(
    obj: Any, given: dict[str, Any], reserved: tuple[str, ...] = (), check_missing: bool = False
) -> list[tuple[str | None, str]]:
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
    valid = ", ".join(n for n in accepted if n not in reserved) or "(none)"
    hints = _type_hints(obj)
    out: list[tuple[str | None, str]] = []
    for key, value in given.items():
        if key in reserved:
            out.append((key, _reserved_message(key, value)))
        elif key not in accepted:
            if takes_any:
                continue
            close = difflib.get_close_matches(str(key), list(accepted), n=1)
            mean = f"; did you mean {close[0]!r}?" if close else ""
            out.append((key, f"unknown parameter; expected one of: {valid}{mean}"))
        elif key in hints:
            problem = _type_problem(hints[key], value)
            if problem:
                out.append((key, f"given {_short(value)}; expected {problem}"))
    if check_missing:
        for n, p in accepted.items():
            if p.default is inspect.Parameter.empty and n not in given and n not in reserved:
                out.append((None, f"required parameter {n!r} is missing; expected it in params (accepted: {valid})"))
    return out


def _reserved_message(key: str, value: Any) -> str:
    extra = "; list the radii in the attack's 'eps'" if key == "eps" else ""
    return f"given {_short(value)}; expected no {key!r} here: advbench sets it itself{extra}; remove it"


def _type_hints(obj: Any) -> dict[str, Any]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks rather than fail validation
        return {}


def _type_problem(hint: Any, value: Any) -> str | None:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(hint)
    except Exception:  # a type pydantic cannot describe (a tensor, a module): not checkable here
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _EXPECTED.get(first["type"]) or f"{_type_name(hint)} ({first['msg']})"
    return None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
