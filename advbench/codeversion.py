"""A cell's code identity: the components it uses, each with a locked version.

A *component* is one unit of code a cell runs: the handler module of its kind
(``advbench.suite.cells.attack``), the module of each registry entry it uses (the attack, the
architecture, the dataset, each regulariser) and, for an attack with a property that needs the
attacker's knowledge, the module that hands it that knowledge. An advbench component's code is its
*import closure*: the module and every advbench module it imports, walked down to :data:`NEUTRAL`
(errors, I/O, registries, parameters, hashing, configuration, the cache), which never change a number.
Python files are hashed as their AST without docstrings, so a comment or reformatting is not a change.

The key carries a component's *version number* from the committed lock (``advbench/code.lock.json``),
not its hash: a refactor shown to change no result is re-locked at the same number and costs nothing;
a change to results bumps the number, and exactly that component's cells and their dependents
recompute. A component whose code differs from its lock (an edit not yet locked) is keyed by its
hash as well (``"3+1a2b…"``), so a working tree never reads cells of other code; ``advbench code check``
(run by CI; :mod:`advbench.suite.codelock`) fails until the lock is brought up to date with
``advbench code lock``.

A plugin (an entry point of another distribution) is identified by its distribution name and version,
plus a hash of its source when it is installed editable or unversioned; code registered by a script
(``source`` ``"user"``) by the hash of its module. Third-party libraries enter a cell's key only as the
versions of the distributions its components' closures import (:data:`NEUTRAL_LIBRARIES` aside).

Upstream code reaches a cell through its inputs' keys: an attack cell names its source model's train
key, which carries the architecture and training code.

:func:`report_code_version` and :func:`results_code_version` hash the report renderer and the results
assembly the same way (whole folders), so a report is re-rendered when its own code changes.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advbench.errors import AdvbenchError

__all__ = [
    "LOCK_FILE",
    "NEUTRAL",
    "NEUTRAL_LIBRARIES",
    "PACKAGE_ROOT",
    "REPORT_SOURCES",
    "RESULTS_SOURCES",
    "Component",
    "advbench_component",
    "cell_code",
    "clear_lock_cache",
    "closure",
    "closure_hash",
    "closure_libraries",
    "entry_component",
    "kind_files",
    "normalised_source",
    "read_lock",
    "report_code_version",
    "results_code_version",
    "source_hash",
]

PACKAGE_ROOT = Path(__file__).resolve().parent
#: The committed lock: ``{module: {"version": int, "hash": sha256}}`` for every advbench component.
LOCK_FILE = PACKAGE_ROOT / "code.lock.json"

#: Modules where a closure stops: they decide no number. Every value a cell reads from the suite reaches its
#: key through the resolved configuration in its spec; the cache, the registries and the handler registry only
#: store and find. The import contract in pyproject.toml keeps them below every domain package.
NEUTRAL = frozenset(
    {
        "advbench",
        "advbench.codeversion",
        "advbench.config",
        "advbench.config.suite",
        "advbench.errors",
        "advbench.hashing",
        "advbench.io",
        "advbench.params",
        "advbench.registry",
        "advbench.suite.cache",
        "advbench.suite.cells",
    }
)

#: Third-party distributions that do not change a number (progress bars, config parsing, typing).
NEUTRAL_LIBRARIES = frozenset({"tqdm", "pydantic", "pyyaml", "typing-extensions"})

#: The report renderer (Markdown, plots, the results reader).
REPORT_SOURCES: tuple[str, ...] = ("reports/*",)
#: What turns a run's cell outputs into its results folder (the tidy tables, their statistics and claims).
RESULTS_SOURCES: tuple[str, ...] = ("analysis/*.py", "evaluation/*.py", "suite/runner.py")

#: The attack backends: an attack cell's key carries only the one its attack uses.
BACKENDS = frozenset({"torchattacks", "foolbox"})


# -- normalised sources ---------------------------------------------------------------------------


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node: Any) -> Any:
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip  # noqa: N815


def normalised_source(path: str | Path) -> bytes:
    """What of a file counts for its results: for Python, the AST without docstrings, comments or layout."""
    st = Path(path).stat()
    return _normalised(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2048)
def _normalised(path: str, mtime_ns: int, size: int) -> bytes:
    """:func:`normalised_source`, parsed once per file version."""
    raw = Path(path).read_bytes()
    if Path(path).suffix != ".py":
        return raw.replace(b"\r\n", b"\n")
    tree = _StripDocstrings().visit(ast.parse(raw, filename=str(path)))
    return ast.dump(tree, annotate_fields=True, include_attributes=False).encode()


def kind_files(patterns: tuple[str, ...], root: Path = PACKAGE_ROOT) -> list[Path]:
    """The files the globs name, sorted; a glob that names nothing raises (a moved module must be re-listed)."""
    files: set[Path] = set()
    for pattern in patterns:
        found = [p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
        if not found:
            raise FileNotFoundError(
                f"code-version glob {pattern!r} matches no file under {root}; a module moved: update "
                f"advbench/codeversion.py so the report's code version keeps following the code"
            )
        files.update(found)
    return sorted(files)


def _hash_files(files: Iterable[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        body = normalised_source(f)
        h.update(len(body).to_bytes(8, "little") + body)
    return h.hexdigest()


def source_hash(patterns: tuple[str, ...], root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 over the files' relative names and normalised contents."""
    return _hash_files(kind_files(patterns, root), root)


