"""A cell's code identity is the components it uses: an edit recomputes exactly the cells whose code it touches.

The closures are computed from the imports (a copy of the package is edited), the lock versions the keys,
plugins are identified by their distribution, and every planned cell of every shipped suite carries its
code identity and thread count.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

import advbench.codeversion as cv
from advbench.codeversion import PACKAGE_ROOT, closure_hash, report_code_version, source_hash
from advbench.config import Suite
from advbench.errors import AdvbenchError
from advbench.suite.cache import Cache
from advbench.suite.codelock import check_lock, lock_roots, write_lock
from advbench.suite.context import CELL_KINDS, CellContext, RunOptions

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "tests" / "suites" / "tiny.yaml").read_text())


@pytest.fixture(scope="module")
def roots() -> list[str]:
    return lock_roots()


@pytest.fixture
def package_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the advbench sources to edit; closures are computed in it."""
    dest = tmp_path / "advbench"
    shutil.copytree(PACKAGE_ROOT, dest, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cv, "PACKAGE_ROOT", dest)
    return dest


def _edit(root: Path, rel: str, how: str = "code") -> None:
    f = root / rel
    text = f.read_text()
    if how == "code":
        text += "\n\ndef _an_added_function():\n    return 1\n"
    elif how == "comment":
        text += "\n# a comment changes nothing\n"
    elif how == "docstring":
        text = text.replace('"""', '"""Reworded. ', 1)
    elif how == "blank-lines":
        text = text.replace("\n\n", "\n\n\n", 1)
    f.write_text(text)


def _changed(root: Path, roots: list[str], rel: str, how: str = "code") -> set[str]:
    before = {m: closure_hash(m) for m in roots}
    _edit(root, rel, how)
    return {m for m in roots if closure_hash(m) != before[m]}


def test_the_components_are_each_kinds_handler_and_each_builtin_entry(roots):
    assert {f"advbench.suite.cells.{k.replace('-', '_')}" for k in CELL_KINDS} <= set(roots)
    assert {"advbench.attacks.pgd", "advbench.attacks.dknn_adaptive", "advbench.models.architectures"} <= set(roots)
    assert "advbench.suite.cells.dknn_knowledge" in roots  # the adaptive attack's knowledge of the DkNN


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        # used only by DkNN scoring
        ("evaluation/mahalanobis.py", {"advbench.suite.cells.dknn_score"}),
        ("suite/cells/dknn_score.py", {"advbench.suite.cells.dknn_score"}),
        # one attack's module: that attack and the attack built on it (PGD-L2 runs PGD)
        ("attacks/pgd.py", {"advbench.attacks.pgd", "advbench.attacks.pgd_l2"}),
        ("attacks/dknn_adaptive.py", {"advbench.attacks.dknn_adaptive", "advbench.suite.cells.dknn_knowledge"}),
        # the DkNN: its index, its scoring, the knowledge of the attack on it and the check of that attack's
        # convergence (which scores with it); no other attack
        (
            "evaluation/dknn.py",
            {
                "advbench.suite.cells.dknn_index",
                "advbench.suite.cells.dknn_score",
                "advbench.suite.cells.dknn_knowledge",
                "advbench.suite.cells.convergence",
            },
        ),
        ("training/snnl.py", {"advbench.suite.cells.train", "advbench.training.loss"}),
        ("evaluation/transfer.py", {"advbench.suite.cells.transfer", "advbench.suite.cells.clean_eval"}),
    ],
)
def test_an_edit_changes_exactly_the_components_that_import_it(package_copy, roots, rel, expected):
    changed = _changed(package_copy, roots, rel)
    regularisers = {m for m in changed if m.startswith("advbench.training.")}
    assert changed - regularisers == expected - regularisers
    assert expected <= changed


@pytest.mark.parametrize(
    "rel",
    [
        "analysis/claims.py",
        "analysis/stats.py",
        "analysis/inference.py",
        "analysis/results.py",
        "analysis/comparison.py",
        "reports/markdown.py",
        "suite/runner.py",
        "suite/plan.py",
        "cli/run_cmd.py",
    ],
)
def test_claims_statistics_reports_and_orchestration_change_no_component(package_copy, roots, rel):
    assert _changed(package_copy, roots, rel) == set()


