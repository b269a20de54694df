"""advbench.suite.rundir: run folders. --resume never takes over another suite's run or a folder another
process is writing; a dirty tree's diff is kept and the manifest holds no absolute local paths; run folders
started in the same second, by one process or by several at once, are distinct."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

import advbench.suite.rundir as rundir_module
from advbench.config import Suite
from advbench.errors import AdvbenchError
from advbench.suite.rundir import RunDir, config_hash, git_provenance

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "suites" / "tiny.yaml"

#: Linux only: the concurrency tests below fork worker processes
_FORKS = pytest.mark.skipif(sys.platform != "linux", reason="forks worker processes")


def _doc(**changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(TINY.read_text())
    doc.update(changes)
    return doc


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


@pytest.mark.integration  # a second process holds the lock
def test_resume_refuses_a_run_folder_another_process_is_writing(tmp_path):
    import textwrap

    suite = Suite.model_validate(_doc())
    first = RunDir.create(tmp_path, suite)
    first.manifest = {"suite": suite.name}
    first.save()
    # another process holds the lock of a folder (as a running `advbench run` does), then this one resumes
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, sys, time
            fh = open({str(first.path / ".lock")!r}, "a+")
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0); fh.truncate(); fh.write("advbench process 4242 on elsewhere"); fh.flush()
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first.release()
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        rd = RunDir(first.path)
        with pytest.raises(AdvbenchError, match="advbench process 4242 on elsewhere is still writing"):
            rd.lock()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    rd.lock()  # the holder is gone (as after kill -9): the folder may be resumed
    rd.release()


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


# -- run folders in the same second ---------------------------------------------------------------------------------

SUITE = Suite.model_validate(
    {
        "name": "tiny",
        "dataset": {"name": "digits", "splits": {"train": 100, "test": 50}},
        "models": [{"name": "baseline", "architecture": "cnn-digits"}],
    }
)


@pytest.fixture
def same_second(monkeypatch):
    """Every run starts in the same second."""
    real = time.strftime

    def frozen(fmt: str, *args: Any) -> str:
        return "20250101-120000" if fmt == "%Y%m%d-%H%M%S" else real(fmt, *args)

    monkeypatch.setattr(rundir_module.time, "strftime", frozen)


@pytest.mark.integration
@_FORKS
def test_run_folders_in_the_same_second_are_distinct(tmp_path, same_second):
    made = [RunDir.create(tmp_path / "runs", SUITE).path for _ in range(5)]
    assert [p.name for p in made] == ["tiny-20250101-120000"] + [f"tiny-20250101-120000-{i}" for i in range(1, 5)]
    assert all((p / "results").is_dir() for p in made)


def _create_run(runs: str, start: Any, out: Any) -> None:
    try:
        start.wait(timeout=30)
        rd = RunDir.create(runs, SUITE)
        rd.write_config(SUITE, "suites/tiny.yaml")
        rd.manifest = {"pid": mp.current_process().pid}
        rd.save()
        out.put(("ok", str(rd.path)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


@pytest.mark.integration
@_FORKS
def test_run_folders_created_by_processes_at_once(tmp_path, same_second):
    ctx = mp.get_context("fork")
    runs = str(tmp_path / "runs")
    n = 6
    start = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_create_run, args=(runs, start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [d for s, d in results if s != "ok"]
    assert not errors, "\n".join(errors)
    paths = sorted(Path(d) for _, d in results)
    assert len(set(paths)) == n  # nobody shares (or overwrote) another run's folder
    pids = {int(json.loads((p / "manifest.json").read_text())["pid"]) for p in paths}
    assert len(pids) == n
    assert sorted(p.name for p in Path(runs).iterdir()) == sorted(p.name for p in paths)
