"""Cache keys follow the code: changing the code behind a cell kind moves its key, a comment does not,
and a new dependency cannot be left out of a kind's source list."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import advbench.codeversion as cv
from advbench.codeversion import (
    KIND_SOURCES,
    PACKAGE_ROOT,
    code_spec,
    code_version,
    kind_files,
    report_code_version,
    source_hash,
    uncovered_imports,
)
from advbench.suite.cache import cache_key

#: Every kind of cell the plan builds (plan.py, handlers.py); each needs a code version.
PLAN_KINDS = {"train", "attack", "transfer", "dknn-index", "dknn-score", "clean-eval"}


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of the advbench sources to edit."""
    dest = tmp_path / "advbench"
    shutil.copytree(PACKAGE_ROOT, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_every_plan_kind_has_a_code_version():
    assert set(KIND_SOURCES) >= PLAN_KINDS
    for kind in PLAN_KINDS:
        assert len(code_version(kind)) == 64


def test_an_unknown_kind_is_refused():
    with pytest.raises(KeyError, match="KIND_SOURCES"):
        code_version("no-such-kind")


def _edit_one(root: Path, rel: str, how: str) -> None:
    f = root / rel
    text = f.read_text()
    if how == "code":
        text += "\n_changed_behaviour = 1\n"
    elif how == "constant":
        # change the first numeric literal found after the docstring: a real behaviour change
        import re

        m = re.search(r"(?<![\w.])(\d+\.\d+|\d+)(?![\w.])", text[text.find('"""', 3) + 3 :])
        assert m is not None
        start = text.find('"""', 3) + 3 + m.start()
        text = text[:start] + str(m.group(0)) + "1" + text[start + len(m.group(0)) :]
    elif how == "comment":
        text += "\n# a comment changes nothing\n"
    elif how == "docstring":
        text = text.replace('"""', '"""Reworded. ', 1)
    elif how == "blank-lines":
        text = text.replace("\n\n", "\n\n\n", 1)
    f.write_text(text)


@pytest.mark.parametrize("kind", sorted(PLAN_KINDS))
def test_changing_any_source_file_of_a_kind_moves_its_key(package_copy, kind):
    """Fails if the code behind a kind changes and the key does not (every listed file is tried)."""
    base = source_hash(KIND_SOURCES[kind], package_copy)
    for f in kind_files(KIND_SOURCES[kind], package_copy):
        rel = f.relative_to(package_copy).as_posix()
        before = f.read_bytes()
        _edit_one(package_copy, rel, "code")
        moved = source_hash(KIND_SOURCES[kind], package_copy)
        f.write_bytes(before)
        assert moved != base, f"editing {rel} did not change the code version of {kind!r}"
    assert source_hash(KIND_SOURCES[kind], package_copy) == base


@pytest.mark.parametrize(
    ("rel", "kinds"),
    [
        ("attacks/pgd.py", {"attack"}),
        ("training/snnl.py", {"train"}),
        ("evaluation/dknn.py", {"dknn-index", "dknn-score"}),
        ("evaluation/transfer.py", {"transfer"}),
        ("models/architectures.py", PLAN_KINDS),
    ],
)
def test_a_numeric_constant_change_moves_the_right_keys(package_copy, rel, kinds):
    before = {k: source_hash(KIND_SOURCES[k], package_copy) for k in PLAN_KINDS}
    _edit_one(package_copy, rel, "constant")
    after = {k: source_hash(KIND_SOURCES[k], package_copy) for k in PLAN_KINDS}
    assert {k for k in PLAN_KINDS if before[k] != after[k]} >= kinds


@pytest.mark.parametrize(
    "rel", ["evaluation/claims.py", "evaluation/results.py", "evaluation/comparison.py", "evaluation/stats.py"]
)
def test_code_that_only_reads_results_moves_no_cell_key(package_copy, rel):
    """Claims, statistics and the results reader run after the cells: editing them keeps every cached cell."""
    before = {k: source_hash(KIND_SOURCES[k], package_copy) for k in PLAN_KINDS}
    _edit_one(package_copy, rel, "code")
    assert {k: source_hash(KIND_SOURCES[k], package_copy) for k in PLAN_KINDS} == before


@pytest.mark.parametrize("how", ["comment", "docstring", "blank-lines"])
def test_comments_docstrings_and_layout_do_not_move_keys(package_copy, how):
    before = source_hash(KIND_SOURCES["attack"], package_copy)
    _edit_one(package_copy, "attacks/pgd.py", how)
    assert source_hash(KIND_SOURCES["attack"], package_copy) == before


def test_a_new_module_in_a_listed_folder_is_picked_up(package_copy):
    before = source_hash(KIND_SOURCES["attack"], package_copy)
    (package_copy / "attacks" / "newattack.py").write_text("X = 1\n")
    assert source_hash(KIND_SOURCES["attack"], package_copy) != before


def test_a_moved_module_fails_loudly(package_copy):
    (package_copy / "suite" / "handlers.py").rename(package_copy / "suite" / "cell_bodies.py")
    with pytest.raises(FileNotFoundError, match=r"update advbench/codeversion\.py"):
        source_hash(KIND_SOURCES["train"], package_copy)


def test_every_kind_lists_all_the_code_it_imports():
    for kind in PLAN_KINDS:
        assert uncovered_imports(kind) == {}, f"{kind}: add these modules to KIND_SOURCES"


def test_a_new_import_that_is_not_listed_is_caught(package_copy):
    (package_copy / "helpers.py").write_text("def scale(x):\n    return 2 * x\n")
    f = package_copy / "training" / "loss.py"
    f.write_text(f.read_text() + "\nfrom advbench.helpers import scale\n")
    missing = uncovered_imports("train", package_copy)
    assert missing == {"advbench.helpers": ["training/loss.py"]}


def test_the_key_moves_with_the_code_and_the_thread_count(monkeypatch):
    spec = {"model": "mlp", "seed": 0}
    k1 = cache_key("train", {**spec, **code_spec("train", threads=1)})
    k2 = cache_key("train", {**spec, **code_spec("train", threads=2)})
    assert k1 != k2
    monkeypatch.setattr(cv, "code_version", lambda kind: "0" * 64)
    assert cache_key("train", {**spec, **cv.code_spec("train", threads=1)}) != k1


def test_code_spec_defaults_to_this_process_thread_count():
    import torch

    assert code_spec("attack")["threads"] == torch.get_num_threads()


def test_report_code_version_follows_the_renderer(package_copy):
    base = source_hash(cv.REPORT_SOURCES, package_copy)
    assert report_code_version() == source_hash(cv.REPORT_SOURCES)
    _edit_one(package_copy, "reports/markdown.py", "code")
    assert source_hash(cv.REPORT_SOURCES, package_copy) != base