@pytest.mark.parametrize("how", ["comment", "docstring", "blank-lines"])
def test_comments_docstrings_and_layout_change_nothing(package_copy, roots, how):
    assert _changed(package_copy, roots, "attacks/pgd.py", how) == set()


def test_a_new_import_joins_the_closure(package_copy):
    (package_copy / "helpers.py").write_text("def scale(x):\n    return 2 * x\n")
    before = closure_hash("advbench.suite.cells.transfer")
    f = package_copy / "evaluation" / "transfer.py"
    f.write_text(f.read_text() + "\nfrom advbench.helpers import scale\n")
    assert "advbench.helpers" in cv.advbench_component("advbench.suite.cells.transfer", lock={}).modules
    assert closure_hash("advbench.suite.cells.transfer") != before


def test_the_neutral_modules_import_no_domain_code():
    """What a closure stops at must not reach code that computes numbers (or the closures would miss it)."""
    domain = ("advbench.attacks", "advbench.data", "advbench.evaluation", "advbench.models", "advbench.training")
    for module in cv.NEUTRAL:
        for m in cv._closure(module).modules:
            assert not m.startswith(domain), f"neutral {module} imports {m}"


# -- the lock ---------------------------------------------------------------------------------------


def test_the_committed_lock_matches_the_code():
    assert check_lock() == [], "run `advbench code check` and lock or bump (README, Development)"


def test_lock_check_bump_and_relock(tmp_path):
    lock = tmp_path / "code.lock.json"
    write_lock(path=lock)
    assert check_lock(lock) == []
    data = json.loads(lock.read_text())
    data["components"]["advbench.attacks.pgd"]["hash"] = "0" * 64
    data["components"]["advbench.no.such"] = {"version": 3, "hash": "1" * 64}
    del data["components"]["advbench.attacks.fgsm"]
    lock.write_text(json.dumps(data))
    problems = {p.module: p.problem for p in check_lock(lock)}
    assert problems == {"advbench.attacks.pgd": "changed", "advbench.no.such": "gone", "advbench.attacks.fgsm": "new"}
    out = write_lock(["advbench.attacks.pgd"], path=lock)["components"]
    assert out["advbench.attacks.pgd"]["version"] == 2 and out["advbench.attacks.fgsm"]["version"] == 1
    assert "advbench.no.such" not in out and check_lock(lock) == []
    with pytest.raises(AdvbenchError, match="not a component"):
        write_lock(["advbench.attacks.nope"], path=lock)


def test_a_component_edited_since_its_lock_is_keyed_by_its_code():
    digest = closure_hash("advbench.attacks.pgd")
    locked = {"advbench.attacks.pgd": {"version": 4, "hash": digest}}
    assert cv.advbench_component("advbench.attacks.pgd", lock=locked).version == "4"
    stale = {"advbench.attacks.pgd": {"version": 4, "hash": "0" * 64}}
    assert cv.advbench_component("advbench.attacks.pgd", lock=stale).version == f"4+{digest[:16]}"
    assert cv.advbench_component("advbench.attacks.pgd", lock={}).version == f"0+{digest[:16]}"


# -- plans ------------------------------------------------------------------------------------------


def _plan(**opts):
    ctx = CellContext.create(Suite.model_validate(TINY), RunOptions(cache_dir="/tmp/unused", progress=False, **opts))
    return ctx.plan


def _keys_with_bumped(monkeypatch, module: str | None) -> dict[str, str]:
    lock = dict(cv.read_lock())
    if module is not None:
        lock[module] = {**lock[module], "version": lock[module]["version"] + 1}
    monkeypatch.setattr(cv, "_lock", lambda: lock)
    return {c.label: c.key for c in _plan(threads=1).cells}


