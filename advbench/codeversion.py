"""Cache keys that follow the code: a version per cell kind, computed from the code itself.

Each cell kind lists the advbench source files that compute its output (:data:`KIND_SOURCES`).
Its :func:`code_version` is the SHA-256 of those files' *normalised* contents: Python files are
parsed and their AST dumped without docstrings, so a comment, a docstring or reformatting does
not invalidate the cache, while any change to the code does, without anyone having to remember to
bump a number. :func:`uncovered_imports` (checked by a test) finds advbench modules a kind's code
imports but its list omits, so a new dependency cannot be forgotten either.

Float results also depend on torch's thread count (reductions are split per thread); for the
kinds in :data:`THREAD_SENSITIVE_KINDS`, :func:`code_spec` puts the thread count in the key, so
cells computed with different counts (Ray workers with 1 thread, a laptop with 8) are never mixed.

:func:`report_code_version` hashes the report renderer the same way, so a report is re-rendered
when its own code changes.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import Any

__all__ = [
    "KIND_SOURCES",
    "REPORT_SOURCES",
    "RESULTS_SOURCES",
    "THREAD_SENSITIVE_KINDS",
    "code_spec",
    "code_version",
    "kind_files",
    "normalised_source",
    "report_code_version",
    "results_code_version",
    "source_hash",
    "uncovered_imports",
]

PACKAGE_ROOT = Path(__file__).resolve().parent

#: The cell bodies (run_train, run_attack, ...) live here; every kind depends on them.
_CELLS = ("suite/handlers.py",)
_MODEL = ("models/*.py",)
_DATA = ("data/*.py",)
#: Every kind after training reads checkpoints.
_LOAD = ("training/checkpoint.py",)
#: The evaluation code the cells run, with the attacks it reads (evaluation/flags.py asks the attack registry
#: for properties). Listed module by module, not `evaluation/*.py`: the results reader, the claims, the
#: statistics and the run comparisons there only read cached results, so editing them must not recompute a
#: cell; :func:`uncovered_imports` (a test) fails when cell code starts importing a module not listed here.
_EVAL = (
    "evaluation/__init__.py",
    "evaluation/calibration.py",
    "evaluation/dknn.py",
    "evaluation/flags.py",
    "evaluation/mahalanobis.py",
    "evaluation/min_norm.py",
    "evaluation/transfer.py",
    "attacks/*.py",
)

#: For each cell kind, globs (relative to the advbench package) of the code that computes it.
#: A cell's key includes :func:`code_version` of its kind, so editing any of these files recomputes it.
KIND_SOURCES: dict[str, tuple[str, ...]] = {
    "train": (*_CELLS, *_MODEL, *_DATA, "training/*.py"),
    "clean-eval": (*_CELLS, *_MODEL, *_DATA, *_LOAD, *_EVAL),
    "attack": (*_CELLS, *_MODEL, *_DATA, *_LOAD, *_EVAL),
    "transfer": (*_CELLS, *_MODEL, *_DATA, *_LOAD, *_EVAL),
    "dknn-index": (*_CELLS, *_MODEL, *_DATA, *_LOAD, *_EVAL),
    "dknn-score": (*_CELLS, *_MODEL, *_DATA, *_LOAD, *_EVAL, "suite/execute.py"),
}

#: The report renderer (Markdown, plots, the results reader).
REPORT_SOURCES: tuple[str, ...] = ("reports/*",)

#: What turns a run's cell outputs into its results folder (the tidy tables, their statistics and claims).
RESULTS_SOURCES: tuple[str, ...] = ("evaluation/*.py", "suite/runner.py")

#: Kinds whose float results depend on torch's thread count (all of them compute in floats).
THREAD_SENSITIVE_KINDS = frozenset(KIND_SOURCES)

#: Modules that never change a number: messages, registries, file plumbing, the cache itself.
_NEUTRAL = {
    "advbench",
    "advbench.errors",
    "advbench.registry",
    "advbench.hashing",
    "advbench.io",
    "advbench.codeversion",
    "advbench.params",
    # the suite models only parse and declare: every value a cell reads reaches its key through the
    # resolved configuration in the cell's spec, so a parsing change moves the key by itself
    "advbench.config",
    "advbench.config.suite",
}


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


@functools.lru_cache(maxsize=1024)
def _normalised(path: str, mtime_ns: int, size: int) -> bytes:
    """:func:`normalised_source`, parsed once per file version (every kind lists the cell code again)."""
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
                f"advbench/codeversion.py so the cache keys keep following the code"
            )
        files.update(found)
    return sorted(files)


def source_hash(patterns: tuple[str, ...], root: Path = PACKAGE_ROOT) -> str:
    """SHA-256 over the files' relative names and normalised contents."""
    h = hashlib.sha256()
    for f in kind_files(patterns, root):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        body = normalised_source(f)
        h.update(len(body).to_bytes(8, "little") + body)
    return h.hexdigest()