def results_code_version() -> str:
    """The version of the code that assembles a run's results (:data:`RESULTS_SOURCES`)."""
    return source_hash(RESULTS_SOURCES)


def report_code_version() -> str:
    """The version of the report renderer; store it with a rendered report and re-render when it differs."""
    return source_hash(REPORT_SOURCES)


# -- import closures ------------------------------------------------------------------------------


def _module_file(module: str, top: str, root: Path) -> Path | None:
    """The file of ``module`` (a module of the package ``top`` whose folder is ``root``), or None."""
    parts = module.split(".")
    if parts[0] != top:
        return None
    if root.is_file():  # a single-module distribution
        return root if len(parts) == 1 else None
    rel = Path(*parts[1:]) if len(parts) > 1 else Path()
    for cand in (root / rel.with_suffix(".py") if parts[1:] else None, root / rel / "__init__.py"):
        if cand is not None and cand.is_file():
            return cand
    return None


def _imports(path: Path, module: str) -> tuple[frozenset[str], frozenset[str]]:
    """``(modules, top-level names)`` that ``path`` (module ``module``) imports anywhere, ``TYPE_CHECKING`` aside."""
    st = path.stat()
    return _imports_of(str(path), module, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2048)
def _imports_of(path: str, module: str, mtime_ns: int, size: int) -> tuple[frozenset[str], frozenset[str]]:
    tree = ast.parse(Path(path).read_bytes())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # imported for annotations only
    package = module if Path(path).name == "__init__.py" else module.rpartition(".")[0]
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            mods.add(mod)
            mods.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return frozenset(mods), frozenset(m.split(".")[0] for m in mods if m)


@dataclass(frozen=True)
class _Closure:
    files: tuple[Path, ...]
    modules: tuple[str, ...]
    top_level_imports: frozenset[str]
    root: Path


def _package_root(top: str) -> Path:
    if top == "advbench":
        return PACKAGE_ROOT
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise AdvbenchError(f"cannot find the source of the package {top!r} to identify its code")
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def _closure(module: str) -> _Closure:
    top = module.split(".")[0]
    root = _package_root(top)
    neutral = NEUTRAL if top == "advbench" else frozenset()
    start = _module_file(module, top, root)
    if start is None:
        raise AdvbenchError(f"no source file for the module {module!r} under {root}")
    files: dict[Path, str] = {}
    tops: set[str] = set()
    todo = [(module, start)]
    while todo:
        mod, f = todo.pop()
        if f in files:
            continue
        files[f] = mod
        imported, names = _imports(f, mod)
        tops |= names
        for m in imported:
            target = _module_file(m, top, root)
            if target is not None and m not in neutral and target not in files:
                todo.append((m, target))
    return _Closure(tuple(sorted(files)), tuple(sorted(files.values())), frozenset(tops), root)


def closure(module: str) -> list[Path]:
    """The files of ``module`` and of every module of its package it imports, down to :data:`NEUTRAL`."""
    return list(_closure(module).files)


def closure_hash(module: str, c: _Closure | None = None) -> str:
    """SHA-256 over the normalised sources of :func:`closure`'s files (``c``: the closure, if already walked)."""
    c = _closure(module) if c is None else c
    return _hash_files(c.files, c.root.parent)