@pytest.mark.parametrize(
    ("module", "moved"),
    [
        ("advbench.suite.cells.dknn_score", r"^dknn score"),
        ("advbench.attacks.pgd", r"^(attack pgd|transfer pgd|dknn score)"),
        ("advbench.suite.cells.clean_eval", r"^clean evaluation"),
        ("advbench.suite.cells.transfer", r"^transfer"),
        ("advbench.models.architectures", r".*"),  # the models: everything downstream of training
    ],
)
def test_a_bumped_component_moves_exactly_its_cells_and_their_dependents(monkeypatch, module, moved):
    before = _keys_with_bumped(monkeypatch, None)
    after = _keys_with_bumped(monkeypatch, module)
    changed = {label for label in before if before[label] != after[label]}
    assert changed == {label for label in before if re.match(moved, label)}


def test_the_thread_count_is_in_every_key():
    one, two = _plan(threads=1), _plan(threads=2)
    assert not {c.key for c in one.cells} & {c.key for c in two.cells}


def test_an_attack_key_carries_only_its_own_backend(monkeypatch):
    plan = _plan(threads=1)
    for c in plan.by_kind("attack"):
        libs = c.spec["code"]["libraries"]
        assert "torchattacks" in libs and "foolbox" not in libs, c.label
    assert all("advbench" not in c.spec["code"]["libraries"] for c in plan.cells)


SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_planned_cell_of_every_shipped_suite_carries_its_code_and_threads(path):
    from advbench.suite.validate import load_suite

    suite = load_suite(path)
    try:
        ctx = CellContext.create(suite, RunOptions(cache_dir="/tmp/unused", progress=False, threads=1))
    except Exception as exc:  # a dataset this machine cannot load (no network): plan a small stand-in instead
        if "digits" in str(suite.dataset.name):
            raise
        pytest.skip(f"{path.name}: its dataset cannot be loaded here ({type(exc).__name__})")
    assert ctx.plan.cells
    for c in ctx.plan.cells:
        code = c.spec["code"]
        assert set(code) == {"components", "libraries", "threads", "path"}, c.label
        assert code["threads"] == 1, c.label
        # the numeric path of the libraries it uses: faiss's only where the cell searches neighbours
        assert code["path"]["device"] == "cpu" and "capability" in code["path"]["torch"], c.label
        assert ("faiss" in code["path"]) == ("faiss-cpu" in code["libraries"]), c.label
        assert code["components"]["cell"].startswith(f"advbench.suite.cells.{c.kind.replace('-', '_')}@"), c.label
        assert "torch" in code["libraries"], c.label


# -- plugins ----------------------------------------------------------------------------------------


_PLUGIN = """
from advbench.attacks import register_attack
from advbench.attacks.fgsm import FGSM

@register_attack("codeid-fgsm", norm="linf", targeted=False)
class CodeIdFGSM(FGSM):
    {body}
"""


@pytest.fixture
def plugin_site(tmp_path, monkeypatch, reload_plugins, install_dist):
    """``install(version, body)``: a real plugin distribution on sys.path, registered through its entry point."""
    from advbench.attacks import ATTACKS

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def install(version: str, body: str = "pass") -> None:
        install_dist(
            site,
            "advbench-codeid-plugin",
            version,
            "[advbench.attacks]\ncodeid = advbench_codeid_plugin\n",
            {"advbench_codeid_plugin.py": _PLUGIN.format(body=body)},
        )
        reload_plugins(ATTACKS, "advbench_codeid_plugin")

    return install


def _plugin_suite_keys() -> dict[str, str]:
    doc = TINY | {"attacks": [*TINY["attacks"], {"name": "codeid-fgsm", "eps": [0.1]}]}
    ctx = CellContext.create(Suite.model_validate(doc), RunOptions(cache_dir="/tmp/unused", progress=False, threads=1))
    return {c.label: c.key for c in ctx.plan.cells}


def test_a_plugin_is_identified_by_its_distribution_and_version(plugin_site):
    plugin_site("1.0")
    v1 = _plugin_suite_keys()
    plugin_site("1.1")
    v11 = _plugin_suite_keys()
    changed = {label for label in v1 if v1[label] != v11[label]}
    assert changed == {label for label in v1 if "codeid-fgsm" in label or label.startswith("dknn score")}
    assert any(label.startswith("attack codeid-fgsm") for label in changed)


