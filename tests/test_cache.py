"""advbench.suite.cache: the content-addressed cache. Atomic writes, checksum verification, corrupt entries
quarantined and rebuilt; it deletes only what it created; concurrent writers of one key and readers meanwhile; a
full disk fails with a clear error and leaves the cache consistent.

Concurrent processes are forked and lined up on barriers so that their renames (and mkdirs) really collide.
ENOSPC is simulated two ways: by making the write calls raise it (always), and with a real 1 MiB tmpfs (only
where this process may mount one, e.g. as root in a container; skipped elsewhere).
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import advbench.io as io_module
import advbench.suite.cache as cache_module
from advbench.errors import AdvbenchError, CacheError
from advbench.io import DiskFullError, atomic_write_text, is_disk_full
from advbench.suite.cache import ROOT_MARKER, TMP_MARKER, TMP_PREFIX, Cache, cache_key
from advbench.training import load_checkpoint, save_checkpoint
from advbench.training.checkpoint import CARD_FILE, WEIGHTS_FILE

#: Linux only: the concurrency tests below fork worker processes
_FORKS = pytest.mark.skipif(sys.platform != "linux", reason="forks worker processes")


def test_key_is_canonical_and_sensitive():
    assert cache_key("train", {"a": 1, "b": [1, 2]}) == cache_key("train", {"b": [1, 2], "a": 1})
    assert cache_key("train", {"a": 1}) != cache_key("train", {"a": 2})
    assert cache_key("train", {"a": 1}) != cache_key("attack", {"a": 1})


def test_write_then_read_verified(tmp_path):
    cache = Cache(tmp_path)
    key = cache_key("x", {"n": 1})
    assert cache.get("x", key) is None
    with cache.writer("x", key, {"label": "demo"}) as folder:
        (folder / "data.txt").write_text("hello")
    entry = cache.get("x", key)
    assert entry is not None and entry.file("data.txt").read_text() == "hello"
    assert entry.meta == {"label": "demo"}
    assert not list((tmp_path / "tmp").iterdir())


def test_failed_write_publishes_nothing(tmp_path):
    cache = Cache(tmp_path)
    key = cache_key("x", {"n": 2})
    with pytest.raises(RuntimeError):
        with cache.writer("x", key) as folder:
            (folder / "half.bin").write_bytes(b"12")
            raise RuntimeError("killed mid-write")
    assert not cache.exists("x", key)
    assert cache.get("x", key) is None
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_entry_is_detected_quarantined_and_rebuilt(tmp_path, damage, caplog):
    cache = Cache(tmp_path)
    key = cache_key("x", {"n": 3})
    with cache.writer("x", key) as folder:
        (folder / "data.bin").write_bytes(bytes(range(200)))
    path = cache.path("x", key)
    if damage == "flip":
        raw = bytearray((path / "data.bin").read_bytes())
        raw[10] ^= 0xFF
        (path / "data.bin").write_bytes(bytes(raw))
    elif damage == "truncate":
        (path / "data.bin").write_bytes(b"\x00" * 5)
    elif damage == "delete":
        (path / "data.bin").unlink()
    else:
        (path / "MANIFEST.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        assert cache.get("x", key) is None
    assert "corrupt cache entry" in caplog.text
    assert cache.corrupt_found == [f"x/{key}"]
    assert not path.exists() and any((tmp_path / "corrupt").iterdir())
    with cache.writer("x", key) as folder:  # rebuilt
        (folder / "data.bin").write_bytes(b"fresh")
    assert cache.get("x", key).file("data.bin").read_bytes() == b"fresh"


def test_concurrent_writers_keep_one_entry(tmp_path):
    a, b = Cache(tmp_path), Cache(tmp_path)
    key = cache_key("x", {"n": 4})
    with a.writer("x", key) as fa:
        (fa / "v.txt").write_text("same")
        with b.writer("x", key) as fb:
            (fb / "v.txt").write_text("same")
    assert a.get("x", key).file("v.txt").read_text() == "same"


# -- damaged entries --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", [WEIGHTS_FILE, CARD_FILE])
@pytest.mark.parametrize("how", ["truncate", "flip-middle"])
def test_damaged_checkpoint_in_the_cache_is_quarantined_and_rebuilt(
    tmp_path, which, how, tiny_mlp, checkpoint_card, damage_file
):
    cache = Cache(tmp_path / "cache")
    key = cache_key("train", {"model": "mlp", "seed": 0})
    model = tiny_mlp()
    with cache.writer("train", key) as folder:
        save_checkpoint(model, folder / "checkpoint", checkpoint_card())
    entry = cache.get("train", key)
    assert entry is not None
    damage_file(entry.path / "checkpoint" / which, how)
    with pytest.raises(CacheError):  # read directly, the checkpoint's own checksums catch it
        load_checkpoint(entry.path / "checkpoint")
    assert cache.get("train", key) is None  # through the cache: detected, quarantined
    assert cache.corrupt_found == [f"train/{key}"]
    assert not cache.path("train", key).exists()
    quarantined = list((tmp_path / "cache" / "corrupt").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(key)
    with cache.writer("train", key) as folder:  # what the runner does next: compute it again
        save_checkpoint(model, folder / "checkpoint", checkpoint_card())
    entry = cache.get("train", key)
    assert entry is not None
    rebuilt, _ = load_checkpoint(entry.path / "checkpoint")
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(rebuilt(x), model.eval()(x))


@pytest.mark.parametrize("how", ["truncate", "flip-middle", "flip-last"])
def test_damaged_adversarial_set_in_the_cache_is_detected(tmp_path, how, caplog, damage_file):
    cache = Cache(tmp_path)
    key = cache_key("attack", {"source": "x", "eps": 0.1})
    adv = {"x": torch.rand(16, 1, 8, 8), "y": torch.arange(16) % 10}
    with cache.writer("attack", key, {"label": "pgd"}) as folder:
        save_file(adv, str(folder / "adv.safetensors"))
    entry = cache.get("attack", key)
    assert entry is not None and torch.equal(load_file(str(entry.file("adv.safetensors")))["x"], adv["x"])
    damage_file(entry.file("adv.safetensors"), how)
    with caplog.at_level("WARNING"):
        assert cache.get("attack", key) is None
    assert "corrupt cache entry attack/" in caplog.text and "does not match the manifest" in caplog.text
    assert cache.corrupt_found == [f"attack/{key}"]
    assert not cache.exists("attack", key)


# -- the cache deletes only what it created -----------------------------------------------------


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


# -- two runs at once on one cache: concurrent writers of one key, readers meanwhile --------------------------

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


@pytest.mark.integration
@_FORKS
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


@pytest.mark.integration
@_FORKS
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


# -- a full disk -----------------------------------------------------------------------------------------


def _enospc(path: object = "") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _populated(tmp_path: Path) -> tuple[Cache, str, dict[str, bytes]]:
    cache = Cache(tmp_path / "cache")
    old = cache_key("x", {"n": "old"})
    with cache.writer("x", old) as folder:
        (folder / "data.bin").write_bytes(b"old entry")
    snapshot = {str(p.relative_to(cache.root)): p.read_bytes() for p in cache.path("x", old).rglob("*") if p.is_file()}
    return cache, old, snapshot


def _assert_consistent(cache: Cache, old: str, snapshot: dict[str, bytes], new: str) -> None:
    assert not cache.path("x", new).exists()  # no half-written entry visible
    assert cache.get("x", new) is None
    assert list((cache.root / "tmp").iterdir()) == []  # the temporary folder is gone
    entry = cache.get("x", old)
    assert entry is not None  # the existing entry is untouched and still verifies
    now = {str(p.relative_to(cache.root)): p.read_bytes() for p in entry.path.rglob("*") if p.is_file()}
    assert now == snapshot
    assert cache.corrupt_found == []


def _assert_message(exc: DiskFullError, cache: Cache) -> None:
    message = str(exc)
    assert f"the cache disk at {cache.root} is full" in message
    assert "free space" in message and "--cache-dir" in message
    assert isinstance(exc, CacheError) and isinstance(exc, AdvbenchError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOSPC and is_disk_full(exc)


def test_enospc_inside_the_block(tmp_path):
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "new"})
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new) as folder:
            (folder / "part.bin").write_bytes(b"\0" * 4096)
            raise _enospc(folder / "weights.safetensors")
    _assert_message(info.value, cache)
    assert "after writing 4,096 bytes of it" in str(info.value)
    assert info.value.nbytes == 4096
    assert isinstance(info.value.__cause__, OSError)
    _assert_consistent(cache, old, snapshot, new)
    with cache.writer("x", new) as folder:  # space freed: the same write now succeeds
        (folder / "part.bin").write_bytes(b"\0" * 4096)
    entry = cache.get("x", new)
    assert entry is not None and entry.file("part.bin").stat().st_size == 4096


def test_enospc_as_a_library_error_message(tmp_path):
    """safetensors reports a full disk as its own exception type, with the OS message inside."""
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "lib"})

    class SafetensorError(Exception):
        pass

    with pytest.raises(DiskFullError):
        with cache.writer("x", new):
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
    _assert_consistent(cache, old, snapshot, new)


def test_enospc_while_writing_the_manifest(tmp_path, monkeypatch):
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "manifest"})
    real_open_temp = io_module._open_temp

    def full_open_temp(path):  # every write goes through advbench.io
        if str(path).endswith(cache_module.MANIFEST):
            raise _enospc(path)
        return real_open_temp(path)

    monkeypatch.setattr(io_module, "_open_temp", full_open_temp)
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new) as folder:
            (folder / "data.bin").write_bytes(b"payload")
    _assert_message(info.value, cache)
    monkeypatch.undo()
    _assert_consistent(cache, old, snapshot, new)
    with cache.writer("x", new) as folder:
        (folder / "data.bin").write_bytes(b"payload")
    assert cache.get("x", new) is not None


def test_enospc_while_creating_the_temporary_folder(tmp_path, monkeypatch):
    cache, old, snapshot = _populated(tmp_path)
    new = cache_key("x", {"n": "mkdtemp"})

    def full_mkdtemp(*args, **kwargs):
        raise _enospc()

    monkeypatch.setattr(cache_module.tempfile, "mkdtemp", full_mkdtemp)
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new):
            pytest.fail("the block must not run without a folder")
    _assert_message(info.value, cache)
    monkeypatch.undo()
    _assert_consistent(cache, old, snapshot, new)


def test_other_errors_are_not_disk_full(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(PermissionError):
        with cache.writer("x", cache_key("x", {})):
            raise PermissionError(errno.EACCES, "denied")
    assert not is_disk_full(ValueError("bad value"))
    assert list((tmp_path / "tmp").iterdir()) == []


# -- a real full disk ------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, where this process may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, capture_output=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True, timeout=20)


def test_real_full_disk(tiny_disk):
    cache = Cache(tiny_disk / "cache")
    old = cache_key("x", {"n": "old"})
    with cache.writer("x", old) as folder:
        (folder / "data.bin").write_bytes(os.urandom(200_000))
    snapshot = {str(p.relative_to(cache.root)): p.read_bytes() for p in cache.path("x", old).rglob("*") if p.is_file()}
    new = cache_key("x", {"n": "new"})
    with pytest.raises(DiskFullError) as info:
        with cache.writer("x", new) as folder:
            (folder / "big.bin").write_bytes(os.urandom(2_000_000))  # 2 MB on a 1 MiB disk
    _assert_message(info.value, cache)
    _assert_consistent(cache, old, snapshot, new)
    # atomic_write_text on the same full disk
    filler = tiny_disk / "filler.bin"
    with pytest.raises(OSError):
        filler.write_bytes(os.urandom(2_000_000))
    target = tiny_disk / "run" / "manifest.json"
    with pytest.raises(DiskFullError, match="is full"):
        atomic_write_text(target, "x" * 500_000)
    filler.unlink()  # space freed: both writes succeed
    atomic_write_text(target, "x" * 1000)
    with cache.writer("x", new) as folder:
        (folder / "big.bin").write_bytes(os.urandom(300_000))
    assert cache.get("x", new) is not None and cache.get("x", old) is not None
    assert not list((cache.root / "tmp").iterdir())
