"""Two runs at once on one cache: concurrent writers of one key, readers meanwhile, run folders in one second.

Processes are forked and lined up on barriers so that their renames (and mkdirs) really collide.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest

import advbench.suite.rundir as rundir_module
from advbench.config import Suite
from advbench.suite.cache import Cache, cache_key
from advbench.suite.rundir import RunDir

pytestmark = [pytest.mark.integration, pytest.mark.skipif(sys.platform != "linux", reason="forks worker processes")]

N_WRITERS = 6
N_READERS = 2
KIND = "attack"
KEY = cache_key(KIND, {"source": "s", "eps": 0.1})
PAYLOAD = hashlib.sha256(b"seed").digest() * 8192  # 256 KiB, the same bytes from every writer (content-addressed)


def _writer(root: str, start: Any, commit: Any, out: Any) -> None:
    try:
        cache = Cache(root)
        start.wait(timeout=30)
        with cache.writer(KIND, KEY, {"label": "pgd eps=0.1"}) as folder:
            (folder / "adv.bin").write_bytes(PAYLOAD)
            (folder / "sub").mkdir()
            (folder / "sub" / "meta.json").write_text('{"n": 1024}')
            commit.wait(timeout=30)  # every writer renames at the same moment
        out.put(("ok", None))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def _reader(root: str, start: Any, stop: Any, out: Any) -> None:
    try:
        cache = Cache(root)
        start.wait(timeout=30)
        seen = misses = 0
        while not stop.is_set() or seen == 0:
            entry = cache.get(KIND, KEY)
            if entry is None:
                misses += 1
            else:
                assert entry.file("adv.bin").read_bytes() == PAYLOAD
                assert entry.file("sub/meta.json").read_text() == '{"n": 1024}'
                assert entry.meta == {"label": "pgd eps=0.1"}
                seen += 1
            assert cache.corrupt_found == [], cache.corrupt_found
        out.put(("ok", (seen, misses)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def test_concurrent_writers_of_one_key_and_readers(tmp_path):
    ctx = mp.get_context("fork")
    root = str(tmp_path / "cache")
    Cache(root)
    start = ctx.Barrier(N_WRITERS + N_READERS)
    commit = ctx.Barrier(N_WRITERS)
    stop = ctx.Event()
    out = ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(root, start, commit, out)) for _ in range(N_WRITERS)]
    readers = [ctx.Process(target=_reader, args=(root, start, stop, out)) for _ in range(N_READERS)]
    for p in writers + readers:
        p.start()
    results = [out.get(timeout=60) for _ in writers]
    stop.set()
    results += [out.get(timeout=60) for _ in readers]
    for p in writers + readers:
        p.join(timeout=30)
        assert p.exitcode == 0
    errors = [detail for status, detail in results if status != "ok"]
    assert not errors, "\n".join(errors)
    assert all(detail[0] >= 1 for status, detail in results[N_WRITERS:])  # readers saw the entry, whole

    cache = Cache(root)
    entry = cache.get(KIND, KEY)
    assert entry is not None and entry.file("adv.bin").read_bytes() == PAYLOAD
    assert [p.name for p in cache.path(KIND, KEY).parent.iterdir()] == [KEY]  # one entry, no stray copies
    assert list((Path(root) / "tmp").iterdir()) == []  # the losers' copies were dropped
    assert not (Path(root) / "corrupt").exists()


def test_concurrent_writers_of_many_keys(tmp_path):
    """Writers of different keys sharing the tmp/ and the two-letter shard folders never trip each other."""
    ctx = mp.get_context("fork")
    root = str(tmp_path / "cache")
    keys = [cache_key("x", {"i": i}) for i in range(40)]
    start = ctx.Barrier(4)

    def work(offset: int, out: Any) -> None:
        try:
            cache = Cache(root)
            start.wait(timeout=30)
            for key in keys[offset::2] + keys[::-1]:  # overlapping: every key is written by at least two
                with cache.writer("x", key) as folder:
                    (folder / "k.txt").write_text(key)
            out.put(("ok", None))
        except BaseException:
            out.put(("error", traceback.format_exc()))

    out = ctx.Queue()
    procs = [ctx.Process(target=work, args=(i % 2, out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(status == "ok" for status, _ in results), results
    cache = Cache(root)
    for key in keys:
        entry = cache.get("x", key)
        assert entry is not None and entry.file("k.txt").read_text() == key
    assert cache.corrupt_found == [] and list((Path(root) / "tmp").iterdir()) == []


# -- run folders ---------------------------------------------------------------------------------

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