def test_an_unversioned_plugin_is_identified_by_its_source(plugin_site):
    plugin_site("0.0.0")
    a = _plugin_suite_keys()
    plugin_site("0.0.0", "properties = FGSM.properties | {'changed'}")
    b = _plugin_suite_keys()
    changed = {label for label in a if a[label] != b[label]}
    assert any(label.startswith("attack codeid-fgsm") for label in changed)
    assert not any(label.startswith(("attack fgsm", "attack pgd", "train")) for label in changed)


# -- the migration ----------------------------------------------------------------------------------


def test_the_migration_carries_unchanged_cells_and_only_those(tmp_path, monkeypatch):
    from advbench.suite.migrate import legacy_keys, migrate

    plan = _plan(threads=1)
    cache = Cache(tmp_path / "cache")
    legacy = legacy_keys(plan)
    # the cross-seed transfer cells had no code version: never carried over
    assert all(c.key not in legacy for c in plan.cells if "target_seed" in c.spec)
    for c in plan.cells:
        if c.key in legacy:
            with cache.writer(c.kind, legacy[c.key], {"label": c.label, "seconds": 1.5}) as folder:
                (folder / "out.txt").write_text(c.label)
    result = migrate(plan, cache)
    assert sum(result.adopted.values()) == len(legacy)
    for c in plan.cells:
        if c.key in legacy:
            entry = cache.get(c.kind, c.key)
            assert entry is not None and entry.file("out.txt").read_text() == c.label
            assert entry.meta["migrated_from"] == legacy[c.key] and entry.meta["seconds"] == 1.5
    # a component bumped since the scheme's first lock: its cells (and their dependents) are not carried
    lock = {m: {**v, "version": v["version"] + (m == "advbench.attacks.pgd")} for m, v in cv.read_lock().items()}
    monkeypatch.setattr(cv, "_lock", lambda: lock)
    bumped = legacy_keys(_plan(threads=1))
    assert len(bumped) < len(legacy)
    assert not any(lab.startswith(("attack pgd", "dknn score")) for lab in _labels(_plan(threads=1), bumped))


def _labels(plan, keys) -> set[str]:
    return {c.label for c in plan.cells if c.key in keys}


def test_report_code_version_follows_the_renderer(package_copy):
    base = source_hash(cv.REPORT_SOURCES, package_copy)
    assert report_code_version() == source_hash(cv.REPORT_SOURCES)
    _edit(package_copy, "reports/markdown.py")
    assert source_hash(cv.REPORT_SOURCES, package_copy) != base


def test_a_transfer_cell_without_a_failed_target_runs_on_the_others():
    """One failed model does not take its seed's transfer results with it: the cell runs on the targets left."""
    from advbench.suite.execute import without_failed
    from advbench.suite.plan import Cell

    spec = {"adv": "A", "targets": {"baseline": "T1", "sloppy": "T2"}, "code": {}}
    cell = Cell("transfer", "transfer fgsm eps=0.1 from baseline seed=0", "K", ["A", "T1", "T2"], spec, 0.1, {})
    kept, reason = without_failed(cell, {"T2": "boom"}, {"T2": "train sloppy seed=0"})
    assert reason == "" and kept is not None and kept.spec["targets"] == {"baseline": "T1"}
    assert kept.deps == ["A", "T1"] and kept.key != cell.key and kept.label.endswith("without 1 failed target")
    assert without_failed(cell, {"A": "boom"}, {"A": "attack"})[0] is None  # no adversarial set: skipped
    assert without_failed(cell, {"T1": "x", "T2": "y"}, {"T1": "t1"})[0] is None  # no target left: skipped
    cross = Cell("transfer", "t", "K2", ["A", "S", "T1"], {**spec, "source": "S", "targets": {"b": "T1"}}, 0.1, {})
    assert without_failed(cross, {"S": "boom"}, {"S": "train source"})[0] is None  # the source is needed