@functools.cache
def code_version(kind: str) -> str:
    """The version of the code behind cell kind ``kind`` (a hash of its sources; cached per process)."""
    if kind not in KIND_SOURCES:
        raise KeyError(
            f"no code version for cell kind {kind!r}; expected one of {', '.join(KIND_SOURCES)}. A new kind must "
            f"list its sources in advbench/codeversion.py KIND_SOURCES"
        )
    return source_hash(KIND_SOURCES[kind])


def code_spec(kind: str, threads: int | None = None) -> dict[str, Any]:
    """What a cell spec of ``kind`` must include: ``{"code": code_version(kind), "threads": n}``.

    ``threads`` defaults to ``torch.get_num_threads()`` in this process; pass the count the cell
    will actually run with (e.g. 1 in a Ray task, or :data:`advbench.attacks.contract.CHILD_THREADS`
    in a time-limited child). Kinds that do not depend on it get ``threads: None``.
    """
    if kind in THREAD_SENSITIVE_KINDS:
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        n: int | None = int(threads)
    else:
        n = None
    return {"code": code_version(kind), "threads": n}


def results_code_version() -> str:
    """The version of the code that assembles a run's results (:data:`RESULTS_SOURCES`)."""
    return source_hash(RESULTS_SOURCES)


def report_code_version() -> str:
    """The version of the report renderer; store it with a rendered report and re-render when it differs."""
    return source_hash(REPORT_SOURCES)


def _module_file(module: str, root: Path) -> Path | None:
    parts = module.split(".")[1:]
    if not parts:
        return root / "__init__.py"
    rel = Path(*parts)
    for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imported_modules(path: Path, root: Path) -> set[str]:
    """advbench modules that ``path`` imports anywhere (top level, inside functions, TYPE_CHECKING aside)."""
    tree = ast.parse(path.read_bytes())
    package = "advbench." + ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    package = package.rstrip(".")
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # imported for annotations only
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "advbench")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "advbench":
                continue
            out.add(mod)
            for a in node.names:  # `from advbench.x import y` where y is a module
                if _module_file(f"{mod}.{a.name}", root) is not None:
                    out.add(f"{mod}.{a.name}")
    return out


def uncovered_imports(kind: str, root: Path = PACKAGE_ROOT) -> dict[str, list[str]]:
    """advbench modules imported (transitively) by ``kind``'s code but not in its source list.

    For modules whose code (outside suite/handlers.py) a kind's listed files import, so adding an
    ``import`` of a new helper module without listing it is caught.

    Returns ``{module: [files importing it]}``; neutral modules (errors, registry, I/O) and the
    ``advbench.suite`` orchestration (the runner, plan, cache: they decide *which* cells run, not
    their numbers) are not required. Empty when the list is complete.
    """
    listed = set(kind_files(KIND_SOURCES[kind], root))
    # suite/handlers.py holds every kind's body (and so imports everything); it is listed for all kinds,
    # and the closure starts from the kind's own code instead.
    cells = set(kind_files(_CELLS, root))
    todo = list(listed - cells)
    seen: set[Path] = set()
    missing: dict[str, list[str]] = {}
    while todo:
        f = todo.pop()
        if f in seen or f in cells:
            continue
        seen.add(f)
        for mod in _imported_modules(f, root):
            target = _module_file(mod, root)
            if target is None or mod in _NEUTRAL:
                continue
            if (mod == "advbench.suite" or mod.startswith("advbench.suite.")) and target not in listed:
                continue
            if target not in listed:
                missing.setdefault(mod, []).append(f.relative_to(root).as_posix())
            else:
                todo.append(target)
    return missing
