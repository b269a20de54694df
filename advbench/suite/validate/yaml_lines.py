"""Reading a suite file: YAML with a line number for every field, and nothing a plain suite cannot hold.

The file is composed (no Python object is built) to map each field to its line, to find keys given
twice and tags other than the plain YAML types, and to refuse documents that expand through aliases
to more values than any suite needs; only then is it loaded with
:class:`SuiteLoader` (``yaml.SafeLoader`` plus YAML 1.2 floats).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from advbench.errors import ConfigError
from advbench.suite.validate.messages import PathT, Problems

__all__ = ["MAX_VALUES", "SuiteLoader", "expanded_size", "line_map", "read_suite_file"]


class SuiteLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats without a dot (``1e-3``, ``5E+2``) as numbers.

    YAML 1.1 (PyYAML's ``SafeLoader``) reads them as strings, so ``eps: [1e-3]`` would be refused while
    ``lr: 1e-3`` gets through pydantic's string-to-float coercion; with this loader every field, including
    attack, model and dataset parameters, reads them as floats. A quoted ``"1e-3"`` stays a string.
    """


SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_suite_file(path: Path) -> tuple[Any, dict[PathT, int], list[tuple[PathT, str]]]:
    """The parsed document at ``path``, its line map and its duplicate-key problems.

    Raises :class:`ConfigError` for a missing or unreadable file, invalid YAML, tags that build
    objects and alias bombs.
    """
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
        lines, duplicates, tags = line_map(text)
        if tags:  # refused before anything is constructed: nothing in the file is ever executed
            report = Problems(src, lines)
            for loc, msg in tags:
                report.add(loc, msg)
            raise ConfigError(src, report.items)
        data = yaml.load(text, Loader=SuiteLoader)  # noqa: S506 (a SafeLoader)
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
    return data, lines, duplicates


#: The tags yaml.safe_load understands; any other tag (``!!python/object/apply:os.system``, ``!foo``) is refused.
SAFE_TAGS = frozenset(
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


def tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    builds = "builds a Python object" if shown.startswith("!!python/") else "is not a plain YAML type"
    return (
        f"given the YAML tag {shown!r}, which {builds}; expected plain YAML values (advbench reads suites "
        f"with yaml.safe_load and never constructs objects or runs code from them); remove the tag"
    )


def line_map(text: str) -> tuple[dict[PathT, int], list[tuple[PathT, str]], list[tuple[PathT, str]]]:
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
        if node.tag not in SAFE_TAGS:
            tags.append((path, tag_message(str(node.tag))))
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

    root = yaml.compose(text, Loader=SuiteLoader)
    if root is not None:
        walk(root, ())
        size = expanded_size(root)
        if size > MAX_VALUES:
            tags.append(
                (
                    (),
                    f"given a document that expands to more than {MAX_VALUES:,} values through YAML aliases "
                    f"(*name); expected a plain suite (a 'billion laughs' file?); write the values out instead",
                )
            )
    return out, duplicates, tags


#: Values a suite may expand to through aliases; real suites hold a few hundred.
MAX_VALUES = 100_000


def expanded_size(root: yaml.Node) -> int:
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
        memo[id(node)] = min(n, 10 * MAX_VALUES)
        return memo[id(node)]

    return size(root)