@functools.cache
def _distributions_of() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _canonical(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def closure_libraries(module: str, c: _Closure | None = None) -> frozenset[str]:
    """The third-party distributions (canonical names) that ``module``'s closure imports, neutral ones aside."""
    top = module.split(".")[0]
    out: set[str] = set()
    for name in (_closure(module) if c is None else c).top_level_imports - {top, "advbench"}:
        if name in sys.stdlib_module_names or name.startswith("_"):
            continue
        for dist in _distributions_of().get(name, []):
            if _canonical(dist) not in NEUTRAL_LIBRARIES:
                out.add(_canonical(dist))
    return frozenset(out)


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.cache
def _library_version(dist: str) -> str:
    """:func:`_dist_version` read once per process: a plan of 1,000 cells asks for the same few libraries (4 s
    uncached); a library is not upgraded under a running process (a plugin's version is read each time)."""
    return _dist_version(dist)


# -- the lock -------------------------------------------------------------------------------------


def read_lock(path: Path = LOCK_FILE) -> dict[str, dict[str, Any]]:
    """The committed lock (``{}`` when there is none)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise AdvbenchError(
            f"{path} is not valid JSON ({exc}); restore it from git or run `advbench code lock`"
        ) from exc
    return dict(data.get("components", {}))


@dataclass(frozen=True)
class Component:
    """One unit of code a cell uses: its name, the version its cells are keyed by, and what it imports."""

    name: str
    version: str
    libraries: frozenset[str] = frozenset()
    #: the advbench (or plugin) modules of its closure, for ``advbench code why``
    modules: tuple[str, ...] = ()
    #: whether a fresh process finds it (advbench's own code, an entry point); ``False`` for code
    #: registered by the running program, which only this process has
    portable: bool = True

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"


def advbench_component(module: str, lock: Mapping[str, Mapping[str, Any]] | None = None) -> Component:
    """The component rooted at the advbench module ``module``, versioned by the lock."""
    lock = _lock() if lock is None else lock
    c = _closure(module)  # walked once for the hash, the libraries and the module list
    digest = closure_hash(module, c)
    locked = lock.get(module)
    if locked is None:
        version = f"0+{digest[:16]}"  # not locked yet: keyed by its code
    elif locked.get("hash") == digest:
        version = str(locked["version"])
    else:
        version = f"{locked['version']}+{digest[:16]}"  # edited since the lock: keyed by its code too
    return Component(module, version, closure_libraries(module, c), c.modules)


@functools.cache
def _lock() -> dict[str, dict[str, Any]]:
    return read_lock()


def clear_lock_cache() -> None:
    """Forget the lock read by this process (after :func:`advbench.suite.codelock.write_lock`)."""
    _lock.cache_clear()


def _editable(dist: str) -> bool:
    try:
        text = importlib.metadata.distribution(dist).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not text:
        return False
    try:
        return bool(json.loads(text).get("dir_info", {}).get("editable"))
    except ValueError:
        return False


def _unversioned(version: str) -> bool:
    return version in {"absent", "0", "0.0", "0.0.0"} or version.startswith("0.0.0")


def _object_source_hash(obj: Any) -> tuple[str, tuple[str, ...]]:
    """The hash of the code behind ``obj``: its module's closure in its own package, else its own source."""
    module = getattr(obj, "__module__", None) or ""
    if module and module != "__main__":
        try:
            c = _closure(module)
            return closure_hash(module, c)[:16], c.modules
        except (AdvbenchError, OSError, SyntaxError, ValueError, ImportError):
            pass
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16], (module,)
    except (OSError, TypeError) as exc:
        raise AdvbenchError(
            f"cannot read the source of {obj!r} (module {module!r}) to identify its code ({exc}); put it in an "
            f"importable module or install it as a plugin package"
        ) from exc


def entry_component(registry: Any, name: str) -> Component:
    """The component behind the registry entry ``name``: advbench's module, a plugin's distribution, or user code."""
    entry = registry.entry(name)
    code = getattr(entry.obj, "__wrapped__", entry.obj)  # a claim is identified by its statistic's code
    module = getattr(code, "__module__", "") or ""
    if entry.source == "advbench" and module.split(".")[0] == "advbench":
        return advbench_component(module)
    if entry.source == "user":
        digest, user_modules = _object_source_hash(code)
        return Component(f"user:{module}", f"src.{digest}", frozenset(), user_modules, portable=False)
    dist = entry.source
    version = _dist_version(dist)
    modules: tuple[str, ...] = (module,)
    if _editable(dist) or _unversioned(version):
        digest, modules = _object_source_hash(code)
        version = f"{version}+src.{digest}"
    libraries: frozenset[str] = frozenset()
    if module:
        try:
            libraries = closure_libraries(module) - {_canonical(dist)}
        except (AdvbenchError, OSError, SyntaxError, ValueError, ImportError):
            pass
    group = getattr(registry, "group", None)
    portable = isinstance(group, str) and any(
        getattr(getattr(ep, "dist", None), "name", None) == dist for ep in importlib.metadata.entry_points(group=group)
    )
    return Component(f"plugin:{dist}", version, libraries, modules, portable=portable)


# -- a cell's code --------------------------------------------------------------------------------

Roles = Mapping[str, "Component | list[Component] | None"]


def cell_code(roles: Roles, threads: int, *, drop_libraries: Iterable[str] = ()) -> dict[str, Any]:
    """The ``code`` part of a cell's spec: each role's component identity, their libraries' versions, threads.

    ``roles`` maps a role (``"cell"``, ``"attack"``, ``"architecture"``, …) to a component, a list of
    them (``"regularisers"``) or ``None`` (left out). ``drop_libraries`` removes libraries the closure
    imports but this cell does not use (the attack backend it did not pick). The thread count is part of
    every cell's code: reductions split per thread, so different counts give different bits.
    """
    components: dict[str, Any] = {}
    libraries: set[str] = set()
    for role, comp in sorted(roles.items()):
        if comp is None:
            continue
        group = comp if isinstance(comp, list) else [comp]
        components[role] = [c.ident for c in group] if isinstance(comp, list) else comp.ident
        for c in group:
            libraries |= c.libraries
    libraries -= set(drop_libraries)
    return {
        "components": components,
        "libraries": {lib: _library_version(lib) for lib in sorted(libraries)},
        "threads": int(threads),
    }
