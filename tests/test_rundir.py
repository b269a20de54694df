"""The cache deletes only what it created; --resume never takes over another suite's run; a dirty
tree's diff is kept and the manifest holds no absolute local paths."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import advbench.suite.rundir as rundir_module
from advbench.suite.cache import ROOT_MARKER, TMP_MARKER, TMP_PREFIX, Cache, cache_key
from advbench.suite.rundir import RunDir, config_hash, git_provenance


def _age(path: Path, hours: float = 7) -> None:
    old = time.time() - hours * 3600
    os.utime(path, (old, old), follow_symlinks=False)


_KILLED: list[Any] = []


def _leftover(cache: Cache, name: str = "") -> Path:
    """A temporary folder as a killed writer leaves it."""
    key = cache_key("train", {"n": name})
    gen = cache.writer("train", key)
    _KILLED.append(gen)  # never closed, as after kill -9 (closing would run its clean-up)
    tmp = gen.__enter__()
    (tmp / "weights.bin").write_bytes(b"half")
    # simulate kill -9: the context manager never exits
    _age(tmp)
    return tmp


# -- the cache deletes only what it created -----------------------------------------------------


def test_new_cache_is_marked_and_its_own_leftovers_are_swept(tmp_path):
    cache = Cache(tmp_path / "c")
    assert (cache.root / ROOT_MARKER).is_file() and cache.is_marked()
    tmp = _leftover(cache)
    assert tmp.name.startswith(TMP_PREFIX) and (tmp / TMP_MARKER).is_file()
    assert cache.sweep_tmp() == 1 and not tmp.exists()


def test_fresh_leftovers_of_live_writers_are_kept(tmp_path):
    cache = Cache(tmp_path / "c")
    with cache.writer("train", cache_key("train", {})) as live:
        assert cache.sweep_tmp() == 0 and live.exists()


@pytest.mark.parametrize("kind", ["foreign-dir", "no-marker-inside", "file", "symlink-to-dir", "symlink-named-ours"])
def test_sweep_never_touches_what_it_did_not_create(tmp_path, kind):
    cache = Cache(tmp_path / "c")
    tmp_root = cache.root / "tmp"
    tmp_root.mkdir(exist_ok=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (victim / TMP_MARKER).write_text("")  # even a victim that looks like ours from the inside
    if kind == "foreign-dir":
        entry = tmp_root / "someones-folder"
        entry.mkdir()
        (entry / "data").write_text("x")
    elif kind == "no-marker-inside":
        entry = tmp_root / f"{TMP_PREFIX}train-abc"
        entry.mkdir()
    elif kind == "file":
        entry = tmp_root / f"{TMP_PREFIX}file"
        entry.write_text("x")
    elif kind == "symlink-to-dir":
        entry = tmp_root / "link"
        entry.symlink_to(victim)
    else:
        entry = tmp_root / f"{TMP_PREFIX}train-link"
        entry.symlink_to(victim)
    _age(entry)
    assert cache.sweep_tmp() == 0
    assert os.path.lexists(entry)
    assert (victim / "precious.txt").read_text() == "keep me"


def test_a_tmp_folder_that_is_a_symlink_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    inner = victim / f"{TMP_PREFIX}x"
    inner.mkdir()
    (inner / TMP_MARKER).write_text("")
    _age(inner)
    root = tmp_path / "c"
    Cache(root)
    if (root / "tmp").exists():
        (root / "tmp").rmdir()
    (root / "tmp").symlink_to(victim)
    assert Cache(root).sweep_tmp() == 0 and inner.exists()


@pytest.mark.parametrize("foreign", ["home-like", "with-tmp"])
def test_a_folder_with_foreign_content_is_never_swept(tmp_path, foreign, caplog):
    root = tmp_path / "home"
    root.mkdir()
    (root / "thesis.tex").write_text("years of work")
    old = root / "tmp" / f"{TMP_PREFIX}train-x"
    old.mkdir(parents=True)
    (old / TMP_MARKER).write_text("")
    (old / "notes").write_text("mine")
    _age(old)
    if foreign == "with-tmp":
        (root / "tmp" / "other").mkdir()
    cache = Cache(root)  # e.g. `cache_dir: /` or `--cache-dir ~`
    assert not cache.is_marked() and not (root / ROOT_MARKER).exists()
    assert "never clean up" in caplog.text
    assert cache.sweep_tmp() == 0 and (old / "notes").exists()


def test_a_cache_from_before_the_marker_is_adopted(tmp_path):
    root = tmp_path / "old"
    (root / "train" / "ab").mkdir(parents=True)
    (root / "tmp").mkdir()
    assert Cache(root).is_marked()


def test_a_planted_symlink_where_an_entry_belongs_is_replaced_not_followed(tmp_path):
    cache = Cache(tmp_path / "c")
    key = cache_key("train", {"n": 1})
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    final = cache.path("train", key)
    final.parent.mkdir(parents=True)
    final.symlink_to(victim)
    with cache.writer("train", key) as folder:
        (folder / "w.bin").write_bytes(b"w")
    assert not final.is_symlink() and cache.get("train", key) is not None
    assert (victim / "precious.txt").read_text() == "keep"


# -- --resume matches name and resolved-config hash ---------------------------------------------


class FakeSuite:
    """The part of a Suite that RunDir reads."""

    def __init__(self, name: str, **extra: Any) -> None:
        self.name, self.seeds, self.extra = name, [0], extra

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return {"name": self.name, "seeds": self.seeds, **self.extra}


def _started(runs: Path, suite: FakeSuite, **kw: Any) -> RunDir:
    rd = RunDir.create(runs, suite, **kw)
    rd.write_config(suite, "suites/x.yaml")
    rd.start(suite, source="suites/x.yaml", versions={}, data={}, plugins={}, cache_dir=str(runs / "cache"))
    return rd


def test_resume_never_matches_by_prefix(tmp_path):
    runs = tmp_path / "runs"
    other = _started(runs, FakeSuite("t1-other"))
    before = (other.path / "manifest.json").read_text()
    rd = RunDir.create(runs, FakeSuite("t1"), resume=True)
    assert rd.path != other.path and rd.path.name.startswith("t1-")
    assert (other.path / "manifest.json").read_text() == before


def test_resume_needs_the_same_resolved_config(tmp_path):
    runs = tmp_path / "runs"
    first = _started(runs, FakeSuite("t1", eps=[0.1]))
    first.release()  # the first run stopped (its process ended); a folder still being written is refused
    time.sleep(0.01)
    changed = RunDir.create(runs, FakeSuite("t1", eps=[0.2]), resume=True)
    assert changed.path != first.path
    same = RunDir.create(runs, FakeSuite("t1", eps=[0.1]), resume=True)
    assert same.path == first.path and same.manifest["resumed"]


def test_resume_skips_damaged_and_symlinked_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "t1-broken").mkdir()
    (runs / "t1-broken" / "manifest.json").write_text("{not json")
    (runs / "t1-list").mkdir()
    (runs / "t1-list" / "manifest.json").write_text("[1, 2]")
    elsewhere = tmp_path / "elsewhere" / "t1-x"
    _started(elsewhere.parent, FakeSuite("t1"))
    (runs / "t1-link").symlink_to(next(elsewhere.parent.iterdir()))
    rd = RunDir.create(runs, FakeSuite("t1"), resume=True)
    assert rd.path.parent == runs and rd.path.name not in {"t1-broken", "t1-list", "t1-link"}


def test_resume_of_an_older_run_without_a_recorded_hash_uses_its_config(tmp_path):
    runs = tmp_path / "runs"
    suite = FakeSuite("t1")
    rd = _started(runs, suite)
    manifest = json.loads(rd.manifest_path.read_text())
    manifest.pop("config_hash")
    rd.manifest_path.write_text(json.dumps(manifest))
    assert RunDir.latest(runs, "t1", config_hash(suite)) == rd.path
    assert RunDir.latest(runs, "t1", config_hash(FakeSuite("t1", x=1))) is None


# -- provenance ---------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@example.com")
    _git(root, "config", "user.name", "t")
    (root / "suite.yaml").write_text("alpha: 0.1\n")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "init")
    return root


def test_a_clean_tree_keeps_no_diff(repo):
    prov = git_provenance(repo)
    assert not prov["dirty"] and prov["diff"] == b"" and len(prov["commit"]) == 40


def test_a_dirty_tree_keeps_its_diff_and_untracked_list(repo, tmp_path, monkeypatch):
    (repo / "suite.yaml").write_text("alpha: -0.1\n")
    (repo / "new_attack.py").write_text("x = 1\n")
    prov = git_provenance(repo)
    assert prov["dirty"] and b"-alpha: 0.1" in prov["diff"] and b"+alpha: -0.1" in prov["diff"]
    assert prov["untracked"] == ["new_attack.py"]
    monkeypatch.setattr(rundir_module, "git_provenance", lambda: prov)
    monkeypatch.chdir(repo)
    rd = _started(repo / "runs", FakeSuite("t1"))
    assert (rd.path / "provenance.diff").read_bytes() == prov["diff"]
    assert (rd.path / "provenance-untracked.txt").read_text() == "new_attack.py\n"
    m = json.loads(rd.manifest_path.read_text())
    assert m["git_commit"].endswith("+dirty") and m["provenance"]["diff"] == "provenance.diff"
    # the diff applies to the recorded commit and gives back what ran
    _git(repo, "stash", "-q")
    _git(repo, "apply", str(rd.path / "provenance.diff"))
    assert (repo / "suite.yaml").read_text() == "alpha: -0.1\n"


def test_manifest_paths_are_relative_to_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rd = _started(tmp_path / "runs", FakeSuite("t1"))
    m = json.loads(rd.manifest_path.read_text())
    assert m["suite_file"] == "suites/x.yaml" and m["cache_dir"] == "runs/cache"
    assert str(tmp_path) not in rd.manifest_path.read_text()
