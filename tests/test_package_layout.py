"""Architecture rules the import-linter contract cannot express, over the whole advbench package: no private
name crosses a module boundary, and no code path unpickles or evaluates text."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "advbench"


def test_no_private_name_crosses_a_module_boundary() -> None:
    """``from advbench.x import _y`` couples a module to another's internals: make ``_y`` public instead."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("advbench"):
                found += [
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not found, "\n".join(found)


# -- no code path can unpickle ----------------------------------------------------------------------

_UNSAFE = {
    r"\btorch\.load\(": "torch.load unpickles (weights_only=False by default in older torch)",
    r"\bpickle\.loads?\(": "pickle.load runs code from the file",
    r"\bcloudpickle\b|\bdill\b|\bjoblib\.load\(": "these unpickle",
    r"allow_pickle\s*=\s*True": "np.load(allow_pickle=True) unpickles object arrays",
    # yaml.load only with the suite loader, a yaml.SafeLoader (checked below)
    r"\byaml\.(unsafe_load|full_load)\(|\byaml\.load\((?![^)]*Loader=SuiteLoader\))": "use yaml.safe_load",
    r"yaml\.Loader\b|UnsafeLoader|FullLoader": "use yaml.safe_load",
    r"\bpd\.read_pickle\(|\bread_pickle\(": "pandas.read_pickle unpickles",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec run text as code",
}


def test_no_code_path_unpickles_or_evaluates():
    found = []
    for path in sorted((ROOT / "advbench").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, why in _UNSAFE.items():
                if re.search(pattern, code):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()} ({why})")
    assert not found, "\n".join(found)
    from advbench.suite.validate.yaml_lines import SuiteLoader

    assert issubclass(SuiteLoader, yaml.SafeLoader)  # the one yaml.load allowed above builds no objects
